"""Plots of a comparison: dose-response per metric, score vs KV budget, CoT-vs-direct bars, NIAH heatmaps.

Usage::

    from rh_eval.plots.conditions import make_plots
    paths = make_plots(board, "out/plots", conditions_dir="out/conditions")   # list of written PNGs

Why: the paper's finding is a *shape*. Scores should fall steeply as more retrieval heads are masked and
barely move for as many random heads; a curve with the random seeds' interval as a band shows that at a
glance, where a table needs careful reading. A comparison of several rankings (``rh compare --rankings``) draws
one line per ranking on the same axes, against the same random band. Chain-of-thought is predicted to suffer
more than direct answering, hence bars of each ``<task>_cot`` next to ``<task>``. For needle-in-a-haystack, *where* the
needle is lost (context length x depth) matters, hence a heatmap per condition and its difference to full.

Figures come from :mod:`rh_eval.plots.figures` (matplotlib's object API, written atomically).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from rh_eval.plots.figures import new_figure, save_figure
from rh_eval.leaderboard import Column, Leaderboard, Row
from rh_eval.run_files import samples_by_task, samples_name

COT_SUFFIX = "_cot"
# one colour and marker per ranking, in the order of --rankings (random keeps tab:blue, retrieval tab:red)
RANKING_STYLES = (("tab:red", "o"), ("tab:green", "^"), ("tab:purple", "D"), ("tab:orange", "v"), ("tab:brown", "P"),
                  ("tab:pink", "X"), ("tab:olive", "*"), ("tab:cyan", "h"))


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "plot"


# ------------------------------------------------------------------------------------------ dose-response


def _line_of(row: Row, board: Leaderboard) -> tuple[str, tuple[str, str, str]]:
    """The line a ranked or random row belongs to, and its (colour, marker, label): ``retrieval`` and ``random``
    as without rankings; a ranking (``rh compare --rankings``) its own colour, in the board's order of rankings."""
    if row.ranking is None:
        return row.kind, {
            "retrieval": ("tab:red", "o", "retrieval heads masked"),
            "random": ("tab:blue", "s", "random heads masked"),
            "retrieval-kv": ("tab:red", "o", "top heads by retrieval score keep full KV"),
            "random-kv": ("tab:blue", "s", "random heads keep full KV"),
        }[row.kind]
    rankings = list(dict.fromkeys(r.ranking for r in board.rows if r.ranking is not None))
    color, marker = RANKING_STYLES[rankings.index(row.ranking) % len(RANKING_STYLES)]
    what = "top heads masked" if row.kind == "retrieval" else "top heads keep full KV"
    return f"{row.kind}:{row.ranking}", (color, marker, f"{row.ranking}: {what}")


def _draw_series(axes, board: Leaderboard, kind: str, points: list[tuple[float, float, float, float]], color: str,
                 marker: str, label: str, seeded: bool, linestyle: str = "-") -> None:
    """One line of (x, mean, low, high) points with its interval (documents, and seeds for a seeded kind) as a band.

    A ranking's line (``kind`` ``retrieval:<ranking>``, boards of several rankings) shows its interval as error bars
    and hollow markers instead: several overlapping bands would hide each other, and rankings that agree sit on
    the same points; the random control keeps its band."""
    xs, means, lows, highs = zip(*points)
    if seeded:
        seeds = max((len(r.seeds) for r in board.rows if r.kind == kind), default=0)
        label += f" (mean of {seeds} seeds)" if seeds > 1 else ""
    if ":" in kind:
        axes.errorbar(xs, means, yerr=[[m - l for m, l in zip(means, lows)], [h - m for m, h in zip(means, highs)]],
                      color=color, marker=marker, markerfacecolor="none", label=label, linestyle=linestyle, capsize=3)
        return
    if any(h > l for l, h in zip(lows, highs)):
        axes.fill_between(xs, lows, highs, color=color, alpha=0.15, linewidth=0)
    axes.plot(xs, means, color=color, marker=marker, label=label, linestyle=linestyle)


def _fit_y(axes, board: Leaderboard, column: Column) -> None:
    """Y axis over the scores, every seed's and the intervals (which stay inside the metric's range)."""
    values = [value for row in board.rows if (cell := board.cell(row.name, column)) is not None
              for value in (cell.value, *cell.per_seed.values(), *(cell.interval or ()))]
    if values:
        low, high = min(values), max(values)
        pad = 0.08 * (high - low or 1.0)
        axes.set_ylim(low - pad, high + pad)


def _finish(figure, axes, board: Leaderboard, column: Column, xlabel: str, title: str, out: str | Path) -> Path:
    """Axes labels (the metric and its direction), title, legend and grid of a score curve; then save it."""
    direction = {True: " (higher is better)", False: " (lower is better)"}.get(board.higher_is_better.get(column.id), "")
    _fit_y(axes, board, column)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(column.metric + direction)
    level = round(board.confidence * 100)
    marks = "bands and bars" if any(row.ranking is not None for row in board.rows) else "bands"  # see _draw_series
    axes.set_title(f"{column.label}:\n{title}; {marks}: {level} % intervals over documents (and seeds)",
                   fontsize="medium")  # two lines: long labels fit the figure
    axes.legend(fontsize="small")
    axes.grid(alpha=0.3)
    return save_figure(figure, out)


