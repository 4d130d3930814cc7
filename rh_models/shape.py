"""A model's head shape and context length, read from its config the way transformers and lm-eval read them.

Usage::

    n_layers, n_heads = head_shape(config)        # query heads per layer; multimodal configs: the text model's
    kv_heads_of(config)                           # KV heads per layer (GQA/MQA); kv_head_of(q, 9, 3) -> q's group
    read_config("smollm2-135m")                   # an alias, folder or hub id's config, without its weights
    context_length(config, tokenizer)             # what lm-eval's HFLM uses when max_length is not given
    config_sha256(config)                         # a fingerprint of the architecture, for provenance and resumes

Why one place: the attention wrapper, the benchmark and the NIAH sizing all need these numbers, and a model
family that names them differently (``n_layer``/``n_head``, a nested text config) must be handled once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
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


def kv_heads_of(config: Any) -> int:
    """KV heads per layer (GQA/MQA); multi-head models have as many as query heads."""
    text = text_config(config)
    n_heads = int(text.num_attention_heads)
    n_kv = getattr(text, "num_key_value_heads", None) or n_heads
    if n_heads % int(n_kv):
        raise RHError(f"{n_heads} query heads do not split into {n_kv} KV heads; cannot assign heads to caches")
    return int(n_kv)


def kv_head_of(head: int, n_heads: int, n_kv_heads: int) -> int:
    """The KV head query head ``head`` reads under GQA: consecutive query heads share one, as transformers'
    ``repeat_kv`` lays them out (KV head ``g`` serves query heads ``g * group`` to ``(g + 1) * group - 1``)."""
    if n_kv_heads < 1 or n_heads % n_kv_heads:
        raise RHError(f"{n_heads} query heads do not split into {n_kv_heads} KV heads")
    return head // (n_heads // n_kv_heads)


@dataclass(frozen=True)
class HeadShape:
    """A model's attention heads: layers, query heads per layer and, where known, KV heads per layer.

    Why a type: importing another tool's head list (one value per KV head) or comparing rankings per KV head needs
    the three numbers together, from a model's config or from the command line, checked once.
    """

    n_layers: int
    n_heads: int
    n_kv_heads: int | None = None  # None: not known (a score file alone does not say)

    def __post_init__(self) -> None:
        if self.n_layers < 1 or self.n_heads < 1:
            raise RHError(f"a model has at least one layer and one head, not {self.n_layers} x {self.n_heads}")
        if self.n_kv_heads is not None:
            kv_head_of(0, self.n_heads, self.n_kv_heads)  # refuses a count that does not divide the query heads

    @classmethod
    def of_config(cls, config: Any) -> "HeadShape":
        return cls(*head_shape(config), kv_heads_of(config))

    @property
    def group(self) -> int:
        """Query heads per KV head (1 without GQA); needs the KV-head count."""
        if self.n_kv_heads is None:
            raise RHError("the KV-head count is not known")
        return self.n_heads // self.n_kv_heads


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


def read_config(pretrained: str, revision: str | None = None, trust_remote_code: bool = False) -> Any:
    """The config of a model name, alias or folder, without loading its weights; one line when it cannot be read."""
    from transformers import AutoConfig

    from rh_models.zoo import resolve_pretrained

    try:
        return AutoConfig.from_pretrained(resolve_pretrained(pretrained), revision=revision,
                                          trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise RHError(f"cannot read the config of {pretrained!r}: {error}") from None


def model_config_sha256(pretrained: str, revision: str | None = None, trust_remote_code: bool = False) -> str:
    """:func:`config_sha256` of a model name, alias or folder, from its config alone (no weights loaded)."""
    return config_sha256(read_config(pretrained, revision, trust_remote_code))
