"""`rh compare`: planning, resume (finished conditions are re-used), settings guard, detection hand-off,
plots from a hand-made leaderboard, and one end-to-end run on a tiny random llama."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from conftest import FakeMaskedLM

from rh_eval import compare
from rh_eval.cli import main
from rh_eval.cli_args import parse_kv_budgets, parse_ks, parse_limit, parse_metadata
from rh_eval.compare import ConditionPlan, plan_conditions
from rh_eval.plots.conditions import cot_column_pairs, cot_pairs, make_plots
from rh_eval.leaderboard import ConditionResult, build_leaderboard
from rh_models.errors import RHError

PNG = b"\x89PNG\r\n\x1a\n"


def test_plan_names_and_specs():
    plans = plan_conditions([6, 12], 2)
    assert [p.name for p in plans] == [
        "full", "retrieval@6", "random@6-seed0", "random@6-seed1", "retrieval@12", "random@12-seed0", "random@12-seed1",
    ]
    assert [p.spec for p in plans[:3]] == ["none", "top:6", "random:6"]
    assert ConditionPlan("random", 3, 1).seed == 1


def test_kv_plan_names_and_specs():
    plans = plan_conditions([], 2, [10.0, 25.0])
    assert [p.name for p in plans] == ["full", "streaming", "retrieval-kv@10%", "random-kv@10%-seed0",
                                       "random-kv@10%-seed1", "retrieval-kv@25%", "random-kv@25%-seed0",
                                       "random-kv@25%-seed1"]
    assert [(p.spec, p.kv_spec) for p in plans[:4]] == [("none", None), ("none", "none"), ("none", "top:10%"),
                                                        ("none", "random:10%")]
    assert parse_kv_budgets("25%, 5%,12.5%") == (5.0, 12.5, 25.0) and parse_kv_budgets(None) == ()
    for bad, message in (("ten%", "not a percentage in"), ("5%,5%", "twice"), ("0%", r"in \(0, 100\]"),
                         ("10", "write it with %"), ("10%,25", "write it with %")):
        with pytest.raises(RHError, match=message):  # a percentage takes its %, as in top:P%
            parse_kv_budgets(bad)


def test_argument_parsing():
    assert parse_ks("12, 6") == [6, 12]
    for bad in ("", "0", "6,six", "6,6"):
        with pytest.raises(RHError):
            parse_ks(bad)
    assert parse_limit("10") == 10 and parse_limit("0.5") == 0.5 and parse_limit(None) is None
    with pytest.raises(RHError):
        parse_limit("ten")
    assert parse_metadata('{"max_seq_lengths": [512]}') == {"max_seq_lengths": [512]}
    for bad in ("{oops", "[1]"):
        with pytest.raises(RHError):
            parse_metadata(bad)


# ------------------------------------------------------------------------------------------ resume (fakes)


class FakeLM(FakeMaskedLM):
    """Stands in for RHHFLM: remembers the mask; heads depend on the spec and seed like the real one's."""

    n_layers, n_heads = 2, 2

    def __init__(self):
        self.info = {}

    def set_mask(self, spec, method="zero", scope="all", seed=0, random_match=None, tie_break="none"):
        k = int(spec.split(":")[1]) if ":" in spec else 0
        heads = [] if spec == "none" else [[0, h] for h in range(k)] if spec.startswith("top") else [[1, (seed + h) % 4] for h in range(k)]
        self.info = {"spec": spec, "seed": seed, "heads": heads, "method": method, "scope": scope, "tie_break": tie_break}



@pytest.fixture
def fake_eval(monkeypatch):
    calls = {"evaluate": [], "load": 0, "methods": []}
    monkeypatch.setattr("rh_models.shape.model_config_sha256", lambda model, *rest: f"config-of-{model}")

    def load_model(args, head_scores):
        calls["load"] += 1
        return FakeLM()

    def evaluate(lm, tasks, args, manager):
        info = lm.mask_info()
        calls["evaluate"].append(info["spec"] + f"/{info['seed']}")
        calls["methods"].append(info["method"])
        score = {"none": 1.0}.get(info["spec"], 0.25 if info["spec"].startswith("top") else 0.75 + 0.05 * info["seed"])
        docs = [{"doc_id": i, "doc": {"q": i}, "target": 1, "arguments": [("ctx", {"until": ["\n"]})],
                 "resps": [["a"]], "filtered_resps": ["a"], "filter": "none", "metrics": ["acc"],
                 "acc": float(i < 4 * score), "doc_hash": f"h{i}"} for i in range(4)]
        return {"results": {task: {"alias": task, "acc,none": score, "acc_stderr,none": 0.1} for task in tasks},
                "higher_is_better": {task: {"acc": True} for task in tasks}, "versions": {t: 1 for t in tasks},
                "n-shot": {t: 0 for t in tasks}, "samples": {task: docs for task in tasks}}

    monkeypatch.setattr(compare, "load_model", load_model)
    monkeypatch.setattr(compare, "evaluate", evaluate)
    monkeypatch.setattr(compare, "task_manager", lambda *args: None)
    return calls