def dose_response(board: Leaderboard, column: Column, out: str | Path) -> Path | None:
    """Score vs K: the retrieval line (one per ranking on a board of several) and the random mean with its
    interval band (a set of lines per ablation method when the board has several); None without K > 0 rows."""
    full = next((board.cell(r.name, column) for r in board.rows if r.kind == "full"), None)
    series: dict[tuple[str, str | None], list[tuple[int, float, float, float]]] = {}
    styles: dict[str, tuple[str, str, str]] = {}
    for row in board.rows:
        cell = board.cell(row.name, column)
        if row.kind in ("retrieval", "random") and cell is not None:
            low, high = cell.interval if cell.interval else (cell.value, cell.value)
            line, styles[line] = _line_of(row, board)
            series.setdefault((line, row.method), []).append((row.k, cell.value, low, high))
    if not series:
        return None

    figure = new_figure()
    axes = figure.add_subplot()
    linestyles = {None: "-", "zero": "-", "uniform": "--", "mean": "-."}  # ":" is the unmasked line
    for (line, method), points in series.items():
        if full is not None:
            points = [(0, full.value, *(full.interval or (full.value, full.value))), *points]
        points.sort()
        color, marker, label = styles[line]
        _draw_series(axes, board, line, points, color, marker, label + (f" ({method})" if method else ""),
                     seeded=line == "random", linestyle=linestyles.get(method, (0, (1, 3))))
    if full is not None:
        axes.axhline(full.value, color="gray", linestyle=":", linewidth=1, label="full (no mask)")
    axes.set_xticks(sorted({0, *(k for points in series.values() for k, *_ in points)}))
    return _finish(figure, axes, board, column, "heads masked (K)", "dose-response", out)


# ------------------------------------------------------------------------------------------- KV budgets


def kv_budget_curve(board: Leaderboard, column: Column, out: str | Path) -> Path | None:
    """Score vs KV budget (share of key/value entries kept): the retrieval ranking (one line per ranking on a
    board of several) against random rankings.

    Each point sits at the budget the run measured, so rankings that keep different GQA groups whole are still
    compared at the memory they really keep; ``streaming`` and ``full`` are the two ends. None without KV rows.
    """
    series: dict[str, list[tuple[float, float, float, float]]] = {}
    styles: dict[str, tuple[str, str, str]] = {}
    ends: dict[str, tuple[float, float]] = {}
    for row in board.rows:
        cell = board.cell(row.name, column)
        if cell is None or row.kv_budget is None:
            continue
        budget = 100 * row.kv_budget
        if row.kind in ("retrieval-kv", "random-kv"):
            low, high = cell.interval if cell.interval else (cell.value, cell.value)
            line, styles[line] = _line_of(row, board)
            series.setdefault(line, []).append((budget, cell.value, low, high))
        elif row.kind in ("full", "streaming"):
            ends[row.kind] = (budget, cell.value)
    if not series:
        return None

    figure = new_figure()
    axes = figure.add_subplot()
    for line, points in series.items():
        points = sorted([*([ends["streaming"] + (ends["streaming"][1],) * 2] if "streaming" in ends else []), *points,
                         *([ends["full"] + (ends["full"][1],) * 2] if "full" in ends else [])])
        _draw_series(axes, board, line, points, *styles[line], seeded=line == "random-kv")
    for kind, (budget, value) in ends.items():
        axes.annotate(kind, (budget, value), textcoords="offset points", xytext=(4, 6), fontsize="small")
    return _finish(figure, axes, board, column, "KV budget: % of key/value entries kept", "score vs KV budget", out)


# ----------------------------------------------------------------------------------------- CoT vs direct


def cot_pairs(tasks: Iterable[str]) -> list[tuple[str, str]]:
    """(cot task, direct task) for every ``X_cot`` whose ``X`` is also present."""
    names = set(tasks)
    return sorted((t, t[: -len(COT_SUFFIX)]) for t in names if t.endswith(COT_SUFFIX) and t[: -len(COT_SUFFIX)] in names)


