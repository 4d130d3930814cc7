"""Is a move between two runs more than noise? Paired tests on the per-sample scores both sides share.

Usage::

    paired_test([1, 1, 0, 1], [1, 0, 0, 1])               # ("McNemar", p): every score is 0/1
    paired_test([0.5, 0.7], [0.4, 0.7], iters=10_000)     # ("bootstrap", p): any other scores
    paired_samples(run, "full", baseline, "full", column) # (baseline scores, run scores, "n=...") or None

Small eval sets move by whole samples, so ``rh check`` pairs the two sides sample by sample (same condition
seed, same doc id, and the same ``doc_hash`` where both have one) and tests the differences: exact McNemar on
the discordant pairs for 0/1 metrics, a paired bootstrap of the mean difference otherwise.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from rh_eval.check_inputs import RunScores, read_sample_scores
from rh_eval.leaderboard import Column


def mcnemar_exact(baseline: list[float], run: list[float]) -> float:
    """Two-sided exact McNemar p-value for paired 0/1 outcomes (binomial test on the discordant pairs)."""
    lost = sum(1 for b, r in zip(baseline, run) if b == 1 and r == 0)
    gained = sum(1 for b, r in zip(baseline, run) if b == 0 and r == 1)
    if lost + gained == 0:
        return 1.0
    return float(stats.binomtest(gained, lost + gained, 0.5).pvalue)


def paired_bootstrap(baseline: list[float], run: list[float], iters: int = 10_000, seed: int = 0) -> float:
    """Two-sided paired bootstrap p-value for ``mean(run - baseline) == 0`` (resampling centred differences)."""
    diffs = np.asarray(run, dtype=float) - np.asarray(baseline, dtype=float)
    observed = float(diffs.mean())
    if np.allclose(diffs, 0.0):
        return 1.0
    centred = diffs - observed
    rng = np.random.default_rng(seed)
    extreme = 0
    chunk = max(1, min(iters, 2_000_000 // len(diffs)))
    done = 0
    while done < iters:
        n = min(chunk, iters - done)
        means = centred[rng.integers(0, len(diffs), size=(n, len(diffs)))].mean(axis=1)
        extreme += int(np.count_nonzero(np.abs(means) >= abs(observed) - 1e-12))
        done += n
    return (extreme + 1) / (iters + 1)


def paired_test(baseline: list[float], run: list[float], iters: int = 10_000) -> tuple[str, float]:
    """McNemar when every score is 0/1, else the paired bootstrap: (test name, p-value)."""
    if all(v in (0.0, 1.0) for v in (*baseline, *run)):
        return "McNemar", mcnemar_exact(baseline, run)
    return "bootstrap", paired_bootstrap(baseline, run, iters)


def paired_samples(
    run: RunScores, run_row: str, baseline: RunScores, base_row: str, column: Column
) -> tuple[list[float], list[float], str] | None:
    """Aligned per-sample scores of both sides (pairs: seed x doc id), or None with nothing to pair."""
    base_sources = {s.tag: s for s in baseline.samples.get(base_row, [])}
    base_scores: list[float] = []
    run_scores: list[float] = []
    for source in run.samples.get(run_row, []):
        other = base_sources.get(source.tag)
        if other is None:
            continue
        run_path, base_path = source.path(column.task), other.path(column.task)
        if run_path is None or base_path is None:
            continue
        mine, theirs = read_sample_scores(run_path, column), read_sample_scores(base_path, column)
        if mine is None or theirs is None:
            continue
        for doc_id in sorted(set(mine) & set(theirs)):
            (r, r_hash), (b, b_hash) = mine[doc_id], theirs[doc_id]
            if r_hash and b_hash and r_hash != b_hash:
                return None  # same doc id, different document: not the same eval set
            run_scores.append(r)
            base_scores.append(b)
    if not run_scores:
        return None
    return base_scores, run_scores, f"n={len(run_scores)}"
