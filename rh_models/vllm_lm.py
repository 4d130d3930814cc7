"""``rh-vllm``: lm-eval's ``VLLM`` with the same head masks as ``rh-hf``, applied as exact weight edits.

Usage (stock CLI; on vLLM's CPU backend ``enforce_eager=True`` and ``gpu_memory_utilization=0.3`` are chosen
when not given, see :func:`cpu_engine_args`)::

    lm_eval --model rh-vllm \\
        --model_args pretrained=smollm2-135m,head_scores=scores.json,mask_heads=top:8,tensor_parallel_size=2 \\
        --tasks rh_niah

or from Python, one engine with masks swapped per condition (what ``rh compare --backend vllm`` does)::

    lm = RHVLLM(pretrained="smollm2-135m", head_scores="scores.json")
    lm.set_mask("random:8", seed=1)

Masks are weight edits made on every worker through vLLM's ``worker_extension_cls`` / ``collective_rpc``
(:mod:`rh_models.vllm_worker`), so CUDA graphs, compilation, every attention backend and tensor parallelism
stay as they are. The engine is prepared once when it starts, before anything is generated (on CPU its weights
are reloaded as plain matrices), so every condition, ``none`` included, runs the same kernels. Setting a mask
is checked twice: each edited projection must yield zeros for its head, and a probe prompt's log-probabilities
must differ from the unmasked model's.

With ``data_parallel_size > 1`` lm-eval builds one engine per Ray replica for every call and this process holds
none; heads are resolved here and every replica runs :func:`run_on_replica` before it generates: the same
preparation, the same two checks against its own unmasked engine, then the requests. A failed check on a
replica is raised here as one line.

Refused in one line, before any engine starts: ``rh-hf``'s own arguments (``record_scores``, ``prefix_reuse``,
...: paged kernels expose no attention weights; detect with ``rh detect`` / ``rh-hf``), ``mask_scope=decode``,
``pipeline_parallel_size > 1``, ``quantization=``; after the engine starts: quantized projections, layouts that
are not ``(q + 2 kv) d`` x ``q d``, two attention blocks in one layer (:mod:`rh_models.vllm_worker`).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lm_eval.api.registry import register_model
from lm_eval.models.vllm_causallms import VLLM

from rh_models import vllm_internals
from rh_models.arguments import parse_bool
from rh_models.errors import RHError
from rh_models.heads import HeadSet, format_head, format_heads
from rh_models.kv_budget import KV_ARGS
from rh_models.mask_args import MASK_ARGS, parse_mask_args
from rh_models.masked_lm import MaskedLM
from rh_models.vllm_worker import EXTENSION_QUALNAME
from rh_models.zoo import DEFAULT_MODEL, is_alias, resolve_pretrained

logger = logging.getLogger(__name__)

PROBE_PROMPT = list(range(1, 33))  # token ids; any prompt works, the check compares logprobs with/without the mask
CPU_MEMORY_SHARE = 0.3  # gpu_memory_utilization on vLLM's CPU backend: the share of the NUMA node's memory
_UNSET = (None, "", "None", "none", False, "false", "False")
_WHY_NOT_HF = ("rh-vllm cannot record retrieval scores or reuse rh-hf's prefix cache: vLLM's paged kernels expose "
               "no attention weights (detect with `rh detect` or --model rh-hf and pass head_scores=; vLLM caches "
               "shared prefixes itself with enable_prefix_caching)")


def hf_only_args() -> tuple[str, ...]:
    """``rh-hf``'s arguments that are not mask arguments (``record_scores``, ``prefix_reuse``, ...), read off its
    signature so that a new one is refused here too."""
    from rh_models.lm import RHHFLM

    own = set(MASK_ARGS) | {"self", "pretrained", "kwargs"}
    return tuple(p for p in inspect.signature(RHHFLM.__init__).parameters if p not in own)


def refuse_engine_args(kwargs: dict[str, Any]) -> None:
    """What no weight edit can honour, refused before an engine is built (a 70B load costs minutes)."""
    given = [name for name in hf_only_args() if kwargs.get(name) not in _UNSET]
    if set(KV_ARGS) & set(kwargs):  # kv_full_heads=none: every head streams, not unset
        raise RHError("rh-vllm: a KV budget by head (kv_full_heads, kv_sink, kv_window) is rh-hf's: it is simulated "
                      "with per-head attention masks, which vLLM's paged kernels do not take; use --model rh-hf")
    if given:
        raise RHError(f"rh-vllm: {', '.join(given)} {'is' if len(given) == 1 else 'are'} rh-hf's; {_WHY_NOT_HF}")
    for name in hf_only_args():
        kwargs.pop(name, None)  # given as off: nothing to do
    if int(kwargs.get("pipeline_parallel_size") or 1) > 1:
        raise RHError("rh-vllm: pipeline_parallel_size>1 is not supported (a stage holds only its own layers, and "
                      "heads are named and checked by layer on every worker); use tensor_parallel_size")
    if kwargs.get("quantization") not in _UNSET:
        raise RHError(f"rh-vllm: quantization={kwargs['quantization']} quantizes the attention projections; a head "
                      "mask is an exact edit of unquantized weights")
    if kwargs.get("worker_extension_cls") not in (None, EXTENSION_QUALNAME):
        raise RHError("rh-vllm sets worker_extension_cls itself; it cannot be combined with another extension")


def cpu_engine_args(kwargs: dict[str, Any]) -> dict[str, Any]:
    """On vLLM's CPU backend: eager, and a CPU-memory share that fits when none is given (one logged line).

    Eager: the engine reloads the weights vLLM repacked for oneDNN when it starts (:mod:`rh_models.vllm_worker`),
    and a graph compiled before that still calls the repacked kernels. Memory: there ``gpu_memory_utilization``
    is the share of the NUMA node's *CPU* memory vLLM reserves, and lm-eval's default (0.9) exceeds what a
    machine running anything else has free. GPUs keep compilation and lm-eval's defaults.
    """
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return kwargs
    if not parse_bool("enforce_eager", kwargs.get("enforce_eager", True)):
        raise RHError("rh-vllm: on vLLM's CPU backend masks need enforce_eager=True (the masked weights are "
                      "reloaded after vLLM compiled its graph for the repacked ones)")
    chosen: dict[str, Any] = {}
    if kwargs.get("enforce_eager") is None:
        chosen["enforce_eager"] = True
    if kwargs.get("gpu_memory_utilization") is None:
        chosen["gpu_memory_utilization"] = CPU_MEMORY_SHARE
    if chosen:
        logger.warning("rh-vllm on vLLM's CPU backend: %s chosen (gpu_memory_utilization is the share of the CPU "
                       "memory reserved; pass it to change)", ", ".join(f"{k}={v}" for k, v in chosen.items()))
    return {**kwargs, **chosen}


def check_mean_is_eager(enforce_eager: bool) -> None:
    """``mean`` adds an output-projection bias (creating one where the model has none): a graph compiled or a CUDA
    graph captured without it would never read it, and the run would silently be ``zero``. Eager engines only."""
    if not enforce_eager:
        raise RHError("rh-vllm: mask_method=mean needs enforce_eager=True (it adds an output-projection bias, which "
                      "a compiled graph or captured CUDA graph built without one would not read)")


# ---------------------------------------------------------------------------------------------- engines
def prepare_engine(llm: Any) -> dict[str, Any]:
    """Once per engine, before it generates: every worker checks its blocks and reloads plain weights (CPU)."""
    shapes = llm.collective_rpc("rh_prepare")
    for shape in shapes:
        if "error" in shape:
            raise RHError(shape["error"])
    if shapes[0]["layers"] != list(range(shapes[0]["n_layers"])):
        raise RHError(f"attention layers {shapes[0]['layers']} are not 0..N-1; rh-vllm cannot name heads")
    llm.reset_prefix_cache()
    return shapes[0]


def probe_logprobs(llm: Any) -> list[float]:
    """Log-probabilities of the probe prompt's tokens under the engine's current weights."""
    from vllm import SamplingParams, TokensPrompt

    params = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=0, detokenize=False)
    out = llm.generate([TokensPrompt(prompt_token_ids=PROBE_PROMPT)], sampling_params=params, use_tqdm=False)
    return [next(iter(p.values())).logprob for p in out[0].prompt_logprobs[1:]]


def apply_mask(llm: Any, heads: list[list[int]], method: str,
               means: dict[str, list[float]] | None = None) -> list[dict[str, Any]]:
    """Set the mask on every worker of one engine; raise the first refusal as one line.

    ``mean``: the workers' ``W_o[:, head] @ mean`` sums, added up over tensor-parallel ranks, become the output
    projections' bias (on rank 0, where vLLM adds it). vLLM's prefix cache holds keys/values computed under the
    previous weights: a prompt seen before the change would reuse them and silently mix two conditions, so the
    cache is emptied with every change.
    """
    def refuse(error: str) -> None:
        """A refusal leaves no rank masked (a refusing rank cleared itself; the others may hold their part)."""
        llm.collective_rpc("rh_clear_mask")
        llm.reset_prefix_cache()
        raise RHError(error)

    replies = llm.collective_rpc("rh_set_mask", args=(heads, method, means))
    for reply in replies:
        if "error" in reply:
            refuse(reply["error"])
    if method == "mean" and heads:
        bias: dict[int, list[float]] = {}
        for reply in replies:
            for layer, values in reply["bias"].items():
                bias[int(layer)] = [a + b for a, b in zip(bias[int(layer)], values)] if int(layer) in bias else values
        added = llm.collective_rpc("rh_add_output_bias", args=(bias,))
        error = next((reply["error"] for reply in added if "error" in reply), None)
        layers = {layer for reply in added for layer in reply.get("added", [])}
        if error is None and layers != {layer for layer, _ in heads}:
            error = f"the mean outputs of layers {sorted({l for l, _ in heads} - layers)} reached no output bias"
        if error is not None:
            refuse(error)
    if not llm.reset_prefix_cache():
        raise RHError("vLLM refused to reset its prefix cache after a mask change; refusing to mix conditions")
    edited = sorted({tuple(h) for reply in replies for h in reply["edited"]})
    if edited != sorted(tuple(h) for h in heads):
        missing = sorted(set(map(tuple, heads)) - set(edited))
        raise RHError(f"no worker holds head(s) {missing}; refusing a silent no-op")
    return replies


def mask_engine(llm: Any, heads: list[list[int]], method: str, means: dict[str, list[float]] | None = None) -> None:
    """Make ``heads`` the engine's mask and prove it: the probe's log-probabilities must differ from the unmasked
    engine's (each worker has also checked that every edited projection yields zeros for its head)."""
    llm.collective_rpc("rh_clear_mask")  # the reference is the unmasked model, not the previous mask
    llm.reset_prefix_cache()
    before = probe_logprobs(llm) if heads else None
    apply_mask(llm, heads, method, means)
    if before is not None and probe_logprobs(llm) == before:
        raise RHError(f"self-check failed: masking {format_heads(map(tuple, heads))} did not "
                      "change the model's output on a probe prompt; refusing to run a silent no-op")


