"""`rh compare --rankings`: names, the shared random control, paired tests between rankings, the resume guard over
the rankings' files, one line per ranking in the plots, and `rh check` judging ranking rows by their effect.

Fast: a stand-in model whose heads come from the real selection code (rh_models.heads) and whose documents each
depend on one head, so every row's score follows from which heads it masked (or kept). The real rh-hf run of the
same command is docs/compare-rankings.md's, run by tests/test_readme_commands.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import FakeMaskedLM

from rh_eval import compare
from rh_eval.cli import main
from rh_eval.compare import plan_conditions
from rh_eval.leaderboard import ConditionResult, build_leaderboard, condition_name, row_name, write_leaderboard
from rh_eval.rankings import parse_rankings, random_control
from rh_models.errors import RHError
from rh_models.heads import HeadScores, HeadSet, select_heads

PNG = b"\x89PNG\r\n\x1a\n"
HEADS = [(layer, head) for layer in range(2) for head in range(4)]
COPY = {"0-1": 0.9, "1-2": 0.5, "0-0": 0.2, "0-2": 0.1, "0-3": 0.05, "1-0": 0.04, "1-1": 0.03, "1-3": 0.02}
ATTENTION = {"1-3": 0.8, "0-1": 0.6, "1-2": 0.3, "0-0": 0.2, "0-2": 0.1, "0-3": 0.05, "1-0": 0.04, "1-1": 0.03}


def test_names_plans_and_the_random_control():
    assert parse_rankings("copy=a.json, attention = b.json") == parse_rankings("copy=a.json,attention=b.json")
    assert [r.name for r in parse_rankings("copy=a.json,attention=b.json")] == ["copy", "attention"]
    assert parse_rankings(None) == () and parse_rankings("") == ()
    for bad, message in (("copy", "NAME=FILE"), ("copy=", "NAME=FILE"), ("random=a.json", "cannot name a ranking"),
                         ("co-py=a.json", "cannot name a ranking"), ("a=x.json,a=y.json", "names a ranking twice")):
        with pytest.raises(RHError, match=message):
            parse_rankings(bad)
    plans = plan_conditions([2], 2, [25.0], rankings=("copy", "attention"))
    assert [p.name for p in plans] == ["full", "copy@2", "attention@2", "random@2-seed0", "random@2-seed1", "streaming",
                                       "copy-kv@25%", "attention-kv@25%", "random-kv@25%-seed0", "random-kv@25%-seed1"]
    assert [(p.spec, p.kv_spec) for p in plans[1:3] + plans[6:8]] == [("top:2", None)] * 2 + [("none", "top:25%")] * 2
    # one home for names: a ranking takes the place of "retrieval", methods and seeds as ever; None: as before
    assert row_name("retrieval", 8, method="mean", ranking="copy") == "copy@8 (mean)"
    assert condition_name("retrieval", 8, method="mean", ranking="copy") == "copy@8-mean"
    assert row_name("retrieval-kv", share=10.0, ranking="copy") == "copy-kv@10%"
    assert row_name("random", 8, ranking="copy") == "random@8" and row_name("retrieval", 8) == "retrieval@8"
    # random@K: outside every ranking's top K, a draw like random:K's (same seed, same pool -> same heads)
    copy, attention = (HeadScores(_scores(table), 2, 4) for table in (COPY, ATTENTION))
    heads, excluded = random_control(2, [copy, attention], seed=1)
    assert excluded == {(0, 1), (1, 2), (1, 3)} and not set(heads) & excluded and len(heads) == 2
    assert heads == select_heads("random:2", 2, 4, scores=_union_file(excluded), seed=1)
    with pytest.raises(RHError, match="K=3 is larger than the 1 heads left"):
        random_control(3, [copy, attention, HeadScores(_scores({"0-2": 0.9, "0-3": 0.8, "1-0": 0.7}), 2, 4)], seed=0)


def _scores(table: dict[str, float]) -> dict:
    return {tuple(int(x) for x in key.split("-")): [value] for key, value in table.items()}


def _union_file(excluded: set) -> HeadScores:
    """A score file whose retrieval heads (above 0.1) are exactly ``excluded``: random:K's pool is then ours."""
    return HeadScores({h: [0.5 if h in excluded else 0.01] for h in HEADS}, 2, 4)


