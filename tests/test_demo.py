"""`rh demo`: the detect -> compare -> leaderboard/plots chain on one loaded model, its resume, its shape
check; fast with fakes, and end to end on a tiny random llama (SmolLM2's tokenizer, hence the marker)."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import FakeMaskedLM

from rh_eval import compare, demo
from rh_eval.cli import main
from rh_eval.leaderboard import ConditionResult, build_leaderboard, condition_name
from rh_models.errors import RHError

PNG = b"\x89PNG\r\n\x1a\n"
NIAH = "rh_niah_paper"
GRID = ["--detect-lengths", "200", "--detect-depths", "0,100", "--detect-samples", "1",
        "--niah-lengths", "200,300", "--niah-depths", "0,100", "--niah-samples", "1"]


# -------------------------------------------------------------------------------------------------- fakes


class FakeLM(FakeMaskedLM):
    """Stands in for RHHFLM: 2 layers x 4 heads; ``top:K`` ranks by ``head_scores`` like the real one."""

    n_layers, n_heads = 2, 4

    def __init__(self):
        self.prefix_reuse = False
        self.head_scores = None
        self.info = {}

    def set_mask(self, spec, method="zero", scope="all", seed=0, random_match=None, tie_break="none"):
        k = int(spec.split(":")[1]) if ":" in spec else 0
        if spec.startswith("top"):
            heads = [list(h) for h in self.head_scores.top(k)]
        else:
            heads = [] if spec == "none" else [[1, (seed + h) % 4] for h in range(k)]
        self.info = {"spec": spec, "seed": seed, "heads": heads, "method": method, "scope": scope}


    @contextmanager
    def settings(self, prefix_reuse=None):
        saved, self.prefix_reuse = self.prefix_reuse, prefix_reuse
        try:
            yield self
        finally:
            self.prefix_reuse = saved


class FakeEngine(FakeLM):
    """Stands in for one RHVLLM engine (``--backend vllm``): loaded with the score file, never asked for reuse."""

    def __init__(self, head_scores):
        super().__init__()
        self.use_head_scores(head_scores)


@pytest.fixture
def fakes(monkeypatch):
    """Fake detection, model and lm-eval: NIAH collapses under top:K, random:K barely moves."""
    return install_fakes(monkeypatch)


def install_fakes(monkeypatch) -> dict:
    """:func:`fakes` for any monkeypatch (test_report builds one fake demo folder per module with it)."""
    calls = {"detect": [], "loads": 0, "evaluate": []}
    monkeypatch.setattr("rh_models.shape.model_config_sha256", lambda model, *rest: f"config-of-{model}")

    def detect(model, output, lengths=None, depths=None, samples=None, **kwargs):
        calls["detect"].append((model, lengths, depths, samples, model.prefix_reuse))
        Path(output).write_text(json.dumps({f"{l}-{h}": [{(0, 1): 0.9, (1, 2): 0.5}.get((l, h), 0.0)]
                                            for l in range(2) for h in range(4)}))
        return {"top": [["0-1", 0.9], ["1-2", 0.5]], "fraction_above_0.1": 0.25, "tests_seen": 2,
                "tests_contributing": 1, "heads": 8, "fraction_above_0.5": 0.125}

    class FakeModelOnce(demo.ModelOnce):
        def __call__(self):
            if self.lm is None:
                calls["loads"] += 1
                self.lm = FakeLM()
            return self.lm

    def evaluate(lm, tasks, args, manager):
        info = lm.mask_info()
        # rh-hf's comparison reuses shared prompt prefixes; vLLM caches them itself and is never asked to
        assert lm.prefix_reuse != isinstance(lm, FakeEngine)
        calls["evaluate"].append(info["spec"] + f"/{info['seed']}")
        score = {"none": 0.8}.get(info["spec"], 0.1 if info["spec"].startswith("top") else 0.7 + 0.05 * info["seed"])
        results, samples = {}, {}
        for task in tasks:
            if "niah" in task:
                results[task] = {"alias": task, "score,none": score, "score_len_200,none": score}
                samples[task] = [{"doc_id": i, "doc": {"length": 200 + 100 * (i % 2), "depth": 100 * (i // 2)},
                                  "target": "x", "arguments": [], "resps": [["x"]], "filtered_resps": ["x"],
                                  "metrics": ["score"], "filter": "none", "score": score} for i in range(4)]
            else:
                results[task] = {"alias": task, "exact_match,none": score / (2 if task.endswith("_cot") else 1)}
                samples[task] = []
        return {"results": results, "higher_is_better": {t: {"score": True, "exact_match": True} for t in tasks},
                "versions": {t: 1 for t in tasks}, "n-shot": {t: 0 for t in tasks}, "samples": samples}

    monkeypatch.setattr("rh_eval.detect.detect", detect)
    monkeypatch.setattr(demo, "ModelOnce", FakeModelOnce)
    monkeypatch.setattr(compare, "evaluate", evaluate)
    monkeypatch.setattr(compare, "task_manager", lambda *args: None)
    return calls


def _demo(out: Path, *extra: str) -> int:
    return main(["demo", "--model", "fake", "--output-dir", str(out), "--k", "2", "--seeds", "2", "--limit", "4",
                 *GRID, "--cot-task", "t_cot", "--direct-task", "t", "--chat-template", "no", *extra])


# ------------------------------------------------------------------------------------------------- tests


def test_demo_chain_on_one_model_and_resume(tmp_path, fakes, capsys):
    out = tmp_path / "out"
    assert _demo(out) == 0
    printed = capsys.readouterr().out
    assert fakes["loads"] == 1  # detection and every condition share one model
    assert [(lengths, depths, samples, reuse) for _, lengths, depths, samples, reuse in fakes["detect"]] == [
        ([200], [0, 100], 1, False)]
    assert fakes["evaluate"] == ["none/0", "top:2/0", "random:2/0", "random:2/1"]
    heads = json.loads((out / "conditions" / "retrieval@2" / "condition.json").read_text())["heads"]
    assert heads == [[0, 1], [1, 2]]  # ranked by the demo's own detection

    board = json.loads((out / "leaderboard.json").read_text())
    assert [r["name"] for r in board["rows"]] == ["full", "retrieval@2", "random@2"]
    assert f"{NIAH}/score_len_200,none" in board["values"]["full"]  # breakdowns stay in leaderboard.*
    assert "| retrieval@2 " in printed and f"{NIAH} score_len_200" not in printed  # ...but not in the headline
    assert f"shape check ({NIAH}/score,none): retrieval@2 0.100 vs full 0.800 and random@2 mean 0.725" in printed
    assert "expected shape holds" in printed
    assert "CoT vs direct (exact_match)" in printed

    plots = {p.name for p in (out / "plots").iterdir()}
    assert {"head_scores.png", f"dose_{NIAH}_score_none.png", "cot_vs_direct_t_exact_match_none.png",
            f"niah_{NIAH}_full.png", f"niah_{NIAH}_retrieval-2_minus_full.png"} <= plots
    assert (out / "plots" / "head_scores.png").read_bytes()[:8] == PNG
    summary = (out / "summary.md").read_text()
    assert "| random@2 " in summary and "expected shape holds" in summary and "`plots/head_scores.png`" in summary
    state = json.loads((out / "demo.json").read_text())
    assert state["detection"]["done"] and state["shape_checks"][0]["holds"] and state["wall_seconds"] > 0

    assert _demo(out) == 0  # finished: everything re-used, nothing loaded
    again = capsys.readouterr()
    assert fakes["loads"] == 1 and len(fakes["detect"]) == 1 and len(fakes["evaluate"]) == 4
    assert "detection: re-using" in again.err and "everything re-used" in again.out
    assert (out / "demo.log").read_text().count("re-using") == 4  # each condition's line went to the log


def test_interrupted_condition_is_redone_alone(tmp_path, fakes):
    out = tmp_path / "out"
    assert _demo(out) == 0
    (out / "conditions" / "random@2-seed1" / "results.json").unlink()
    fakes["evaluate"].clear()
    assert _demo(out) == 0
    assert fakes["evaluate"] == ["random:2/1"] and len(fakes["detect"]) == 1 and fakes["loads"] == 2


def test_shape_check_reports_a_failure(tmp_path, fakes, monkeypatch, capsys):
    original = compare.evaluate

    def random_hurts_more(lm, tasks, args, manager):
        output = original(lm, tasks, args, manager)
        if lm.mask_info()["spec"].startswith("random"):
            output["results"][NIAH]["score,none"] = 0.05
        return output

    monkeypatch.setattr(compare, "evaluate", random_hurts_more)
    assert _demo(tmp_path / "out") == 0
    assert "expected shape does NOT hold" in capsys.readouterr().out


def test_bad_arguments_exit_2_before_any_work(tmp_path, fakes, capsys):
    assert _demo(tmp_path / "a", "--limit", "3") == 2  # the NIAH grid (2 x 2 x 1) would be cut
    assert "NIAH grid has 4 prompts" in capsys.readouterr().err
    assert _demo(tmp_path / "b", "--seeds", "0") == 2
    assert _demo(tmp_path / "c", "--k", "0") == 2
    assert _demo(tmp_path / "d", "--detect-depths", "a,b") == 2
    assert _demo(tmp_path / "e", "--cot-task", NIAH) == 2  # a task twice
    assert fakes["loads"] == 0 and fakes["detect"] == [] and fakes["evaluate"] == []


def test_k_past_the_detected_heads_needs_tie_break_random(tmp_path, fakes, capsys):
    """The fake detection scores 2 of 8 heads above 0: K=3 (or a 50 % KV share) is refused after the detection,
    before any condition, unless ``--tie-break random``, which reaches the comparison's settings and records."""
    for extra in (("--k", "3"), ("--kv-budgets", "50%")):
        assert _demo(tmp_path / "a", *extra) == 2
        assert "heads asked for, but only 2 of 8 heads scored above 0" in capsys.readouterr().err
    assert fakes["evaluate"] == []
    with pytest.raises(RHError, match="--tie-break best is not one of none, random"):
        demo.DemoConfig(tie_break="best").check()
    out = tmp_path / "c"
    assert _demo(out, "--k", "3", "--tie-break", "random") == 0
    assert json.loads((out / "run.json").read_text())["settings"]["tie_break"] == "random"
    record = json.loads((out / "conditions" / "retrieval@3" / "condition.json").read_text())
    assert record["tie_break"] == "random" and len(record["heads"]) == 3


