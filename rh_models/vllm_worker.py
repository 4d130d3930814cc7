"""The vLLM side of ``rh-vllm``: a worker extension that edits attention weights on every worker.

vLLM mixes ``worker_extension_cls`` into each worker class, and ``LLM.collective_rpc("rh_...", args=...)``
calls its methods on every worker (every tensor-parallel rank) with plain data: lists of heads and method
names, never pickled functions. Each rank edits only the heads it holds (:mod:`rh_models.weight_masks`).

``rh_prepare`` runs once when the engine starts, before anything is generated: it checks every attention block
(one per layer, unquantized, exact ``(q + 2 kv) d`` x ``q d`` layout) and, on the CPU backend, where vLLM repacks
linear weights for oneDNN and drops the plain matrices, reloads them as plain matrices multiplied by
``torch.nn.functional.linear`` (vLLM's own fallback path). Every condition, the unmasked one included, then runs
the same kernels on the same weights, and a mask can only be told apart from ``none`` by what it edits. GPUs keep
plain weights, so nothing is reloaded there. The vLLM internals this needs live in :mod:`rh_models.vllm_internals`.

Mean ablation (``rh_set_mask(..., "mean", means)``) zeroes the heads' output columns like ``zero`` and returns
each rank's ``W_o[:, head] @ mean`` sums; the driver adds the ranks' sums up and hands them to
``rh_add_output_bias``, which rank 0 adds to its output projections' bias (vLLM's row-parallel projection adds the
bias on rank 0 only, before the all-reduce), creating a bias where the projection had none.

This module imports vLLM lazily (through that module), so importing it (to name it) costs nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Callable

import torch

from rh_models import vllm_internals as internals
from rh_models.errors import RHError
from rh_models.heads import format_head
from rh_models.weight_masks import AttentionWeights, HeadSharding, WeightMask, mask_layer, mean_contribution

EXTENSION_QUALNAME = "rh_models.vllm_worker.RHWorkerExtension"
_LAYER_INDEX = re.compile(r"\.(\d+)\.")
Block = tuple[torch.nn.Module, Any, Any, Any]  # (attention block, QKV projection, output projection, attention)


def _layer_index(name: str) -> int:
    found = _LAYER_INDEX.findall(f".{name}.")
    if not found:
        raise RHError(f"cannot tell which layer the attention block {name} belongs to")
    return int(found[-1])


def attention_blocks(named_modules: Iterable[tuple[str, torch.nn.Module]],
                     children: Callable[[torch.nn.Module], tuple[Any, Any, Any] | None]) -> dict[int, Block]:
    """{layer: block} over a model's modules; refuses two blocks in one layer (cross- and self-attention, say)."""
    blocks: dict[int, Block] = {}
    names: dict[int, str] = {}
    for name, module in named_modules:
        found = children(module)
        if found is None:
            continue
        layer = _layer_index(name)
        if layer in blocks:
            raise RHError(f"two attention blocks claim layer {layer} ({names[layer]} and {name}); rh-vllm names heads "
                          "by layer and cannot tell which one a head belongs to")
        blocks[layer], names[layer] = (module, *found), name
    return blocks


def check_projection(layer: Any, what: str, index: int) -> None:
    """Refuse a quantized projection (AWQ/GPTQ ``qweight``, FP8, any non-plain method) in one line."""
    if hasattr(layer, "qweight") or not isinstance(getattr(layer, "weight", None), torch.Tensor):
        raise RHError(f"layer {index}: the {what} projection has no plain weight matrix (quantized: "
                      f"{type(getattr(layer, 'quant_method', None)).__name__}); rh-vllm masks unquantized weights only")
    method = internals.quantization(layer)
    if method is not None:
        raise RHError(f"layer {index}: the {what} projection is quantized ({method}); rh-vllm masks unquantized "
                      "weights only")


def uniform_obstacle(block: torch.nn.Module, attn: Any, head_size: int) -> str | None:
    """Why a zero query would not give uniform attention in this block, or None when it does."""
    for name, child in block.named_children():
        if "q" in name and "norm" in name:
            weight = getattr(child, "weight", None)
            if getattr(child, "bias", None) is not None:
                return f"its query norm {name} has a bias (a zero query does not stay zero)"
            if weight is not None and tuple(weight.shape) != (head_size,):
                return f"its query norm {name} spans {tuple(weight.shape)}, not one head ({head_size})"
    return internals.alibi_or_sinks(attn)


