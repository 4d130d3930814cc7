"""Attention for a prompt continued over a cached prefix, as two kernel calls merged by log-sum-exp.

Why: with prefix reuse, ``rh detect`` prefills only the tokens after the shared haystack (``N`` new queries
against ``P`` cached + ``N`` new keys). Transformers then hands sdpa an explicit ``N x (P+N)`` causal mask,
because sdpa's ``is_causal`` aligns the triangle top-left; with a mask the CPU kernel can no longer skip
the blocks above the diagonal and does ``N * (P+N)`` work — for a shallow needle (``N > P``) more than
prefilling the whole prompt from scratch. Splitting the keys (cached part: no mask at all; new part: a
plain causal square) costs ``N * (P + N/2)`` and keeps both calls on the flash kernel. The two partial
softmaxes are merged exactly by their log-sum-exps, as cascade / prefix-sharing inference engines do.

Only used where it is provably the same computation: CPU sdpa, causal self-attention, batch rows with no
padding, a mask that is exactly the lower-right causal pattern, and none of the extras (position bias,
softcap, attention sinks, dropout) that would change the scores. Anything else goes to the stock function.
"""

from __future__ import annotations

import weakref

import torch

from rh_models.compat import cpu_flash_attention
from rh_models.kv_budget import causal_mask

_UNSUPPORTED_EXTRAS = ("position_bias", "softcap", "s_aux", "sinks")
_MASKS_PER_FORWARD = 2  # a global (full attention) mask and a sliding-window one


class PrefixCascade:
    """Decides per call whether the cascade applies, remembering the verdict for the mask of this forward."""

    def __init__(self) -> None:
        # the masks last checked with their verdicts: one per forward and mask type (a model with sliding-window
        # layers alternates a sliding and a global mask, layer by layer); weak, so a long prompt's N x (P+N) masks
        # are not kept alive after their forward
        self._verdicts: list[tuple[weakref.ref, bool]] = []
        self.calls = 0  # how many attention calls took the cascade (for tests and the benchmark)

    def applies(self, base: str, module, query, key, attention_mask, kwargs) -> bool:
        q_length, kv_length = query.shape[2], key.shape[2]
        if base != "sdpa" or query.device.type != "cpu" or not (1 < q_length < kv_length):
            return False
        if not getattr(module, "is_causal", False) or kwargs.get("is_causal") is False:
            return False
        if any(kwargs.get(name) is not None for name in _UNSUPPORTED_EXTRAS) or kwargs.get("dropout", 0.0):
            return False
        if query.shape[-1] != key.shape[-1]:
            return False
        return attention_mask is None or self._is_causal_continuation(attention_mask, q_length, kv_length)

    def _is_causal_continuation(self, mask: torch.Tensor, q_length: int, kv_length: int) -> bool:
        for reference, known in self._verdicts:
            if reference() is mask:
                return known
        verdict = (
            mask.dtype == torch.bool
            and mask.ndim == 4
            and mask.shape[-2:] == (q_length, kv_length)
            and torch.equal(mask, causal_mask(q_length, kv_length, mask.device).expand_as(mask))
        )
        self._verdicts = [*self._verdicts[-(_MASKS_PER_FORWARD - 1):], (weakref.ref(mask), verdict)]
        return verdict

    def __call__(self, module, query, key, value, scaling: float | None = None, **_) -> tuple[torch.Tensor, None]:
        """``(batch, q_len, heads, head_dim)`` output, the layout every attention function returns."""
        self.calls += 1
        groups = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)  # GQA -> MHA
        cached = key.shape[2] - query.shape[2]
        old, old_lse = cpu_flash_attention(query, key[:, :, :cached], value[:, :, :cached], False, scaling)
        new, new_lse = cpu_flash_attention(query, key[:, :, cached:], value[:, :, cached:], True, scaling)
        total = torch.logaddexp(old_lse, new_lse)
        merged = old * torch.exp(old_lse - total).unsqueeze(-1).to(old.dtype)
        merged = merged + new * torch.exp(new_lse - total).unsqueeze(-1).to(new.dtype)
        return merged.transpose(1, 2).contiguous(), None
