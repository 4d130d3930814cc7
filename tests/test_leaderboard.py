"""Leaderboard building from hand-made condition results: means, t-intervals, drops, and every output format."""

from __future__ import annotations

import csv
import io
import json
import math
from html.parser import HTMLParser

import pytest

from rh_eval.leaderboard import (
    Column,
    ConditionResult,
    Leaderboard,
    build_leaderboard,
    mean_interval,
    metric_values,
    write_leaderboard,
)
from rh_models.errors import RHError

# t_{0.975, df=2}, from a printed t table
T_975_DF2 = 4.302653


def condition(name, kind, k, seed, niah, cot, heads=((0, 1),)):
    record = {"name": name, "kind": kind, "k": k, "seed": seed, "heads": [list(h) for h in heads],
              "method": "zero", "scope": "all"}
    results = {
        "rh_niah": {"alias": "rh_niah", "acc,none": niah, "acc_stderr,none": 0.05, "sample_count": 10},
        "rh_vartrack_cot": {"alias": "cot", "exact_match,strict-match": cot, "exact_match_stderr,strict-match": "N/A"},
    }
    return ConditionResult(record, results, {"rh_niah": {"acc": True}, "rh_vartrack_cot": {"exact_match": True}})


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


def test_mean_interval_matches_hand_computation():
    mean, (low, high) = mean_interval([0.7, 0.8, 0.6])
    # mean 0.7, sample sd 0.1, sem 0.1/sqrt(3)
    half = T_975_DF2 * 0.1 / math.sqrt(3)
    assert mean == pytest.approx(0.7)
    assert low == pytest.approx(0.7 - half, abs=1e-6)
    assert high == pytest.approx(0.7 + half, abs=1e-6)
    assert mean_interval([0.4]) == (0.4, None)
    assert mean_interval([0.5, 0.5]) == (0.5, (0.5, 0.5))


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
    assert cell.interval[1] - cell.value == pytest.approx(T_975_DF2 * 0.1 / math.sqrt(3), abs=1e-6)
    assert cell.drop == pytest.approx(0.9 - 0.7)
    assert board.cell("retrieval@6", niah).drop == pytest.approx(0.6)
    assert board.cell("retrieval@6", niah).interval is None
    single = board.cell("random@12", niah)
    assert single.value == 0.5 and single.interval is None and single.drop == pytest.approx(0.4)
    assert board.cell("full", niah).drop == 0
    assert board.higher_is_better == {"rh_niah/acc,none": True, "rh_vartrack_cot/exact_match,strict-match": True}
    assert board.conditions["random@6-seed1"]["heads"] == [[2, 3], [4, 5]]


def test_markdown_shows_interval_and_change(conditions):
    text = build_leaderboard(conditions).markdown()
    lines = text.splitlines()
    assert lines[0].startswith("|") and "rh_niah acc ↑" in lines[0]
    assert "rh_vartrack_cot exact_match (strict-match) ↑" in lines[0]
    random_line = next(line for line in lines if line.startswith("| random@6 "))
    half = T_975_DF2 * 0.1 / math.sqrt(3)
    assert f"0.700 ± {half:.3f} (−0.200)" in random_line
    retrieval_line = next(line for line in lines if line.startswith("| retrieval@6 "))
    assert "0.300 (−0.600)" in retrieval_line and "±" not in retrieval_line


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

    parser = _Cells()
    parser.feed(paths["html"].read_text(encoding="utf-8"))
    assert parser.cells[:2] == ["condition", "seeds"] and "retrieval@12" in parser.cells

    tex = paths["tex"].read_text(encoding="utf-8")
    assert "\\begin{array}" in tex and tex.rstrip().endswith("\\end{array}")
    assert "+/-" in tex and "±" not in tex  # ASCII only inside \verb

    data = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert data["values"]["random@6"]["rh_niah/acc,none"] == pytest.approx(0.7)
    assert data["per_seed"]["random@6"]["rh_niah/acc,none"] == {"0": 0.8, "1": 0.7, "2": 0.6}
    assert data["intervals"]["retrieval@6"]["rh_niah/acc,none"] is None
    assert data["conditions"]["retrieval@6"]["heads"] == [[0, 1]]
    assert [c["id"] for c in data["columns"]] == ["rh_niah/acc,none", "rh_vartrack_cot/exact_match,strict-match"]
    again = Leaderboard.from_json(data)
    assert again.markdown() == board.markdown()


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