def _compare(out: Path, scores: Path, *extra: str) -> int:
    return main(["compare", "--model", "fake", "--head-scores", str(scores), "--tasks", "t_a,t_a_cot",
                 "--k", "2", "--seeds", "2", "--output-dir", str(out), "--no-plots", *extra])


@pytest.fixture
def scores(tmp_path) -> Path:
    path = tmp_path / "scores.json"
    path.write_text(json.dumps({"0-0": [0.9], "0-1": [0.5], "1-0": [0.05], "1-1": [0.0]}))  # 3 heads scored
    return path


def test_second_run_reuses_conditions(tmp_path, scores, fake_eval, capsys):
    out = tmp_path / "out"
    assert _compare(out, scores) == 0
    assert fake_eval["evaluate"] == ["none/0", "top:2/0", "random:2/0", "random:2/1"] and fake_eval["load"] == 1
    first = capsys.readouterr().out
    assert "leaderboard written" in first and "| random@2 " in first
    for name in ("full", "retrieval@2", "random@2-seed0", "random@2-seed1"):
        folder = out / "conditions" / name
        assert {p.name for p in folder.iterdir()} == {"results.json", "condition.json", "samples_t_a.jsonl", "samples_t_a_cot.jsonl"}
        assert "samples" not in json.loads((folder / "results.json").read_text())
    sample = json.loads((out / "conditions" / "full" / "samples_t_a.jsonl").read_text().splitlines()[0])
    assert sample["arguments"] == {"gen_args_0": {"arg_0": "ctx", "arg_1": {"until": ["\n"]}}}  # lm-eval's shape
    assert sample["target"] == "1" and sample["resps"] == [["a"]]
    record = json.loads((out / "conditions" / "random@2-seed1" / "condition.json").read_text())
    assert (record["kind"], record["k"], record["seed"], record["heads"]) == ("random", 2, 1, [[1, 1], [1, 2]])
    [run] = json.loads((out / "run.json").read_text())["runs"]  # provenance of the run that evaluated
    assert run["seconds"] >= 0 and run["machine"]["cpu_count"] and run["started"].endswith("+00:00")
    assert f"report: {out / 'report.html'}" in first and (out / "report.html").read_text().count("<tr data-row=") > 4

    fake_eval["evaluate"].clear()
    assert _compare(out, scores) == 0
    second = capsys.readouterr().out
    assert fake_eval["evaluate"] == [] and fake_eval["load"] == 1  # nothing run, model not even loaded
    assert second.count("re-using") == 4 and "leaderboard updated" in second
    assert len(json.loads((out / "run.json").read_text())["runs"]) == 1  # a run that only re-renders adds none
    board = json.loads((out / "leaderboard.json").read_text())
    assert board["values"]["random@2"]["t_a/acc,none"] == pytest.approx(0.775)
    assert board["conditions"]["retrieval@2"]["heads"] == [[0, 0], [0, 1]]


def test_interrupted_and_extended_runs_only_do_the_missing_work(tmp_path, scores, fake_eval, capsys):
    out = tmp_path / "out"
    assert _compare(out, scores) == 0
    (out / "conditions" / "random@2-seed1" / "results.json").unlink()  # as if killed mid-condition
    fake_eval["evaluate"].clear()
    assert _compare(out, scores, "--k", "2,3") == 0
    assert fake_eval["evaluate"] == ["random:2/1", "top:3/0", "random:3/0", "random:3/1"]
    rows = [r["name"] for r in json.loads((out / "leaderboard.json").read_text())["rows"]]
    assert rows == ["full", "retrieval@2", "random@2", "retrieval@3", "random@3"]


