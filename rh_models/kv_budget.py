"""KV budgets by head: some heads keep the full context, the others only a sink and a recent window.

Usage (``rh-hf`` model args, stock CLI)::

    lm_eval --model rh-hf --model_args pretrained=smollm2-135m,head_scores=scores.json,kv_full_heads=top:10%,\\
kv_sink=4,kv_window=64 --tasks rh_niah

    lm.set_kv("top:10%", sink=4, window=64)      # from Python, swapped between conditions like a mask
    lm.kv_info()["kv_budget"]                    # share of key/value entries kept, over the sequences run so far

Why: the main use of retrieval heads since the paper is KV-cache compression (DuoAttention, RazorAttention,
HeadKV): keep the whole cache only for the heads that retrieve, and a StreamingLLM cache (the first ``sink``
positions plus the last ``window`` positions up to the query) for every other head. Whether a ranking of heads
makes a good compression policy is then an ordinary lm-eval question, asked with any task.

How: a *streaming* head's attention is masked, at every query position, in prefill and in decoding, to the keys
its cache would still hold. The rule is read off the mask the model itself built for the call (padding, prefix
cache and decoding steps included): of the keys a query may see, the first ``sink`` and the last ``window``. The
full heads run the model's own attention call exactly as before (same kernel, same mask, same fast path); the
streaming heads run through sdpa (the eager function on an eager model: flash kernels take no mask) with the
banded mask, block by block of queries over only the keys each block keeps. This simulates the eviction; no
memory is freed.

GQA: the cache is kept per *KV* head, so a KV head keeps its full context when any of its query heads is selected,
and then every query head of its group is full: :meth:`StreamingHeads.info` reports both the heads asked for and
the heads that end up full. Layers the model already limits to a sliding window (Gemma 2/3, Mistral v0.1, ...)
are left as the model has them; their heads count as full, with the layer's own window, in the budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from rh_models.arguments import parse_int
from rh_models.errors import RHError
from rh_models.heads import Head, HeadScores, HeadSet, HeadSpec, check_ranking, parse_head_spec, require_scores
from rh_models.shape import kv_head_of, text_config

DEFAULT_SINK = 4
DEFAULT_WINDOW = 64


@dataclass(frozen=True)
class KVArgs:
    """``kv_full_heads`` / ``kv_sink`` / ``kv_window`` as typed, checked before the model loads."""

    spec: HeadSpec | None  # None: no KV budget at all (the model untouched); kind "none": every head streams
    sink: int = DEFAULT_SINK
    window: int = DEFAULT_WINDOW


KV_ARGS = ("kv_full_heads", "kv_sink", "kv_window")  # the model args of a KV budget (rh-hf only)


def parse_kv_args(kv_full_heads: Any = None, kv_sink: Any = None, kv_window: Any = None,
                  head_scores: Any = None, tie_break: str = "none", random_exclude: int = 0) -> KVArgs:
    """The strings lm-eval passes from ``--model_args``, as :class:`KVArgs`, or one clear line.

    ``kv_sink`` / ``kv_window`` without ``kv_full_heads`` would change nothing: refused, not ignored. A ranking
    (``top:P%``) is checked against the score file here, before the model loads: ``top:50%`` of a file where fewer
    heads scored above 0 is refused unless ``tie_break`` (a shared mask arg, checked already) is ``random``.
    """
    if kv_full_heads is None:
        given = [name for name, value in (("kv_sink", kv_sink), ("kv_window", kv_window)) if value is not None]
        if given:
            raise RHError(f"{' and '.join(given)} without kv_full_heads changes nothing; give kv_full_heads (e.g. "
                          "top:10%, or none for every head streaming)")
        return KVArgs(None)
    sink = parse_int("kv_sink", DEFAULT_SINK if kv_sink is None else kv_sink, minimum=0)
    window = parse_int("kv_window", DEFAULT_WINDOW if kv_window is None else kv_window, minimum=1)
    spec = parse_head_spec(str(kv_full_heads))
    if spec.needs_scores:
        require_scores(head_scores, f"kv_full_heads={kv_full_heads}")
    if head_scores is not None and spec.kind in ("top", "random"):
        check_ranking(spec, HeadScores.load(str(head_scores)), tie_break, random_exclude)
    return KVArgs(spec, sink, window)


def sliding_windows(modules: list[torch.nn.Module], config: Any) -> dict[int, int]:
    """Layer -> its own sliding window, for the layers whose attention the model already limits to one.

    Read from the module where it says (Gemma 2/3, Qwen 2/3 set ``sliding_window`` per layer) and otherwise from
    the config (Mistral and Phi-3 pass ``config.sliding_window`` to every layer, or as ``layer_types`` says).
    """
    text = text_config(config)
    window = getattr(text, "sliding_window", None)
    layer_types = getattr(text, "layer_types", None)
    windows = {}
    for layer, module in enumerate(modules):
        own = getattr(module, "sliding_window", None)
        if hasattr(module, "sliding_window"):
            slides = isinstance(own, int) and own > 0
        elif layer_types is not None:
            slides, own = layer_types[layer] == "sliding_attention", window
        else:
            slides, own = getattr(text, "use_sliding_window", True) is not False, window
        if slides and isinstance(own, int) and own > 0:
            windows[layer] = own
    return windows


@dataclass
class LayerPlan:
    """One layer's split: the query heads and KV heads that keep the full context, and those that stream."""

    full_q: torch.Tensor
    stream_q: torch.Tensor
    full_kv: torch.Tensor
    stream_kv: torch.Tensor


