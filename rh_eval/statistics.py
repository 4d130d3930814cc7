"""Intervals and paired tests for scores that rest on N documents (and S random seeds).

Usage::

    scores = np.array([[1, 0, 1, 1], [1, 1, 0, 1]])    # seeds x documents (one row for an unseeded condition)
    interval = score_interval(scores)                    # Interval(low, high, method, n_docs, n_seeds)
    paired_test([1, 1, 0, 1], [0, 1, 0, 0])              # ("McNemar", p): per-document 0/1 scores
    paired_test([0.5, 1, 0.5], [0, 1, 0])                # ("permutation", p): any other per-document scores
    per_document(scores)                                 # a document's scores averaged over seeds

Why: a leaderboard cell is a mean over documents, and for random-head rows over seeds too. Both vary: another
draw of heads, or another draw of documents, gives another number. The interval therefore resamples what varies,
the seeds and then the documents (a two-level percentile bootstrap over the seeds x documents table, each
resample drawing seeds and documents with replacement), so it is never narrower than the document noise and,
being made of observed scores, never leaves the metric's range. When every document scores the same the
bootstrap has nothing to resample; a 0/1 metric then gets the exact binomial (Clopper-Pearson) interval of
"k of N documents", other metrics none, and the interval says which it is.

Comparisons between two rows use the *same* documents, paired by document: a document's scores over seeds are
averaged first (the seeds of one document are not independent observations), then exact McNemar when every
per-document score is 0/1, else scipy's paired permutation test (``permutation_type="samples"``: each document's
pair may swap sides) on the mean difference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
BOOTSTRAP_ITERS = 10_000
PERMUTATIONS = 9_999
RANDOM_SEED = 0  # intervals and p-values are reproducible: the same files give the same numbers

BOOTSTRAP = "bootstrap"  # documents resampled (seeds first, where there are several)
BINOMIAL = "exact binomial"  # every document scored the same 0/1 value
CONSTANT = "constant"  # every document scored the same value, not 0/1: no interval can be drawn from the data


@dataclass(frozen=True)
class Interval:
    """A ``confidence`` interval of a mean over documents (and seeds), and how it was made."""

    low: float | None
    high: float | None
    method: str  # BOOTSTRAP, BINOMIAL or CONSTANT
    n_docs: int
    n_seeds: int = 1

    @property
    def bounds(self) -> tuple[float, float] | None:
        return None if self.low is None or self.high is None else (self.low, self.high)


def is_binary(values: np.ndarray) -> bool:
    return bool(np.isin(values, (0.0, 1.0)).all())


def score_interval(scores: np.ndarray, confidence: float = CONFIDENCE, iters: int = BOOTSTRAP_ITERS,
                   seed: int = RANDOM_SEED) -> Interval:
    """The interval of the mean of a seeds x documents table (every seed scored on the same documents)."""
    table = np.atleast_2d(np.asarray(scores, dtype=float))
    n_seeds, n_docs = table.shape
    if table.size == 0:
        raise ValueError("score_interval needs at least one score")
    if np.all(table == table.flat[0]):
        if is_binary(table):
            successes = int(round(table.flat[0])) * n_docs
            ci = stats.binomtest(successes, n_docs).proportion_ci(confidence, method="exact")
            return Interval(float(ci.low), float(ci.high), BINOMIAL, n_docs, n_seeds)
        return Interval(None, None, CONSTANT, n_docs, n_seeds)
    rng = np.random.default_rng(seed)
    # a resample = S seeds and N documents drawn with replacement; its mean is the weighted mean of the table
    seed_counts = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=iters)
    doc_counts = rng.multinomial(n_docs, np.full(n_docs, 1 / n_docs), size=iters)
    means = np.einsum("bs,sn,bn->b", seed_counts, table, doc_counts) / (n_seeds * n_docs)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Interval(float(low), float(high), BOOTSTRAP, n_docs, n_seeds)


def per_document(scores: np.ndarray) -> np.ndarray:
    """A document's scores averaged over seeds: the unit every paired test pairs."""
    return np.atleast_2d(np.asarray(scores, dtype=float)).mean(axis=0)


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value for paired 0/1 outcomes (a binomial test on the discordant pairs)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    a_only = int(np.count_nonzero((a == 1) & (b == 0)))
    b_only = int(np.count_nonzero((a == 0) & (b == 1)))
    if a_only + b_only == 0:
        return 1.0
    return float(stats.binomtest(b_only, a_only + b_only, 0.5).pvalue)


def permutation_p(a: np.ndarray, b: np.ndarray, permutations: int = PERMUTATIONS, seed: int = RANDOM_SEED) -> float:
    """Two-sided paired permutation p-value for ``mean(b - a) == 0`` (exact when the pairs are few)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if np.allclose(a, b) or len(a) < 2:  # one pair: its two sign flips are equally extreme, p = 1 exactly
        return 1.0
    result = stats.permutation_test(
        (a, b), lambda x, y, axis: np.mean(y - x, axis=axis), permutation_type="samples", vectorized=True,
        n_resamples=permutations, alternative="two-sided", rng=np.random.default_rng(seed),
    )
    return float(min(1.0, result.pvalue))


def paired_test(a: np.ndarray, b: np.ndarray, permutations: int = PERMUTATIONS) -> tuple[str, float]:
    """``(test name, two-sided p)`` for per-document scores of two rows on the same documents, in one order."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError("paired_test needs two equally long, non-empty vectors of per-document scores")
    if is_binary(a) and is_binary(b):
        return "McNemar", mcnemar_exact(a, b)
    return "permutation", permutation_p(a, b, permutations)
