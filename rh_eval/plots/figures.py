"""Matplotlib figures without pyplot's global state, saved atomically: the one way every ``rh`` plot is drawn.

Usage::

    figure = new_figure(6, 4)
    axes = figure.subplots()
    ...
    save_figure(figure, "out/plots/dose.png")

Why: the Agg canvas needs no display and no global figure registry (nothing to close, nothing leaks between
plots of a long comparison), and an interrupted run must not leave half a PNG behind.
"""

from __future__ import annotations

from pathlib import Path

from rh_models.atomic import atomic_path


def new_figure(width: float = 6.0, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure, out: str | Path, dpi: int = 120) -> Path:
    """Save ``figure`` to ``out`` (format from its suffix) via a temporary file and ``os.replace``."""
    out = Path(out)
    with atomic_path(out) as tmp:
        figure.savefig(tmp, dpi=dpi)
    return out
