"""Head masks as exact weight edits, for engines whose attention kernels we must not touch (vLLM).

Why weight edits: both mask methods are identities on the projection weights, so an engine keeps its CUDA
graphs, ``torch.compile``, every attention backend and tensor parallelism, and nothing runs per token:

- ``zero``: head h's slice of the output-projection input is zero  <=>  columns ``W_o[:, h*d:(h+1)*d]`` are
  zero (the output bias, if any, stays in both).
- ``uniform``: head h's query is zero  <=>  rows ``W_q[h*d:(h+1)*d, :]`` of the (fused) QKV projection and
  their bias are zero. After a per-head RMS norm and RoPE a zero query stays zero, every score is 0 and
  softmax is uniform over exactly the positions the model may see (what ``rh-hf`` does).
- ``mean``: head h's slice of the output-projection input is its mean vector m  <=>  its columns are zero and
  ``W_o[:, h*d:(h+1)*d] @ m`` is added to the output projection's bias (:func:`mean_contribution`; the engine
  adds the bias, see :mod:`rh_models.vllm_worker`).

Under tensor parallelism (Megatron sharding, what vLLM's ``QKVParallelLinear`` / ``RowParallelLinear`` do)
rank r holds query heads ``[r*n, (r+1)*n)`` with ``n = total_heads / tp_size``; its fused QKV weight is
``[q (n*d) | k | v]`` rows and its output projection takes the same n heads' columns. GQA does not move the
query rows (key/value heads are sharded or replicated after them). This module is pure torch: the slice
arithmetic is unit-tested against an explicit per-head computation, a simulated 2-way shard included.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rh_models.errors import RHError

EDITABLE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # not float8 nor ints


@dataclass(frozen=True)
class HeadSharding:
    """Which query heads one tensor-parallel rank holds, and where their rows / columns sit locally."""

    total_heads: int
    head_size: int
    tp_rank: int = 0
    tp_size: int = 1
    total_kv_heads: int | None = None  # None: one key/value head per query head (no GQA)

    def __post_init__(self) -> None:
        if self.total_heads % self.tp_size:
            raise RHError(f"{self.total_heads} query heads do not split over tensor_parallel_size={self.tp_size}")
        kv = self.kv_heads
        if self.total_heads % kv or (kv % self.tp_size if kv >= self.tp_size else self.tp_size % kv):
            raise RHError(f"{kv} key/value heads do not fit {self.total_heads} query heads over "
                          f"tensor_parallel_size={self.tp_size}")

    @property
    def kv_heads(self) -> int:
        return self.total_kv_heads or self.total_heads

    @property
    def local_heads(self) -> int:
        return self.total_heads // self.tp_size

    @property
    def local_kv_heads(self) -> int:
        """Key/value heads on this rank: a share of them, or one replicated head when there are fewer than ranks."""
        return max(1, self.kv_heads // self.tp_size)

    def local_index(self, head: int) -> int | None:
        """The rank-local index of global query head ``head``, or None when another rank holds it."""
        start = self.tp_rank * self.local_heads
        return head - start if start <= head < start + self.local_heads else None

    def query_rows(self, local: int) -> slice:
        """Rows of the local fused QKV weight (and bias) that produce this head's query."""
        return slice(local * self.head_size, (local + 1) * self.head_size)

    def output_columns(self, local: int) -> slice:
        """Columns of the local output-projection weight that read this head's attention output."""
        return slice(local * self.head_size, (local + 1) * self.head_size)

    @property
    def qkv_rows(self) -> int:
        """Rows of the local fused QKV weight: ``(q + 2 kv) * d``, nothing else."""
        return (self.local_heads + 2 * self.local_kv_heads) * self.head_size

    @property
    def output_width(self) -> int:
        """Columns of the local output projection: ``q * d``, nothing else."""
        return self.local_heads * self.head_size