def test_another_detection_grid_in_the_same_folder_is_refused(tmp_path, fakes, capsys):
    out = tmp_path / "out"
    assert _demo(out) == 0
    capsys.readouterr()
    assert _demo(out, "--detect-depths", "0,50,100") == 2
    assert "other settings (depths: was [0, 100], now [0, 50, 100])" in capsys.readouterr().err
    (out / "notes.txt").write_text("mine")
    assert _demo(out, "--detect-depths", "0,50,100", "--force") == 0  # starts over: detection and conditions redone
    assert json.loads((out / "demo.json").read_text())["settings"]["depths"] == [0, 50, 100]
    assert fakes["detect"][-1][2] == [0, 50, 100] and (out / "notes.txt").read_text() == "mine"


def test_shape_checks_from_a_board():
    def result(name, kind, k, seed, score):
        record = {"name": name, "kind": kind, "k": k, "seed": seed, "heads": []}
        return ConditionResult(record, {NIAH: {"score,none": score, "score_len_500,none": score}},
                               {NIAH: {"score": True}})

    board = build_leaderboard([result("full", "full", 0, None, 0.6), result("retrieval@4", "retrieval", 4, None, 0.1),
                               result("random@4-seed0", "random", 4, 0, 0.5), result("random@4-seed1", "random", 4, 1, 0.6),
                               result("retrieval@8", "retrieval", 8, None, 0.7),
                               result("random@8-seed0", "random", 8, 0, 0.5)])
    checks = demo.shape_checks(board, NIAH)
    assert [(c.k, c.holds) for c in checks] == [(4, True), (8, False)]
    assert checks[0].random_mean == pytest.approx(0.55) and checks[0].column == f"{NIAH}/score,none"
    assert [c.metric for c in demo.headline(board).columns] == ["score"]
    assert demo.shape_checks(board, "other_task") == []


