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
from rh_models.observers import TopOneRows
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


_VALUES = "rh_test_keeps_values"  # stock sdpa that also keeps each layer's value tensor, for the reference below


def _register_value_keeping_sdpa() -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    def sdpa_keeping_values(module, query, key, value, attention_mask, **kwargs):
        module.kept_values = value  # (batch, kv heads, keys in the cache, head_dim)
        return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(_VALUES, sdpa_keeping_values)
    AttentionMaskInterface.register(_VALUES, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    return _VALUES


def _explicit_uniform_model(arch, heads, padding: torch.Tensor):
    """Reference for uniform masking, computed explicitly: the stock model (with ``_VALUES``) whose masked heads'
    slices of the output-projection input are replaced by the mean of the value vectors of the keys each query may
    see -- not padding (``padding[b]`` left-pad tokens), not the future, and within a sliding layer's window.

    A key's position comes from the tokens fed so far (counted at the input embeddings): the cache holds the last
    ``kv_length`` of them (a sliding layer keeps only its window)."""
    model = tiny_model(arch, attn_implementation=_register_value_keeping_sdpa())
    text = model.config.get_text_config()
    n_heads = text.num_attention_heads
    modules = attention_modules(model, text.num_hidden_layers)
    fed = {"tokens": 0}  # reset before each run
    model.get_input_embeddings().register_forward_pre_hook(lambda m, args: fed.__setitem__(
        "tokens", fed["tokens"] + args[0].shape[1]))
    for layer in {layer for layer, _ in heads}:
        layer_types = getattr(text, "layer_types", None)
        window = text.sliding_window if layer_types and layer_types[layer] == "sliding_attention" else None
        attention = modules[layer]
        projection = next(getattr(attention, n) for n in PROJECTIONS if hasattr(attention, n))

        def replace(module, args, attention=attention, layer=layer, window=window):
            x, values = args[0].clone(), attention.kept_values
            (_, n_kv, kv_length, width), q_length = values.shape, x.shape[1]
            queries = fed["tokens"] - q_length + torch.arange(q_length)
            keys = fed["tokens"] - kv_length + torch.arange(kv_length)
            visible = (keys[None, None, :] <= queries[None, :, None]) & (keys[None, None, :] >= padding[:, None, None])
            if window is not None:
                visible &= queries[None, :, None] - keys[None, None, :] < window
            counts = visible.sum(dim=-1, keepdim=True)  # (batch, queries, 1); 0 only for padding queries
            for head in [h for l, h in heads if l == layer]:
                head_values = values[:, head // (n_heads // n_kv)]  # (batch, keys, head_dim)
                mean = (visible.to(values.dtype) @ head_values) / counts.clamp(min=1)
                columns = x[..., head * width : (head + 1) * width]
                x[..., head * width : (head + 1) * width] = torch.where(counts > 0, mean, columns)
            return (x,) + args[1:]

        projection.register_forward_pre_hook(replace)
    return model, fed


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_uniform_mask_equals_mean_of_visible_values(arch):
    """Left-padded batch, prefill and cached decoding; a head of the first layer (gemma3: a sliding one) and one of
    the second, of different KV groups."""
    heads = ((0, 1), (1, 2))
    ids = _inputs(batch=2, length=10)
    mask = torch.ones_like(ids)
    mask[1, :3], ids[1, :3] = 0, 0
    reference, fed = _explicit_uniform_model(arch, heads, padding=(1 - mask).sum(dim=1))
    with torch.no_grad():
        ref_logits = reference(ids, attention_mask=mask).logits
    fed["tokens"] = 0
    ref_seq, ref_scores = _greedy(reference, ids, steps=4, attention_mask=mask)

    model = tiny_model(arch)
    with torch.no_grad():
        unmasked = model(ids, attention_mask=mask).logits
    control = HeadControl.attach(model)
    control.set_mask(HeadSet(heads, control.n_layers, control.n_heads), method="uniform")
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
    real = mask.bool()  # a padding position's own logits are nobody's concern
    torch.testing.assert_close(logits[real], ref_logits[real], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits[real], unmasked[real], atol=1e-4)  # the mask did something
    seq, scores = _greedy(model, ids, steps=4, attention_mask=mask)
    assert torch.equal(seq, ref_seq)
    torch.testing.assert_close(scores, ref_scores, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
def test_decode_scope_leaves_prefill_and_changes_decode(arch):
    model = tiny_model(arch)
    ids = _inputs()
    stock_logits = model(ids).logits
    _, stock_scores = _greedy(model, ids)
    control = HeadControl.attach(model)
    control.set_mask(HeadSet(HEADS, control.n_layers, control.n_heads), method="zero", scope="decode")
    assert torch.equal(model(ids).logits, stock_logits)
    with control.generating(ids.shape[1]):  # what marks generate()'s forwards after the prompt as decoding steps
        _, scores = _greedy(model, ids)
    assert torch.equal(scores[0], stock_scores[0])  # the first token comes from the prefill row
    assert not torch.allclose(scores[1:], stock_scores[1:], atol=1e-4)


def test_decode_scope_leaves_every_chunk_of_a_chunked_prefill_alone():
    """generate() may prefill a prompt in chunks (10 tokens by 3: the last chunk is one token against a longer
    cache, the shape of a decoding step); every chunk is prefill, so the steps equal those of a whole prefill."""
    model = tiny_model("llama")
    ids = _inputs(batch=1)
    control = HeadControl.attach(model)
    control.set_mask(HeadSet(HEADS, control.n_layers, control.n_heads), method="zero", scope="decode")
    with control.generating(ids.shape[1]):
        whole = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, min_new_tokens=3,
                               do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=0)
    with control.generating(ids.shape[1]):
        chunked = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, min_new_tokens=3,
                                 do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=0,
                                 prefill_chunk_size=3)
    torch.testing.assert_close(torch.stack(chunked.logits), torch.stack(whole.logits), rtol=1e-5, atol=1e-5)


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


def _tiny_gpt_oss():
    """A tiny GPT-OSS: its attention adds a learned sink logit per head (``s_aux``) beside q . K."""
    import transformers

    config = transformers.GptOssConfig(
        hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, num_local_experts=2, num_experts_per_tok=1, sliding_window=4,
        layer_types=["sliding_attention", "full_attention"], rope_parameters={"rope_type": "default", "rope_theta": 1e4},
        vocab_size=VOCAB, max_position_embeddings=256)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32).eval()


