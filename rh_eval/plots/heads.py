"""Layers x heads heatmap of mean retrieval scores (``rh detect --plot``, the demo's ``head_scores.png``).

Usage::

    plot_head_scores(HeadScores.load("scores.json"), "heads.png")

Why a heatmap: retrieval heads are sparse (a few percent of heads) and cluster in middle layers; one picture
shows both, and comparing two pictures shows whether a mask hit the heads it meant to.
"""

from __future__ import annotations

from pathlib import Path

from rh_eval.plots.figures import new_figure, save_figure
from rh_models.heads import DEFAULT_RETRIEVAL_THRESHOLD, HeadScores


def plot_head_scores(scores: HeadScores, out: str | Path, title: str | None = None,
                     label: str = "retrieval score") -> Path:
    """``label`` names the score on the colour bar; a calibrated score (``attention``) may be below 0, and so may
    the scale."""
    import numpy as np

    grid = np.array([[scores.mean((layer, head)) for head in range(scores.n_heads)] for layer in range(scores.n_layers)])
    height = max(3.0, 0.22 * scores.n_layers)
    fig = new_figure(max(4.0, 0.45 * scores.n_heads + 2), height)
    ax = fig.subplots()
    image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=min(0.0, float(grid.min())),
                      vmax=max(0.5, float(grid.max())), origin="lower")
    ax.set_xlabel("query head")
    ax.set_ylabel("layer")
    ax.set_title(title or f"mean {label} ({scores.source or 'scores'})", fontsize=9)
    ax.set_xticks(range(scores.n_heads))
    fig.colorbar(image, ax=ax, label=label)
    for (layer, head), value in np.ndenumerate(grid):
        if value > DEFAULT_RETRIEVAL_THRESHOLD:
            ax.text(head, layer, f"{value:.2f}", ha="center", va="center", fontsize=6, color="white")
    return save_figure(fig, out, dpi=130)