def test_shape_checks_on_a_board_of_several_methods():
    """Rows named per method (``retrieval@4 (mean)``): one check per method row, each against its own control."""
    def result(kind, seed, method, score):
        name = condition_name(kind, 0 if kind == "full" else 4, method=method, seed=seed)
        record = {"name": name, "kind": kind, "k": 0 if kind == "full" else 4, "seed": seed, "heads": [],
                  "method": method or "zero", "method_in_name": method is not None}
        return ConditionResult(record, {NIAH: {"score,none": score}}, {NIAH: {"score": True}})

    board = build_leaderboard([result("full", None, None, 0.6)] + [
        condition for method, low in (("zero", 0.1), ("mean", 0.7)) for condition in
        (result("retrieval", None, method, low), result("random", 0, method, 0.5), result("random", 1, method, 0.6))])
    checks = demo.shape_checks(board, NIAH)
    assert [(c.rows, c.holds) for c in checks] == [(("retrieval@4 (zero)", "random@4 (zero)"), True),
                                                   (("retrieval@4 (mean)", "random@4 (mean)"), False)]
    assert checks[1].line().startswith(f"shape check ({NIAH}/score,none): retrieval@4 (mean) 0.700 vs full 0.600 "
                                       "and random@4 (mean) mean 0.550")


