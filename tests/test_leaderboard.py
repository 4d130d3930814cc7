"""Leaderboard building from hand-made condition results: means, intervals over documents and seeds, changes,
paired tests, and every output format."""

from __future__ import annotations

import csv
import io
import json
from html.parser import HTMLParser

import numpy as np
import pytest

from rh_eval.doc_scores import DocScore
from rh_eval.leaderboard import (
    Column,
    ConditionResult,
    Leaderboard,
    build_leaderboard,
    metric_values,
    write_leaderboard,
)
from rh_eval.statistics import BINOMIAL, BOOTSTRAP, paired_test, score_interval
from rh_models.errors import RHError

N_DOCS = 10
NIAH, COT = "rh_niah/acc,none", "rh_vartrack_cot/exact_match,strict-match"


def per_doc(mean, shift=0):
    """N_DOCS 0/1 scores with this mean (round(mean * N) ones), rotated by ``shift`` so seeds differ per document."""
    ones = round(mean * N_DOCS)
    values = [1.0] * ones + [0.0] * (N_DOCS - ones)
    values = values[shift % N_DOCS:] + values[:shift % N_DOCS]
    return {doc: DocScore(value, f"hash{doc}") for doc, value in enumerate(values)}


def condition(name, kind, k, seed, niah, cot, heads=((0, 1),), docs=True):
    record = {"name": name, "kind": kind, "k": k, "seed": seed, "heads": [list(h) for h in heads],
              "method": "zero", "scope": "all"}
    results = {
        "rh_niah": {"alias": "rh_niah", "acc,none": niah, "acc_stderr,none": 0.05, "sample_count": 10},
        "rh_vartrack_cot": {"alias": "cot", "exact_match,strict-match": cot, "exact_match_stderr,strict-match": "N/A"},
    }
    scores = {NIAH: per_doc(niah, seed or 0), COT: per_doc(cot, seed or 0)} if docs else {}
    return ConditionResult(record, results, {"rh_niah": {"acc": True}, "rh_vartrack_cot": {"exact_match": True}},
                           docs=scores)


@pytest.fixture
def conditions():
    return [
        condition("random@6-seed1", "random", 6, 1, 0.7, 0.4, heads=((2, 3), (4, 5))),
        condition("full", "full", 0, None, 0.9, 0.6, heads=()),
        condition("retrieval@6", "retrieval", 6, None, 0.3, 0.1),
        condition("random@6-seed0", "random", 6, 0, 0.8, 0.5),
        condition("random@6-seed2", "random", 6, 2, 0.6, 0.6),
        condition("retrieval@12", "retrieval", 12, None, 0.1, 0.0),
        condition("random@12-seed0", "random", 12, 0, 0.5, 0.3),
    ]


def test_metric_values_skip_stderr_alias_counts_and_text():
    values = metric_values(condition("full", "full", 0, None, 0.9, 0.6).results)
    assert values == {Column("rh_niah", "acc", "none"): 0.9, Column("rh_vartrack_cot", "exact_match", "strict-match"): 0.6}


def test_rows_ordered_grouped_and_dropped(conditions):
    board = build_leaderboard(conditions)
    assert [r.name for r in board.rows] == ["full", "retrieval@6", "random@6", "retrieval@12", "random@12"]
    random6 = next(r for r in board.rows if r.name == "random@6")
    assert random6.seeds == [0, 1, 2]
    assert random6.conditions == ["random@6-seed0", "random@6-seed1", "random@6-seed2"]

    niah = Column("rh_niah", "acc")
    cell = board.cell("random@6", niah)
    assert cell.value == pytest.approx(0.7)
    assert cell.per_seed == {"0": 0.8, "1": 0.7, "2": 0.6}
    assert cell.drop == pytest.approx(0.9 - 0.7)
    assert board.cell("retrieval@6", niah).drop == pytest.approx(0.6)
    single = board.cell("random@12", niah)
    assert single.value == 0.5 and single.drop == pytest.approx(0.4)
    assert board.cell("full", niah).drop == 0
    assert board.higher_is_better == {NIAH: True, COT: True}
    assert board.conditions["random@6-seed1"]["heads"] == [[2, 3], [4, 5]]


