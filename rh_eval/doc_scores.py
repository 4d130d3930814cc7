"""Per-document scores out of lm-eval's samples files: what every interval and paired test of rh-eval rests on.

Usage::

    scores = read_doc_scores(Path("out/conditions/full"))     # {column id: {doc_id: DocScore}} of every task
    scores["rh_niah_paper/score,none"][3]                     # DocScore(value=1.0, doc_hash="ab12...")
    table, docs = seed_table([seed0_scores, seed1_scores])    # seeds x documents on the documents all seeds share
    means = doc_means([seed0_scores, seed1_scores])          # {doc_id: DocScore}, each document's seeds averaged
    a, b = paired_documents(row_a, row_b)                     # per-document means of two rows, same documents

A samples line carries, per metric and filter, the score of one document. Two things are not scores and are
left out here, once, for every consumer: values that are not numbers (corpus metrics log their inputs), and the
placeholder a NIAH doc reports for the per-length / per-depth / per-cell keys of *other* cells (a doc lists its
own keys in ``metric_keys``; lm-eval needs every key from every doc, see :mod:`rh_tasks.niah`). A document is
identified by its ``doc_id`` and, where logged, its ``doc_hash``: the same id with another hash is another
eval set, and pairing refuses it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rh_eval.run_files import read_jsonl, samples_by_task
from rh_eval.statistics import per_document
from rh_models.errors import RHError


@dataclass(frozen=True)
class DocScore:
    value: float
    doc_hash: str | None = None


DocScores = dict[int, DocScore]  # doc_id -> its score in one condition, for one column


def as_score(value: Any) -> float | None:
    """A logged metric value as a per-document score (bools as 0/1); None when it is not one (e.g. corpus inputs)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def is_other_cells_placeholder(doc: Any, metric: str) -> bool:
    """A NIAH doc reports every breakdown key; only the keys it lists in ``metric_keys`` are its own scores."""
    own = doc.get("metric_keys") if isinstance(doc, Mapping) else None
    return isinstance(own, list) and metric.startswith("score_") and metric not in own


def sample_scores(samples: Sequence[Mapping[str, Any]], task: str) -> dict[str, DocScores]:
    """``{"task/metric,filter": {doc_id: DocScore}}`` of one task's logged samples."""
    found: dict[str, DocScores] = {}
    for sample in samples:
        metrics = sample.get("metrics")
        if not isinstance(metrics, list) or "doc_id" not in sample:
            continue
        doc = sample.get("doc")
        for metric in metrics:
            value = as_score(sample.get(metric))
            if value is None or is_other_cells_placeholder(doc, metric):
                continue
            column = f"{task}/{metric},{sample.get('filter', 'none')}"
            found.setdefault(column, {})[int(sample["doc_id"])] = DocScore(value, sample.get("doc_hash"))
    return found


def read_doc_scores(folder: Path | None) -> dict[str, DocScores]:
    """Every task's per-document scores in one condition folder (``samples_<task>.jsonl``); {} without samples."""
    if folder is None or not Path(folder).is_dir():
        return {}
    found: dict[str, DocScores] = {}
    for task, runs in samples_by_task(Path(folder)).items():
        if len(runs) > 1:
            raise RHError(f"{folder} holds {len(runs)} samples files of {task}; expected one per condition")
        found.update(sample_scores(read_jsonl(runs[0][1]), task))
    return found


def same_documents(a: DocScores, b: DocScores, where: str) -> list[int]:
    """The doc ids both sides scored, refusing an id that names different documents (another eval set)."""
    shared = sorted(set(a) & set(b))
    for doc_id in shared:
        if a[doc_id].doc_hash and b[doc_id].doc_hash and a[doc_id].doc_hash != b[doc_id].doc_hash:
            raise RHError(f"{where}: doc {doc_id} is a different document on the two sides (doc_hash differs); "
                          "these runs did not evaluate the same documents")
    return shared


def seed_table(per_seed: Sequence[DocScores], where: str = "row") -> tuple[np.ndarray, list[int]]:
    """``(seeds x documents table, doc ids)``: every seed must have scored the same documents (a row's value is
    lm-eval's mean over all of them, so its interval may not rest on fewer)."""
    if not per_seed:
        raise ValueError("seed_table needs at least one seed")
    docs = sorted(per_seed[0])
    for other in per_seed[1:]:
        if set(other) != set(docs):
            raise RHError(f"{where}: its seeds scored different documents ({len(docs)} vs {len(other)}); an "
                          "interval over seeds needs the same documents in each")
        same_documents({d: per_seed[0][d] for d in docs}, other, where)
    return np.array([[scores[d].value for d in docs] for scores in per_seed], dtype=float), docs


def doc_means(per_seed: Sequence[DocScores], where: str = "row") -> DocScores:
    """A row's per-document scores, each document's seeds averaged: the unit every paired test pairs."""
    table, docs = seed_table(per_seed, where)
    return {doc: DocScore(float(mean), per_seed[0][doc].doc_hash) for doc, mean in zip(docs, per_document(table))}


def paired(a: DocScores, b: DocScores, where: str = "rows") -> tuple[np.ndarray, np.ndarray]:
    """Two sides' per-document scores on the documents both scored, in one order (a differing doc refused)."""
    shared = same_documents(a, b, where)
    return np.array([a[d].value for d in shared]), np.array([b[d].value for d in shared])


def paired_documents(a: Sequence[DocScores], b: Sequence[DocScores], where: str = "rows"
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Two rows' per-document scores (each averaged over its seeds) on the documents both scored, in one order."""
    return paired(doc_means(a, where), doc_means(b, where), where)
