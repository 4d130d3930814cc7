"""``rh-vllm``: lm-eval's ``VLLM`` with the same head masks as ``rh-hf``, applied as exact weight edits.

Usage (stock CLI; ``gpu_memory_utilization`` is the share of *CPU* memory on vLLM's CPU backend)::

    lm_eval --model rh-vllm \\
        --model_args pretrained=smollm2-135m,head_scores=scores.json,mask_heads=top:8,tensor_parallel_size=2 \\
        --tasks rh_niah

or from Python, one engine with masks swapped per condition (what ``rh compare --backend vllm`` does)::

    lm = RHVLLM(pretrained="smollm2-135m", head_scores="scores.json")
    lm.set_mask("random:8", seed=1)

Masks are weight edits made on every worker through vLLM's ``worker_extension_cls`` / ``collective_rpc``
(:mod:`rh_models.vllm_worker`), so CUDA graphs, compilation, every attention backend and tensor parallelism
stay as they are (on vLLM's CPU backend the engine runs eager: see :func:`cpu_engine_args`). With ``data_parallel_size > 1`` lm-eval builds one engine per Ray worker for every call;
each replica applies the same mask before generating (:func:`generate_on_replica`).

What a weight edit cannot express is refused in one line: ``mask_scope=decode`` and ``record_scores`` (paged
kernels expose no attention weights; detect with ``rh detect`` / ``rh-hf`` and pass ``head_scores=``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lm_eval.api.registry import register_model
from lm_eval.models.vllm_causallms import VLLM

from rh_models.attention import check_mask_method
from rh_models.errors import RHError
from rh_models.heads import HeadScores, HeadSet, HeadSpec, select_heads
from rh_models.mask_args import parse_mask_args
from rh_models.vllm_worker import EXTENSION_QUALNAME
from rh_models.zoo import DEFAULT_MODEL, is_alias, resolve_pretrained

_PROBE_PROMPT = list(range(1, 33))  # token ids; any prompt works, the check compares logprobs with/without the mask
_REFUSED = {
    "record_scores": "record_scores needs attention weights, which vLLM's paged kernels never expose; "
                     "detect with `rh detect` (or --model rh-hf) and pass head_scores=",
    "prefix_reuse": "prefix_reuse is rh-hf's cache; vLLM caches shared prefixes itself (enable_prefix_caching)",
}


_FALSE = (False, "false", "False", 0, "0")


def cpu_engine_args(kwargs: dict[str, Any]) -> dict[str, Any]:
    """On vLLM's CPU backend, run eager: the first mask reloads the weights vLLM repacked for oneDNN
    (:meth:`~rh_models.vllm_worker.RHWorkerExtension._rh_plain_weights`), and a graph compiled before that
    still calls the repacked kernels (it fails on the first step after the reload). GPUs keep compilation."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return kwargs
    if kwargs.get("enforce_eager", True) in _FALSE:
        raise RHError("rh-vllm: on vLLM's CPU backend masks need enforce_eager=True (the masked weights are "
                      "reloaded after vLLM compiled its graph for the repacked ones)")
    return {**kwargs, "enforce_eager": True}


def apply_mask(llm: Any, heads: list[list[int]], method: str) -> list[dict[str, Any]]:
    """Set the mask on every worker of one engine; raise the first refusal as one line.

    vLLM's prefix cache holds keys/values computed under the previous weights: a prompt seen before the change
    would reuse them and silently mix two conditions, so the cache is emptied with every change.
    """
    replies = llm.collective_rpc("rh_set_mask", args=(heads, method))
    if not llm.reset_prefix_cache():
        raise RHError("vLLM refused to reset its prefix cache after a mask change; refusing to mix conditions")
    for reply in replies:
        if "error" in reply:
            raise RHError(reply["error"])
    edited = sorted({tuple(h) for reply in replies for h in reply["edited"]})
    if edited != sorted(tuple(h) for h in heads):
        missing = sorted(set(map(tuple, heads)) - set(edited))
        raise RHError(f"no worker holds head(s) {missing}; refusing a silent no-op")
    return replies


def generate_on_replica(model_args: dict, heads: list[list[int]], method: str, sampling_params: list,
                        requests: list[list[int]], lora_request: Any) -> list:
    """One data-parallel replica: build the engine, apply the mask, generate (lm-eval's DP path, masked)."""
    import os

    from vllm import LLM, TokensPrompt

    for name in ("VLLM_DP_RANK", "VLLM_DP_RANK_LOCAL", "VLLM_DP_SIZE", "VLLM_DP_MASTER_IP", "VLLM_DP_MASTER_PORT"):
        os.environ.pop(name, None)  # as lm-eval's replica does: the driver's DP settings must not leak in
    llm = LLM(**{k: v for k, v in model_args.items() if k != "distributed_executor_backend"})
    apply_mask(llm, heads, method)
    return llm.generate([TokensPrompt(prompt_token_ids=r) for r in requests], sampling_params=sampling_params,
                        lora_request=lora_request)


