"""Per-document scores from samples files: placeholders of other NIAH cells never count, documents pair by id."""

from __future__ import annotations

import json

import pytest

from rh_eval.doc_scores import DocScore, paired_documents, read_doc_scores, seed_table
from rh_models.errors import RHError


def niah_sample(doc_id, length, depth, score):
    own = [f"score_len_{length}", f"score_depth_{depth:03d}"]
    keys = ["score_len_500", "score_len_1000", "score_depth_000", "score_depth_100"]
    values = {key: (score if key in own else -1.0) for key in keys}
    return {"doc_id": doc_id, "doc_hash": f"h{doc_id}", "filter": "none", "doc": {"metric_keys": own},
            "metrics": ["score", *keys], "score": score, **values}


def test_placeholders_of_other_cells_never_count(tmp_path):
    samples = [niah_sample(0, 500, 0, 1.0), niah_sample(1, 500, 100, 0.0), niah_sample(2, 1000, 0, 1.0)]
    (tmp_path / "samples_rh_niah.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    scores = read_doc_scores(tmp_path)
    assert {d: s.value for d, s in scores["rh_niah/score,none"].items()} == {0: 1.0, 1: 0.0, 2: 1.0}
    assert {d: s.value for d, s in scores["rh_niah/score_len_500,none"].items()} == {0: 1.0, 1: 0.0}
    assert {d: s.value for d, s in scores["rh_niah/score_len_1000,none"].items()} == {2: 1.0}
    assert {d: s.value for d, s in scores["rh_niah/score_depth_100,none"].items()} == {1: 0.0}
    assert read_doc_scores(tmp_path / "absent") == {}


def test_rows_pair_on_shared_documents_with_seeds_averaged():
    seed0 = {0: DocScore(1.0, "a"), 1: DocScore(0.0, "b"), 2: DocScore(1.0, "c")}
    seed1 = {0: DocScore(0.0, "a"), 1: DocScore(0.0, "b"), 2: DocScore(1.0, "c")}
    full = {0: DocScore(1.0, "a"), 2: DocScore(1.0, "c")}
    table, docs = seed_table([seed0, seed1])
    assert docs == [0, 1, 2] and table.tolist() == [[1, 0, 1], [0, 0, 1]]
    random_row, full_row = paired_documents([seed0, seed1], [full])
    assert random_row.tolist() == [0.5, 1.0] and full_row.tolist() == [1.0, 1.0]
    other = {0: DocScore(1.0, "zzz"), 2: DocScore(1.0, "c")}
    with pytest.raises(RHError, match="different document"):
        paired_documents([seed0], [other])