def test_uniform_is_refused_where_the_model_adds_attention_sinks():
    """With a sink logit beside the zeroed q . K the weights are not uniform (3ac779b ran it silently)."""
    model = _tiny_gpt_oss()
    ids = _inputs(batch=1)
    control = HeadControl.attach(model)
    control.set_mask(HeadSet(((1, 2),), control.n_layers, control.n_heads), method="zero")
    zeroed = model(ids).logits  # an output edit does not care how the weights were made
    control.set_mask(HeadSet(((1, 2),), control.n_layers, control.n_heads), method="uniform")
    with pytest.raises(RHError, match=r"GptOssAttention adds per-head attention terms \(s_aux\); mask_method=uniform"):
        model(ids)
    control.set_mask(HeadSet((), control.n_layers, control.n_heads))
    assert not torch.equal(model(ids).logits, zeroed)


@pytest.mark.parametrize("term", ["sinks", "position_bias"])
def test_uniform_is_refused_for_any_per_head_logit_term(term):
    """The same refusal for the other names transformers passes such terms under (no cheap model has them)."""
    model = tiny_model("llama")
    control = HeadControl.attach(model)
    control.set_mask(HeadSet(((0, 1),), control.n_layers, control.n_heads), method="uniform")
    module = control.modules[0]
    query, key = torch.randn(1, 4, 3, 16), torch.randn(1, 2, 3, 16)
    extra = {term: torch.zeros(1, 4, 3, 3) if term == "position_bias" else torch.zeros(4)}
    with pytest.raises(RHError, match=rf"adds per-head attention terms \({term}\); mask_method=uniform"):
        control(lambda *args, **kwargs: pytest.fail("attention ran"), module, query, key, key, None, **extra)


def test_recorded_rows_from_a_cache_longer_than_the_sequence_are_refused():
    """The last line of defence behind rh-hf's refusal of static caches: a cache of 32 slots for 10 tokens."""
    rows = TopOneRows(positions=[[torch.zeros(1, 4, dtype=torch.long)] * 2], kv_lengths=[[32, 32]])
    with pytest.raises(RHError, match="cache held 32 keys at step 0 of a 10-token sequence"):
        rows.absolute(prompt_length=10)
    rows.kv_lengths = [[10, 6]]  # the whole sequence, and a sliding layer's window: both fine
    assert rows.absolute(prompt_length=10)[0, 0].tolist() == [[0] * 4, [4] * 4]


@pytest.mark.parametrize("method", ["zero", "mean", "uniform"])
def test_recording_observes_a_masked_heads_own_pattern_before_its_mask(method):
    """The record is where the head looks before any mask edits it (module doc), for every method: the first step's
    top-1 of masked head 1-2 is the stock eager model's, not what a uniform pattern gives (the first visible key)."""
    from rh_models.head_means import HeadMeans

    ids = _inputs(batch=1)
    eager = tiny_model("llama", attn_implementation="eager")
    with torch.no_grad():
        stock = eager(ids, output_attentions=True).attentions[1][0, 2, -1].argmax().item()
    assert stock != 0  # on this prompt the head's own choice and the uniform pattern's differ

    model = tiny_model("llama")
    control = HeadControl.attach(model)
    means = HeadMeans(torch.randn(control.n_layers, control.n_heads, 16)) if method == "mean" else None
    control.set_mask(HeadSet(((1, 2),), control.n_layers, control.n_heads), method=method, means=means)
    control.start_recording()
    _greedy(model, ids, steps=2)
    top1 = control.stop_recording().absolute(ids.shape[1])  # (steps, batch, layers, heads)
    assert top1[0, 0, 1, 2].item() == stock
