"""The heatmap of pairwise top-K overlap between rankings (``rh heads compare --plot``).

Usage::

    plot_agreement(compare_rankings(rankings, top=10, n_kv_heads=3), "agreement.png")

One panel per query head and, when the KV-head count is known, one per KV head beside it: under GQA two rankings
can share KV groups while disagreeing on heads, and the two panels side by side show it. A cell is the share of
the top-K the two rankings have in common (its count written in it); the diagonal is how many heads each ranking
scored above 0 among its own top K.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rh_eval.plots.figures import new_figure, save_figure


def overlap_matrix(result: dict[str, Any], level: str = "query") -> list[list[int]]:
    """Counts of shared top-K heads for every ordered pair of rankings (symmetric; diagonal: each own top set)."""
    names = [r["name"] for r in result["rankings"]]
    index = {name: i for i, name in enumerate(names)}
    matrix = [[0] * len(names) for _ in names]
    for pair in result["pairs"]:
        i, j, cell = index[pair["a"]], index[pair["b"]], pair[level]
        matrix[i][j] = matrix[j][i] = cell["overlap"]
        matrix[i][i], matrix[j][j] = cell["top_a"], cell["top_b"]
    return matrix


def plot_agreement(result: dict[str, Any], out: str | Path) -> Path:
    names = [r["name"] for r in result["rankings"]]
    levels = [("query", "query heads", result["top"])]
    if result["kv"]:
        levels.append(("kv", f"KV heads ({result['kv']['aggregate']})", result["kv"]["top"]))
    size = max(3.2, 0.55 * len(names) + 2.2)
    fig = new_figure(size * len(levels) + 0.8, size)
    axes = fig.subplots(1, len(levels), squeeze=False)[0]
    image = None
    for ax, (level, label, top) in zip(axes, levels):
        counts = overlap_matrix(result, level)
        image = ax.imshow([[c / top for c in row] for row in counts], vmin=0.0, vmax=1.0, cmap="viridis")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_title(f"top-{top} overlap, {label}", fontsize=9)
        for i, row in enumerate(counts):
            for j, count in enumerate(row):
                ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                        color="black" if count / top > 0.6 else "white")
    fig.colorbar(image, ax=list(axes), label="share of the top K in common")
    return save_figure(fig, out, dpi=130)
