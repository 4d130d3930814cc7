"""The classic NIAH heatmap (context length x needle depth) from lm-eval output: read the cells, draw them.

Usage::

    from rh_eval.plots.niah import niah_cells, plot_niah_heatmap
    full, masked = niah_cells("full/"), niah_cells("masked/")
    plot_niah_heatmap({c: masked[c] - full[c] for c in full}, "diff.png", diff=True, title="masked - full")

Why from samples: each logged sample carries its (length, depth) cell and its score, so the heatmap needs no
extra metric keys; a results JSON works when it holds per-cell keys (``--metadata '{"cell_metrics": true}'``)
or sits next to its samples files. The functions are public so the compare command can draw per-condition and
difference maps; ``rh plot niah`` (:mod:`rh_eval.plot`) is the command line over them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rh_eval.plots.figures import new_figure, save_figure
from rh_eval.run_files import RESULTS_NAME, newest_results, pick_samples, read_jsonl, samples_by_task
from rh_models.answers import score_answer
from rh_models.errors import RHError
from rh_models.files import read_json, require_file
from rh_tasks.metrics import cell_means

_CELL_KEY = re.compile(r"^score_cell_(\d+)_(\d+),")


# --- reading cells ---------------------------------------------------------------------------------------------

def _sample_score(sample: Mapping[str, Any]) -> float:
    if isinstance(sample.get("score"), (int, float)):
        return float(sample["score"])
    doc = sample["doc"]
    response = sample.get("filtered_resps") or sample.get("resps")
    while isinstance(response, list):  # lm-eval nests: [[text]] or [text]
        response = response[0] if response else ""
    return score_answer(str(response or ""), doc["rh_answers"], doc["rh_metric"])


def cells_from_samples(samples: Iterable[Mapping[str, Any]]) -> dict[tuple[int, int], float]:
    """Mean score per (length, depth) from lm-eval sample records (or bare docs with a ``score``)."""
    triples = []
    for sample in samples:
        doc = sample.get("doc", sample)
        if "length" not in doc or "depth" not in doc:
            raise RHError("these samples are not NIAH samples (their docs have no length/depth)")
        triples.append((doc["length"], doc["depth"], _sample_score(sample)))
    if not triples:
        raise RHError("no NIAH samples to plot")
    return cell_means(triples)


def _cells_from_results(path: Path, task: str | None) -> dict[tuple[int, int], float]:
    data = read_json(path, "results file")
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, dict):
        raise RHError(f"{path} is not an lm-eval results file (no 'results' section)")
    per_task = {}
    for name, metrics in results.items():
        cells = {(int(m[1]), int(m[2])): float(v) for k, v in metrics.items()
                 if (m := _CELL_KEY.match(k)) and isinstance(v, (int, float)) and v == v}  # NaN: cell not run
        if cells:
            per_task[name] = cells
    if task is not None and task in per_task:
        return per_task[task]
    if task is None and len(per_task) == 1:
        return next(iter(per_task.values()))
    if task is None and len(per_task) > 1:
        raise RHError(f"{path} has per-cell scores of several tasks ({', '.join(sorted(per_task))}); choose --task")
    # no per-cell keys: use the samples lm-eval wrote next to this results file in the same run
    date = RESULTS_NAME.match(path.name)
    siblings = {name: same_run for name, runs in samples_by_task(path.parent).items()
                if (same_run := [(d, f) for d, f in runs if date and d == date["date"]])}
    if not siblings:
        raise RHError(f"{path} has no per-cell scores and no samples beside it; rerun lm-eval with --log_samples "
                      f"or --metadata '{{\"cell_metrics\": true}}'")
    return cells_from_samples(read_jsonl(pick_samples(siblings, task, path.parent)))


def niah_cells(path_or_samples: str | Path | Iterable[Mapping[str, Any]],
               task: str | None = None) -> dict[tuple[int, int], float]:
    """{(length, depth): mean score} from a samples JSONL, an lm-eval output folder, a results JSON, or samples."""
    if not isinstance(path_or_samples, (str, Path)):
        return cells_from_samples(path_or_samples)
    path = Path(path_or_samples).expanduser()
    if path.is_dir():
        by_task = samples_by_task(path, recursive=True)
        if not by_task:
            results = newest_results(path)
            if results is not None:
                return _cells_from_results(results, task)
            raise RHError(f"{path} holds no lm-eval samples_*.jsonl or results_*.json files")
        return cells_from_samples(read_jsonl(pick_samples(by_task, task, path)))
    require_file(path, "samples or results file")
    if path.suffix == ".jsonl":
        return cells_from_samples(read_jsonl(path))
    return _cells_from_results(path, task)


# --- drawing ---------------------------------------------------------------------------------------------------

def plot_niah_heatmap(cells: Mapping[tuple[int, int], float], out: str | Path, title: str | None = None,
                      vmin: float = 0.0, vmax: float = 1.0, diff: bool = False) -> Path:
    """Write a length (x) x depth (y) heatmap; ``diff=True`` uses a diverging map centred on 0 (-vmax..vmax)."""
    import numpy as np

    if not cells:
        raise RHError("no NIAH cells to plot")
    lengths = sorted({length for length, _ in cells})
    depths = sorted({depth for _, depth in cells})
    grid = np.full((len(depths), len(lengths)), np.nan)
    for (length, depth), value in cells.items():
        grid[depths.index(depth), lengths.index(length)] = value
    if diff:
        bound = max(abs(vmin), abs(vmax))
        vmin, vmax, cmap = -bound, bound, "RdBu"
    else:
        cmap = "RdYlGn"

    fig = new_figure(1.2 + 0.9 * len(lengths), 1.2 + 0.45 * len(depths))
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths], rotation=45 if len(lengths) > 8 else 0)
    ax.set_yticks(range(len(depths)), [f"{d}%" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    if len(lengths) * len(depths) <= 400:
        for (row, col), value in np.ndenumerate(grid):
            if not np.isnan(value):
                ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, label="score difference" if diff else "score")
    ax.set_title(title or ("NIAH score difference" if diff else "Needle in a haystack"))
    return save_figure(fig, out)
