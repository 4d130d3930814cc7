"""Prefix KV reuse: every row of a batch starts from the longest prefix it shares with a prompt already cached.

Usage (driven by :class:`rh_models.lm.RHHFLM` with ``prefix_reuse``)::

    cache = prefix.take(context, attention_mask, extend, capacity)  # all but each row's last tokens, cached
    output = model.generate(context, attention_mask=attention_mask, cache=cache)  # (past_key_values= before 5.2x)
    prefix.keep(cache, context, attention_mask)            # its prompts are the candidates for the next batch

Why: prompts of an evaluation share long prefixes -- the few-shot exemplars of a CoT task, the haystack before
the needle of NIAH prompts of one length -- and the keys and values of a token depend only on the tokens before
it, so a shared prefix needs prefilling once. On a CPU, prefill is most of the time (a 450-token prompt of
SmolLM2-135M takes about a second; a decoding step of 48 rows a third of that).

How: rows are taken in order of their tokens, so that prompts sharing prefixes come together. Each row copies
the longest prefix it shares with the previous batch's prompts or with a row of this batch done before it, and
``extend`` prefills only the rest, up to its last ``MIN_RECOMPUTED`` tokens; rows copying the same prefix are
prefilled together (right-padded: causal attention never lets a real token see the padding after it). The rows are
then laid out left-padded, as lm-eval pads them: row ``i`` with ``pad_i`` pads holds ``pad_i`` masked zero slots
and then its own cached tokens, so every row leaves the same number of tokens for ``generate`` to prefill, and
transformers derives positions from the attention mask, so each cached token sits at the position its key was
computed at. This is the same computation as prefilling every row in full (tested against that, generations and
recorded top-1 positions alike), in a different order.

Sliding-window layers (Gemma 2/3, Mistral v0.1, GPT-OSS, ...): transformers' own cache for them keeps only the
last window of keys, which cannot be cut back to a prefix. Every cache built here holds every layer in full
instead, and the model's sliding-window mask, built from positions, does the windowing: the keys a sliding layer
attends are exactly those it would attend with its own windowed cache, so the cached prefix is exact for every
layer type (tested on Gemma-3 and Mistral against fresh prefills). The cost is memory: a sliding layer's cache
grows with the prompt, as a global layer's does. Caches with any other kind of layer (linear attention, offloaded
or quantized caches) are not reused: those models prefill from scratch, with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from rh_models.compat import (
    cache_layers,
    init_cache_layer,
    layer_tensors,
    set_cache_layers,
    set_layer_tensors,
)

logger = logging.getLogger(__name__)

MIN_RECOMPUTED = 2  # tokens of every row that generate() prefills: the step that makes the first answer token
WAVE_GAIN = 16  # tokens of shared prefix a row may forgo to be prefilled in a batch with other rows

# (rows of tokens, a DynamicCache holding the first few of each, one row per row) -> the cache extended to all
Extend = Callable[[list[list[int]], Any], None]

# cache layers whose keys a full layer can stand in for (the sliding mask then does the windowing)
_REPLACEABLE_LAYERS = (DynamicLayer, DynamicSlidingWindowLayer)


@dataclass
class _Cached:
    """One prompt whose keys/values are in ``layers``: row ``row`` of those tensors, from slot ``start`` on."""

    ids: list[int]
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: (keys, values), (batch, kv_heads, slots, dim)
    row: int = 0
    start: int = 0

    def prefix(self, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        end = self.start + length
        return [(k[self.row : self.row + 1, :, self.start : end], v[self.row : self.row + 1, :, self.start : end])
                for k, v in self.layers]


class PrefixCache:
    """One model's cached prompts (those of its last batch), and how many prompt tokens reuse has saved."""

    def __init__(self, config: Any) -> None:
        from transformers import DynamicCache

        self.config = config
        self.cached: list[_Cached] = []
        self.tokens_reused = 0
        layers = cache_layers(DynamicCache(config=config))
        self._n_layers = len(layers)
        self._croppable = bool(layers) and all(type(layer) in _REPLACEABLE_LAYERS for layer in layers)  # per model
        self._warned = False

    def clear(self) -> None:
        """Forget the cached prompts (their keys/values were computed under a mask that no longer holds)."""
        self.cached = []

    def supported(self, model_name: str) -> bool:
        """Can this model's cache be cut back to a prefix? Warns once when not (reuse is then skipped)."""
        if not self._croppable and not self._warned:
            logger.warning("prefix_reuse: %s has cache layers other than full or sliding-window attention (linear "
                           "attention, ...) that cannot be rolled back; prefilling every prompt from scratch", model_name)
            self._warned = True
        return self._croppable

    def take(self, context: torch.Tensor, attention_mask: torch.Tensor | None, extend: Extend, capacity: int) -> Any:
        """A cache for the left-padded batch ``context`` holding every row but its last ``MIN_RECOMPUTED`` tokens.

        Its layers are allocated for ``capacity`` positions (prompt + answer) up front: a growing cache would copy
        every row's keys and values at each decoding step, half the time of a step of 48 rows on a CPU.
        """
        width = context.shape[1]
        mask = torch.ones_like(context) if attention_mask is None else attention_mask
        rows = [row[keep.bool()].tolist() for row, keep in zip(context.cpu(), mask.cpu())]
        if min(map(len, rows)) <= MIN_RECOMPUTED:
            self.cached = []
            return self._full_cache([PreallocatedLayer(capacity) for _ in range(self._n_layers)])
        targets = [row[: len(row) - MIN_RECOMPUTED] for row in rows]
        done: dict[int, _Cached] = {}
        for wave in self._plan(targets):
            for (source, _), members in wave.items():
                shared = min(tokens for _, tokens in members)
                done.update(self._extend_group(source, shared, [b for b, _ in members], targets, done, extend))
        self.cached = []  # the previous batch's tensors can go once its rows are copied
        cache = self._full_cache([PreallocatedLayer(capacity) for _ in done[0].layers])
        slots = width - MIN_RECOMPUTED
        prefixes = [done[b].prefix(len(targets[b])) for b in range(len(rows))]
        for layer in range(len(done[0].layers)):
            keys = [F.pad(prefix[layer][0], (0, 0, slots - len(targets[b]), 0)) for b, prefix in enumerate(prefixes)]
            values = [F.pad(prefix[layer][1], (0, 0, slots - len(targets[b]), 0)) for b, prefix in enumerate(prefixes)]
            cache.update(torch.cat(keys), torch.cat(values), layer)
        return cache

    def _plan(self, targets: list[list[int]]) -> list[dict[tuple[Any, int], list[tuple[int, int]]]]:
        """Waves of ``{(source, bucket): [(row, shared tokens)]}``; a wave needs only sources made before it.

        Rows are taken in token order, so that rows sharing prefixes meet. Each row copies from a prompt cached by
        the previous batch or from a row of this batch; among the sources within ``WAVE_GAIN`` tokens of its longest
        shared prefix it takes the earliest wave, so that many rows can be prefilled together (rows of one group
        copy the group's shortest shared prefix: at most ``2 * WAVE_GAIN`` tokens less than their best).
        """
        waves: list[dict[tuple[Any, int], list[tuple[int, int]]]] = []
        wave_of: dict[int, int] = {}
        done: list[int] = []
        for b in sorted(range(len(targets)), key=lambda i: targets[i]):
            candidates = [(_common_length(c.ids, targets[b]), 0, ("cached", j)) for j, c in enumerate(self.cached)]
            candidates += [(_common_length(targets[r], targets[b]), wave_of[r] + 1, ("row", r)) for r in done]
            best = max((shared for shared, _, _ in candidates), default=0)
            if best == 0:
                shared, wave, source = 0, 0, None
            else:
                shared, wave, source = min((c for c in candidates if c[0] >= best - WAVE_GAIN),
                                           key=lambda c: (c[1], -c[0]))
            wave_of[b] = wave
            done.append(b)
            while len(waves) <= wave:
                waves.append({})
            waves[wave].setdefault((source, shared // WAVE_GAIN), []).append((b, shared))
        return waves

    def _extend_group(self, source: tuple[str, int] | None, shared: int, members: list[int],
                      targets: list[list[int]], done: dict[int, _Cached], extend: Extend) -> dict[int, _Cached]:
        """Copy the source's first ``shared`` tokens for every member, prefill the rest of each in one forward."""
        cache = self._full_cache([DynamicLayer() for _ in range(self._n_layers)])
        if source is not None:
            origin = self.cached[source[1]] if source[0] == "cached" else done[source[1]]
            for layer, (keys, values) in enumerate(origin.prefix(shared)):
                cache.update(keys.expand(len(members), -1, -1, -1).contiguous(),
                             values.expand(len(members), -1, -1, -1).contiguous(), layer)
            self.tokens_reused += shared * len(members)
        rows = [targets[b] for b in members]
        if any(len(row) > shared for row in rows):
            extend(rows, cache)
        layers = [layer_tensors(layer) for layer in cache_layers(cache)]
        return {b: _Cached(targets[b], layers, row=i) for i, b in enumerate(members)}

    def _full_cache(self, layers: list[DynamicLayer]) -> Any:
        """A cache of the model's kind whose every layer keeps all keys (a sliding layer's mask windows them)."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.config)
        set_cache_layers(cache, layers)
        return cache

    def keep(self, cache: Any, context: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        """After generation: the batch's prompts (all of their tokens now have keys) become the candidates."""
        width = context.shape[1]
        mask = torch.ones_like(context) if attention_mask is None else attention_mask
        layers = [layer_tensors(layer) for layer in cache_layers(cache)]
        self.cached = [
            _Cached(row[keep.bool()].tolist(), layers, row=b, start=width - int(keep.sum()))
            for b, (row, keep) in enumerate(zip(context.cpu(), mask.cpu()))
        ]


class PreallocatedLayer(DynamicLayer):
    """A growing cache layer that writes into storage allocated for ``capacity`` positions (no copy per step).

    Same values as transformers' ``DynamicLayer`` (which concatenates); ``keys``/``values`` are views of the
    filled part, so everything that reads a dynamic layer reads this one unchanged.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self._key_storage: torch.Tensor | None = None
        self._value_storage: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        init_cache_layer(self, key_states, value_states)
        start, new = self.get_seq_length(), key_states.shape[-2]
        if self._key_storage is None or start + new > self._key_storage.shape[-2] \
                or key_states.shape[0] != self._key_storage.shape[0]:
            self._grow(key_states, value_states, max(self.capacity, start + new))
        self._key_storage[..., start : start + new, :] = key_states
        self._value_storage[..., start : start + new, :] = value_states
        set_layer_tensors(self, self._key_storage[..., : start + new, :], self._value_storage[..., : start + new, :])
        return layer_tensors(self)

    def _grow(self, key_states: torch.Tensor, value_states: torch.Tensor, capacity: int) -> None:
        start = self.get_seq_length()
        shape = (*key_states.shape[:-2], capacity, key_states.shape[-1])
        keys = key_states.new_zeros(shape)
        values = value_states.new_zeros((*value_states.shape[:-2], capacity, value_states.shape[-1]))
        if start:
            keys[..., :start, :], values[..., :start, :] = layer_tensors(self)
        self._key_storage, self._value_storage = keys, values


def _common_length(a: list[int], b: list[int]) -> int:
    limit = min(len(a), len(b))
    for index in range(limit):
        if a[index] != b[index]:
            return index
    return limit