def replica_engine(model_args: dict) -> Any:
    """A data-parallel replica's engine, built as lm-eval's replica builds it."""
    import os

    from vllm import LLM

    for name in ("VLLM_DP_RANK", "VLLM_DP_RANK_LOCAL", "VLLM_DP_SIZE", "VLLM_DP_MASTER_IP", "VLLM_DP_MASTER_PORT"):
        os.environ.pop(name, None)  # as lm-eval's replica does: the driver's DP settings must not leak in
    return LLM(**{k: v for k, v in model_args.items() if k != "distributed_executor_backend"})


def run_on_replica(llm: Any, heads: list[list[int]], method: str, sampling_params: list, requests: list[list[int]],
                   lora_request: Any, means: dict[str, list[float]] | None = None) -> list | dict[str, str]:
    """What each replica does before it generates: prepare, mask, both self-checks (see the module doc).
    A refusal comes back as ``{"error": ...}``, not as a Ray traceback."""
    from vllm import TokensPrompt

    try:
        prepare_engine(llm)
        mask_engine(llm, heads, method, means)
    except RHError as error:
        return {"error": f"data-parallel replica: {error}"}
    return llm.generate([TokensPrompt(prompt_token_ids=r) for r in requests], sampling_params=sampling_params,
                        lora_request=lora_request)