@dataclass
class StreamingHeads:
    """A KV budget resolved against a model: which KV heads keep everything, and the sink/window of the rest."""

    selected: HeadSet  # the query heads asked to keep the full context
    sink: int
    window: int
    n_kv_heads: int
    sliding: dict[int, int] = field(default_factory=dict)  # layer -> the model's own window (left as it is)
    spec: str = ""
    kept_entries: int = 0  # accounting over the sequences run since the budget was set
    full_entries: int = 0
    sequences: int = 0
    _plans: dict[tuple[int, str], LayerPlan | None] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.compressed_layers():
            raise RHError("every attention layer of this model already keeps only a sliding window; a KV budget by "
                          "head would change nothing (refusing a silent no-op)")

    @property
    def n_layers(self) -> int:
        return self.selected.n_layers

    @property
    def group(self) -> int:
        return self.selected.n_heads // self.n_kv_heads

    def compressed_layers(self) -> list[int]:
        return [layer for layer in range(self.n_layers) if layer not in self.sliding]

    def full_kv_heads(self, layer: int) -> list[int]:
        """KV heads of ``layer`` that keep the full context: those with at least one selected query head."""
        if layer in self.sliding:
            return list(range(self.n_kv_heads))
        n_heads = self.selected.n_heads
        return sorted({kv_head_of(head, n_heads, self.n_kv_heads) for l, head in self.selected if l == layer})

    def full_query_heads(self) -> list[Head]:
        """Every query head that ends up seeing the full context (whole GQA groups), in compressed layers."""
        return [(layer, kv * self.group + q) for layer in self.compressed_layers()
                for kv in self.full_kv_heads(layer) for q in range(self.group)]

    def plan(self, layer: int, device: torch.device) -> LayerPlan | None:
        """The split for ``layer``; None when every head of it keeps its context (the call stays stock)."""
        key = (layer, str(device))
        if key not in self._plans:
            full = self.full_kv_heads(layer)
            if len(full) == self.n_kv_heads:
                self._plans[key] = None
            else:
                stream = [kv for kv in range(self.n_kv_heads) if kv not in full]

                def query_heads(kvs: list[int]) -> torch.Tensor:
                    heads = [kv * self.group + q for kv in kvs for q in range(self.group)]
                    return torch.tensor(heads, dtype=torch.long, device=device)

                self._plans[key] = LayerPlan(query_heads(full), query_heads(stream),
                                             torch.tensor(full, dtype=torch.long, device=device),
                                             torch.tensor(stream, dtype=torch.long, device=device))
        return self._plans[key]

    def keeps_everything(self, kv_length: int) -> bool:
        """No query can see more than ``sink + window`` keys: the streaming rule removes nothing."""
        return kv_length <= self.sink + self.window

    # ------------------------------------------------------------------ the budget
    def entries(self, length: int) -> tuple[int, int]:
        """(kept, full) key/value entries of one sequence of ``length`` tokens, over every layer and KV head."""
        kept = full = 0
        streaming = min(length, self.sink + self.window)
        for layer in range(self.n_layers):
            own = min(length, self.sliding[layer]) if layer in self.sliding else length
            n_full = len(self.full_kv_heads(layer))
            full += self.n_kv_heads * own
            kept += n_full * own + (self.n_kv_heads - n_full) * (own if layer in self.sliding else streaming)
        return kept, full

    def count(self, lengths: list[int]) -> None:
        """Add finished sequences (their token counts, prompt and answer) to the run's budget."""
        for length in lengths:
            kept, full = self.entries(int(length))
            self.kept_entries += kept
            self.full_entries += full
            self.sequences += 1

    @property
    def budget(self) -> float | None:
        """Share of key/value entries kept against full attention, over the sequences counted; None before any."""
        return self.kept_entries / self.full_entries if self.full_entries else None

    def info(self) -> dict[str, Any]:
        """What lands in lm-eval's results JSON as ``config.rh_kv``."""
        effective = self.full_query_heads()
        selected = [head for head in self.selected if head[0] not in self.sliding]
        return {
            "full_heads": self.spec,
            "selected_heads": [list(h) for h in self.selected],
            "full_query_heads": [list(h) for h in effective],
            "full_kv_heads": {str(layer): self.full_kv_heads(layer) for layer in self.compressed_layers()
                              if self.full_kv_heads(layer)},
            "gqa_group": self.group,
            "gqa_note": None if self.group == 1 or len(effective) == len(selected) else
            f"{len(selected)} query heads selected in compressed layers; their KV heads keep the full context for "
            f"all {len(effective)} query heads of those groups",
            "selected_in_sliding_layers": [list(h) for h in self.selected if h[0] in self.sliding],
            "sink": self.sink,
            "window": self.window,
            "sliding_layers": {str(layer): window for layer, window in self.sliding.items()},
            "kv_budget": self.budget,
            "sequences": self.sequences,
            "simulated": "attention masks; no memory is freed",
        }