def test_other_settings_in_the_same_folder_are_refused(tmp_path, scores, fake_eval, capsys):
    out = tmp_path / "out"
    assert _compare(out, scores) == 0
    capsys.readouterr()
    assert _compare(out, scores, "--method", "uniform") == 2
    assert "other settings" in capsys.readouterr().err
    scores.write_text(json.dumps({"0-0": [0.8], "0-1": [0.5], "1-0": [0.05], "1-1": [0.0]}))  # same ranking, other file
    assert _compare(out, scores) == 2
    assert "head_scores_sha256" in capsys.readouterr().err


def test_several_methods_give_rows_per_method_and_resume_only_with_the_same_means(tmp_path, scores, fake_eval, capsys):
    import torch

    from rh_models.head_means import HeadMeans

    means = HeadMeans(torch.zeros(2, 2, 4)).save(tmp_path / "means.json")
    out = tmp_path / "out"
    assert _compare(out, scores, "--methods", "zero,mean,uniform", "--head-means", str(means), "--seeds", "1") == 0
    assert fake_eval["evaluate"] == ["none/0", "top:2/0", "random:2/0"] * 1 + ["top:2/0", "random:2/0"] * 2
    board = json.loads((out / "leaderboard.json").read_text())
    assert [r["name"] for r in board["rows"]] == ["full", "retrieval@2 (zero)", "random@2 (zero)",
                                                  "retrieval@2 (uniform)", "random@2 (uniform)",
                                                  "retrieval@2 (mean)", "random@2 (mean)"]
    record = board["conditions"]["random@2-seed0-mean"]
    assert record["method"] == "mean" and record["mask"]["method"] == "mean" and record["heads"] == [[1, 0], [1, 1]]
    assert board["rows"][-1]["method"] == "mean" and board["rows"][0]["method"] is None
    assert "| random@2 (mean) " in capsys.readouterr().out

    means.write_text(means.read_text().replace("0.0", "0.5", 1))  # other means: another experiment
    assert _compare(out, scores, "--methods", "zero,mean,uniform", "--head-means", str(means), "--seeds", "1") == 2
    assert "head_means_sha256" in capsys.readouterr().err
    assert fake_eval["methods"] == ["zero"] * 3 + ["uniform"] * 2 + ["mean"] * 2  # each row masked its own way
    for extra, message in ((("--methods", "zero,mean"), "--methods mean needs --head-means"),
                           (("--head-means", str(means)), "--head-means is read only by --methods mean"),
                           (("--methods", "zero,zero"), "--methods lists something twice"),
                           (("--methods", "mean,ablate", "--head-means", str(means)), "--methods takes distinct")):
        assert _compare(tmp_path / "other", scores, *extra) == 2
        assert message in capsys.readouterr().err


def test_bad_arguments_exit_2_before_any_work(tmp_path, scores, fake_eval, capsys):
    assert _compare(tmp_path / "a", scores, "--k", "0") == 2
    assert _compare(tmp_path / "b", scores, "--seeds", "-1") == 2
    assert _compare(tmp_path / "c", tmp_path / "missing.json") == 2
    assert "does not exist" in capsys.readouterr().err
    assert fake_eval["evaluate"] == [] and fake_eval["load"] == 0


@pytest.mark.parametrize("per_head, why", [([], "no test contributed (every list is empty)"), ([0.0], "every score is 0")])
def test_a_score_file_that_ranks_no_head_is_refused_before_any_condition(tmp_path, fake_eval, capsys, monkeypatch,
                                                                       per_head, why):
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({f"{l}-{h}": per_head for l in range(2) for h in range(2)}))
    for extra in ((), ("--k", "1", "--kv-budgets", "50%")):
        assert _compare(tmp_path / "out", empty, *extra) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rh compare: error:")]
        assert len(errors) == 1 and f"ranks no head: {why}" in errors[0], errors
    assert fake_eval["evaluate"] == []
    # an explicit tie rule: every place drawn from the unscored heads, and the record says so
    assert _compare(tmp_path / "tied", empty, "--tie-break", "random") == 0
    record = json.loads((tmp_path / "tied" / "conditions" / "retrieval@2" / "condition.json").read_text())
    assert record["tie_break"] == "random" and record["mask"]["tie_break"] == "random"
    fake_eval["evaluate"].clear()
    # the same file written by rh compare's own detection: refused before the first condition, not at it
    monkeypatch.setattr("rh_eval.detect.detect", lambda model, output, **kw: Path(output).write_text(empty.read_text()))
    monkeypatch.setattr("rh_eval.detect.print_summary", lambda summary, output: None)
    assert main(["compare", "--model", "fake", "--tasks", "t_a", "--k", "1", "--seeds", "1", "--no-plots",
                 "--output-dir", str(tmp_path / "detected")]) == 2
    assert f"ranks no head: {why}" in capsys.readouterr().err
    assert fake_eval["evaluate"] == [] and not (tmp_path / "detected" / "conditions").exists()


