"""Intervals over documents and seeds, and paired tests, against hand computations and their promises."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from rh_eval.statistics import BINOMIAL, BOOTSTRAP, CONSTANT, mcnemar_exact, paired_test, per_document, score_interval


def test_bootstrap_interval_stays_in_range_and_covers_the_mean():
    rng = np.random.default_rng(1)
    for n_seeds, n_docs in ((1, 5), (2, 12), (3, 48)):
        table = (rng.random((n_seeds, n_docs)) < 0.1).astype(float)
        table[0, 0] = 1.0  # never constant
        interval = score_interval(table)
        assert interval.method == BOOTSTRAP and (interval.n_seeds, interval.n_docs) == (n_seeds, n_docs)
        assert 0.0 <= interval.low <= table.mean() <= interval.high <= 1.0
    assert score_interval(table) == score_interval(table)  # reproducible


def test_documents_are_resampled_even_when_seeds_agree():
    """Three seeds that agree on every document: a Student-t over seeds would say [m, m]; the documents still vary."""
    row = np.array([1, 0, 1, 1, 0, 1, 1, 1, 0, 1], dtype=float)
    interval = score_interval(np.stack([row, row, row]))
    assert interval.high - interval.low > 0.3
    assert interval.bounds == pytest.approx(score_interval(row[None]).bounds, abs=0.05)


def test_seed_variation_widens_the_interval():
    docs = np.array([1, 0, 1, 1, 0, 1, 1, 0, 1, 1, 0, 1], dtype=float)
    spread_seeds = np.stack([docs, np.ones(12), np.zeros(12)])
    alike = np.stack([docs, docs, docs])
    wide, narrow = score_interval(spread_seeds), score_interval(alike)
    assert wide.high - wide.low > narrow.high - narrow.low


def test_all_documents_alike_is_said_not_shown_as_certainty():
    ones = score_interval(np.ones((1, 12)))
    assert ones.method == BINOMIAL and ones.high == 1.0
    expected = stats.binomtest(12, 12).proportion_ci(0.95, method="exact")
    assert ones.low == pytest.approx(expected.low) and ones.low < 0.8
    assert score_interval(np.zeros((3, 12))).bounds[0] == 0.0  # 0 of 12 documents
    constant = score_interval(np.full((1, 5), 0.5))
    assert constant.method == CONSTANT and constant.bounds is None


def test_mcnemar_counts_only_discordant_pairs():
    a = [1, 1, 1, 1, 1, 1, 0, 0]
    b = [0, 0, 0, 0, 0, 1, 0, 1]
    # 5 pairs lost, 1 gained: two-sided binomial(1 of 6, 1/2) = 2 * (1 + 6) / 64
    assert mcnemar_exact(a, b) == pytest.approx(14 / 64)
    assert paired_test(a, b) == ("McNemar", pytest.approx(14 / 64))
    assert mcnemar_exact([1, 0], [1, 0]) == 1.0


def test_permutation_test_is_exact_for_few_documents():
    a = np.array([0.0, 0.5, 1.0, 0.5])
    b = np.array([1.0, 1.0, 1.0, 0.0])
    diffs = b - a
    observed = abs(diffs.mean())
    flips = [abs(np.mean(diffs * np.array(signs))) for signs in itertools.product((1, -1), repeat=4)]
    expected = sum(f >= observed - 1e-12 for f in flips) / len(flips)
    name, p_value = paired_test(a, b)
    assert name == "permutation" and p_value == pytest.approx(expected)
    assert paired_test(a, a) == ("permutation", 1.0)
    assert paired_test([0.5], [1.0]) == ("permutation", 1.0)  # one document: both sign flips as extreme


def test_seeds_are_averaged_per_document_before_pairing():
    table = np.array([[1, 0, 1], [0, 0, 1]], dtype=float)
    assert per_document(table).tolist() == [0.5, 0.0, 1.0]
    with pytest.raises(ValueError):
        paired_test([1, 0], [1])