# ---------------------------------------------------------------------------------------------- masks


def causal_mask(q_length: int, kv_length: int, device: torch.device | str | None = None,
                queries: slice | None = None, keys: torch.Tensor | None = None) -> torch.Tensor:
    """``(q, kv)`` bool: causal attention of the last ``q_length`` of ``kv_length`` positions, aligned bottom-right
    (query ``i`` sees keys ``0 .. kv_length - q_length + i``), as transformers lays out a prefill over a cache or a
    decoding step. ``queries`` (a slice of the queries) and ``keys`` (key indices) pick rows and columns of it
    without building the rest."""
    query_index = torch.arange(kv_length - q_length, kv_length, device=device)
    if queries is not None:
        query_index = query_index[queries]
    key_index = torch.arange(kv_length, device=device) if keys is None else keys
    return key_index[None, :] <= query_index[:, None]


def visible_keys(mask: torch.Tensor | None, batch: int, q_length: int, kv_length: int,
                 device: torch.device, rows: torch.Tensor | None = None) -> torch.Tensor:
    """``(batch, q, kv)`` bool: which keys each query of this call may see, from any mask layout transformers uses.

    ``None`` means causal without padding, aligned bottom-right (transformers passes None only when the queries are
    the last ``q`` positions: one decoding step, or a prefill with as many queries as keys). ``rows`` (query indices)
    keeps only those queries, ``(batch, len(rows), kv)``, without building the others' rows.
    """
    every = rows is None
    rows = torch.arange(q_length, device=device) if every else rows.to(device)
    if mask is None:
        if q_length != 1 and q_length != kv_length:
            raise RHError(f"no attention mask for {q_length} queries over {kv_length} keys; cannot place a KV window")
        return causal_rows(rows, q_length, kv_length, device).expand(batch, len(rows), kv_length)
    if mask.ndim == 4:  # sdpa (bool, True = attend) or eager (additive float, very negative = blocked)
        kept = mask[:, 0, -q_length:, :kv_length]
        kept = kept if every else kept.index_select(1, rows.to(kept.device))
        visible = kept if kept.dtype == torch.bool else kept > torch.finfo(kept.dtype).min / 2
        return visible.expand(batch, len(rows), kv_length)
    if mask.ndim == 2:  # flash: (batch, kv) padding mask, 1 = token; causal on top, aligned bottom-right
        padding = mask[:, -kv_length:].bool()
        return causal_rows(rows, q_length, kv_length, device)[None] & padding[:, None, :]
    raise RHError(f"unsupported attention-mask layout {tuple(mask.shape)}: cannot tell which keys a query sees")