def test_k_or_a_kv_share_past_the_scored_heads_needs_tie_break_random(tmp_path, scores, fake_eval, capsys):
    """``scores`` ranks 3 of the 4 heads: K=4 (or a 100 % KV share) would take 1-1 for its place, not its score."""
    for extra, asked in ((("--k", "4"), "top:4: 4"), (("--k", "2", "--kv-budgets", "100%"), "top:100%: 4")):
        assert _compare(tmp_path / "out", scores, *extra) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rh compare: error:")]
        assert len(errors) == 1 and f"{asked} heads asked for, but only 3 of 4 heads scored above 0" in errors[0]
        assert "--tie-break random" in errors[0]
    assert fake_eval["evaluate"] == [] and fake_eval["load"] == 0  # refused at the config check
    out = tmp_path / "out"
    assert _compare(out, scores, "--k", "4", "--tie-break", "random") == 0
    record = json.loads((out / "conditions" / "retrieval@4" / "condition.json").read_text())
    assert record["tie_break"] == "random" and record["mask"]["tie_break"] == "random"  # passed to set_mask
    assert json.loads((out / "run.json").read_text())["settings"]["tie_break"] == "random"
    capsys.readouterr()
    assert _compare(out, scores, "--k", "4") == 2  # another tie rule is another experiment: refused on resume
    assert "tie_break" in capsys.readouterr().err


def test_missing_head_scores_runs_detection_on_the_loaded_model(tmp_path, fake_eval, monkeypatch, capsys):
    args = ["compare", "--model", "fake", "--tasks", "t_a", "--k", "2", "--seeds", "1",
            "--output-dir", str(tmp_path / "out"), "--no-plots",
            "--detect-lengths", "500,1000", "--detect-depths", "0,100", "--detect-samples", "2"]
    detected = []

    def detect(model, output, lengths, depths, samples):
        detected.append((model, lengths, depths, samples))
        Path(output).write_text(json.dumps({"0-0": [0.9], "0-1": [0.4], "1-0": [0.0], "1-1": [0.0]}))
        return {}

    monkeypatch.setattr("rh_eval.detect.detect", detect)
    monkeypatch.setattr("rh_eval.detect.print_summary", lambda summary, output: print(f"summary of {output.name}"))
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "running retrieval-head detection first" in out and "summary of head_scores.json" in out
    [(model, lengths, depths, samples)] = detected
    assert isinstance(model, FakeLM) and (lengths, depths, samples) == ([500, 1000], [0, 100], 2)
    assert fake_eval["load"] == 1  # detection and the conditions share one load
    assert model.head_scores.top(1) == [(0, 0)]  # ranked by the fresh detection
    assert main(args) == 0  # the detection in the output folder is re-used, not redone; nothing loads
    assert len(detected) == 1 and fake_eval["load"] == 1 and "re-using the detection" in capsys.readouterr().out
    assert main([*args[:-6], "--detect-lengths", "500,long"]) == 2
    assert "--detect-lengths must be integers" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- plots


def _board(tasks=("rh_vartrack", "rh_vartrack_cot", "rh_niah")):
    def result(name, kind, k, seed, score):
        record = {"name": name, "kind": kind, "k": k, "seed": seed, "heads": [], "method": "zero", "scope": "all"}
        results = {t: {"exact_match,none": score * (0.5 if t.endswith("_cot") else 1.0)} for t in tasks}
        return ConditionResult(record, results, {}, f"conditions/{name}")

    conditions = [result("full", "full", 0, None, 1.0)]
    for k in (2, 4):
        conditions.append(result(f"retrieval@{k}", "retrieval", k, None, 1.0 - 0.2 * k))
        conditions += [result(f"random@{k}-seed{s}", "random", k, s, 0.95 - 0.01 * k - 0.02 * s) for s in range(3)]
    return build_leaderboard(conditions)


