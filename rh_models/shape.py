"""A model's head shape and context length, read from its config the way transformers and lm-eval read them.

Usage::

    n_layers, n_heads = head_shape(config)        # query heads per layer; multimodal configs: the text model's
    context_length(config, tokenizer)             # what lm-eval's HFLM uses when max_length is not given

Why one place: the attention wrapper, the benchmark and the NIAH sizing all need these numbers, and a model
family that names them differently (``n_layer``/``n_head``, a nested text config) must be handled once.
"""

from __future__ import annotations

from typing import Any

from rh_models.errors import RHError

DEFAULT_CONTEXT = 2048  # lm-eval's default when neither config nor tokenizer names a length


def text_config(config: Any) -> Any:
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def head_shape(config: Any) -> tuple[int, int]:
    """``(layers, query heads per layer)``, or one clear line for a model without attention heads."""
    text = text_config(config)
    n_layers, n_heads = getattr(text, "num_hidden_layers", None), getattr(text, "num_attention_heads", None)
    if not n_layers or not n_heads:
        raise RHError(f"{type(config).__name__} has no attention heads; rh-eval cannot mask or record it")
    return int(n_layers), int(n_heads)


def context_length(config: Any, tokenizer: Any = None) -> int:
    """The context length lm-eval's HFLM would use for this model when ``max_length`` is not given."""
    from lm_eval.models.utils import resolve_max_length

    return int(resolve_max_length(config, tokenizer, default=DEFAULT_CONTEXT))