def cot_vs_direct(board: Leaderboard, cot: Column, direct: Column, out: str | Path) -> Path:
    """Grouped bars per condition: direct answering next to chain-of-thought, with random-seed intervals."""
    import numpy as np

    rows = [r for r in board.rows if board.cell(r.name, cot) or board.cell(r.name, direct)]
    figure = new_figure(max(6.0, 1.1 * len(rows) + 2), 4.0)
    axes = figure.add_subplot()
    x = np.arange(len(rows))
    width = 0.38
    for offset, column, label, color in ((-width / 2, direct, direct.task, "tab:gray"), (width / 2, cot, cot.task, "tab:green")):
        values, errors = [], [[], []]
        for row in rows:
            cell = board.cell(row.name, column)
            value = cell.value if cell else np.nan
            low, high = cell.interval if cell and cell.interval else (np.nan, np.nan)  # nan: no error bar
            values.append(value)
            errors[0].append(value - low)
            errors[1].append(high - value)
        axes.bar(x + offset, values, width, yerr=errors, capsize=3, label=label, color=color)
    axes.set_xticks(x, [r.name for r in rows], rotation=30, ha="right")
    metric = direct.metric if direct.metric == cot.metric else f"{direct.metric} / {cot.metric}"
    axes.set_ylabel(metric)
    axes.set_title(f"chain-of-thought vs direct: {cot.task} / {direct.task}")
    axes.legend(fontsize="small")
    axes.grid(axis="y", alpha=0.3)
    return save_figure(figure, out)


def cot_column_pairs(board: Leaderboard) -> list[tuple[Column, Column]]:
    """(cot column, direct column): same metric and filter, or the metric's only filter on each side."""
    by_task: dict[str, list[Column]] = {}
    for column in board.columns:
        by_task.setdefault(column.task, []).append(column)
    pairs = []
    for cot_task, direct_task in cot_pairs(by_task):
        for cot in by_task[cot_task]:
            direct_same = [d for d in by_task[direct_task] if d.metric == cot.metric]
            cot_same = [c for c in by_task[cot_task] if c.metric == cot.metric]
            direct = next((d for d in direct_same if d.filter == cot.filter), None)
            if direct is None and len(direct_same) == 1 and len(cot_same) == 1:
                direct = direct_same[0]  # e.g. CoT's answer-extraction filter vs direct's "none"
            if direct is not None:
                pairs.append((cot, direct))
    return pairs


# --------------------------------------------------------------------------------------------- NIAH heatmaps


def niah_sample_tasks(conditions_dir: Path, tasks: Iterable[str]) -> list[str]:
    """NIAH tasks with samples: those asked for, and the members of an asked-for group (``rh_niah`` ->
    ``rh_niah_paper``), since lm-eval logs samples per task, never per group."""
    asked = {t for t in tasks if "niah" in t}
    logged = {task for folder in conditions_dir.glob("*") if folder.is_dir() for task in samples_by_task(folder)}
    members = {t for t in logged if any(t.startswith(f"{group}_") for group in asked)}
    return sorted(asked | members)


def niah_heatmaps(board: Leaderboard, conditions_dir: str | Path, out_dir: str | Path, tasks: Iterable[str]) -> list[Path]:
    """Length x depth heatmap per condition and its difference to full, for every NIAH task with samples."""
    from rh_eval.plots.niah import niah_cells, plot_niah_heatmap

    conditions_dir, out_dir = Path(conditions_dir), Path(out_dir)
    written: list[Path] = []
    for task in niah_sample_tasks(conditions_dir, tasks):
        cells = {}
        for row in board.rows:
            for name in row.conditions:
                path = conditions_dir / name / samples_name(task)
                if path.is_file():
                    found = niah_cells(path)
                    if found:
                        cells[name] = found
        full = next((cells.get(name) for row in board.rows if row.kind == "full" for name in row.conditions), None)
        for name, grid in cells.items():
            stem = safe_name(f"niah_{task}_{name}")
            plot_niah_heatmap(grid, out_dir / f"{stem}.png", title=f"{task}\n{name}")  # 2 lines: narrow grids
            written.append(out_dir / f"{stem}.png")
            if full is not None and grid is not full:
                diff = {cell: grid[cell] - full[cell] for cell in grid if cell in full}
                if diff:
                    out = out_dir / f"{stem}_minus_full.png"
                    plot_niah_heatmap(diff, out, title=f"{task}\n{name} minus full", vmin=-1, vmax=1, diff=True)
                    written.append(out)
    return written


# ---------------------------------------------------------------------------------------------------- all


def make_plots(
    board: Leaderboard, out_dir: str | Path, conditions_dir: str | Path | None = None, tasks: Iterable[str] | None = None
) -> list[Path]:
    """Every plot that the board (and, for NIAH, the per-condition samples) supports."""
    out_dir = Path(out_dir)
    written: list[Path] = []
    for column in board.columns:
        stem = f"{safe_name(column.task)}_{safe_name(column.metric)}_{safe_name(column.filter)}.png"
        for plot, prefix in ((dose_response, "dose"), (kv_budget_curve, "kv_budget")):
            path = plot(board, column, out_dir / f"{prefix}_{stem}")
            if path is not None:
                written.append(path)
    for cot, direct in cot_column_pairs(board):
        name = f"cot_vs_direct_{safe_name(direct.task)}_{safe_name(cot.metric)}_{safe_name(cot.filter)}.png"
        written.append(cot_vs_direct(board, cot, direct, out_dir / name))
    if conditions_dir is not None:
        task_names = list(tasks) if tasks is not None else sorted({c.task for c in board.columns})
        written.extend(niah_heatmaps(board, conditions_dir, out_dir, task_names))
    return written
