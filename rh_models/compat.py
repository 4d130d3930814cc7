"""Every private internal of lm-eval, transformers and torch that rh-eval relies on, in one place.

Checked against lm-eval 0.4.13, transformers 5.24.0 and torch 2.13.0 (see :data:`CHECKED_AGAINST`).
:func:`missing_internals` lists what a newer release removed; ``tests/test_layout.py`` fails loudly on it, so an
upgrade breaks one test with a name instead of a run with a riddle.

Why these and no others: where a public API exists we use it (``AttentionInterface`` / ``AttentionMaskInterface``
registration and lookup, ``DynamicCache``, ``postprocess_generated_text``). What remains has no public
equivalent: the CPU flash kernel that returns its log-sum-exp (for the prefix cascade), transformers' check
that a model routes attention through the interface, the ``HFLM`` methods a subclass must override to see
generated batches and the attributes that say which process it is, ``ConfigurableTask``'s metric tables
(per-length NIAH breakdown keys), the tensors inside transformers' cache layers (prefix KV reuse copies and
preallocates them), the shape lm-eval gives a logged sample (``rh compare`` writes its samples files the same
way), lm-eval's YAML loader, and the entry points of lm-eval's CLI and ``TaskManager`` that the autoload hook
extends (the patches themselves live with the code that installs them, :mod:`rh_eval._autoload`; this module
only checks that their targets exist).

One internal is read with a fallback and not checked: ``config._commit_hash``. transformers 5.24 no longer
records it (configs drop the key; the revision is resolved per load instead), so :func:`model_commit` is None
there and provenance leaves the key out; it is kept so that provenance still names the commit on versions that
record one.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

CHECKED_AGAINST = {"lm_eval": "0.4.13", "transformers": "5.24.0", "torch": "2.13.0"}

# HFLM methods/attributes RHHFLM overrides, sets or reads (lm_eval/models/huggingface.py)
HFLM_INTERNALS = ("_model_generate", "tok_batch_encode", "tok_decode", "batch_size_per_gpu", "think_end_token",
                  "accelerator", "_rank", "_world_size", "pretrained", "_model_call", "_detect_batch_size")
# ConfigurableTask tables NIAHTask fills for its breakdown keys (lm_eval/api/task.py)
TASK_INTERNALS = ("_metric_fn_list", "_metric_fn_kwargs", "_aggregation_list", "_higher_is_better")
# what a DynamicLayer holds and does, read by PrefixCache and extended by PreallocatedLayer (transformers/cache_utils.py)
CACHE_LAYER_INTERNALS = ("keys", "values", "is_initialized", "lazy_initialization", "get_seq_length")


def cpu_flash_attention(query, key, value, is_causal: bool, scale: float | None):
    """``(output, logsumexp)`` of torch's CPU flash kernel: the only one that also returns the log-sum-exp."""
    import torch

    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, 0.0, is_causal, scale=scale)


def routes_attention_through_interface(model: Any) -> bool:
    """transformers' own verdict on whether ``set_attn_implementation`` can take effect for this model."""
    return bool(getattr(model, "_can_set_attn_implementation", lambda: True)())


def attention_implementation(config: Any) -> str:
    return config._attn_implementation or "eager"


def cache_kwarg() -> str:
    """The keyword ``generate`` and a model's ``forward`` take a ready KV cache under: ``cache`` in newer
    transformers, where the old ``past_key_values`` still works but warns at every call (a FutureWarning per
    generated batch), else the old one.
    """
    from transformers.generation import utils

    return getattr(utils, "ALL_CACHE_NAMES", ["past_key_values"])[0]


def load_task_yaml(path: Any, resolve_func: bool = False) -> dict[str, Any]:
    """A task YAML read by lm-eval's own loader (``include``, ``!function`` tags), exactly as ``TaskManager`` reads it."""
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(path, resolve_func=resolve_func)


def set_process_rank(lm: Any, rank: int, world_size: int) -> None:
    """Shard requests over CPU processes as HFLM does over GPUs (it sets these only for multi-GPU runs)."""
    lm._rank, lm._world_size = rank, world_size


def hflm_world_size(lm: Any) -> int:
    return lm._world_size


def hflm_accelerator(lm: Any) -> Any:
    """The ``accelerate.Accelerator`` HFLM keeps when launched with ``accelerate`` (None otherwise)."""
    return getattr(lm, "accelerator", None)


def model_commit(config: Any) -> str | None:
    """The Hub commit a model config was loaded from, where transformers records it (None on 5.24: not recorded)."""
    return getattr(config, "_commit_hash", None)