def test_cot_pairs():
    assert cot_pairs(["rh_vartrack_cot", "rh_vartrack", "rh_niah", "orphan_cot"]) == [("rh_vartrack_cot", "rh_vartrack")]
    pairs = cot_column_pairs(_board())
    assert [(c.task, d.task) for c, d in pairs] == [("rh_vartrack_cot", "rh_vartrack")]


def test_dose_response_and_cot_plots_are_written(tmp_path):
    # no conditions folder, so no NIAH samples: no heatmaps, and that is not an error
    paths = make_plots(_board(), tmp_path / "plots", conditions_dir=tmp_path / "conditions")
    names = sorted(p.name for p in paths)
    assert names == [
        "cot_vs_direct_rh_vartrack_exact_match_none.png",
        "dose_rh_niah_exact_match_none.png",
        "dose_rh_vartrack_cot_exact_match_none.png",
        "dose_rh_vartrack_exact_match_none.png",
    ]
    for path in paths:
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 5000


def test_niah_heatmaps_per_condition_and_difference(tmp_path, monkeypatch):
    board = _board()
    cells_by_condition = {}
    for row in board.rows:
        for i, name in enumerate(row.conditions):
            folder = tmp_path / "conditions" / name
            folder.mkdir(parents=True)
            (folder / "samples_rh_niah.jsonl").write_text("{}\n")
            cells_by_condition[str(folder / "samples_rh_niah.jsonl")] = {(1000, 0.5): 1.0 - 0.1 * i, (2000, 0.5): 0.5}

    calls = []
    fake = types.ModuleType("rh_eval.plots.niah")
    fake.niah_cells = lambda path: cells_by_condition[str(path)]

    def plot_niah_heatmap(cells, out, title=None, vmin=0, vmax=1, diff=False):
        calls.append((Path(out).name, dict(cells), vmin, vmax, diff))
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_bytes(PNG)

    fake.plot_niah_heatmap = plot_niah_heatmap
    monkeypatch.setitem(sys.modules, "rh_eval.plots.niah", fake)
    paths = make_plots(board, tmp_path / "plots", conditions_dir=tmp_path / "conditions", tasks=["rh_niah"])
    heatmaps = {name: (cells, vmin, vmax, diff) for name, cells, vmin, vmax, diff in calls}
    assert len(heatmaps) == 9 + 8  # every condition (1 + 2 + 6), and each non-full one minus full
    assert heatmaps["niah_rh_niah_full.png"] == ({(1000, 0.5): 1.0, (2000, 0.5): 0.5}, 0, 1, False)
    diff_cells, vmin, vmax, diff = heatmaps["niah_rh_niah_random-2-seed1_minus_full.png"]
    assert diff and (vmin, vmax) == (-1, 1)
    assert diff_cells == {(1000, 0.5): pytest.approx(-0.1), (2000, 0.5): 0.0}
    assert all(p.exists() for p in paths)


# --------------------------------------------------------------------------------------- end to end (real)


@pytest.mark.smollm
def test_end_to_end_tiny_llama(tmp_path, tiny_llama_dir, tiny_task_dir, monkeypatch, capsys):
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps({f"{l}-{h}": [{(0, 1): 0.9, (1, 2): 0.5}.get((l, h), 0.0)] for l in range(2) for h in range(4)}))
    out = tmp_path / "out"
    args = ["compare", "--model", str(tiny_llama_dir), "--head-scores", str(scores), "--tasks", "tiny_local",
            "--k", "2", "--seeds", "2", "--output-dir", str(out), "--include-path", str(tiny_task_dir), "--limit", "2"]
    assert main(args) == 0
    conditions = {p.name: json.loads((p / "condition.json").read_text()) for p in (out / "conditions").iterdir()}
    assert sorted(conditions) == ["full", "random@2-seed0", "random@2-seed1", "retrieval@2"]
    assert conditions["full"]["heads"] == []
    assert conditions["retrieval@2"]["heads"] == [[0, 1], [1, 2]]  # the top-2 of the score file
    for seed in (0, 1):
        heads = conditions[f"random@2-seed{seed}"]["heads"]
        assert len(heads) == 2 and not {tuple(h) for h in heads} & {(0, 1), (1, 2)}  # retrieval heads excluded
    lines = (out / "conditions" / "retrieval@2" / "samples_tiny_local.jsonl").read_text().splitlines()
    assert [json.loads(l)["doc_id"] for l in lines] == [0, 1] and "exact_match" in json.loads(lines[0])
    results = json.loads((out / "conditions" / "retrieval@2" / "results.json").read_text())
    assert results["config"]["rh_mask"]["heads"] == [[0, 1], [1, 2]]
    board = json.loads((out / "leaderboard.json").read_text())
    assert [r["name"] for r in board["rows"]] == ["full", "retrieval@2", "random@2"]
    assert "tiny_local/exact_match,none" in board["values"]["random@2"]
    assert (out / "plots" / "dose_tiny_local_exact_match_none.png").read_bytes()[:8] == PNG

    def no_reload(*a, **k):
        raise AssertionError("the model must not be loaded when every condition is finished")

    monkeypatch.setattr(compare, "load_model", no_reload)
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().out.count("re-using") == 4

    baseline = tmp_path / "baseline.json"
    assert main(["check", "--update-baseline", "--results", str(out), "--baseline", str(baseline)]) == 0
    assert main(["check", "--results", str(out / "leaderboard.json"), "--baseline", str(baseline)]) == 0


