"""The KV cache of the previous prompt, handed to the next generation for the prefix both share.

Why: NIAH prompts of one length share all the haystack before the needle, and ``rh detect`` orders its tests
so that each prompt's shared prefix is as long as possible. Prefilling only what follows it is exact (the
keys and values of a token depend only on the tokens before it) and skips up to half of a grid's prefill.

Batches are left-padded (lm-eval's layout). Row ``i`` with ``pad_i`` pads then starts its cached part with
``pad_i`` masked zero slots followed by the first ``common - pad_i`` shared tokens: transformers derives
positions from the attention mask, so those tokens sit at the positions their cached keys were computed at,
and each row recomputes only its own pad-many shared tokens. After generation the unpadded row's cache
(prompt + answer) is kept for the next call.

Only plain growing cache layers can be cut back to a shorter prefix: a sliding-window layer keeps just its
window, so models that have one prefill from scratch (with a warning) instead of failing mid-run.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

MIN_RECOMPUTED = 2  # the step that produces the first answer token must be a real prefill row


class PrefixCache:
    """One model's cache of its last prompt, and how many prompt tokens it has saved so far."""

    def __init__(self, config: Any) -> None:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        self.config = config
        self.cache: Any = None
        self.ids: list[int] = []
        self.tokens_reused = 0
        layers = getattr(DynamicCache(config=config), "layers", None)
        self._croppable = bool(layers) and all(type(layer) is DynamicLayer for layer in layers)  # fixed per model
        self._warned = False

    def clear(self) -> None:
        """Forget the cached prompt (its keys/values were computed under a mask that no longer holds)."""
        self.cache, self.ids = None, []

    def supported(self, model_name: str) -> bool:
        """Can this model's cache be cut back to a prefix? Warns once when not (reuse is then skipped)."""
        if not self._croppable and not self._warned:
            logger.warning("prefix_reuse: %s has sliding-window (or other non-growing) cache layers that cannot be "
                           "rolled back; prefilling every prompt from scratch", model_name)
            self._warned = True
        return self._croppable

    def take(self, context: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[Any, list[list[int]], list[int]]:
        """A cache for ``context`` holding its longest shared prefix (or an empty one); rows and pads for ``keep``."""
        from transformers import DynamicCache

        width = context.shape[1]
        mask = torch.ones_like(context) if attention_mask is None else attention_mask
        rows = [row[keep.bool()].tolist() for row, keep in zip(context.cpu(), mask.cpu())]
        pads = [width - len(row) for row in rows]
        common = self._common_prefix(rows)
        cache, self.cache = self.cache, None
        if cache is None or common == 0 or common < max(pads):
            return DynamicCache(config=self.config), rows, pads
        if cache.get_seq_length() > common:
            cache.crop(common - cache.get_seq_length())  # negative: drop that many trailing positions
        if len(rows) > 1:
            for layer in cache.layers:
                layer.keys = _left_pad_rows(layer.keys, pads, common)
                layer.values = _left_pad_rows(layer.values, pads, common)
        self.tokens_reused += sum(common - pad for pad in pads)
        return cache, rows, pads

    def keep(self, cache: Any, rows: list[list[int]], pads: list[int]) -> None:
        """Keep the cache of the unpadded row (its positions are plain 0..n) for the next call."""
        if 0 not in pads:
            return
        row = pads.index(0)
        if len(rows) > 1:
            cache.batch_select_indices(torch.tensor([row], device=cache.layers[0].keys.device))
        self.cache, self.ids = cache, rows[row]

    def _common_prefix(self, rows: list[list[int]]) -> int:
        limit = min([len(self.ids)] + [len(row) - MIN_RECOMPUTED for row in rows])
        for index in range(max(limit, 0)):
            token = self.ids[index]
            if any(row[index] != token for row in rows):
                return index
        return max(limit, 0)


def _left_pad_rows(states: torch.Tensor, pads: list[int], common: int) -> torch.Tensor:
    """``(1, heads, common, dim)`` -> ``(batch, heads, common, dim)``: row i = pad_i zero slots + its shared part."""
    return torch.cat([F.pad(states[:, :, : common - pad], (0, 0, pad, 0)) for pad in pads])
