"""Mean ablation: ``rh means`` and ``mask_method=mean``, exact against references computed without our code path.

References: a mean-masked head must equal the stock model whose output-projection input has the head's slice
overwritten with the stored vector (a forward pre-hook), in prefill and in every cached decoding step; the means
``rh means`` writes must equal the mean of that same projection input over the reference tokens.
"""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from conftest import ARCHITECTURES, VOCAB, rh_error_lines, run_cli, tiny_model

from rh_models.attention import HeadControl, attention_modules
from rh_models.errors import RHError
from rh_models.head_means import HeadMeans
from rh_models.heads import HeadSet

PROJECTIONS = ("o_proj", "c_proj", "dense", "out_proj")
HEADS = ((0, 0), (0, 1), (1, 3))  # two query heads of one KV group (GQA models), one head of the other layer


def _projection(model, layer):
    text = model.config.get_text_config()
    module = attention_modules(model, text.num_hidden_layers)[layer]
    return next(getattr(module, name) for name in PROJECTIONS if hasattr(module, name))


def _overwrite_hooks(model, means: HeadMeans, heads, decode_only: bool = False):
    """Reference: the stock model with each head's slice of the output-projection input set to its stored mean."""
    hooks = []
    for layer, head in heads:
        def overwrite(module, args, layer=layer, head=head):
            x = args[0]
            if decode_only and x.shape[1] != 1:
                return None
            x = x.clone()
            width = means.shape[2]
            x[..., head * width : (head + 1) * width] = means.means[layer, head].to(x.dtype)
            return (x,) + args[1:]

        hooks.append(_projection(model, layer).register_forward_pre_hook(overwrite))
    return hooks


def _random_means(model, seed: int = 3) -> HeadMeans:
    text = model.config.get_text_config()
    width = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    generator = torch.Generator().manual_seed(seed)
    return HeadMeans(torch.randn(text.num_hidden_layers, text.num_attention_heads, width, generator=generator))


