"""A model's head shape and context length, read from its config the way transformers and lm-eval read them.

Usage::

    n_layers, n_heads = head_shape(config)        # query heads per layer; multimodal configs: the text model's
    context_length(config, tokenizer)             # what lm-eval's HFLM uses when max_length is not given
    config_sha256(config)                         # a fingerprint of the architecture, for provenance and resumes

Why one place: the attention wrapper, the benchmark and the NIAH sizing all need these numbers, and a model
family that names them differently (``n_layer``/``n_head``, a nested text config) must be handled once.
"""

from __future__ import annotations

import hashlib
import json
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


def head_dim(config: Any) -> int:
    """Width of one query head's output (its slice of the output projection's input)."""
    text = text_config(config)
    explicit = getattr(text, "head_dim", None)
    if isinstance(explicit, int) and explicit > 0:
        return explicit
    return int(text.hidden_size) // head_shape(config)[1]


def context_length(config: Any, tokenizer: Any = None) -> int:
    """The context length lm-eval's HFLM would use for this model when ``max_length`` is not given."""
    from lm_eval.models.utils import resolve_max_length

    return int(resolve_max_length(config, tokenizer, default=DEFAULT_CONTEXT))


# set by transformers at load time, not part of what the model is: a loaded model and its config file agree
_LOAD_TIME_KEYS = ("_commit_hash", "_name_or_path", "transformers_version", "_attn_implementation_autoset",
                   "torch_dtype", "dtype", "_attn_implementation", "attn_implementation")


def config_sha256(config: Any) -> str:
    """SHA-256 of the config's architecture fields, equal for the config file and the model loaded from it.

    Why: a score file or a resumed run must name the model it was made with; an alias or a path can point
    at another model tomorrow, the architecture cannot.
    """
    fields = {k: v for k, v in config.to_dict().items() if k not in _LOAD_TIME_KEYS}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def model_config_sha256(pretrained: str, revision: str | None = None, trust_remote_code: bool = False) -> str:
    """:func:`config_sha256` of a model name, alias or folder, from its config alone (no weights loaded)."""
    from transformers import AutoConfig

    from rh_models.zoo import resolve_pretrained

    try:
        config = AutoConfig.from_pretrained(resolve_pretrained(pretrained), revision=revision,
                                            trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise RHError(f"cannot read the config of {pretrained!r}: {error}") from None
    return config_sha256(config)
