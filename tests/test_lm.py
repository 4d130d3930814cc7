"""``rh-hf`` as lm-eval sees it: same numbers as stock ``hf``, masks in loglikelihood, CLI, errors, install."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import run_cli
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from rh_models.errors import RHError
from rh_models.lm import RHHFLM, output_projections

REPO = Path(__file__).resolve().parents[1]
LL_REQUESTS = [("The capital of France is", " Paris"), ("One, two,", " three"), ("Hello", " world, hello")]


def _loglikelihoods(lm, pairs=LL_REQUESTS):
    requests = [Instance("loglikelihood", {}, pair, idx) for idx, pair in enumerate(pairs)]
    return [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]


def _generate(lm, prompts=("The sky is", "Once upon a time")):
    requests = [Instance("generate_until", {}, (p, {"until": ["\n\n"], "max_gen_toks": 6}), i) for i, p in enumerate(prompts)]
    return lm.generate_until(requests, disable_tqdm=True)


@pytest.fixture(scope="module")
def stock(tiny_llama_dir):
    return HFLM(pretrained=str(tiny_llama_dir), device="cpu", dtype="float32")


def test_no_mask_equals_stock_hf_exactly(tiny_llama_dir, stock):
    ours = RHHFLM(pretrained=str(tiny_llama_dir), device="cpu", dtype="float32", batch_size=2)
    assert _loglikelihoods(ours) == _loglikelihoods(stock)
    assert _generate(ours) == _generate(stock)


def test_mask_applies_to_loglikelihood_requests(tiny_llama_dir, stock):
    ours = RHHFLM(pretrained=str(tiny_llama_dir), device="cpu", dtype="float32", mask_heads="0-1;1-3")
    projections = output_projections(ours.model, ours.control)
    reference_lm = HFLM(pretrained=str(tiny_llama_dir), device="cpu", dtype="float32")
    stock_attention = [m for m in reference_lm.model.modules() if type(m).__name__.endswith("Attention")]
    hooks = []
    for layer, head in ((0, 1), (1, 3)):
        def zero(module, args, head=head):
            x = args[0].clone()
            x[..., head * 16 : (head + 1) * 16] = 0
            return (x,)
        hooks.append(stock_attention[layer].o_proj.register_forward_pre_hook(zero))
    expected = _loglikelihoods(reference_lm)
    for hook in hooks:
        hook.remove()
    assert set(projections) == {0, 1}
    assert _loglikelihoods(ours) == pytest.approx(expected, abs=1e-4)
    assert _loglikelihoods(ours) != pytest.approx(_loglikelihoods(stock), abs=1e-4)


def test_masks_swap_without_reload_and_info_is_reproducible(tiny_llama_dir, tmp_path):
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps({f"{l}-{h}": [0.9 if (l, h) == (1, 2) else 0.0] for l in range(2) for h in range(4)}))
    lm = RHHFLM(pretrained=str(tiny_llama_dir), device="cpu", head_scores=str(scores))
    model = lm.model
    full = _loglikelihoods(lm)
    assert lm.set_mask("top:1").heads == ((1, 2),)
    assert _loglikelihoods(lm) != full
    random_heads = lm.set_mask("random:2", seed=4, method="uniform")
    info = lm.mask_info()
    assert info["heads"] == [list(h) for h in random_heads] and (1, 2) not in random_heads
    assert (info["method"], info["seed"], info["spec"]) == ("uniform", 4, "random:2")
    assert lm.get_model_info()["rh_mask"] == info
    lm.set_mask("none")
    assert _loglikelihoods(lm) == full and lm.model is model


def test_self_check_refuses_a_silent_no_op(tiny_llama_dir):
    lm = RHHFLM(pretrained=str(tiny_llama_dir), device="cpu")
    lm.model.set_attn_implementation("sdpa")  # something bypasses our attention function
    with pytest.raises(RHError, match="self-check failed"):
        lm.set_mask("0-1")


def test_provenance_names_the_model_commit_only_where_transformers_recorded_one(tiny_llama_dir, monkeypatch):
    import rh_models.lm as module

    lm = RHHFLM(pretrained=str(tiny_llama_dir), device="cpu")
    assert "model_commit" not in lm.provenance()  # a local folder (and any model on transformers 5.24): none known
    assert (lm.provenance()["n_heads"], lm.provenance()["n_kv_heads"]) == (4, 2)  # what rh heads compare groups by
    monkeypatch.setattr(module, "model_commit", lambda config: "0" * 40)
    assert lm.provenance()["model_commit"] == "0" * 40


def test_decode_scope_is_refused_on_loglikelihood_requests(tiny_llama_dir):
    """A loglikelihood request is one forward with no decoding step: a decode-scope mask would mask nothing."""
    lm = RHHFLM(pretrained=str(tiny_llama_dir), device="cpu", dtype="float32", mask_heads="0-1;1-3",
                mask_scope="decode")
    rolling = [Instance("loglikelihood_rolling", {}, ("One, two, three, four, five",), 0)]
    forwards = []
    hook = lm.model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    with pytest.raises(RHError, match="^mask_scope=decode masks only generated tokens; loglikelihood requests "
                                      "generate none.*use mask_scope=all$"):
        _loglikelihoods(lm)
    with pytest.raises(RHError, match="; loglikelihood_rolling requests generate none"):
        lm.loglikelihood_rolling(rolling, disable_tqdm=True)
    hook.remove()
    assert forwards == []  # refused before the first request
    lm.set_mask("0-1;1-3", scope="all")
    masked = _loglikelihoods(lm)
    lm.set_mask("none", scope="decode")  # an empty mask masks nothing in any scope: nothing to refuse
    assert _loglikelihoods(lm) != masked and len(lm.loglikelihood_rolling(rolling, disable_tqdm=True)) == 1


@pytest.mark.parametrize("marks", ["no forward", "every forward"])
def test_decode_scope_self_check_needs_a_masked_decoding_step_and_an_unmasked_prefill(tiny_llama_dir, monkeypatch,
                                                                                     marks):
    """The self-check runs with the scope that will be used: decode detection that never marks a decoding step
    (a silent no-op) or marks the prompt's prefill too is refused."""
    from contextlib import contextmanager

    from rh_models.attention import HeadControl

    lm = RHHFLM(pretrained=str(tiny_llama_dir), device="cpu", mask_heads="0-1;1-3", mask_scope="decode")

    @contextmanager
    def broken(control, prompt_length, cached=0):
        saved, control.phase = control.phase, "prefill" if marks == "no forward" else "decode"
        try:
            yield
        finally:
            control.phase = saved

    monkeypatch.setattr(HeadControl, "generating", broken)
    message = "did not change its output" if marks == "no forward" else "masked the prompt's prefill"
    with pytest.raises(RHError, match=f"^self-check failed: .*{message}"):
        lm.set_mask("0-1;1-3", scope="decode")


