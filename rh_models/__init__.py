"""rh-eval models: the lm-eval model class ``rh-hf`` that masks attention heads and records copy events.

Usage (stock lm-eval CLI, nothing else to import)::

    lm_eval --model rh-hf --model_args pretrained=smollm2-135m,mask_heads="3-4;17-0" --tasks rh_niah

Importing this package is deliberately cheap (no torch): the installed ``.pth`` file imports
:mod:`rh_eval._autoload` at every interpreter start, and that must cost almost nothing.
"""

from __future__ import annotations

MODEL_NAME = "rh-hf"
MODEL_TARGET = "rh_models.lm:RHHFLM"


def register() -> None:
    """Register ``rh-hf`` in lm-eval's model registry as a lazy placeholder.

    Must run *after* ``lm_eval.models`` has filled the registry: lm-eval 0.4.x imports its built-in
    model table only when the registry is empty, so registering first would hide every built-in model.
    """
    import lm_eval.models  # noqa: F401  (fills the registry with the built-in placeholders first)
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=MODEL_TARGET)