# --------------------------------------------------------------------------------------------- rh compare


class RankingLM(FakeMaskedLM):
    """RHHFLM's mask and KV API as far as rh compare uses it, heads chosen by the real selection code."""

    n_layers, n_heads = 2, 4

    def __init__(self, head_scores: Path):
        self.use_head_scores(head_scores)
        self.info, self.kv = {}, None

    def set_mask(self, spec, method="zero", scope="all", seed=0, random_match=None, tie_break="none"):
        heads = spec if isinstance(spec, HeadSet) else select_heads(spec, 2, 4, self.head_scores, seed,
                                                                    random_match=random_match, tie_break=tie_break)
        self.info = {"spec": spec if isinstance(spec, str) else heads.spec(), "seed": seed,
                     "heads": [list(h) for h in heads], "method": method, "scope": scope, "tie_break": tie_break,
                     "head_scores": self.head_scores.source}

    def set_kv(self, spec, sink=4, window=64, seed=0, random_exclude=0, tie_break="none"):
        heads = None if spec is None else select_heads(spec, 2, 4, self.head_scores, seed, random_exclude, None,
                                                       tie_break)
        self.kv = None if heads is None else {"selected_heads": [list(h) for h in heads], "full_query_heads": [
            list(h) for h in heads], "kv_budget": 0.2 + 0.1 * len(heads), "unscored_heads": None}

    def kv_info(self):
        return self.kv


def _evaluate(lm, tasks, config, manager):
    """Document i (of 8) depends on head i: a masked head loses it, and under a KV budget only kept heads keep it."""
    info = lm.mask_info()
    masked = {tuple(h) for h in info["heads"]}
    kept = None if lm.kv is None else {tuple(h) for h in lm.kv["full_query_heads"]}
    docs = []
    for i, head in enumerate(HEADS):
        acc = float(head not in masked and (kept is None or head in kept or i % 2 == 0))
        docs.append({"doc_id": i, "doc": {"q": i}, "target": 1, "arguments": [("ctx", {"until": ["\n"]})],
                     "resps": [["a"]], "filtered_resps": ["a"], "filter": "none", "metrics": ["acc"], "acc": acc,
                     "doc_hash": f"h{i}"})
    score = sum(d["acc"] for d in docs) / len(docs)
    return {"results": {t: {"alias": t, "acc,none": score} for t in tasks},
            "higher_is_better": {t: {"acc": True} for t in tasks}, "versions": {t: 1 for t in tasks},
            "n-shot": {t: 0 for t in tasks}, "samples": {t: docs for t in tasks}}


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    paths = {}
    for name, table in (("copy", COPY), ("attention", ATTENTION)):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps({key: [value] for key, value in table.items()}))
    return paths


@pytest.fixture
def fake_model(monkeypatch):
    loads = []
    monkeypatch.setattr("rh_models.shape.model_config_sha256", lambda model, *rest: f"config-of-{model}")
    monkeypatch.setattr(compare, "load_model", lambda config, scores: loads.append(scores) or RankingLM(scores))
    monkeypatch.setattr(compare, "evaluate", _evaluate)
    monkeypatch.setattr(compare, "task_manager", lambda *args: None)
    return loads


def _compare(out: Path, rankings: str, *extra: str) -> int:
    return main(["compare", "--model", "fake", "--rankings", rankings, "--tasks", "t", "--k", "2", "--kv-budgets",
                 "25%", "--seeds", "2", "--output-dir", str(out), *extra])