def generate_on_replica(model_args: dict, heads: list[list[int]], method: str, sampling_params: list,
                        requests: list[list[int]], lora_request: Any,
                        means: dict[str, list[float]] | None = None) -> list | dict[str, str]:
    """One data-parallel replica (a Ray task): its own engine, prepared and masked, then its share of requests."""
    return run_on_replica(replica_engine(model_args), heads, method, sampling_params, requests, lora_request, means)


# ---------------------------------------------------------------------------------------------- the model
@register_model("rh-vllm")
class RHVLLM(MaskedLM, VLLM):
    """VLLM whose workers carry :class:`~rh_models.vllm_worker.RHWorkerExtension` (mask by weight edits); the
    mask API is :class:`~rh_models.masked_lm.MaskedLM`'s, shared with ``rh-hf``."""

    mask_attention = "vllm-weight-edit"

    def __init__(self, pretrained: str = DEFAULT_MODEL, **kwargs: Any) -> None:
        mask = parse_mask_args(**{name: kwargs.pop(name) for name in MASK_ARGS if name in kwargs})
        if mask.scope != "all":
            raise RHError("rh-vllm: mask_scope=decode cannot be a weight edit (the same weights serve prefill and "
                          "decoding); use --model rh-hf for it")
        refuse_engine_args(kwargs)
        vllm_internals.check_vllm()
        kwargs = cpu_engine_args({**kwargs, "worker_extension_cls": EXTENSION_QUALNAME})
        eager = kwargs.get("enforce_eager")
        self.enforce_eager = False if eager in _UNSET else parse_bool("enforce_eager", eager)
        if mask.method == "mean":
            check_mean_is_eager(self.enforce_eager)

        self.model_alias = pretrained if is_alias(pretrained) else None
        pretrained = resolve_pretrained(pretrained)
        super().__init__(pretrained=pretrained, **kwargs)
        self.pretrained = pretrained
        if self.data_parallel_size <= 1:
            self.engine_shape = prepare_engine(self.model)
        self.init_mask(self._config, mask)
        if self.data_parallel_size <= 1:
            found = (self.engine_shape["n_layers"], self.engine_shape["n_heads"])
            if found != (self.n_layers, self.n_heads):
                raise RHError(f"the engine has {found[0]} attention layers x {found[1]} query heads, the config "
                              f"{self.n_layers} x {self.n_heads}; rh-vllm cannot name heads")

    # ------------------------------------------------------------------ masking (API: MaskedLM)
    def _apply_mask(self, heads: HeadSet, method: str, scope: str) -> None:
        if scope != "all":
            raise RHError("rh-vllm: mask_scope=decode cannot be a weight edit; use --model rh-hf for it")
        if method == "mean":
            check_mean_is_eager(self.enforce_eager)
        if self.data_parallel_size <= 1:
            mask_engine(self.model, [list(h) for h in heads], method, self._mean_vectors(heads, method))
        # data parallel: no engine here; every replica masks and checks itself (run_on_replica)

    def use_head_means(self, path: Any) -> "RHVLLM":
        """As rh-hf's, and refused at once on an engine that is not eager (before any condition runs)."""
        check_mean_is_eager(self.enforce_eager)
        return super().use_head_means(path)

    def _mean_vectors(self, heads: HeadSet, method: str) -> dict[str, list[float]] | None:
        """``mean``: each masked head's stored mean output, as plain data for the workers; else None."""
        if method != "mean":
            return None
        return {format_head((layer, head)): self.head_means.vectors(layer, [head])[0].tolist() for layer, head in heads}

    @contextmanager
    def settings(self, recorder: Any = None, batch_size: int | None = None, prefix_reuse: bool | None = None,
                 cascade: bool | None = None, **unknown: Any) -> Iterator["RHVLLM"]:
        """``RHHFLM.settings`` for the workflows: ``batch_size`` is honoured; ``prefix_reuse`` and ``cascade`` are
        rh-hf's speed-ups with the same results (vLLM caches prefixes itself); a recorder or an unknown option
        is refused."""
        if unknown:
            raise RHError(f"rh-vllm settings(): unknown option(s) {', '.join(sorted(unknown))}")
        if recorder is not None:
            raise RHError(f"rh-vllm settings(recorder=...): {_WHY_NOT_HF}")
        saved = self.batch_size
        try:
            if batch_size is not None:
                self.batch_size = batch_size
            yield self
        finally:
            self.batch_size = saved

    def get_model_info(self) -> dict:
        return {**self.mask_model_info(), "model_backend": "rh-vllm"}

    def numerics(self) -> dict[str, str]:
        """As ``RHHFLM.numerics``: the engine's dtype and device, and vLLM's own attention backend."""
        dtype = (vllm_internals.engine_dtype(self.model) if self.data_parallel_size <= 1
                 else str(self.model_args.get("dtype", "auto")))  # replicas' engines live in Ray workers
        return {"dtype": dtype, "device": vllm_internals.engine_device(),
                "attention": "vllm" + ("" if self.enforce_eager else "-compiled")}

    # ------------------------------------------------------------------ data parallel
    def _model_generate(self, requests, generate: bool = False, sampling_params=None):
        if self.data_parallel_size <= 1:
            return super()._model_generate(requests, generate=generate, sampling_params=sampling_params)
        return self._generate_data_parallel(requests, generate, sampling_params)

    def _generate_data_parallel(self, requests, generate: bool, sampling_params):
        """lm-eval's Ray data-parallel dispatch, each replica prepared and masked before it generates (also for
        ``none``: every condition on the same path)."""
        import ray
        from more_itertools import distribute
        from vllm import SamplingParams

        from lm_eval.models.utils import undistribute

        if not generate or sampling_params is None:
            sampling_params = SamplingParams(temperature=0, prompt_logprobs=1, max_tokens=1, detokenize=False)
        if not isinstance(sampling_params, list):
            sampling_params = [sampling_params] * len(requests)
        replica = ray.remote(num_gpus=self.tensor_parallel_size)(generate_on_replica)
        parts = [list(x) for x in distribute(self.data_parallel_size, requests)]
        params = [list(x) for x in distribute(self.data_parallel_size, sampling_params)]
        heads = [list(h) for h in self.masked_heads]
        method = self._mask[1]
        means = self._mean_vectors(self.masked_heads, method)
        refs = [replica.remote(self.model_args, heads, method, p, r, self.lora_request, means)
                for r, p in zip(parts, params, strict=True)]
        results = ray.get(refs)
        ray.shutdown()
        for result in results:
            if isinstance(result, dict):
                raise RHError(result["error"])
        return undistribute(results)
