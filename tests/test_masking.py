"""Exactness of masking and recording on tiny random models of many architectures.

References are computed independently of our attention function: zero-masking is compared with the stock
model whose output-projection input has the head's slice zeroed; uniform masking with an explicit mean of
the head's visible value vectors; recorded top-1 positions with eager attention's ``output_attentions``.
"""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHITECTURES, VOCAB, tiny_model

from rh_models.attention import HeadControl, attention_modules
from rh_models.errors import RHError
from rh_models.heads import HeadSet

PROJECTIONS = ("o_proj", "c_proj", "dense", "out_proj")
# two heads of one KV group in layer 0 (heads 0 and 1 share a KV head under GQA), one head of layer 1
HEADS = ((0, 0), (0, 1), (1, 3))


def _inputs(batch: int = 2, length: int = 10, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=generator)


def _zeroed_projection_hooks(model, heads):
    """Stock-model reference for zero masking: zero the head's columns of the output-projection input."""
    n_heads = model.config.get_text_config().num_attention_heads
    modules = attention_modules(model, model.config.get_text_config().num_hidden_layers)
    hooks = []
    for layer, head in heads:
        projection = next(getattr(modules[layer], n) for n in PROJECTIONS if hasattr(modules[layer], n))

        def zero_slice(module, args, head=head):
            x = args[0].clone()
            width = x.shape[-1] // n_heads
            x[..., head * width : (head + 1) * width] = 0
            return (x,) + args[1:]

        hooks.append(projection.register_forward_pre_hook(zero_slice))
    return hooks


def _greedy(model, ids, steps=5, attention_mask=None):
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids) if attention_mask is None else attention_mask,
        max_new_tokens=steps, min_new_tokens=steps, do_sample=False, output_logits=True,
        return_dict_in_generate=True, pad_token_id=0,
    )
    return out.sequences, torch.stack(out.logits)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_no_mask_is_bitwise_stock(arch):
    model = tiny_model(arch)
    ids = _inputs()
    stock_logits = model(ids).logits
    stock_seq, stock_scores = _greedy(model, ids)
    HeadControl.attach(model)
    assert model.config._attn_implementation.startswith("rh_")
    assert torch.equal(model(ids).logits, stock_logits)
    seq, scores = _greedy(model, ids)
    assert torch.equal(seq, stock_seq) and torch.equal(scores, stock_scores)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_zero_mask_equals_zeroed_projection_input(arch):
    model = tiny_model(arch)
    ids = _inputs()
    hooks = _zeroed_projection_hooks(model, HEADS)
    ref_logits = model(ids).logits
    ref_seq, ref_scores = _greedy(model, ids)
    for hook in hooks:
        hook.remove()
    unmasked = model(ids).logits

    control = HeadControl.attach(model)
    control.set_mask(HeadSet(HEADS, control.n_layers, control.n_heads), method="zero")
    logits = model(ids).logits
    seq, scores = _greedy(model, ids)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits, unmasked, atol=1e-4)  # the mask did something
    assert torch.equal(seq, ref_seq)  # greedy decoding with the KV cache, masked in decode steps too
    torch.testing.assert_close(scores, ref_scores, rtol=1e-5, atol=1e-5)