def test_every_row_has_an_interval_from_its_documents_and_seeds(conditions):
    board = build_leaderboard(conditions)
    for row in board.rows:
        for column in board.columns:
            cell = board.cell(row.name, column)
            low, high = cell.interval
            assert 0.0 <= low <= high <= 1.0 and cell.n_docs == N_DOCS
            assert low <= cell.value <= high or cell.interval_method == BINOMIAL
    # an unseeded row: exactly the bootstrap of its documents
    retrieval = board.cell("retrieval@6", NIAH)
    expected = score_interval(np.array([[s.value for s in per_doc(0.3).values()]]))
    assert retrieval.interval == expected.bounds and retrieval.interval_method == BOOTSTRAP
    # a seeded row resamples seeds, then documents: its table is 3 seeds x 10 documents
    table = np.array([[s.value for s in per_doc(mean, seed).values()] for seed, mean in ((0, 0.8), (1, 0.7), (2, 0.6))])
    assert board.cell("random@6", NIAH).interval == score_interval(table).bounds
    # every document 0: no zero-width interval, the exact binomial one (0 of 10: [0, 0.308])
    zero = board.cell("retrieval@12", COT)
    assert zero.interval_method == BINOMIAL and zero.interval[0] == 0.0 and zero.interval[1] == pytest.approx(0.3085, abs=1e-3)


def test_paired_tests_pair_documents_and_average_seeds(conditions):
    board = build_leaderboard(conditions)
    tests = {(t.row, t.against, t.column): t for t in board.tests}
    assert {(r, a) for r, a, _ in tests} == {
        ("retrieval@6", "full"), ("random@6", "full"), ("retrieval@12", "full"), ("random@12", "full"),
        ("retrieval@6", "random@6"), ("retrieval@12", "random@12")}
    full = [s.value for s in per_doc(0.9).values()]
    retrieval = [s.value for s in per_doc(0.3).values()]
    assert tests["retrieval@6", "full", NIAH].test == "McNemar"
    assert tests["retrieval@6", "full", NIAH].p_value == paired_test(full, retrieval)[1]
    assert tests["retrieval@6", "full", NIAH].effect == pytest.approx(-0.6)
    # random@6 over 3 seeds: per-document means (not 30 seed x doc pairs), so a permutation test on 10 documents
    seeds = np.array([[s.value for s in per_doc(mean, seed).values()] for seed, mean in ((0, 0.8), (1, 0.7), (2, 0.6))])
    vs_random = tests["retrieval@6", "random@6", NIAH]
    assert vs_random.test == "permutation" and vs_random.n_docs == N_DOCS
    assert vs_random.p_value == paired_test(seeds.mean(axis=0), retrieval)[1]


def test_markdown_shows_interval_change_and_tests(conditions):
    board = build_leaderboard(conditions)
    text = board.markdown()
    lines = text.splitlines()
    assert lines[0].startswith("|") and "rh_niah acc ↑" in lines[0]
    assert "rh_vartrack_cot exact_match (strict-match) ↑" in lines[0]
    random_line = next(line for line in lines if line.startswith("| random@6 "))
    low, high = board.cell("random@6", NIAH).interval
    assert f"0.700 [{low:.2f}, {high:.2f}] (−0.200)" in random_line
    retrieval_line = next(line for line in lines if line.startswith("| retrieval@6 "))
    low, high = board.cell("retrieval@6", NIAH).interval
    assert f"0.300 [{low:.2f}, {high:.2f}] (−0.600)" in retrieval_line
    p_value = next(t.p_value for t in board.tests if (t.row, t.against, t.column) == ("retrieval@6", "random@6", NIAH))
    test_line = next(line for line in lines if line.startswith("| retrieval@6 vs random@6 "))
    assert f"-0.400, p={p_value:.3f}" in test_line


def test_rows_without_samples_have_no_interval_and_no_tests():
    board = build_leaderboard([condition("full", "full", 0, None, 0.9, 0.6, docs=False),
                               condition("retrieval@6", "retrieval", 6, None, 0.3, 0.1, docs=False)])
    assert board.cell("retrieval@6", NIAH).interval is None and board.tests == []


class _Cells(HTMLParser):
    def __init__(self):
        super().__init__()
        self.cells, self._in = [], False

    def handle_starttag(self, tag, attrs):
        self._in = tag in ("td", "th")

    def handle_endtag(self, tag):
        self._in = False

    def handle_data(self, data):
        if self._in and data.strip():
            self.cells.append(data.strip())