def cache_layers(cache: Any) -> list[Any]:
    """A transformers cache's per-layer objects (``Cache.layers``); empty when it has none."""
    return getattr(cache, "layers", None) or []


def set_cache_layers(cache: Any, layers: list[Any]) -> None:
    """Give a transformers cache its own per-layer objects (e.g. layers preallocated for a known length)."""
    cache.layers = layers


def layer_tensors(layer: Any) -> tuple[Any, Any]:
    """``(keys, values)`` a cache layer holds, ``(batch, kv_heads, positions, head_dim)`` each."""
    return layer.keys, layer.values


def set_layer_tensors(layer: Any, keys: Any, values: Any) -> None:
    """Make ``keys`` / ``values`` what a cache layer holds (what every reader of the layer then sees)."""
    layer.keys, layer.values = keys, values


def init_cache_layer(layer: Any, key_states: Any, value_states: Any) -> None:
    """A cache layer's first update: dtype and device taken from the first states, as ``DynamicLayer`` does it."""
    if not layer.is_initialized:
        layer.lazy_initialization(key_states, value_states)


def as_logged_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """A sample of ``simple_evaluate(log_samples=True)`` in the shape of lm-eval's ``samples_<task>_<date>.jsonl``.

    lm-eval does this inline in ``EvaluationTracker.save_results_samples`` (no function to call): arguments as
    ``{"gen_args_i": {"arg_j": ...}}``, responses through ``sanitize_list``, the target as a string.
    """
    from lm_eval.utils import sanitize_list

    sample = dict(sample)
    arguments = sample.get("arguments") or []
    sample["arguments"] = {
        f"gen_args_{i}": {f"arg_{j}": value for j, value in enumerate(args)} for i, args in enumerate(arguments)
    }
    for key in ("resps", "filtered_resps"):
        if key in sample:
            sample[key] = sanitize_list(sample[key])
    if "target" in sample:
        sample["target"] = str(sample["target"])
    return sample


def task_metric_tables(task: Any) -> tuple[dict, dict, dict, dict]:
    """``ConfigurableTask``'s metric function, kwargs, aggregation and higher-is-better tables (by metric name)."""
    return task._metric_fn_list, task._metric_fn_kwargs, task._aggregation_list, task._higher_is_better


def missing_internals() -> list[str]:
    """The internals above that this installation lacks (empty when everything rh-eval needs is there)."""
    import torch
    from lm_eval._cli.harness import HarnessCLI
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.models.huggingface import HFLM
    from lm_eval.loggers.evaluation_tracker import EvaluationTracker
    from lm_eval.tasks import TaskManager
    from transformers import DynamicCache, DynamicLayer, PreTrainedModel

    missing = [f"HFLM.{name}" for name in HFLM_INTERNALS if not _defined_on(HFLM, name)]
    missing += [f"ConfigurableTask.{name}" for name in TASK_INTERNALS if name not in _init_source(ConfigurableTask)]
    layer = DynamicLayer()
    missing += [f"DynamicLayer.{name}" for name in CACHE_LAYER_INTERNALS if not hasattr(layer, name)]
    if not isinstance(getattr(DynamicCache(), "layers", None), list):
        missing.append("DynamicCache.layers")
    if "gen_args_" not in inspect.getsource(EvaluationTracker.save_results_samples):
        missing.append("EvaluationTracker.save_results_samples (the sample shape as_logged_sample mirrors)")
    if not hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
        missing.append("torch.ops.aten._scaled_dot_product_flash_attention_for_cpu")
    if not hasattr(PreTrainedModel, "_can_set_attn_implementation"):
        missing.append("PreTrainedModel._can_set_attn_implementation")
    if "include_path" not in inspect.signature(TaskManager.__init__).parameters:
        missing.append("TaskManager(include_path=...)")
    try:
        from lm_eval.tasks._yaml_loader import load_yaml  # noqa: F401
    except ImportError:
        missing.append("lm_eval.tasks._yaml_loader.load_yaml")
    if not callable(getattr(HarnessCLI, "execute", None)):
        missing.append("lm_eval._cli.HarnessCLI.execute")
    return missing


def _defined_on(cls: type, name: str) -> bool:
    return hasattr(cls, name) or name in _init_source(cls)


@functools.lru_cache(maxsize=None)
def _init_source(cls: type) -> str:
    return "".join(inspect.getsource(klass) for klass in cls.__mro__ if klass.__module__.startswith("lm_eval"))
