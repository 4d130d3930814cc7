"""The slice arithmetic behind ``rh-vllm``: weight edits on (sharded, fused, GQA) projections must equal the
explicit per-head masks, and restoring must give the original weights bit for bit. Pure torch, no vLLM."""

from __future__ import annotations

import re

import pytest
import torch

from rh_models.errors import RHError
from rh_models.vllm_worker import attention_blocks, check_projection, uniform_obstacle
from rh_models.weight_masks import AttentionWeights, HeadSharding, WeightMask, mask_layer, mean_contribution

HIDDEN, HEAD_SIZE, TOKENS = 24, 4, 7


def _weights(n_heads: int, n_kv: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    return {"q": rand(n_heads * HEAD_SIZE, HIDDEN), "k": rand(n_kv * HEAD_SIZE, HIDDEN),
            "v": rand(n_kv * HEAD_SIZE, HIDDEN), "o": rand(HIDDEN, n_heads * HEAD_SIZE),
            "bq": rand(n_heads * HEAD_SIZE), "bk": rand(n_kv * HEAD_SIZE), "bv": rand(n_kv * HEAD_SIZE),
            "x": rand(TOKENS, HIDDEN)}


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal softmax attention of one head: (T, d) each."""
    scores = q @ k.T / HEAD_SIZE**0.5
    scores = scores.masked_fill(torch.triu(torch.ones(TOKENS, TOKENS, dtype=torch.bool), 1), float("-inf"))
    return scores.softmax(-1) @ v


def reference(w: dict, n_heads: int, n_kv: int, masked: set[int], method: str,
              means: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """The definition: per head, a zero query (uniform), a zero head output (zero) or its mean vector at every
    position (mean), then the output projection."""
    q = w["x"] @ w["q"].T + w["bq"]
    k = w["x"] @ w["k"].T + w["bk"]
    v = w["x"] @ w["v"].T + w["bv"]
    group = n_heads // n_kv
    outputs = []
    for h in range(n_heads):
        qh = q[:, h * HEAD_SIZE:(h + 1) * HEAD_SIZE]
        if h in masked and method == "uniform":
            qh = torch.zeros_like(qh)
        kv = slice((h // group) * HEAD_SIZE, (h // group + 1) * HEAD_SIZE)
        out = _attend(qh, k[:, kv], v[:, kv])
        if h in masked and method == "zero":
            out = torch.zeros_like(out)
        elif h in masked and method == "mean":
            out = means[h].expand_as(out)
        outputs.append(out)
    return torch.cat(outputs, -1) @ w["o"].T


def shard(w: dict, n_heads: int, n_kv: int, rank: int, tp: int) -> tuple[AttentionWeights, list[int]]:
    """What vLLM's QKVParallelLinear / RowParallelLinear hold on one rank (KV heads replicated when tp > n_kv)."""
    local_q = n_heads // tp
    kv_heads = [rank * n_kv // tp] if tp >= n_kv else list(range(rank * n_kv // tp, (rank + 1) * n_kv // tp))
    rows = lambda heads: [r for h in heads for r in range(h * HEAD_SIZE, (h + 1) * HEAD_SIZE)]  # noqa: E731
    q_rows, kv_rows = rows(range(rank * local_q, (rank + 1) * local_q)), rows(kv_heads)
    qkv = torch.cat([w["q"][q_rows], w["k"][kv_rows], w["v"][kv_rows]])
    bias = torch.cat([w["bq"][q_rows], w["bk"][kv_rows], w["bv"][kv_rows]])
    return AttentionWeights(qkv.clone(), w["o"][:, q_rows].clone(), HeadSharding(n_heads, HEAD_SIZE, rank, tp, n_kv),
                            bias.clone()), kv_heads


def sharded_forward(parts: list[tuple[AttentionWeights, list[int]]], x: torch.Tensor, n_heads: int,
                    n_kv: int) -> torch.Tensor:
    """Each rank attends with its own heads; the row-parallel output projection sums the ranks (all-reduce)."""
    total = torch.zeros(TOKENS, HIDDEN, dtype=x.dtype)
    for weights, kv_heads in parts:
        local_q = weights.sharding.local_heads
        qkv = x @ weights.qkv_weight.T + weights.qkv_bias
        q, k, v = qkv.split([local_q * HEAD_SIZE, len(kv_heads) * HEAD_SIZE, len(kv_heads) * HEAD_SIZE], -1)
        outs = []
        for j in range(local_q):
            global_head = weights.sharding.tp_rank * local_q + j
            kv_local = kv_heads.index(global_head // (n_heads // n_kv))
            kv = slice(kv_local * HEAD_SIZE, (kv_local + 1) * HEAD_SIZE)
            outs.append(_attend(q[:, j * HEAD_SIZE:(j + 1) * HEAD_SIZE], k[:, kv], v[:, kv]))
        total += torch.cat(outs, -1) @ weights.o_weight.T
    return total


@pytest.mark.parametrize("n_heads,n_kv,tp", [(6, 6, 1), (6, 2, 1), (6, 2, 2), (6, 1, 2), (8, 2, 2), (8, 4, 2)])
@pytest.mark.parametrize("method", ["zero", "uniform", "mean"])
def test_weight_edits_equal_the_per_head_definition(n_heads, n_kv, tp, method):
    w = _weights(n_heads, n_kv)
    masked = {1, n_heads - 1, n_heads // 2}
    g = torch.Generator().manual_seed(5)
    means = {h: torch.randn(HEAD_SIZE, generator=g, dtype=torch.float64) for h in masked}
    parts = [shard(w, n_heads, n_kv, rank, tp) for rank in range(tp)]
    for part, _ in parts:
        part.check(0)  # the exact (q + 2 kv) d x q d layout of every rank passes
    unmasked = sharded_forward(parts, w["x"], n_heads, n_kv)
    torch.testing.assert_close(unmasked, reference(w, n_heads, n_kv, set(), method), rtol=1e-10, atol=1e-10)
    originals = [(p.qkv_weight.clone(), p.qkv_bias.clone(), p.o_weight.clone()) for p, _ in parts]
    # mean: each rank's W_o[:, head] @ mean from its columns before the edit; vLLM adds their sum as rank 0's bias
    contributions = [mean_contribution(p, means) for p, _ in parts] if method == "mean" else []
    assert all(c is not None for c in contributions)  # every rank of these layouts holds one of the masked heads
    edits = WeightMask()
    edited = [mask_layer(p, sorted(masked), method, edits) for p, _ in parts]
    assert sum(map(len, edited)) == len(masked)  # every head edited on exactly one rank
    got = sharded_forward(parts, w["x"], n_heads, n_kv) + sum(contributions, torch.zeros(HIDDEN, dtype=torch.float64))
    torch.testing.assert_close(got, reference(w, n_heads, n_kv, masked, method, means), rtol=1e-10, atol=1e-10)
    assert not torch.allclose(got, unmasked)
    edits.restore()
    for (p, _), (qkv, bias, o) in zip(parts, originals):
        assert torch.equal(p.qkv_weight, qkv) and torch.equal(p.qkv_bias, bias) and torch.equal(p.o_weight, o)


def test_uniform_edit_gives_uniform_attention_over_visible_positions():
    w = _weights(4, 2)
    weights, kv = shard(w, 4, 2, 0, 1)
    mask_layer(weights, [2], "uniform", WeightMask())
    q = (w["x"] @ weights.qkv_weight.T + weights.qkv_bias)[:, 2 * HEAD_SIZE:3 * HEAD_SIZE]
    assert torch.equal(q, torch.zeros_like(q))  # so every visible score is 0 -> softmax uniform


def test_sharding_maps_global_heads_to_one_rank():
    ranks = [HeadSharding(32, 128, r, 4) for r in range(4)]
    assert [[s.local_index(h) for s in ranks] for h in (0, 7, 8, 31)] == [
        [0, None, None, None], [7, None, None, None], [None, 0, None, None], [None, None, None, 7]]
    assert ranks[1].query_rows(3) == slice(384, 512) and ranks[1].output_columns(3) == slice(384, 512)
    with pytest.raises(RHError, match="do not split"):
        HeadSharding(9, 64, 0, 2)


def test_quantized_or_packed_weights_are_refused():
    weights = AttentionWeights(torch.zeros(8, 4, dtype=torch.int8), torch.zeros(4, 8), HeadSharding(2, 2))
    with pytest.raises(RHError, match="not a plain float"):
        weights.check(3)
    fp8 = AttentionWeights(torch.zeros(12, 4).to(torch.float8_e4m3fn), torch.zeros(4, 4), HeadSharding(2, 2))
    with pytest.raises(RHError, match="layer 3: the QKV projection weight is torch.float8_e4m3fn"):
        fp8.check(3)  # is_floating_point() is True for float8: the old check let it through


@pytest.mark.parametrize("qkv_rows,o_cols,bias,message", [
    (13, 8, None, "the QKV projection has 13 rows, not (q + 2*kv)*d = (4 + 2*1)*2 = 12"),  # a fused extra row
    (11, 8, None, "the QKV projection has 11 rows"),
    (12, 9, None, "the output projection has 9 columns, not q*d = 4*2 = 8"),
    (12, 8, 11, "the QKV bias has shape (11,), not (12,)"),
])
def test_a_projection_whose_shape_is_not_exactly_q_plus_2kv_by_q_is_refused(qkv_rows, o_cols, bias, message):
    sharding = HeadSharding(4, 2, total_kv_heads=1)  # 4 query heads of size 2 sharing 1 key/value head
    AttentionWeights(torch.zeros(12, 6), torch.zeros(6, 8), sharding, torch.zeros(12)).check(0)
    bad = AttentionWeights(torch.zeros(qkv_rows, 6), torch.zeros(6, o_cols), sharding,
                           None if bias is None else torch.zeros(bias))
    with pytest.raises(RHError, match=re.escape(f"layer 5: {message}")):
        bad.check(5)


def test_kv_heads_per_rank_follow_vllms_sharding():
    assert [HeadSharding(8, 4, r, 2, 2).local_kv_heads for r in range(2)] == [1, 1]
    assert HeadSharding(8, 4, 0, 4, 2).local_kv_heads == 1  # fewer KV heads than ranks: one replicated head
    assert HeadSharding(8, 4, 0, 2, 8).local_kv_heads == 4
    with pytest.raises(RHError, match="key/value heads do not fit"):
        HeadSharding(6, 4, 0, 2, 3)


def test_a_quantized_projection_module_is_refused_in_one_line():
    class AWQ:
        qweight = torch.zeros(4, 4, dtype=torch.int32)
        quant_method = type("AWQLinearMethod", (), {})()

    with pytest.raises(RHError, match="layer 2: the QKV projection has no plain weight matrix .quantized: AWQLinear"):
        check_projection(AWQ(), "QKV", 2)


def test_two_attention_blocks_in_one_layer_are_refused():
    def children(module):
        return ("qkv", "o", "attn") if module == "attention" else None

    modules = [("model.layers.3.self_attn", "attention"), ("model.layers.3.mlp", "mlp"),
               ("model.layers.4.self_attn", "attention")]
    assert sorted(attention_blocks(modules, children)) == [3, 4]
    with pytest.raises(RHError, match=r"two attention blocks claim layer 3 \(model.layers.3.self_attn and "
                                      r"model.layers.3.cross_attn\)"):
        attention_blocks([*modules, ("model.layers.3.cross_attn", "attention")], children)


def test_uniform_is_refused_where_a_zero_query_is_not_uniform_attention():
    class Block(torch.nn.Module):
        def __init__(self, norm: torch.nn.Module | None) -> None:
            super().__init__()
            if norm is not None:
                self.q_norm = norm

    attn = type("Attn", (), {"impl": type("Impl", (), {"alibi_slopes": None})()})()
    assert uniform_obstacle(Block(torch.nn.RMSNorm(8)), attn, 8) is None  # per-head norm (Qwen3, Gemma3)
    assert "has a bias" in uniform_obstacle(Block(torch.nn.LayerNorm(8)), attn, 8)
    assert "spans" in uniform_obstacle(Block(torch.nn.RMSNorm(64)), attn, 8)  # norm over all heads (OLMo2)
    alibi = type("Attn", (), {"impl": type("Impl", (), {"alibi_slopes": [0.5]})()})()
    assert "ALiBi" in uniform_obstacle(Block(None), alibi, 8)