@dataclass
class AttentionWeights:
    """One layer's projections on one rank: fused QKV weight/bias and output-projection weight."""

    qkv_weight: torch.Tensor
    o_weight: torch.Tensor
    sharding: HeadSharding
    qkv_bias: torch.Tensor | None = None

    def check(self, layer: int) -> None:
        """Refuse layouts we cannot edit exactly: quantized or packed weights, any width but the exact one.

        The fused QKV weight must have exactly ``(q + 2 kv) * d`` rows (and its bias as many entries) and the output
        projection exactly ``q * d`` columns: a fused extra (a gate, an indexer) or another order would make our
        row and column slices land on something else.
        """
        s = self.sharding
        for name, tensor in (("QKV", self.qkv_weight), ("output", self.o_weight)):
            if tensor.ndim != 2 or tensor.dtype not in EDITABLE_DTYPES:
                raise RHError(f"layer {layer}: the {name} projection weight is {tensor.dtype} {tuple(tensor.shape)}, "
                              "not a plain float16/bfloat16/float32 matrix (quantized?); rh-vllm masks unquantized "
                              "weights only")
        if self.qkv_weight.shape[0] != s.qkv_rows:
            raise RHError(f"layer {layer}: the QKV projection has {self.qkv_weight.shape[0]} rows, not (q + 2*kv)*d = "
                          f"({s.local_heads} + 2*{s.local_kv_heads})*{s.head_size} = {s.qkv_rows}; rh-vllm cannot tell "
                          "which rows are a head's query")
        if self.qkv_bias is not None and tuple(self.qkv_bias.shape) != (s.qkv_rows,):
            raise RHError(f"layer {layer}: the QKV bias has shape {tuple(self.qkv_bias.shape)}, not ({s.qkv_rows},)")
        if self.o_weight.shape[1] != s.output_width:
            raise RHError(f"layer {layer}: the output projection has {self.o_weight.shape[1]} columns, not q*d = "
                          f"{s.local_heads}*{s.head_size} = {s.output_width}; rh-vllm cannot tell which columns read a "
                          "head")


@dataclass
class WeightMask:
    """Edits applied in place with a copy of only the edited slices, so ``restore`` is bit-exact."""

    saved: list[tuple[torch.Tensor, tuple[slice, ...], torch.Tensor]] = field(default_factory=list)

    def zero(self, tensor: torch.Tensor, index: tuple[slice, ...]) -> None:
        with torch.no_grad():
            self.saved.append((tensor, index, tensor[index].clone()))
            tensor[index] = 0

    def restore(self) -> None:
        """Put every edited slice back (latest first, so overlapping edits unwind correctly)."""
        with torch.no_grad():
            for tensor, index, original in reversed(self.saved):
                tensor[index] = original
        self.saved.clear()

    def __len__(self) -> int:
        return len(self.saved)


def mean_contribution(weights: AttentionWeights, means: dict[int, torch.Tensor]) -> torch.Tensor | None:
    """``sum_h W_o[:, h*d:(h+1)*d] @ mean_h`` over the heads in ``means`` (global head -> vector) this rank holds,
    from the unedited columns, accumulated in float64; None when this rank holds none of them."""
    total = None
    for head, vector in means.items():
        local = weights.sharding.local_index(head)
        if local is None:
            continue
        if vector.shape != (weights.sharding.head_size,):
            raise RHError(f"the mean of head {head} has shape {tuple(vector.shape)}, the heads output "
                          f"{weights.sharding.head_size}")
        columns = weights.o_weight[:, weights.sharding.output_columns(local)].double()
        part = columns @ vector.double().to(columns.device)
        total = part if total is None else total + part
    return total


def mask_layer(weights: AttentionWeights, heads: list[int], method: str, edits: WeightMask) -> list[int]:
    """Apply ``method`` to the global query ``heads`` this rank holds; returns the local indices edited.

    ``mean`` edits the weights as ``zero`` does; its bias (:func:`mean_contribution`) is the caller's to add."""
    local = [i for i in (weights.sharding.local_index(h) for h in heads) if i is not None]
    for index in local:
        if method in ("zero", "mean"):
            edits.zero(weights.o_weight, (slice(None), weights.sharding.output_columns(index)))
        elif method == "uniform":
            rows = weights.sharding.query_rows(index)
            edits.zero(weights.qkv_weight, (rows, slice(None)))
            if weights.qkv_bias is not None:
                edits.zero(weights.qkv_bias, (rows,))
        else:
            raise RHError(f"mask_method={method} cannot be expressed as a weight edit (zero, uniform or mean)")
    return local
