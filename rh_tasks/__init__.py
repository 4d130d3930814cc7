"""rh-eval tasks: needle-in-a-haystack grids and chain-of-thought benchmarks as lm-eval tasks.

The YAML task configs live in ``task_configs/``; they are found automatically by the stock ``lm_eval`` CLI
once ``rh-eval`` is installed (see :mod:`rh_models._autoload`), or explicitly with
``--include_path $(rh tasks path)``.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path


def task_config_dir() -> Path:
    """Folder of our task YAMLs: inside the package in a wheel, beside it in a source/editable checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "task_configs", here.parent / "task_configs"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"rh-eval task_configs folder not found near {here}")


def add_task_configs_to_task_manager(task_manager_cls: type) -> None:
    """Wrap ``TaskManager.__init__`` so our folder is always among its include paths.

    lm-eval indexes tasks from ``include_path`` only; this makes ``--tasks rh_niah`` work from the stock
    CLI without ``--include_path``. User paths keep precedence (ours is appended first, theirs after).
    """
    original = task_manager_cls.__init__
    if getattr(original, "_rh_wrapped", False):
        return
    signature = inspect.signature(original)

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        user = bound.arguments.get("include_path")
        user_paths = [] if user is None else list(user) if isinstance(user, (list, tuple)) else [user]
        ours = str(task_config_dir())
        if ours not in map(str, user_paths):
            bound.arguments["include_path"] = [ours, *user_paths]
        original(*bound.args, **bound.kwargs)

    __init__._rh_wrapped = True  # type: ignore[attr-defined]
    task_manager_cls.__init__ = __init__
