"""The prefix cascade (cached keys unmasked + new keys causal, merged by log-sum-exp) is the same attention.

References are the stock sdpa path of the same model continuing the same cache with transformers' explicit
causal mask, and a from-scratch prefill of the whole sequence.
"""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHITECTURES, VOCAB, tiny_model
from transformers import DynamicCache

from rh_models.attention import HeadControl
from rh_models.cascade import PrefixCascade
from rh_models.heads import HeadSet

# the sliding window of tiny gemma3 (6) is shorter than the prompt: its sliding layers must not take the cascade
WINDOWED = {"gemma3"}


@torch.no_grad()
def _continue(model, prefix_ids, new_ids):
    """Logits of ``new_ids`` prefilled after a cache of ``prefix_ids`` (what prefix reuse does)."""
    cache = DynamicCache(config=model.config)
    model(prefix_ids, past_key_values=cache, use_cache=True)
    return model(new_ids, past_key_values=cache, use_cache=True).logits


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_continuation_over_a_cache_matches_stock_sdpa(arch):
    model = tiny_model(arch)
    ids = torch.randint(3, VOCAB, (1, 40), generator=torch.Generator().manual_seed(2))
    prefix, new = ids[:, :25], ids[:, 25:]
    with torch.no_grad():
        from_scratch = model(ids).logits[:, 25:]

    control = HeadControl.attach(model)
    control.set_mask(HeadSet(((1, 2),), control.n_layers, control.n_heads))  # masking composes with it
    stock = _continue(model, prefix, new)
    control.cascade = PrefixCascade()
    cascaded = _continue(model, prefix, new)

    torch.testing.assert_close(cascaded, stock, rtol=1e-5, atol=1e-5)
    layers = control.n_layers // 2 if arch in WINDOWED else control.n_layers
    assert control.cascade.calls == layers, "the cascade must run on every full-attention layer"
    control.cascade = None
    control.set_mask(HeadSet((), control.n_layers, control.n_heads))
    torch.testing.assert_close(_continue(model, prefix, new), from_scratch, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_padding_or_a_single_query_keeps_the_stock_function():
    model = tiny_model("llama")
    control = HeadControl.attach(model)
    control.cascade = cascade = PrefixCascade()
    ids = torch.randint(3, VOCAB, (2, 30), generator=torch.Generator().manual_seed(3))
    cache = DynamicCache(config=model.config)
    padding = torch.ones_like(ids)
    padding[1, :4] = 0  # left padding in the second row: the continuation's mask is not the plain causal one
    model(ids[:, :20], attention_mask=padding[:, :20], past_key_values=cache, use_cache=True)
    model(ids[:, 20:], attention_mask=padding, past_key_values=cache, use_cache=True)
    assert cascade.calls == 0
    model(ids[:, :1], attention_mask=torch.ones(2, 31, dtype=torch.long), past_key_values=cache, use_cache=True)
    assert cascade.calls == 0  # a decoding step: nothing above the diagonal to skip


@torch.no_grad()
def test_eager_models_never_take_the_cascade():
    model = tiny_model("llama", attn_implementation="eager")
    control = HeadControl.attach(model)
    control.cascade = cascade = PrefixCascade()
    cache = DynamicCache(config=model.config)
    ids = torch.randint(3, VOCAB, (1, 20), generator=torch.Generator().manual_seed(4))
    model(ids[:, :10], past_key_values=cache, use_cache=True)
    model(ids[:, 10:], past_key_values=cache, use_cache=True)
    assert cascade.calls == 0