def _weights(qkv: Any, out: Any) -> AttentionWeights:
    heads = internals.qkv_heads(qkv)
    sharding = HeadSharding(heads["n_heads"], heads["head_size"], heads["tp_rank"], heads["tp_size"],
                            heads["n_kv_heads"])
    bias = getattr(qkv, "bias", None)
    return AttentionWeights(qkv.weight.data, out.weight.data, sharding, bias.data if bias is not None else None)


def _reply(method: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """A refusal comes back as ``{"error": "..."}`` (the driver raises it as one line) rather than as an
    exception, which vLLM would wrap in a worker traceback."""
    def call(self, *args: Any) -> dict[str, Any]:
        try:
            return method(self, *args)
        except RHError as error:
            self.rh_clear_mask()
            return {"error": str(error)}
    call.__name__, call.__doc__ = method.__name__, method.__doc__
    return call


class RHWorkerExtension:
    """Methods reached through ``collective_rpc``; every name starts with ``rh_`` to stay clear of vLLM's."""

    def _rh_blocks(self) -> dict[int, Block]:
        model = self.get_model()
        blocks = attention_blocks(model.named_modules(), internals.attention_block_children)
        if not blocks:
            raise RHError(f"{type(model).__name__}: no standard vLLM attention block "
                          "(QKVParallelLinear + Attention + RowParallelLinear); rh-vllm cannot mask it")
        return blocks

    @_reply
    def rh_prepare(self) -> dict[str, Any]:
        """Once, before any generation: check every block and put the weights on the path every condition uses.

        Returns the global shape (layers, query and key/value heads) and this rank's place for the driver's checks.
        """
        blocks = self._rh_blocks()
        for layer, (_, qkv, out, _) in blocks.items():
            check_projection(qkv, "QKV", layer)
            check_projection(out, "output", layer)
        reloaded = internals.reload_plain_weights(self.get_model(), self.vllm_config)
        for layer, (_, qkv, out, _) in blocks.items():
            _weights(qkv, out).check(layer)
        self._rh_prepared = True
        first = blocks[min(blocks)][1]
        return {**internals.qkv_heads(first), "n_layers": len(blocks), "layers": sorted(blocks),
                "reloaded": reloaded, "architecture": type(self.get_model()).__name__}

    @_reply
    def rh_set_mask(self, heads: list[list[int]], method: str, means: dict[str, list[float]] | None = None
                    ) -> dict[str, Any]:
        """Replace any previous mask by ``heads`` (global layer, query head); returns what this rank edited.

        ``mean``: ``means`` maps ``"L-H"`` to each masked head's mean output; the reply's ``bias`` holds this rank's
        ``W_o[:, head] @ mean`` sum per layer, for :meth:`rh_add_output_bias`.
        """
        self.rh_clear_mask()
        if not getattr(self, "_rh_prepared", False):
            raise RHError("rh_set_mask before rh_prepare: the engine's weights are not on the masked path yet")
        if not heads:
            return {"edited": [], "checked": 0}
        blocks = self._rh_blocks()
        by_layer: dict[int, list[int]] = {}
        for layer, head in heads:
            if layer not in blocks:
                raise RHError(f"layer {layer} has no attention block on this worker "
                              f"(layers {min(blocks)}..{max(blocks)})")
            by_layer.setdefault(int(layer), []).append(int(head))
        if method == "uniform":
            for layer in by_layer:
                block, qkv, _, attn = blocks[layer]
                reason = uniform_obstacle(block, attn, internals.qkv_heads(qkv)["head_size"])
                if reason:
                    raise RHError(f"mask_method=uniform cannot be a weight edit for {type(block).__name__}: {reason}; "
                                  "use mask_method=zero")
        if method == "mean":
            missing = [format_head(head) for head in heads if format_head(head) not in (means or {})]
            if missing:
                raise RHError(f"mask_method=mean without the mean of head(s) {', '.join(missing)}")
        self._rh_mask = WeightMask()
        edited: list[list[int]] = []
        bias: dict[int, list[float]] = {}
        for layer, layer_heads in sorted(by_layer.items()):
            _, qkv, out, _ = blocks[layer]
            weights = _weights(qkv, out)
            weights.check(layer)
            if method == "mean":
                if getattr(out, "skip_bias_add", False):
                    raise RHError(f"layer {layer}: the output projection hands its bias to the caller (skip_bias_add); "
                                  "rh-vllm cannot add a head's mean output to it")
                vectors = {h: torch.tensor(means[format_head((layer, h))], dtype=torch.float64) for h in layer_heads}
                part = mean_contribution(weights, vectors)  # from the columns before they are zeroed
                if part is not None:
                    bias[layer] = part.tolist()
            local = mask_layer(weights, layer_heads, method, self._rh_mask)
            edited += [[layer, h] for h in layer_heads if weights.sharding.local_index(h) in local]
        return {"edited": edited, "checked": self._rh_probe(blocks, by_layer, method), "bias": bias}

    @_reply
    def rh_add_output_bias(self, bias: dict[int, list[float]]) -> dict[str, Any]:
        """Rank 0: add ``bias[layer]`` (every rank's mean contributions, summed) to that layer's output projection
        bias, creating one where there is none; ``rh_clear_mask`` puts back the bias (or its absence) exactly."""
        if self._rh_mask is None:
            raise RHError("rh_add_output_bias without a mean mask")
        blocks = self._rh_blocks()
        added = []
        for layer, values in sorted((int(layer), values) for layer, values in bias.items()):
            out = blocks[layer][2]
            if getattr(out, "tp_rank", 0) != 0:
                continue  # vLLM adds the bias of rank 0 only
            vector = torch.tensor(values, dtype=torch.float64)
            if vector.shape != (out.weight.shape[0],):
                raise RHError(f"layer {layer}: a bias of {vector.numel()} values for an output of {out.weight.shape[0]}")
            with torch.no_grad():
                if out.bias is None:
                    self._rh_biases.append((out, None))
                    out.bias = torch.nn.Parameter(vector.to(out.weight.dtype).to(out.weight.device), requires_grad=False)
                else:
                    self._rh_biases.append((out, out.bias.detach().clone()))
                    out.bias.copy_((out.bias.double() + vector.to(out.bias.device)).to(out.bias.dtype))
            added.append(layer)
        return {"added": added}

    def _rh_probe(self, blocks: dict[int, Block], by_layer: dict[int, list[int]], method: str) -> int:
        """Run each edited projection module as the model does: its masked head must now yield exact zeros."""
        checked = 0
        with torch.no_grad():
            for layer, layer_heads in by_layer.items():
                _, qkv, out, _ = blocks[layer]
                sharding = _weights(qkv, out).sharding
                for head in layer_heads:
                    local = sharding.local_index(head)
                    if local is None:
                        continue
                    if method in ("zero", "mean"):  # mean: the bias is added later, the columns are zero
                        x = torch.zeros(1, sharding.output_width, dtype=out.weight.dtype, device=out.weight.device)
                        x[0, sharding.output_columns(local)] = 1.0
                        ok = bool((internals.projection_product(out, x) == 0).all())
                    else:
                        x = torch.ones(1, qkv.weight.shape[1], dtype=qkv.weight.dtype, device=qkv.weight.device)
                        y, _ = qkv(x)
                        ok = bool((y[0, sharding.query_rows(local)] == 0).all())
                    if not ok:
                        raise RHError(f"self-check failed: after the weight edit head {format_head((layer, head))}'s "
                                      f"projection still reads/produces non-zero values ({type(out).__name__}); "
                                      "refusing a silent no-op")
                    checked += 1
        return checked

    def rh_clear_mask(self) -> int:
        """Restore every edited slice bit-exactly; returns how many slices were restored."""
        mask = getattr(self, "_rh_mask", None)
        count = len(mask) if mask is not None else 0
        if mask is not None:
            mask.restore()
        with torch.no_grad():
            for out, original in reversed(getattr(self, "_rh_biases", [])):
                if original is None:
                    out.bias = None  # the projection had no bias: none again (not a zero one)
                else:
                    out.bias.copy_(original)
        self._rh_mask, self._rh_biases = None, []
        return count
