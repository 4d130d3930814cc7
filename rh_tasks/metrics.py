"""NIAH scoring for lm-eval: the doc's own metric (:mod:`rh_models.answers`) plus per-length/-depth breakdown keys.

Usage::

    from rh_tasks.metrics import process_results, cell_means
    process_results(doc, ["...model output..."])   # lm-eval hook: {"score": s, "score_len_1000": s, ...}
    cell_means([(1000, 50, 1.0), (1000, 50, 0.5)])  # {(1000, 50): 0.75}

Each doc names its metric in ``rh_metric`` (ROUGE-1 recall of the real needle for paper needles, substring
match for key -> value needles); the scoring itself is :func:`rh_models.answers.score_answer`, the same function
``rh-hf``'s recorder uses to decide whether a test was answered. ``process_results`` returns the aggregate ``score`` plus the per-length and per-depth
(and optionally per-cell) keys that each doc lists in ``doc["metric_keys"]``, so lm-eval's results table shows
the breakdown while each logged sample keeps its own (length, depth) cell for heatmaps.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from rh_models.answers import score_answer


def process_results(doc: dict[str, Any], results: Sequence[str]) -> dict[str, float]:
    """lm-eval ``process_results``: ``score`` plus the doc's breakdown keys, all with the same value."""
    score = score_answer(results[0], doc["rh_answers"], doc["rh_metric"])
    return {"score": score, **{key: score for key in doc.get("metric_keys", [])}}


def cell_means(scores: Iterable[tuple[int, int, float]]) -> dict[tuple[int, int], float]:
    """Mean score per (length, depth) cell from (length, depth, score) triples."""
    sums: dict[tuple[int, int], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for length, depth, score in scores:
        cell = sums[(int(length), int(depth))]
        cell[0] += float(score)
        cell[1] += 1
    return {cell: total / count for cell, (total, count) in sorted(sums.items())}
