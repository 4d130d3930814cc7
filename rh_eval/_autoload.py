"""Make ``--model rh-hf`` and our tasks visible to the *stock* ``lm_eval`` CLI, at near-zero start-up cost.

lm-eval 0.4.13 has no plugin discovery, so the wheel ships ``rh_eval_autoload.pth`` which imports this
module at every interpreter start. Importing lm-eval here would cost ~50 ms in every Python process, so we
only install an import hook that acts when (and if) lm-eval's own modules are imported:

* ``lm_eval.models``: ``rh-hf`` is registered right after lm-eval fills its registry;
* ``lm_eval.tasks.manager``: our ``task_configs`` folder joins every ``TaskManager``'s include paths;
* ``lm_eval._cli``: the CLI prints our :class:`~rh_models.errors.RHError` as one line (exit status 1)
  instead of a traceback -- only in the CLI, never for library users.

Nothing here imports torch, transformers or lm-eval; the lm-eval internals touched are listed in
:mod:`rh_models.compat`.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import inspect
import sys
from types import ModuleType
from typing import Any, Callable


def _after_models(module: ModuleType) -> None:
    from rh_models import register

    register()


def add_include_path_to_task_manager(task_manager_cls: type, folder: Callable[[], Any]) -> None:
    """Wrap ``TaskManager.__init__`` so ``folder()`` is always among its include paths (user paths kept after)."""
    original = task_manager_cls.__init__
    if getattr(original, "_rh_wrapped", False):
        return
    signature = inspect.signature(original)

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        user = bound.arguments.get("include_path")
        user_paths = [] if user is None else list(user) if isinstance(user, (list, tuple)) else [user]
        ours = str(folder())
        if ours not in map(str, user_paths):
            bound.arguments["include_path"] = [ours, *user_paths]
        original(*bound.args, **bound.kwargs)

    __init__._rh_wrapped = True  # type: ignore[attr-defined]
    task_manager_cls.__init__ = __init__


def print_errors_as_one_line(cli_cls: type) -> None:
    """Make lm-eval's ``HarnessCLI.execute`` print an :class:`RHError` as ``rh-eval: error: ...`` and exit 1."""
    from rh_models.errors import RHError

    original = cli_cls.execute
    if getattr(original, "_rh_wrapped", False):
        return

    @functools.wraps(original)
    def execute(self, args):
        try:
            return original(self, args)
        except RHError as error:
            print(f"rh-eval: error: {error}", file=sys.stderr)
            raise SystemExit(1) from None

    execute._rh_wrapped = True  # type: ignore[attr-defined]
    cli_cls.execute = execute


def _after_task_manager(module: ModuleType) -> None:
    from rh_tasks import task_config_dir

    add_include_path_to_task_manager(module.TaskManager, task_config_dir)


def _after_cli(module: ModuleType) -> None:
    print_errors_as_one_line(module.HarnessCLI)


_HOOKS: dict[str, Callable[[ModuleType], None]] = {
    "lm_eval.models": _after_models,
    "lm_eval.tasks.manager": _after_task_manager,
    "lm_eval._cli": _after_cli,
}


class _HookedLoader(importlib.abc.Loader):
    """Delegates to the real loader, then runs our hook on the freshly executed module."""

    def __init__(self, loader: importlib.abc.Loader, hook: Callable[[ModuleType], None]) -> None:
        self._loader = loader
        self._hook = hook

    def create_module(self, spec):  # noqa: D102
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:  # noqa: D102
        self._loader.exec_module(module)
        self._hook(module)

    def __getattr__(self, name: str):  # resource readers, is_package, ... of the real loader
        return getattr(self._loader, name)


class _AfterImportFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the real spec of the few lm-eval modules we must extend."""

    def find_spec(self, fullname, path, target=None):  # noqa: D102
        hook = _HOOKS.get(fullname)
        if hook is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _HookedLoader(spec.loader, hook)
        return spec


def install() -> None:
    """Install the hook once; if lm-eval was imported already, apply the hooks now."""
    if any(isinstance(f, _AfterImportFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _AfterImportFinder())
    for name, hook in _HOOKS.items():
        if name in sys.modules:
            hook(sys.modules[name])


install()