def test_chat_template_choice(tmp_path, smollm_dir):
    from transformers import AutoTokenizer

    def choice(model: str, mode: str) -> bool:
        return demo.use_chat_template(model, mode)

    plain = tmp_path / "plain-tokenizer"
    tokenizer = AutoTokenizer.from_pretrained(smollm_dir)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(plain)
    assert choice(str(smollm_dir), "auto") is True  # the instruct model's own template
    assert choice(str(plain), "auto") is False  # a tokenizer without one: plain prompts
    assert choice(str(plain), "yes") is True and choice(str(smollm_dir), "no") is False
    with pytest.raises(RHError, match="cannot load the tokenizer"):
        choice(str(tmp_path / "missing"), "auto")
    config = demo.DemoConfig(model=str(smollm_dir), ks=(2,), seeds=1, output_dir=tmp_path / "o", limit=4,
                             niah_lengths=(200,), niah_depths=(0,), niah_samples=1, cot_task="", direct_task="")
    comparison = demo.compare_config(config, tmp_path / "scores.json")
    assert comparison.apply_chat_template is True  # handed on to rh compare (and recorded in its run.json)
    assert comparison.tasks == ("rh_niah_paper",) and comparison.prefix_reuse


# --------------------------------------------------------------------------------------- end to end (real)


@pytest.mark.smollm
def test_end_to_end_tiny_llama(tiny_demo):
    out, printed, err = tiny_demo  # conftest: rh demo on the tiny llama, --k 1 --seeds 2, NIAH and the CoT pair
    # the console shows our stage bars, the table and the checks; lm-eval's chatter is in the log
    log = (out / "demo.log").read_text()
    assert "Running generate_until requests" in log and "Running generate_until" not in err + printed
    assert "rh detect" in err and "conditions" in err and "Custom kwargs" not in err
    for name in ("head_scores.json", "head_scores.meta.json", "leaderboard.md", "leaderboard.json", "summary.md",
                 "demo.json", "report.html", "plots/head_scores.png", f"plots/dose_{NIAH}_score_none.png",
                 f"plots/niah_{NIAH}_full.png", f"plots/niah_{NIAH}_random-1-seed0_minus_full.png"):
        assert (out / name).is_file(), name
    board = json.loads((out / "leaderboard.json").read_text())
    assert [r["name"] for r in board["rows"]] == ["full", "retrieval@1", "random@1"]
    assert f"{NIAH}/score,none" in board["values"]["random@1"]
    assert "rh_factsum_cot/exact_match,strict-match" in board["values"]["full"]
    samples = (out / "conditions" / "full" / f"samples_{NIAH}.jsonl").read_text().splitlines()
    assert sorted(json.loads(s)["doc"]["depth"] for s in samples) == [0, 100]  # the demo's grid, not the default
    assert "shape check" in printed and "CoT vs direct" in printed
    retrieval = json.loads((out / "conditions" / "retrieval@1" / "condition.json").read_text())
    assert (len(retrieval["heads"]), retrieval["tie_break"], retrieval["unscored_heads"]) == (1, "random", 1)


def test_backend_vllm_detects_on_rh_hf_and_runs_the_conditions_on_one_engine(tmp_path, fakes, monkeypatch):
    engines = []

    def load_engine(config, head_scores):
        engines.append(config)
        return FakeEngine(head_scores)

    monkeypatch.setattr(demo, "load_model", load_engine)
    out = tmp_path / "out"
    assert _demo(out, "--backend", "vllm", "--model-args", "gpu_memory_utilization=0.5") == 0
    assert fakes["loads"] == 1 and len(fakes["detect"]) == 1  # detection on rh-hf
    assert len(engines) == 1 and fakes["evaluate"] == ["none/0", "top:2/0", "random:2/0", "random:2/1"]
    config = engines[0]
    assert config.backend == "vllm" and not config.prefix_reuse and config.batch_size == "auto"
    assert config.model_args == {"dtype": "float32", "gpu_memory_utilization": 0.5}  # demo default, user's override
    heads = json.loads((out / "conditions" / "retrieval@2" / "condition.json").read_text())["heads"]
    assert heads == [[0, 1], [1, 2]]
    assert json.loads((out / "run.json").read_text())["settings"]["backend"] == "vllm"
    assert _demo(out) == 2  # the same folder with the other backend: refused, not mixed


def test_model_args_need_the_vllm_backend(tmp_path, fakes, capsys):
    assert _demo(tmp_path / "out", "--model-args", "dtype=float32") == 2
    assert "--model-args are rh-vllm engine args" in capsys.readouterr().err