def test_rankings_rows_controls_tests_and_resume(tmp_path, files, fake_model, capsys):
    out = tmp_path / "out"
    assert _compare(out, f"copy={files['copy']},attention={files['attention']}", "--no-plots") == 0
    assert len(fake_model) == 1  # one loaded model for every row
    board = json.loads((out / "leaderboard.json").read_text())
    assert [r["name"] for r in board["rows"]] == ["full", "copy@2", "attention@2", "random@2", "streaming",
                                                  "copy-kv@25%", "attention-kv@25%", "random-kv@25%"]
    assert [r.get("ranking") for r in board["rows"]] == [None, "copy", "attention", None, None, "copy", "attention",
                                                         None]
    records = board["conditions"]
    assert records["copy@2"]["heads"] == [[0, 1], [1, 2]] and records["attention@2"]["heads"] == [[1, 3], [0, 1]]
    assert records["copy@2"]["ranking_file"] == str(files["copy"]) and records["attention@2"]["ranking"] == "attention"
    assert records["copy-kv@25%"]["kv"]["selected_heads"] == [[0, 1], [1, 2]]
    assert records["attention-kv@25%"]["kv"]["selected_heads"] == [[1, 3], [0, 1]]
    for seed in (0, 1):
        record = records[f"random@2-seed{seed}"]
        assert record["spec"] == "random:2" and record["random_exclude"] == "top:2 of copy, attention"
        assert record["excluded_heads"] == [[0, 1], [1, 2], [1, 3]]
        assert len(record["heads"]) == 2 and not {tuple(h) for h in record["heads"]} & {(0, 1), (1, 2), (1, 3)}
    values = {name: cells["t/acc,none"] for name, cells in board["values"].items()}
    assert (values["full"], values["copy@2"], values["attention@2"], values["random@2"]) == (1.0, 0.75, 0.75, 0.75)
    # under a budget the even documents survive anyway, the odd ones only where their head keeps the full context
    assert (values["streaming"], values["copy-kv@25%"], values["attention-kv@25%"]) == (0.5, 0.625, 0.75)
    pairs = {(t["row"], t["against"]) for t in board["tests"]}
    assert {("copy@2", "random@2"), ("attention@2", "random@2"), ("copy@2", "attention@2"),
            ("copy-kv@25%", "random-kv@25%"), ("attention-kv@25%", "random-kv@25%"),
            ("copy-kv@25%", "attention-kv@25%"), ("attention@2", "full")} <= pairs
    assert ("attention@2", "copy@2") not in pairs and ("copy@2", "copy-kv@25%") not in pairs
    table = (out / "leaderboard.md").read_text()
    assert "| copy@2 vs attention@2 " in table and "Rankings (copy, attention): " in table
    baseline = tmp_path / "baseline.json"  # rh check on the run itself, through its per-sample copies
    assert main(["check", "--update-baseline", "--results", str(out), "--baseline", str(baseline)]) == 0
    assert main(["check", "--results", str(out / "leaderboard.json"), "--baseline", str(baseline)]) == 0
    assert (tmp_path / "baseline.samples" / "attention-kv@25%").is_dir()
    settings = json.loads((out / "run.json").read_text())["settings"]
    assert set(settings["rankings"]) == {"copy", "attention"} and "head_scores_sha256" not in settings
    assert settings["detection"] is None

    capsys.readouterr()  # a re-run re-uses every condition, loading nothing
    assert _compare(out, f"copy={files['copy']},attention={files['attention']}", "--no-plots") == 0
    assert capsys.readouterr().out.count("re-using") == 10 and len(fake_model) == 1
    # a ranking file that changed (same order of heads, other numbers) is another experiment: refused
    files["attention"].write_text(files["attention"].read_text().replace("0.8", "0.7"))
    assert _compare(out, f"copy={files['copy']},attention={files['attention']}", "--no-plots") == 2
    assert "rankings: was" in capsys.readouterr().err
    # so is one ranking more or fewer: the random rows exclude every ranking's top K
    assert _compare(out, f"copy={files['copy']}", "--no-plots") == 2
    assert "other settings (rankings: " in capsys.readouterr().err
    assert len(fake_model) == 1