@pytest.mark.smollm
def test_kv_budgets_end_to_end_tiny_llama(tmp_path, tiny_llama_dir, tiny_task_dir):
    """``--kv-budgets``: full, streaming, retrieval-kv@P%, random-kv@P% with their measured budgets, and the plot."""
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps({f"{l}-{h}": [{(0, 1): 0.9, (1, 2): 0.5}.get((l, h), 0.0)] for l in range(2) for h in range(4)}))
    out = tmp_path / "out"
    assert main(["compare", "--model", str(tiny_llama_dir), "--head-scores", str(scores), "--tasks", "tiny_local",
                 "--kv-budgets", "25%", "--kv-sink", "1", "--kv-window", "2", "--seeds", "2", "--output-dir", str(out),
                 "--include-path", str(tiny_task_dir)]) == 0
    conditions = {p.name: json.loads((p / "condition.json").read_text()) for p in (out / "conditions").iterdir()}
    assert sorted(conditions) == ["full", "random-kv@25%-seed0", "random-kv@25%-seed1", "retrieval-kv@25%", "streaming"]
    retrieval = conditions["retrieval-kv@25%"]
    assert retrieval["heads"] == [] and retrieval["kv"]["selected_heads"] == [[0, 1], [1, 2]]  # the top 2 of 8
    assert retrieval["kv"]["full_query_heads"] == [[0, 0], [0, 1], [1, 2], [1, 3]]  # their GQA groups
    budgets = {name: record["kv_budget"] for name, record in conditions.items()}
    assert budgets["full"] == 1.0 and 0 < budgets["streaming"] < budgets["retrieval-kv@25%"] < 1.0
    for seed in (0, 1):  # 2 random heads of 8: 1 or 2 KV heads (of 4) kept whole, by whether they share a group
        record = conditions[f"random-kv@25%-seed{seed}"]
        assert len(record["kv"]["selected_heads"]) == 2 and budgets["streaming"] < record["kv_budget"] < 1.0
    results = json.loads((out / "conditions" / "streaming" / "results.json").read_text())
    assert results["config"]["rh_kv"]["full_heads"] == "none" and results["config"]["rh_kv"]["window"] == 2
    board = json.loads((out / "leaderboard.json").read_text())
    assert [r["name"] for r in board["rows"]] == ["full", "streaming", "retrieval-kv@25%", "random-kv@25%"]
    assert board["rows"][3]["seeds"] == [0, 1] and board["rows"][1]["kv_budget"] == budgets["streaming"]
    table = (out / "leaderboard.md").read_text()
    assert "KV budget" in table and f"{100 * budgets['streaming']:.1f} %" in table
    assert (out / "plots" / "kv_budget_tiny_local_exact_match_none.png").read_bytes()[:8] == PNG
    assert main(["compare", "--model", str(tiny_llama_dir), "--head-scores", str(scores), "--tasks", "tiny_local",
              "--kv-budgets", "25%", "--kv-window", "3", "--seeds", "2", "--output-dir", str(out),
              "--include-path", str(tiny_task_dir)]) == 2  # another window is another experiment: refused