def _greedy_logits(model, ids, steps=4):
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps, min_new_tokens=steps,
                         do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=0)
    return out.sequences, torch.stack(out.logits)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_mean_mask_equals_the_stored_vector_in_the_projection_input(arch):
    model = tiny_model(arch)
    ids = torch.randint(3, VOCAB, (2, 10), generator=torch.Generator().manual_seed(1))
    means = _random_means(model)
    unmasked = model(ids).logits
    hooks = _overwrite_hooks(model, means, HEADS)
    reference = model(ids).logits
    reference_seq, reference_steps = _greedy_logits(model, ids)
    for hook in hooks:
        hook.remove()

    control = HeadControl.attach(model)
    control.set_mask(HeadSet(HEADS, control.n_layers, control.n_heads), method="mean", means=means)
    torch.testing.assert_close(model(ids).logits, reference, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(reference, unmasked, atol=1e-4)  # the replacement changed something
    sequences, steps = _greedy_logits(model, ids)  # every decoding step over the KV cache too
    assert torch.equal(sequences, reference_seq)
    torch.testing.assert_close(steps, reference_steps, rtol=1e-5, atol=1e-5)


def test_decode_scope_replaces_only_in_decoding_steps():
    model = tiny_model("llama")
    ids = torch.randint(3, VOCAB, (1, 12), generator=torch.Generator().manual_seed(2))
    means = _random_means(model)
    stock_prefill = model(ids).logits
    hooks = _overwrite_hooks(model, means, HEADS, decode_only=True)
    _, reference_steps = _greedy_logits(model, ids)
    for hook in hooks:
        hook.remove()
    control = HeadControl.attach(model)
    control.set_mask(HeadSet(HEADS, 2, 4), method="mean", scope="decode", means=means)
    assert torch.equal(model(ids).logits, stock_prefill)
    with control.generating(ids.shape[1]):
        _, steps = _greedy_logits(model, ids)
    torch.testing.assert_close(steps, reference_steps, rtol=1e-5, atol=1e-5)


def test_mean_needs_means_of_the_models_shape():
    model = tiny_model("llama")
    control = HeadControl.attach(model)
    heads = HeadSet(HEADS, 2, 4)
    with pytest.raises(RHError, match="needs head_means"):
        control.set_mask(heads, method="mean")
    with pytest.raises(RHError, match="head means are for 3 x 4 heads, the model has 2 x 4"):
        control.set_mask(heads, method="mean", means=HeadMeans(torch.zeros(3, 4, 16)))
    control.set_mask(heads, method="mean", means=HeadMeans(torch.zeros(2, 4, 8)))
    with pytest.raises(RHError, match="8-dimensional outputs"):
        model(torch.tensor([[5, 6, 7]]))


# ---------------------------------------------------------------------------------------------- the file


def test_file_round_trip_is_exact_and_bad_files_are_one_line(tmp_path):
    means = HeadMeans.from_sums(torch.randn(2, 4, 16, dtype=torch.float64) * 7, tokens=3, provenance={"model": "m"})
    path = means.save(tmp_path / "means.json")
    loaded = HeadMeans.load(path, 2, 4, 16)
    assert torch.equal(loaded.means, means.means) and loaded.provenance == {"model": "m", "tokens": 3}
    assert loaded.source == str(path) and len(loaded.sha256) == 64

    with pytest.raises(RHError, match="is for a model with 2 layers x 4 heads, but this model has 30 x 9"):
        HeadMeans.load(path, 30, 9, 64)
    with pytest.raises(RHError, match="holds 16-dimensional head outputs, but this model's heads output 64"):
        HeadMeans.load(path, 2, 4, 64)
    data = json.loads(path.read_text())
    cases = {
        "missing": ({**data, "means": {k: v for k, v in data["means"].items() if k not in ("1-2", "0-3")}},
                    r"lacks the means of 2 of 8 heads \(0-3;1-2\)"),
        "short": ({**data, "means": {**data["means"], "1-1": [0.5]}}, "mean of head 1-1 must be a list of 16"),
        "nan": ({**data, "means": {**data["means"], "0-0": [float("nan")] * 16}}, "finite numbers"),
        "outside": ({**data, "means": {**data["means"], "2-0": [0.0] * 16}}, "head 2-0 is outside its 2 x 4 heads"),
        "format": ({"0-0": [1.0]}, "not an rh-eval head-means file"),
        "version": ({**data, "version": 9}, "version 9"),
    }
    for name, (content, message) in cases.items():
        bad = tmp_path / f"{name}.json"
        bad.write_text(json.dumps(content))
        with pytest.raises(RHError, match=message):
            HeadMeans.load(bad, 2, 4, 16)
    (tmp_path / "torn.json").write_text(path.read_text()[:200])
    with pytest.raises(RHError, match="is not valid JSON"):
        HeadMeans.load(tmp_path / "torn.json")
    with pytest.raises(RHError, match="does not exist"):
        HeadMeans.load(tmp_path / "nowhere.json")


# ---------------------------------------------------------------------------------------------- rh-hf and rh means


def _means_args(**overrides) -> argparse.Namespace:
    values = dict(model=None, output=None, lengths=None, text_file=None, tasks=None, limit=None, metadata=None,
                  include_path=[], apply_chat_template=False, model_args=None, force=False)
    return argparse.Namespace(**{**values, **overrides})


def test_rh_means_equals_the_mean_projection_input_of_the_stock_model(tiny_llama_dir, tmp_path):
    """``rh means`` on two text files against an independent mean: a pre-hook on the stock model's projections."""
    import transformers

    from rh_eval.means import head_means, reference_texts
    from rh_models.lm import RHHFLM

    texts = ["The quick brown fox jumps over the lazy dog. " * 6, "Needles and haystacks, " * 9]
    files = []
    for index, text in enumerate(texts):
        files.append(tmp_path / f"text{index}.txt")
        files[-1].write_text(text)
    lm = RHHFLM(pretrained=str(tiny_llama_dir), device="cpu", dtype="float32", batch_size=1)
    chosen, reference = reference_texts(lm, _means_args(text_file=[str(f) for f in files]))
    assert chosen == texts and [f["path"] for f in reference["files"]] == [str(f) for f in files]
    means = head_means(lm, chosen, reference)

    stock = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    inputs: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    for layer in inputs:
        _projection(stock, layer).register_forward_pre_hook(
            lambda module, args, layer=layer: inputs[layer].append(args[0][0].double()))
    tokens = [lm.tok_encode(text) for text in texts]
    with torch.no_grad():
        for ids in tokens:
            stock(torch.tensor([ids]))
    expected = torch.stack([torch.cat(inputs[layer]).mean(dim=0).view(4, 16) for layer in (0, 1)])
    torch.testing.assert_close(means.means.double(), expected, rtol=1e-6, atol=1e-7)
    assert means.provenance["tokens"] == sum(map(len, tokens)) and means.provenance["sequences"] == 2

    # then masking with them: verified, recorded in mask_info, and refused for a file of another shape
    path = means.save(tmp_path / "means.json")
    lm.use_head_means(path)
    lm.set_mask("0-1;1-3", method="mean")
    info = lm.mask_info()
    assert info["method"] == "mean" and info["head_means"] == str(path) and len(info["head_means_sha256"]) == 64
    HeadMeans(torch.zeros(3, 4, 16)).save(tmp_path / "other.json")
    with pytest.raises(RHError, match="is for a model with 3 layers x 4 heads, but this model has 2 x 4"):
        lm.use_head_means(tmp_path / "other.json")
    lm.set_mask("0-1", method="mean")
    with pytest.raises(RHError, match="head means are taken on the unmasked model"):
        head_means(lm, chosen, reference)

    # new means for the mask in force: applied at once (mask_info never names a file the model does not use)
    doubled = HeadMeans(means.means * 2, dict(means.provenance)).save(tmp_path / "doubled.json")
    lm.use_head_means(doubled)
    assert torch.equal(lm.control.mean_by_layer[0], 2 * means.means[0, [1]])
    assert lm.mask_info()["head_means"] == str(doubled)
    # a file made on another model of the same shape (another config) is refused
    HeadMeans(means.means, {**means.provenance, "model_config_sha256": "0" * 64, "model": "other"}).save(
        tmp_path / "foreign.json")
    with pytest.raises(RHError, match="was made on a model with another config"):
        lm.use_head_means(tmp_path / "foreign.json")


def test_rh_means_default_reference_is_the_niah_prompt_without_its_needle(tiny_llama_dir):
    from rh_eval.means import reference_texts
    from rh_models.lm import RHHFLM
    from rh_tasks.niah_docs import build_docs

    lm = RHHFLM(pretrained=str(tiny_llama_dir), device="cpu", dtype="float32", batch_size=1)
    texts, reference = reference_texts(lm, _means_args(lengths=[200, 300]))
    assert reference == {"kind": "niah_haystack", "haystack": "pg_essays", "needles": "paper", "lengths": [200, 300],
                         "chat_template": False}
    docs = build_docs(lm.tokenizer, lengths=[200], depths=[50], samples=1)
    needle = docs[0]["rh_needles"][0]
    assert needle in docs[0]["prompt"] and not any(needle in text for text in texts)
    assert texts[0].startswith(docs[0]["prompt"][:100]) and texts[0].endswith(docs[0]["prompt"][-150:])
    assert [len(lm.tok_encode(text)) for text in texts][0] < 200 < len(lm.tok_encode(texts[1]))


@pytest.mark.slow
def test_rh_means_and_mask_method_mean_through_the_clis(tiny_llama_dir, tiny_task_dir, tmp_path):
    """What a user types: ``rh means``, then the stock ``lm_eval`` CLI with ``mask_method=mean`` (under the memory
    limit); the refusals of these arguments are the in-process tests beside this one (same code, no start-up)."""
    means = tmp_path / "means.json"
    made = run_cli("rh", "means", "--model", str(tiny_llama_dir), "--output", str(means), "--lengths", "150,250")
    assert made.returncode == 0 and "2 x 4 heads" in made.stdout, made.stderr[-2000:]
    base = f"pretrained={tiny_llama_dir},dtype=float32,mask_heads=0-1;1-3"
    result = run_cli("lm_eval", "--model", "rh-hf", "--model_args", f"{base},mask_method=mean,head_means={means}",
                     "--tasks", "tiny_local", "--include_path", str(tiny_task_dir), "--output_path", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-2000:]
    mask = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["config"]["rh_mask"]
    assert mask["method"] == "mean" and mask["heads"] == [[0, 1], [1, 3]] and mask["head_means"] == str(means)
    assert rh_error_lines(result.stderr) == []


def test_mean_model_args_are_refused_before_the_model_loads(tiny_llama_dir, tmp_path, monkeypatch):
    from lm_eval.models.huggingface import HFLM

    from rh_models.lm import RHHFLM

    monkeypatch.setattr(HFLM, "__init__", lambda *a, **k: pytest.fail("the model was loaded"))
    means = HeadMeans(torch.zeros(2, 4, 16)).save(tmp_path / "means.json")
    for args, message in (({"mask_method": "mean"}, "mask_method=mean needs head_means=PATH"),
                          ({"head_means": str(means)}, "head_means is read only by mask_method=mean"),
                          ({"mask_method": "mean", "head_means": str(tmp_path / "no.json")}, "does not exist")):
        with pytest.raises(RHError, match=message):
            RHHFLM(pretrained=str(tiny_llama_dir), mask_heads="0-1", **args)


def test_rh_means_refuses_a_bad_request_before_the_model_loads(tmp_path, monkeypatch):
    from rh_eval import means as module
    from rh_models import lm

    monkeypatch.setattr(lm.RHHFLM, "__init__", lambda *a, **k: pytest.fail("the model was loaded"))
    (tmp_path / "there.json").write_text("{}")
    cases = [
        (dict(output=str(tmp_path / "there.json")), "exists; pass --force"),
        (dict(output=str(tmp_path)), "is a folder"),
        (dict(text_file=[str(tmp_path / "missing.txt")]), "--text-file .* does not exist"),
        (dict(limit=3), "are for --tasks"),
        (dict(text_file=[str(tmp_path / "there.json")], apply_chat_template=True), "a --text-file is read as it is"),
        (dict(model_args="batch_size=4"), "--model-args may not set batch_size"),
        (dict(tasks="", limit=2), "--tasks is empty"),
        (dict(tasks="tiny_local", limit=0), "--limit must be at least 1"),
        (dict(tasks="no_such_task_anywhere"), "unknown task"),
    ]
    for overrides, message in cases:
        args = _means_args(**{"model": "smollm2-135m", "output": str(tmp_path / "m.json"), **overrides})
        with pytest.raises(RHError, match=message):
            module.run(args)


def test_rh_means_over_an_lm_eval_tasks_prompts(tiny_llama_dir, tiny_task_dir):
    """``--tasks``: the contexts lm-eval itself builds for the task (here its two docs), each once."""
    from rh_eval.means import reference_texts
    from rh_models.lm import RHHFLM

    lm = RHHFLM(pretrained=str(tiny_llama_dir), device="cpu", dtype="float32", batch_size=1)
    args = _means_args(model=str(tiny_llama_dir), tasks="tiny_local", include_path=[str(tiny_task_dir)])
    texts, reference = reference_texts(lm, args)
    assert texts == ["The sky is", "Two plus two is"]
    assert (reference["kind"], reference["tasks"], reference["limit"]) == ("tasks", ["tiny_local"], None)
    texts, _ = reference_texts(lm, _means_args(**{**vars(args), "limit": 1}))
    assert texts == ["The sky is"]