@register_model("rh-vllm")
class RHVLLM(VLLM):
    """VLLM whose workers carry :class:`~rh_models.vllm_worker.RHWorkerExtension` (mask by weight edits)."""

    def __init__(
        self,
        pretrained: str = DEFAULT_MODEL,
        mask_heads: str = "none",
        head_scores: str | None = None,
        mask_method: str = "zero",
        mask_scope: str = "all",
        mask_seed: int = 0,
        random_exclude: int | None = None,
        random_match: str | None = None,
        **kwargs: Any,
    ) -> None:
        for name, reason in _REFUSED.items():
            if kwargs.get(name) not in (None, "", False, "false", "False"):
                raise RHError(f"rh-vllm: {reason}")
            kwargs.pop(name, None)
        mask = parse_mask_args(mask_heads, head_scores, mask_method, mask_scope, mask_seed, random_exclude, random_match)
        if mask.scope != "all":
            raise RHError("rh-vllm: mask_scope=decode cannot be a weight edit (the same weights serve prefill and "
                          "decoding); use --model rh-hf for it")
        if kwargs.get("worker_extension_cls") not in (None, EXTENSION_QUALNAME):
            raise RHError("rh-vllm sets worker_extension_cls itself; it cannot be combined with another extension")
        kwargs["worker_extension_cls"] = EXTENSION_QUALNAME
        kwargs = cpu_engine_args(kwargs)

        self.model_alias = pretrained if is_alias(pretrained) else None
        pretrained = resolve_pretrained(pretrained)
        super().__init__(pretrained=pretrained, **kwargs)
        self.pretrained = pretrained
        self.method = mask.method
        self._heads: list[list[int]] = []
        self._mask_request: dict[str, Any] = {}
        shape = self._shape()
        self.n_layers, self.n_heads = shape["n_layers"], shape["n_heads"]
        self.head_scores = HeadScores.load(mask.head_scores, self.n_layers, self.n_heads) if mask.head_scores else None
        self.set_mask(mask.spec, **mask.selection())

    # ------------------------------------------------------------------ engine access
    def _shape(self) -> dict[str, Any]:
        if self.data_parallel_size > 1:  # no engine in this process: each replica checks its own mask
            config = self._config.get_text_config()
            return {"n_layers": int(config.num_hidden_layers), "n_heads": int(config.num_attention_heads)}
        shapes = self.model.collective_rpc("rh_attention_shape")
        for shape in shapes:
            if "error" in shape:
                raise RHError(shape["error"])
        if shapes[0]["layers"] != list(range(shapes[0]["n_layers"])):
            raise RHError(f"attention layers {shapes[0]['layers']} are not 0..N-1; rh-vllm cannot name heads")
        return shapes[0]

    # ------------------------------------------------------------------ masking
    def set_mask(
        self,
        mask_heads: str | HeadSpec | HeadSet = "none",
        method: str = "zero",
        scope: str = "all",
        seed: int = 0,
        random_exclude: int | None = None,
        random_match: str | None = None,
    ) -> HeadSet:
        """Mask these heads from now on (replacing the previous mask, restored bit-exactly) and verify it."""
        check_mask_method(method, scope)
        if scope != "all":
            raise RHError("rh-vllm: mask_scope=decode cannot be a weight edit; use --model rh-hf for it")
        heads = mask_heads if isinstance(mask_heads, HeadSet) else select_heads(
            mask_heads, self.n_layers, self.n_heads, scores=self.head_scores, seed=seed,
            random_exclude=random_exclude, random_match=random_match)
        self._heads, self.method = [list(h) for h in heads], method
        self._mask_request = {
            "spec": mask_heads.spec() if isinstance(mask_heads, HeadSet)
            else (mask_heads.text if isinstance(mask_heads, HeadSpec) else str(mask_heads)),
            "seed": seed,
            "random_exclude": random_exclude,
            "random_match": random_match,
        }
        if self.data_parallel_size <= 1:
            self.model.collective_rpc("rh_clear_mask")  # the reference is the unmasked model, not the last mask
            self.model.reset_prefix_cache()
            before = self._probe_logprobs() if self._heads else None
            apply_mask(self.model, self._heads, method)
            if before is not None and self._probe_logprobs() == before:
                raise RHError(f"self-check failed: masking {heads.spec()} did not change the model's output on a "
                              "probe prompt; refusing to run a silent no-op")
        return heads

    def _probe_logprobs(self) -> list[float]:
        from vllm import SamplingParams, TokensPrompt

        params = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=0, detokenize=False)
        vocab = int(self._config.get_text_config().vocab_size)
        prompt = [t % (vocab - 1) + 1 for t in _PROBE_PROMPT]
        out = self.model.generate([TokensPrompt(prompt_token_ids=prompt)], sampling_params=params, use_tqdm=False)
        return [next(iter(p.values())).logprob for p in out[0].prompt_logprobs[1:]]

    def use_head_scores(self, path: str | Path) -> "RHVLLM":
        """Rank heads by this score file from now on; it must fit the model's shape."""
        self.head_scores = HeadScores.load(path, self.n_layers, self.n_heads)
        return self

    @contextmanager
    def settings(self, **ignored: Any) -> Iterator["RHVLLM"]:
        """Same interface as ``RHHFLM.settings`` for the workflows; vLLM batches and caches prefixes itself."""
        yield self

    def mask_info(self) -> dict[str, Any]:
        return {
            **self._mask_request,
            "heads": [list(h) for h in self._heads],
            "method": self.method,
            "scope": "all",
            "head_scores": self.head_scores.source if self.head_scores else None,
            "attention": "vllm-weight-edit",
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
        }

    def get_model_info(self) -> dict:
        info = {"rh_mask": self.mask_info(), "model_backend": "rh-vllm"}
        if self.model_alias:
            info["rh_model_alias"] = self.model_alias
        return info

    def _model_generate(self, requests, generate: bool = False, sampling_params=None):
        if self.data_parallel_size <= 1 or not self._heads:
            return super()._model_generate(requests, generate=generate, sampling_params=sampling_params)
        return self._generate_data_parallel(requests, generate, sampling_params)

    def _generate_data_parallel(self, requests, generate: bool, sampling_params):
        """lm-eval's Ray data-parallel dispatch, with each replica masked before it generates."""
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
        refs = [replica.remote(self.model_args, self._heads, self.method, p, r, self.lora_request)
                for r, p in zip(parts, params, strict=True)]
        results = ray.get(refs)
        ray.shutdown()
        return undistribute(results)