def _lm_eval(args, timeout=300):
    return run_cli("lm_eval", *args, timeout=timeout)


@pytest.mark.slow
def test_stock_cli_runs_rh_hf_end_to_end(tiny_llama_dir, tiny_task_dir, tmp_path):
    model_args = f"pretrained={tiny_llama_dir},dtype=float32,mask_heads=0-1;1-0,mask_method=uniform"
    result = _lm_eval(["--model", "rh-hf", "--model_args", model_args, "--tasks", "tiny_local", "--batch_size", "2",
                       "--include_path", str(tiny_task_dir), "--output_path", str(tmp_path / "out")])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tiny_local" in result.stdout and "exact_match" in result.stdout
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    assert results["config"]["rh_mask"]["heads"] == [[0, 1], [1, 0]]
    assert results["config"]["rh_mask"]["method"] == "uniform"


@pytest.mark.slow
@pytest.mark.parametrize(
    "model_args, message",
    [
        ("mask_heads=99-0", "layer 99 out of range"),
        ("mask_heads=1-x", "bad head '1-x'"),
        ("mask_heads=top:5", "needs head_scores"),
        ("mask_heads=random:2,mask_seed=one", "mask_seed must be an integer"),
        ("mask_heads=top:2,head_scores={wrong_shape}", "is for a model with 3 layers x 4 heads, but this model has 2 x 4"),
        ("mask_heads=top:2,head_scores={malformed}", "not valid JSON"),
    ],
)
def test_stock_cli_bad_input_is_one_clear_line(tiny_llama_dir, tiny_task_dir, tmp_path, model_args, message):
    wrong_shape = tmp_path / "wrong.json"
    wrong_shape.write_text(json.dumps({f"{l}-{h}": [0.5] for l in range(3) for h in range(4)}))
    malformed = tmp_path / "malformed.json"
    malformed.write_text('{"0-1": [0.5,')
    args = model_args.format(wrong_shape=wrong_shape, malformed=malformed)
    result = _lm_eval(["--model", "rh-hf", "--model_args", f"pretrained={tiny_llama_dir},{args}",
                       "--tasks", "tiny_local", "--include_path", str(tiny_task_dir)])
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("rh-eval: error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-1500:]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_autoload_registers_without_hiding_builtins():
    code = (
        "import sys, time; t = time.perf_counter(); import rh_eval._autoload; cost = time.perf_counter() - t\n"
        "assert 'torch' not in sys.modules and 'lm_eval' not in sys.modules\n"
        "from lm_eval.api.registry import get_model, model_registry\n"
        "cls = get_model('rh-hf'); assert get_model('hf').__name__ == 'HFLM' and 'vllm' in model_registry\n"
        "from lm_eval.tasks import TaskManager; assert 'rh_niah' in TaskManager().all_tasks\n"
        "print(cls.__module__, cls.__name__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-1500:]
    assert result.stdout.strip() == "rh_models.lm RHHFLM"


@pytest.mark.slow
def test_wheel_ships_autoload_and_task_configs(tmp_path):
    """A non-editable install must find the .pth hook and the YAMLs (they live outside the packages)."""
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
                           capture_output=True, text=True, timeout=300)
    if build.returncode != 0 and "hatchling" in build.stderr:
        pytest.skip("hatchling could not be fetched to build the wheel")
    assert build.returncode == 0, build.stderr[-1500:]
    wheel = next(tmp_path.glob("rh_eval-*.whl"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, timeout=300)
    assert (target / "rh_eval_autoload.pth").is_file()
    assert any((target / "rh_tasks" / "task_configs").glob("*.yaml"))
    venv_site = sysconfig.get_paths()["purelib"]
    code = (
        f"import sys, site; sys.path.append({venv_site!r}); site.addsitedir({str(target)!r})\n"
        "from lm_eval.api.registry import get_model\n"
        "import rh_tasks; cls = get_model('rh-hf'); import rh_models\n"
        "print(rh_models.__file__); print(rh_tasks.task_config_dir())"
    )
    # -S: no site processing, so only the wheel's .pth (not the editable one) can register the model
    result = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)  # not the repo: its rh_models must not shadow the installed one
    assert result.returncode == 0, result.stderr[-1500:]
    module_file, task_dir = result.stdout.split()
    assert module_file.startswith(str(target)) and task_dir.startswith(str(target))


@pytest.mark.smollm
def test_smollm2_alias_generates_english_and_masking_changes_it():
    lm = RHHFLM(pretrained="smollm2-135m", device="cpu", batch_size=1)
    assert (lm.n_layers, lm.n_heads) == (30, 9)
    prompt = lm.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    request = [Instance("generate_until", {}, (prompt, {"until": ["<|im_end|>"], "max_gen_toks": 12}), 0)]
    full = lm.generate_until(request, disable_tqdm=True)[0]
    assert "Paris" in full
    lm.set_mask("none")
    assert lm.generate_until(request, disable_tqdm=True)[0] == full
    lm.set_mask("8-0;11-3;14-2;15-7;16-1;19-5")
    assert lm.generate_until(request, disable_tqdm=True)[0] != full


def _needle_request(lm, gen_kwargs: dict, doc_id: int = 0) -> Instance:
    from rh_tasks.niah_docs import build_docs

    [doc] = build_docs(lm.tokenizer, lengths=[120], depths=[50], samples=1, max_length=lm.max_length)
    return Instance("generate_until", doc, (doc["prompt"], {"until": ["\n"], "max_gen_toks": 3, **gen_kwargs}), doc_id,
                    metadata=("rh_niah", doc_id, 1))


def test_recording_refuses_a_static_cache_before_generating(tiny_llama_dir, tmp_path, monkeypatch):
    """A static cache is preallocated: its key indices are not the sequence's last positions, and 3ac779b's
    recorded positions went negative and wrapped into the prompt without a word."""
    lm = RHHFLM(pretrained=str(tiny_llama_dir), device="cpu", record_scores=str(tmp_path / "s.json"))
    monkeypatch.setattr(lm.model, "generate", lambda *args, **kwargs: pytest.fail("generated"))
    with pytest.raises(RHError, match="cache_implementation='static' preallocates its keys"):
        lm.generate_until([_needle_request(lm, {"cache_implementation": "static"})], disable_tqdm=True)
    lm.model.generation_config.cache_implementation = "static"  # the model's own default says so
    with pytest.raises(RHError, match="cache_implementation='static' preallocates its keys"):
        lm.generate_until([_needle_request(lm, {})], disable_tqdm=True)