def test_every_format_written_and_parseable(conditions, tmp_path):
    board = build_leaderboard(conditions)
    paths = write_leaderboard(board, tmp_path)
    assert sorted(paths) == ["csv", "html", "json", "md", "tex"]

    assert paths["md"].read_text(encoding="utf-8") == board.markdown()

    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text(encoding="utf-8"))))
    assert len(rows) == 5 * 2
    random6 = next(r for r in rows if r["condition"] == "random@6" and r["task"] == "rh_niah")
    assert float(random6["value"]) == pytest.approx(0.7)
    assert float(random6["drop"]) == pytest.approx(0.2)
    assert random6["n_seeds"] == "3" and random6["higher_is_better"] == "true"
    assert float(random6["ci_low"]) < 0.7 < float(random6["ci_high"])
    assert random6["interval_method"] == BOOTSTRAP and random6["n_docs"] == str(N_DOCS)
    retrieval6 = next(r for r in rows if r["condition"] == "retrieval@6" and r["task"] == "rh_niah")
    assert float(retrieval6["p_vs_full"]) < 1 and float(retrieval6["p_vs_random"]) < 1

    parser = _Cells()
    parser.feed(paths["html"].read_text(encoding="utf-8"))
    assert parser.cells[:2] == ["condition", "seeds"] and "retrieval@12" in parser.cells

    tex = paths["tex"].read_text(encoding="utf-8")
    assert "\\begin{array}" in tex and tex.rstrip().endswith("\\end{array}")
    assert "[" in tex and "−" not in tex and "ᵇ" not in tex  # ASCII only inside \verb

    data = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert data["values"]["random@6"]["rh_niah/acc,none"] == pytest.approx(0.7)
    assert data["per_seed"]["random@6"]["rh_niah/acc,none"] == {"0": 0.8, "1": 0.7, "2": 0.6}
    assert data["intervals"]["retrieval@6"]["rh_niah/acc,none"] == list(board.cell("retrieval@6", NIAH).interval)
    assert {(t["row"], t["against"]) for t in data["tests"]} >= {("retrieval@6", "random@6")}
    assert data["conditions"]["retrieval@6"]["heads"] == [[0, 1]]
    assert [c["id"] for c in data["columns"]] == ["rh_niah/acc,none", "rh_vartrack_cot/exact_match,strict-match"]
    again = Leaderboard.from_json(data)
    assert again.markdown() == board.markdown() and again.tests == board.tests


def test_nothing_overwritten_silently(conditions, tmp_path):
    board = build_leaderboard(conditions)
    write_leaderboard(board, tmp_path)
    with pytest.raises(RHError, match="refusing to overwrite"):
        write_leaderboard(board, tmp_path)
    write_leaderboard(board, tmp_path, overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left behind


def test_bad_inputs_raise_rherror(conditions):
    with pytest.raises(RHError):
        build_leaderboard([])
    with pytest.raises(RHError, match="duplicate"):
        build_leaderboard([conditions[0], conditions[0]])
    bad = condition("x", "weird", 1, None, 0.1, 0.1)
    with pytest.raises(RHError, match="kind"):
        build_leaderboard([bad])
    with pytest.raises(RHError):
        Leaderboard.from_json({"format": "something else"})
    with pytest.raises(RHError, match="malformed"):
        Leaderboard.from_json({"format": "rh-eval-leaderboard", "columns": [{"task": "t"}]})


def test_from_dir_reads_compare_layout(tmp_path):
    folder = tmp_path / "conditions" / "full"
    folder.mkdir(parents=True)
    (folder / "condition.json").write_text(json.dumps({"name": "full", "kind": "full", "k": 0, "seed": None, "heads": []}))
    (folder / "results.json").write_text(json.dumps({"results": {"t": {"acc,none": 0.5}}, "higher_is_better": {"t": {"acc": True}}}))
    result = ConditionResult.from_dir(folder, root=tmp_path)
    assert result.samples_dir == "conditions/full"
    assert build_leaderboard([result]).cell("full", "t/acc,none").value == 0.5
    (folder / "results.json").write_text("{not json")
    with pytest.raises(RHError, match="not valid JSON"):
        ConditionResult.from_dir(folder)
