"""NIAH scoring: ROUGE-1 recall of the "real needle" (paper needles), substring match (key -> value needles).

Usage::

    from rh_tasks.metrics import score_prediction, process_results, cell_means
    score_prediction("a spoonful of smoked paprika", ["a spoonful of smoked paprika stirred in"], "rouge1_recall")
    process_results(doc, ["...model output..."])   # lm-eval hook: {"score": s, "score_len_1000": s, ...}
    cell_means([(1000, 50, 1.0), (1000, 50, 0.5)])  # {(1000, 50): 0.75}

Why these metrics: Wu et al. (2024) score retrieval with ROUGE-1 *recall* of the needle's answer span -- the
fraction of its words the model reproduced -- so a verbatim copy scores 1 and extra words cost nothing; RULER
scores key -> value needles by whether each expected value occurs in the output (case-insensitive), averaged
over the values asked for. ``process_results`` returns the aggregate ``score`` plus the per-length and per-depth
(and optionally per-cell) keys that each doc lists in ``doc["metric_keys"]``, so lm-eval's results table shows
the breakdown while each logged sample keeps its own (length, depth) cell for heatmaps.
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from rh_tasks.needles import MATCH, ROUGE

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f]")


@functools.lru_cache(maxsize=1)
def _rouge1() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1"], use_stemmer=False)


def clean_prediction(text: str) -> str:
    """Strip the generation and drop control characters (keeping newlines)."""
    return _CONTROL.sub(" ", text).strip()


def rouge1_recall(prediction: str, reference: str) -> float:
    """Share of the reference's unigrams found in the prediction (rouge-score tokenization: lowercase words)."""
    return float(_rouge1().score(reference, prediction)["rouge1"].recall)


def string_match(prediction: str, references: Sequence[str]) -> float:
    """Fraction of ``references`` occurring in ``prediction``, case-insensitively (RULER's ``string_match_all``)."""
    if not references:
        return 0.0
    lowered = prediction.lower()
    return sum(ref.lower() in lowered for ref in references) / len(references)


def score_prediction(prediction: str, answers: Sequence[str], metric: str) -> float:
    """Score one generation against the doc's expected answers with the doc's metric."""
    prediction = clean_prediction(prediction)
    if metric == ROUGE:
        return sum(rouge1_recall(prediction, answer) for answer in answers) / max(len(answers), 1)
    if metric == MATCH:
        return string_match(prediction, answers)
    raise ValueError(f"unknown NIAH metric {metric!r}")


def process_results(doc: dict[str, Any], results: Sequence[str]) -> dict[str, float]:
    """lm-eval ``process_results``: ``score`` plus the doc's breakdown keys, all with the same value."""
    score = score_prediction(results[0], doc["rh_answers"], doc["metric"])
    return {"score": score, **{key: score for key in doc.get("metric_keys", [])}}


def cell_means(scores: Iterable[tuple[int, int, float]]) -> dict[tuple[int, int], float]:
    """Mean score per (length, depth) cell from (length, depth, score) triples."""
    sums: dict[tuple[int, int], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for length, depth, score in scores:
        cell = sums[(int(length), int(depth))]
        cell[0] += float(score)
        cell[1] += 1
    return {cell: total / count for cell, (total, count) in sorted(sums.items())}
