"""NIAH metrics on hand-made predictions: ROUGE-1 recall, substring match, lm-eval hook, per-cell aggregation."""

from __future__ import annotations

import pytest

from rh_models.answers import rouge1_recall, score_answer, string_match
from rh_tasks.metrics import cell_means, process_results

REAL = "a spoonful of smoked paprika stirred into the tomato sauce"  # 10 unigrams


def _doc(metric="rouge1_recall", answers=(REAL,), length=1000, depth=50):
    return {"rh_answers": list(answers), "rh_metric": metric, "length": length, "depth": depth,
            "metric_keys": [f"score_len_{length}", f"score_depth_{depth:03d}"]}


def test_rouge1_recall_right_partial_wrong():
    assert rouge1_recall(" a spoonful of smoked paprika stirred into the tomato sauce.", REAL) == pytest.approx(1.0)
    # extra words cost nothing: recall, not precision
    assert rouge1_recall("It is a spoonful of smoked paprika stirred into the tomato sauce, she said.", REAL) == 1.0
    assert rouge1_recall("smoked paprika", REAL) == pytest.approx(2 / 10)
    assert rouge1_recall("A SPOONFUL of Paprika!", REAL) == pytest.approx(4 / 10)  # case and punctuation ignored
    assert rouge1_recall("basil and oregano", REAL) == 0.0
    assert rouge1_recall("", REAL) == 0.0


def test_string_match_right_partial_wrong():
    assert string_match("The number is 4721905.", ["4721905"]) == 1.0
    assert string_match("4721905 and 1111111", ["4721905", "2222222"]) == 0.5
    assert string_match("no idea", ["4721905"]) == 0.0
    assert string_match("ABC-def", ["abc-DEF"]) == 1.0
    assert string_match("anything", []) == 0.0


def test_score_answer_dispatches_on_metric():
    assert score_answer("  smoked paprika\x00 ", [REAL], "rouge1_recall") == pytest.approx(0.2)
    assert score_answer("9 8 7", ["8", "7", "1"], "string_match") == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        score_answer("x", ["x"], "bleu")


def test_process_results_gives_score_and_breakdown_keys():
    out = process_results(_doc(), [" a spoonful of smoked paprika"])
    assert out == {"score": pytest.approx(0.5), "score_len_1000": pytest.approx(0.5),
                   "score_depth_050": pytest.approx(0.5)}
    out = process_results(_doc("string_match", ["123", "456"], 2000, 0), ["123"])
    assert out["score"] == 0.5 and out["score_len_2000"] == 0.5 and out["score_depth_000"] == 0.5


def test_cell_means_aggregates_per_length_and_depth():
    triples = [(1000, 0, 1.0), (1000, 0, 0.0), (1000, 50, 1.0), (2000, 0, 0.25), (2000, 0, 0.75)]
    assert cell_means(triples) == {(1000, 0): 0.5, (1000, 50): 1.0, (2000, 0): 0.5}
    # per-cell scores from hand-made predictions, end to end through the doc metric
    docs = [(_doc(length=1000, depth=0), REAL), (_doc(length=1000, depth=0), "nothing"),
            (_doc(length=1000, depth=100), "smoked paprika")]
    scored = [(d["length"], d["depth"], process_results(d, [p])["score"]) for d, p in docs]
    assert cell_means(scored) == {(1000, 0): pytest.approx(0.5), (1000, 100): pytest.approx(0.2)}
