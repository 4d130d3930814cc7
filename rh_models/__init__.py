"""rh-eval models: ``rh-hf`` (masks attention heads, records copy events) and ``rh-vllm`` (masks heads on vLLM).

Usage (stock lm-eval CLI, nothing else to import)::

    lm_eval --model rh-hf --model_args pretrained=smollm2-135m,mask_heads="3-4;17-0" --tasks rh_niah

Importing this package is deliberately cheap (no torch): the installed ``.pth`` file imports
:mod:`rh_eval._autoload` at every interpreter start, and that must cost almost nothing.
"""

from __future__ import annotations

MODELS = {"rh-hf": "rh_models.lm:RHHFLM", "rh-vllm": "rh_models.vllm_lm:RHVLLM"}  # vLLM is imported only when used


def register() -> None:
    """Register ``rh-hf`` and ``rh-vllm`` in lm-eval's model registry as lazy placeholders.

    Must run *after* ``lm_eval.models`` has filled the registry: lm-eval 0.4.x imports its built-in
    model table only when the registry is empty, so registering first would hide every built-in model.
    """
    import lm_eval.models  # noqa: F401  (fills the registry with the built-in placeholders first)
    from lm_eval.api.registry import model_registry

    for name, target in MODELS.items():
        if name not in model_registry:
            model_registry.register(name, target=target)