def test_refused_before_the_model_loads(tmp_path, files, fake_model, capsys):
    both = f"copy={files['copy']},attention={files['attention']}"
    other_shape = tmp_path / "other.json"
    other_shape.write_text(json.dumps({f"{l}-{h}": [0.5] for l in range(3) for h in range(4)}))
    unscored = tmp_path / "unscored.json"
    unscored.write_text(json.dumps({f"{l}-{h}": [0.9 if (l, h) == (0, 0) else 0.0] for l, h in HEADS}))
    for extra, message in (
        (("--rankings", both, "--head-scores", str(files["copy"])), "drop --head-scores"),
        (("--rankings", both, "--random-match", "layer"), "--random-match layer matches the layers of one ranking"),
        (("--rankings", f"copy={files['copy']},other={other_shape}"), "different head shapes"),
        (("--rankings", f"copy={files['copy']},gone={tmp_path / 'gone.json'}"), "does not exist"),
        (("--rankings", f"copy={files['copy']},u={unscored}"), "only 1 of 8 heads scored above 0"),
        (("--rankings", both, "--k", "4"), "cover 5 of 8 heads, leaving 3 for random@4"),  # the tops share 3 heads
    ):
        args = ["compare", "--model", "fake", "--tasks", "t", "--k", "2", "--output-dir", str(tmp_path / "o"), *extra]
        assert main(args) == 2, extra
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rh compare: error:")]
        assert len(errors) == 1 and message in errors[0], (extra, errors)
    inside = tmp_path / "o" / "plots" / "copy.json"  # --force would delete a ranking's own file: refused too
    inside.parent.mkdir(parents=True)
    inside.write_bytes(files["copy"].read_bytes())
    assert _compare(tmp_path / "o", f"copy={inside},attention={files['attention']}", "--force") == 2
    assert f"--rankings copy {inside} lies inside" in capsys.readouterr().err and inside.is_file()
    assert fake_model == []


def test_one_line_per_ranking_and_random_as_a_band(tmp_path, files, fake_model, monkeypatch):
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import to_rgb

    from rh_eval.plots import conditions as plots

    drawn = {}

    def keep(figure, out):
        drawn[Path(out).name] = figure
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_bytes(PNG)
        return Path(out)

    monkeypatch.setattr(plots, "save_figure", keep)
    assert _compare(tmp_path / "out", f"copy={files['copy']},attention={files['attention']}") == 0
    for name, lines in (("dose_t_acc_none.png", ["copy: top heads masked", "attention: top heads masked",
                                                 "random heads masked (mean of 2 seeds)", "full (no mask)"]),
                        ("kv_budget_t_acc_none.png", ["copy: top heads keep full KV", "attention: top heads keep full KV",
                                                      "random heads keep full KV (mean of 2 seeds)"])):
        axes = drawn[name].axes[0]
        assert sorted(text.get_text() for text in axes.get_legend().get_texts()) == sorted(lines), name
        rankings = axes.containers  # error bars: one line per ranking, each its own colour
        assert [c.get_label() for c in rankings] == lines[:2] and len({c.lines[0].get_color() for c in rankings}) == 2
        bands = [c for c in axes.collections if isinstance(c, PolyCollection)]  # fill_between: the random band
        assert len(bands) == 1 and tuple(bands[0].get_facecolor()[0][:3]) == to_rgb("tab:blue"), name


# ------------------------------------------------------------------------------------------------- rh check


def _board(out: Path, values: dict[str, float]) -> Path:
    """A rankings board as rh compare writes it: conditions with their ranking, and the leaderboard."""
    conditions = []
    for name, value in values.items():
        ranking = name.split("@")[0] if name.split("@")[0] not in ("full", "random") else None
        kind = "retrieval" if ranking else name.split("@")[0]
        seed = int(name.rpartition("-seed")[2]) if "-seed" in name else None
        record = {"name": name, "kind": kind, "k": 6 if "@" in name else 0, "seed": seed, "heads": [[0, 1]],
                  "method": "zero", "scope": "all", **({"ranking": ranking} if ranking else {})}
        conditions.append(ConditionResult(record, {"rh_niah": {"acc,none": value}}, {"rh_niah": {"acc": True}}))
    write_leaderboard(build_leaderboard(conditions), out)
    return out / "leaderboard.json"


def test_rh_check_judges_ranking_rows_by_their_effect_against_full(tmp_path, capsys):
    rows = {"full": 0.9, "copy@6": 0.1, "attention@6": 0.4, "random@6-seed0": 0.8}
    base = _board(tmp_path / "base", rows)
    assert main(["check", "--results", str(base), "--baseline", str(base)]) == 0
    assert "2 retrieval-below-random verdicts hold" in capsys.readouterr().out
    dead = _board(tmp_path / "dead", {**rows, "attention@6": 0.9})  # its mask stopped working: not an improvement
    assert main(["check", "--results", str(dead), "--baseline", str(base)]) == 1
    out = capsys.readouterr().out
    assert "attention@6 rh_niah acc: effect −0.50 → +0.00: the mask no longer changes this score" in out
    assert "verdict lost: attention@6 rh_niah acc: no longer below random@6" in out and "copy@6 rh_niah" not in out