@pytest.mark.smollm
def test_smollm2_retrieval_heads_matter_more_than_random_ones(tmp_path, smollm_paper_detection):
    """The paper's contrast on the embedded model: the top 8 heads of the session's SmolLM2 detection (conftest)
    masked vs 8 random non-retrieval heads, NIAH. (rh compare's own detection-first path: on a real model in
    test_gemma3, on a tiny Gemma-3 in test_readme_commands, with fakes above.)"""
    from rh_models.heads import HeadScores

    scores, _ = smollm_paper_detection
    out = tmp_path / "out"
    # not detection's haystack; 4 docs (on depths 0/50/100 too, every doc scored 1.0 full and random, <= 0.3 masked)
    grid = {"lengths": [500, 1000], "depths": [0, 100], "samples": 1, "seed": 1}
    assert main(["compare", "--model", "smollm2-135m", "--tasks", "rh_niah_paper", "--k", "8", "--seeds", "2",
                 "--output-dir", str(out), "--metadata", json.dumps(grid), "--batch-size", "6", "--no-plots",
                 "--head-scores", str(scores)]) == 0
    board = json.loads((out / "leaderboard.json").read_text())
    assert sorted(tuple(h) for h in board["conditions"]["retrieval@8"]["heads"]) == sorted(HeadScores.load(scores).top(8))
    column = "rh_niah_paper/score,none"
    full, retrieval, random = (board["values"][name][column] for name in ("full", "retrieval@8", "random@8"))
    print(f"\nSmolLM2 NIAH: full {full:.3f}, retrieval@8 {retrieval:.3f}, random@8 {random:.3f}")
    assert retrieval < full and retrieval < random, (full, retrieval, random)


@pytest.mark.parametrize("extra,message", [
    (["--backend", "vllm", "--prefix-reuse"], "--prefix-reuse is rh-hf's cache"),
    (["--backend", "vllm", "--scope", "decode"], "--scope decode cannot be a weight edit"),
    (["--model-args", "mask_heads=top:3"], "--model-args may not set mask_heads"),
])
def test_backend_options_refuse_what_they_cannot_do(tmp_path, capsys, extra, message):
    scores = tmp_path / "s.json"
    scores.write_text("{}")
    code = main(["compare", "--tasks", "rh_niah", "--head-scores", str(scores), "--output-dir", str(tmp_path / "o"),
                 *extra])
    assert code == 2 and message in capsys.readouterr().err


def test_backend_and_model_args_are_part_of_the_run_settings(tmp_path):
    from rh_eval.cli import build_parser
    from rh_eval.compare import config_from_args, run_settings

    scores = tmp_path / "s.json"
    scores.write_text(json.dumps({f"{l}-{h}": [0.5] for l in range(3) for h in range(3)}))  # ranks --k 6 (default)
    base = ["compare", "--tasks", "rh_niah", "--head-scores", str(scores), "--output-dir", str(tmp_path)]
    hf = run_settings(config_from_args(build_parser("compare").parse_args(base)), scores)
    assert hf["backend"] == "hf" and hf["model_args"] == {}
    vllm = config_from_args(build_parser("compare").parse_args([*base, "--backend", "vllm", "--model-args",
                                                       "tensor_parallel_size=2,dtype=bfloat16"]))
    assert vllm.model_args == {"tensor_parallel_size": 2, "dtype": "bfloat16"}
    settings = run_settings(vllm, scores)
    assert settings["backend"] == "vllm" and settings != hf


def test_decode_scope_is_refused_for_loglikelihood_tasks_before_any_condition(tmp_path):
    """--scope decode masks only generated tokens: a multiple-choice task would run unmasked in every condition."""
    from lm_eval.tasks import TaskManager

    from rh_eval.compare import refuse_decode_scope_without_generation

    (tmp_path / "data.jsonl").write_text('{"q": "The sky is", "choices": ["blue", "green"], "label": 0}\n')
    (tmp_path / "mc.yaml").write_text(
        "task: tiny_mc\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files: {tmp_path / 'data.jsonl'}\n"
        "test_split: train\noutput_type: multiple_choice\n"
        'doc_to_text: "{{q}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: label\n'
        "metric_list:\n  - metric: acc\n"
    )
    manager = TaskManager(include_path=[str(tmp_path)], include_defaults=False)
    with pytest.raises(RHError, match="--scope decode masks only generated tokens; tiny_mc is scored by loglikelihood"):
        refuse_decode_scope_without_generation(["tiny_mc"], manager)