def _explicit_uniform_hooks(model, head):
    """Reference for uniform masking: the head outputs the running mean of its KV head's value vectors."""
    text = model.config.get_text_config()
    n_heads, n_kv = text.num_attention_heads, text.num_key_value_heads
    layer, query_head = head
    attention = attention_modules(model, text.num_hidden_layers)[layer]
    values = {}
    hooks = [attention.v_proj.register_forward_hook(lambda m, a, out: values.__setitem__("v", out))]

    def replace(module, args):
        x = args[0].clone()
        v = values["v"]
        width = v.shape[-1] // n_kv
        kv_head = query_head // (n_heads // n_kv)
        head_values = v[..., kv_head * width : (kv_head + 1) * width]
        counts = torch.arange(1, v.shape[1] + 1, dtype=v.dtype).view(1, -1, 1)
        x[..., query_head * width : (query_head + 1) * width] = head_values.cumsum(dim=1) / counts
        return (x,) + args[1:]

    hooks.append(attention.o_proj.register_forward_pre_hook(replace))
    return hooks


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
def test_uniform_mask_equals_mean_of_visible_values(arch):
    model = tiny_model(arch)
    ids = _inputs(batch=1)
    hooks = _explicit_uniform_hooks(model, (1, 2))
    reference = model(ids).logits
    for hook in hooks:
        hook.remove()
    control = HeadControl.attach(model)
    control.set_mask(HeadSet(((1, 2),), control.n_layers, control.n_heads), method="uniform")
    torch.testing.assert_close(model(ids).logits, reference, rtol=1e-5, atol=1e-5)
    # decode steps with the KV cache agree with full recomputation without cache
    seq, scores = _greedy(model, ids, steps=4)
    for step in range(4):
        prefix = seq[:, : ids.shape[1] + step]
        torch.testing.assert_close(model(prefix).logits[:, -1], scores[step], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
def test_decode_scope_leaves_prefill_and_changes_decode(arch):
    model = tiny_model(arch)
    ids = _inputs()
    stock_logits = model(ids).logits
    _, stock_scores = _greedy(model, ids)
    control = HeadControl.attach(model)
    control.set_mask(HeadSet(HEADS, control.n_layers, control.n_heads), method="zero", scope="decode")
    assert torch.equal(model(ids).logits, stock_logits)
    _, scores = _greedy(model, ids)
    assert torch.equal(scores[0], stock_scores[0])  # the first token comes from the prefill row
    assert not torch.allclose(scores[1:], stock_scores[1:], atol=1e-4)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("padded", [False, True], ids=["batch1", "left-padded"])
def test_recorded_top1_equals_eager_output_attentions(arch, padded):
    model = tiny_model(arch)
    if padded:
        ids = _inputs(batch=2, length=11)
        mask = torch.ones_like(ids)
        mask[1, :4] = 0
        ids[1, :4] = 0
    else:
        ids, mask = _inputs(batch=1, length=11), None
    control = HeadControl.attach(model)
    control.start_recording()
    seq, _ = _greedy(model, ids, steps=5, attention_mask=mask)
    top1 = control.stop_recording().absolute(ids.shape[1])  # (steps, batch, layers, heads)

    eager = tiny_model(arch, attn_implementation="eager")
    full_mask = torch.ones_like(seq) if mask is None else torch.cat([mask, torch.ones_like(seq[:, ids.shape[1]:])], 1)
    with torch.no_grad():
        positions = (full_mask.cumsum(-1) - 1).clamp(min=0)  # as generate derives them from the padding
        attentions = eager(seq, attention_mask=full_mask, position_ids=positions, output_attentions=True).attentions
    maps = torch.stack(attentions, dim=1)  # (batch, layers, heads, q, k)
    assert top1.shape[0] == 5
    for step in range(5):
        row = ids.shape[1] - 1 + step
        expected = maps[:, :, :, row, : row + 1].argmax(dim=-1)
        assert torch.equal(top1[step], expected), f"step {step}"


def test_attach_refuses_unknown_shapes():
    model = tiny_model("llama")
    control = HeadControl.attach(model)
    with pytest.raises(RHError, match="out of range"):
        HeadSet(((5, 0),), control.n_layers, control.n_heads)
    with pytest.raises(RHError, match="mask_method"):
        control.set_mask(HeadSet((), 2, 4), method="mean-ablate")
    with pytest.raises(RHError, match="model has 2 x 4"):
        control.set_mask(HeadSet(((0, 0),), 3, 4))


def test_architecture_without_attention_interface_is_refused_loudly():
    import transformers

    config = transformers.MambaConfig(hidden_size=32, num_hidden_layers=2, vocab_size=VOCAB, state_size=4)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with pytest.raises(RHError, match="rh-eval cannot"):
        HeadControl.attach(model)
