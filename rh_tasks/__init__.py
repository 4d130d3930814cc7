"""rh-eval tasks: needle-in-a-haystack grids and chain-of-thought benchmarks as lm-eval tasks.

The YAML task configs live in ``task_configs/``; they are found automatically by the stock ``lm_eval`` CLI
once ``rh-eval`` is installed (see :mod:`rh_eval._autoload`), or explicitly with ``--include_path`` and the
folder :func:`task_config_dir` returns. This package holds only what those YAMLs use (haystacks, needles, the
NIAH task class, the CoT data and metrics); the workflows built on them live in :mod:`rh_eval`.
"""

from __future__ import annotations

from pathlib import Path


def task_config_dir() -> Path:
    """Folder of our task YAMLs: inside the package in a wheel, beside it in a source/editable checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "task_configs", here.parent / "task_configs"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"rh-eval task_configs folder not found near {here}")