def causal_rows(rows: torch.Tensor, q_length: int, kv_length: int, device: torch.device) -> torch.Tensor:
    """``causal_mask``'s rows ``rows`` (query indices, any order), ``(len(rows), kv)``."""
    return torch.arange(kv_length, device=device)[None, :] <= (rows + kv_length - q_length)[:, None]


BLOCK = 256  # queries per streaming-attention call in prefill: each block needs only sink + window + BLOCK keys


@dataclass
class StreamingLayout:
    """The usual shape of a mask, which lets a streaming head attend block by block to only the keys it keeps.

    Every row's real keys are contiguous (left padding, a prefix cache laid out left-padded, or none) and each real
    query sees exactly the real keys up to its own position (causal, aligned bottom-right). Then a query's window is
    the ``window`` key indices up to itself and its sink the row's first ``sink`` real keys, so a block of queries
    needs the sinks plus a band of keys, not the whole cache.
    """

    real: torch.Tensor  # (batch, kv) bool: a real key (not padding)
    rank: torch.Tensor  # (batch, kv) int: 1-based rank among the row's real keys (0 for padding)
    query_index: torch.Tensor  # (q,) key index of each query's own position
    first: torch.Tensor  # (batch,) index of the row's first real key

    @classmethod
    def of(cls, mask: torch.Tensor | None, batch: int, q_length: int, kv_length: int,
           device: torch.device) -> "StreamingLayout | None":
        """The layout of this call's mask, or None when it has another shape (then the general path applies)."""
        index = torch.arange(kv_length, device=device)
        query_index = index[kv_length - q_length:]
        if mask is None:
            real = torch.ones(batch, kv_length, dtype=torch.bool, device=device)
        else:
            visible = visible_keys(mask, batch, q_length, kv_length, device)
            real = visible[:, -1, :].clone()
            expected = real[:, None, :] & causal_mask(q_length, kv_length, device)[None]
            queries_real = real[:, query_index]  # padding queries: whatever the model gave them is never read
            if not torch.equal(visible[queries_real], expected[queries_real]):
                return None
        rank = real.to(torch.int32).cumsum(-1) * real
        first = torch.where(real.any(-1), real.to(torch.int8).argmax(-1), torch.zeros_like(real[:, 0], dtype=torch.long))
        span = (index[None, :] >= first[:, None]) & (index[None, :] < (first + real.sum(-1))[:, None])
        if not torch.equal(span, real):  # real keys with a gap: a window in key indices would not be the last keys
            return None
        return cls(real, rank, query_index, first)

    def block(self, start: int, end: int, sink: int, window: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Key columns and ``(batch, 1, end - start, columns)`` mask of queries ``start:end`` of a streaming head."""
        device = self.real.device
        low = max(0, int(self.query_index[start]) - window + 1)
        high = int(self.query_index[end - 1]) + 1
        sinks = (self.first[:, None] + torch.arange(sink, device=device)[None, :]).flatten()
        columns = torch.unique(torch.cat([sinks[sinks < low], torch.arange(low, high, device=device)]))
        queries = self.query_index[start:end]
        key_rank = self.rank[:, columns]  # (batch, c)
        query_rank = self.rank[:, queries]  # (batch, q)
        causal = causal_mask(len(self.query_index), self.real.shape[1], device, slice(start, end), columns)
        sees = self.real[:, None, columns] & causal[None]
        keeps = (key_rank[:, None, :] <= sink) | (query_rank[:, :, None] - key_rank[:, None, :] < window)
        padding_query = ~self.real[:, queries]  # never read; attending everything keeps them finite
        return columns, ((sees & keeps) | padding_query[:, :, None])[:, None]


def streaming_mask(visible: torch.Tensor, sink: int, window: int) -> torch.Tensor:
    """Of the keys each query sees, keep the first ``sink`` and the last ``window`` (StreamingLLM's cache)."""
    counts = visible.to(torch.int32)
    from_start = counts.cumsum(-1)  # 1 at the first visible key
    from_end = counts.flip(-1).cumsum(-1).flip(-1)  # 1 at the last visible key (the query itself, when causal)
    return visible & ((from_start <= sink) | (from_end <= window))
