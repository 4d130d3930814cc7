"""The vLLM side of ``rh-vllm``: a worker extension that edits attention weights on every worker.

vLLM mixes ``worker_extension_cls`` into each worker class, and ``LLM.collective_rpc("rh_...", args=...)``
calls its methods on every worker (every tensor-parallel rank) with plain data: lists of heads and method
names, never pickled functions. Each rank edits only the heads it holds (:mod:`rh_models.weight_masks`).

On the CPU backend vLLM repacks linear weights for oneDNN and drops the plain matrices, which leaves nothing
to edit. The first mask there reloads the checkpoint through the model's own ``load_weights`` into plain
matrices that run through ``torch.nn.functional.linear`` (vLLM's own fallback path): slower GEMMs, exact
edits. GPUs keep plain weights, so nothing is reloaded there.

This module imports vLLM lazily inside methods, so importing it (to name it) costs nothing.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from rh_models.errors import RHError
from rh_models.weight_masks import AttentionWeights, HeadSharding, WeightMask, mask_layer

EXTENSION_QUALNAME = "rh_models.vllm_worker.RHWorkerExtension"
_LAYER_INDEX = re.compile(r"\.(\d+)\.")


def _attention_children(module: torch.nn.Module) -> tuple[Any, Any, Any] | None:
    """(qkv projection, output projection, attention) when ``module`` is a standard vLLM attention block."""
    from vllm.model_executor.layers.attention import Attention
    from vllm.model_executor.layers.linear import QKVParallelLinear, RowParallelLinear

    qkv = [c for c in module.children() if isinstance(c, QKVParallelLinear)]
    out = [c for c in module.children() if isinstance(c, RowParallelLinear)]
    attn = [c for c in module.children() if isinstance(c, Attention)]
    if len(qkv) == 1 and len(out) == 1 and len(attn) == 1:
        return qkv[0], out[0], attn[0]
    return None


def _layer_index(name: str) -> int:
    found = _LAYER_INDEX.findall(f".{name}.")
    if not found:
        raise RHError(f"cannot tell which layer the attention block {name} belongs to")
    return int(found[-1])


def uniform_obstacle(block: torch.nn.Module, attn: Any, head_size: int) -> str | None:
    """Why a zero query would not give uniform attention in this block, or None when it does."""
    for name, child in block.named_children():
        if "q" in name and "norm" in name:
            weight = getattr(child, "weight", None)
            if getattr(child, "bias", None) is not None:
                return f"its query norm {name} has a bias (a zero query does not stay zero)"
            if weight is not None and tuple(weight.shape) != (head_size,):
                return f"its query norm {name} spans {tuple(weight.shape)}, not one head ({head_size})"
    impl = getattr(attn, "impl", None)
    if getattr(impl, "alibi_slopes", None) is not None:
        return "it adds ALiBi biases to the scores"
    if getattr(impl, "sinks", None) is not None or getattr(attn, "sinks", None) is not None:
        return "it has attention sinks"
    return None


class RHWorkerExtension:
    """Methods reached through ``collective_rpc``; every name starts with ``rh_`` to stay clear of vLLM's."""

    def _rh_blocks(self) -> dict[int, tuple[torch.nn.Module, Any, Any, Any]]:
        blocks: dict[int, tuple[torch.nn.Module, Any, Any, Any]] = {}
        for name, module in self.model_runner.model.named_modules():
            children = _attention_children(module)
            if children is not None:
                blocks[_layer_index(name)] = (module, *children)
        if not blocks:
            raise RHError(f"{type(self.model_runner.model).__name__}: no standard vLLM attention block "
                          "(QKVParallelLinear + Attention + RowParallelLinear); rh-vllm cannot mask it")
        return blocks

    def rh_attention_shape(self) -> dict[str, Any]:
        """Global shape (layers, query heads) and this rank's sharding, for the driver's checks."""
        try:
            blocks = self._rh_blocks()
        except RHError as error:
            return {"error": str(error)}
        qkv = blocks[min(blocks)][1]
        return {
            "n_layers": len(blocks),
            "layers": sorted(blocks),
            "n_heads": int(qkv.total_num_heads),
            "n_kv_heads": int(qkv.total_num_kv_heads),
            "head_size": int(qkv.head_size),
            "tp_rank": int(qkv.tp_rank),
            "tp_size": int(qkv.tp_size),
            "architecture": type(self.model_runner.model).__name__,
        }

    def _rh_weights(self, qkv: Any, out: Any) -> AttentionWeights:
        sharding = HeadSharding(int(qkv.total_num_heads), int(qkv.head_size), int(qkv.tp_rank), int(qkv.tp_size))
        return AttentionWeights(qkv.weight.data, out.weight.data, sharding,
                                qkv.bias.data if getattr(qkv, "bias", None) is not None else None)

    def _rh_plain_weights(self) -> int:
        """CPU: reload checkpoint weights vLLM dropped after repacking, as plain matrices (see module doc)."""
        from vllm.model_executor.layers.linear import WEIGHT_LOADER_V2_SUPPORTED, LinearBase
        from vllm.model_executor.model_loader import get_model_loader

        model = self.model_runner.model
        dropped = [m for m in model.modules() if isinstance(m, LinearBase) and m.weight.numel() == 0]
        if not dropped:
            return 0
        for layer in dropped:
            layer._cpu_skip_gemm_dispatch = True  # vLLM's own switch: keep the plain weight, use F.linear
            # the same call the layer's constructor made: a fresh weight parameter with vLLM's own loader
            v2 = type(layer.quant_method).__name__ in WEIGHT_LOADER_V2_SUPPORTED and hasattr(layer, "weight_loader_v2")
            layer.quant_method.create_weights(
                layer,
                input_size_per_partition=getattr(layer, "input_size_per_partition", layer.input_size),
                output_partition_sizes=layer.output_partition_sizes,
                input_size=layer.input_size,
                output_size=layer.output_size,
                params_dtype=layer.params_dtype,
                weight_loader=layer.weight_loader_v2 if v2 else layer.weight_loader,
            )
        loader = get_model_loader(self.vllm_config.load_config)
        model.load_weights(loader.get_all_weights(self.model_config, model))
        for layer in dropped:
            layer.quant_method.process_weights_after_loading(layer)
        return len(dropped)

    def rh_set_mask(self, heads: list[list[int]], method: str) -> dict[str, Any]:
        """Replace any previous mask by ``heads`` (global layer, query head); returns what this rank edited.

        A refusal comes back as ``{"error": "..."}`` (the driver raises it as one line) rather than as an
        exception, which vLLM would wrap in a worker traceback.
        """
        try:
            return self._rh_set_mask(heads, method)
        except RHError as error:
            self.rh_clear_mask()
            return {"error": str(error)}

    def _rh_set_mask(self, heads: list[list[int]], method: str) -> dict[str, Any]:
        self.rh_clear_mask()
        if not heads:
            return {"edited": [], "reloaded": 0}
        blocks = self._rh_blocks()
        by_layer: dict[int, list[int]] = {}
        for layer, head in heads:
            if layer not in blocks:
                raise RHError(f"layer {layer} has no attention block on this worker (layers {min(blocks)}..{max(blocks)})")
            by_layer.setdefault(int(layer), []).append(int(head))
        if method == "uniform":
            for layer in by_layer:
                block, qkv, _, attn = blocks[layer]
                reason = uniform_obstacle(block, attn, int(qkv.head_size))
                if reason:
                    raise RHError(f"mask_method=uniform cannot be a weight edit for {type(block).__name__}: {reason}; "
                                  "use mask_method=zero")
        reloaded = self._rh_plain_weights()
        self._rh_mask = WeightMask()
        edited: list[list[int]] = []
        for layer, layer_heads in sorted(by_layer.items()):
            _, qkv, out, _ = blocks[layer]
            weights = self._rh_weights(qkv, out)
            weights.check(layer)
            local = mask_layer(weights, layer_heads, method, self._rh_mask)
            edited += [[layer, h] for h in layer_heads if weights.sharding.local_index(h) in local]
        self._rh_checked = self._rh_probe(blocks, by_layer, method)
        return {"edited": edited, "reloaded": reloaded, "checked": self._rh_checked}

    def _rh_probe(self, blocks: dict, by_layer: dict[int, list[int]], method: str) -> int:
        """Run each edited projection module as the model does: its masked head must now yield exact zeros."""
        checked = 0
        with torch.no_grad():
            for layer, layer_heads in by_layer.items():
                _, qkv, out, _ = blocks[layer]
                sharding = self._rh_weights(qkv, out).sharding
                for head in layer_heads:
                    local = sharding.local_index(head)
                    if local is None:
                        continue
                    if method == "zero":
                        x = torch.zeros(1, out.input_size_per_partition, dtype=out.weight.dtype, device=out.weight.device)
                        x[0, sharding.output_columns(local)] = 1.0
                        y = out.quant_method.apply(out, x, None)  # no bias, no all-reduce: this rank's product
                        ok = bool((y == 0).all())
                    else:
                        x = torch.ones(1, qkv.input_size, dtype=qkv.weight.dtype, device=qkv.weight.device)
                        y, _ = qkv(x)
                        ok = bool((y[0, sharding.query_rows(local)] == 0).all())
                    if not ok:
                        raise RHError(f"self-check failed: after the weight edit head {layer}-{head}'s projection still "
                                      f"reads/produces non-zero values ({type(out).__name__}); refusing a silent no-op")
                    checked += 1
        return checked

    def rh_clear_mask(self) -> int:
        """Restore every edited slice bit-exactly; returns how many slices were restored."""
        mask = getattr(self, "_rh_mask", None)
        count = len(mask) if mask is not None else 0
        if mask is not None:
            mask.restore()
        self._rh_mask = None
        return count

    def rh_weight_digest(self, layers: list[int]) -> list[float]:
        """Sums of |W_qkv| and |W_o| per layer in float64: a cheap fingerprint for restore tests."""
        self._rh_plain_weights()
        blocks = self._rh_blocks()
        sums: list[float] = []
        for layer in layers:
            _, qkv, out, _ = blocks[layer]
            sums += [float(qkv.weight.double().abs().sum()), float(out.weight.double().abs().sum())]
        return sums

    def rh_weight_slices(self, layer: int, head: int) -> dict[str, list]:
        """The exact query rows and output columns of one head on this rank (tests compare them bitwise)."""
        self._rh_plain_weights()
        _, qkv, out, _ = self._rh_blocks()[layer]
        sharding = self._rh_weights(qkv, out).sharding
        local = sharding.local_index(head)
        if local is None:
            return {}
        return {"q": qkv.weight[sharding.query_rows(local)].tolist(),
                "o": out.weight[:, sharding.output_columns(local)].tolist()}
