"""Which heads to mask: parse ``mask_heads`` specs and read head-score files (the paper's format).

Usage::

    scores = HeadScores.load("scores.json", n_layers=30, n_heads=9)
    heads = select_heads("top:6", n_layers=30, n_heads=9, scores=scores)       # HeadSet
    heads = select_heads("random:6", 30, 9, scores=scores, seed=1)             # excludes retrieval heads
    heads = select_heads("3-4;17-0", 30, 9)                                     # the paper's L-H notation
    heads = select_heads("top:10%", 30, 9, scores=scores)                       # a share: 27 of 270 heads

A score file is one JSON object ``{"<layer>-<head>": [score per test, ...]}`` (mean = the head's score) or
``{"<layer>-<head>": float}``. Heads are *query* heads (under GQA several share one KV head).
Specs use ``;`` between heads because ``,`` separates lm-eval's ``--model_args``.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from rh_models.errors import RHError

Head = tuple[int, int]
_HEAD_RE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")
DEFAULT_RETRIEVAL_THRESHOLD = 0.1  # the paper calls a head "retrieval" when its mean score exceeds 0.1


@dataclass(frozen=True)
class HeadSet:
    """An ordered, duplicate-free set of (layer, query head) pairs, validated against a model's shape."""

    heads: tuple[Head, ...]
    n_layers: int
    n_heads: int

    def __post_init__(self) -> None:
        for layer, head in self.heads:
            if not 0 <= layer < self.n_layers:
                raise RHError(f"layer {layer} out of range: the model has layers 0..{self.n_layers - 1}")
            if not 0 <= head < self.n_heads:
                raise RHError(f"head {head} out of range: the model has query heads 0..{self.n_heads - 1}")
        if len(set(self.heads)) != len(self.heads):
            raise RHError(f"duplicate heads in {format_heads(self.heads)}")

    def __iter__(self) -> Iterator[Head]:
        return iter(self.heads)

    def __len__(self) -> int:
        return len(self.heads)

    def by_layer(self) -> dict[int, list[int]]:
        """{layer: sorted query heads} — what the attention function needs per call."""
        layers: dict[int, list[int]] = {}
        for layer, head in self.heads:
            layers.setdefault(layer, []).append(head)
        return {layer: sorted(heads) for layer, heads in sorted(layers.items())}

    def spec(self) -> str:
        return format_heads(self.heads) or "none"


def format_heads(heads: Iterable[Head]) -> str:
    return ";".join(f"{layer}-{head}" for layer, head in heads)


def parse_head(text: str, where: str = "mask_heads") -> Head:
    match = _HEAD_RE.match(text)
    if not match:
        raise RHError(f"bad head {text.strip()!r} in {where}: expected LAYER-HEAD such as 3-4 (heads separated by ';')")
    return int(match.group(1)), int(match.group(2))


class HeadScores:
    """Per-head retrieval scores: each head's list of per-test scores and its mean."""

    def __init__(self, per_test: dict[Head, list[float]], n_layers: int, n_heads: int, source: str = "") -> None:
        self.per_test = per_test
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.source = source

    @classmethod
    def load(cls, path: str | Path, n_layers: int | None = None, n_heads: int | None = None) -> "HeadScores":
        """Read a score file; if a model shape is given, the file must be for exactly that shape."""
        path = Path(path)
        if not path.is_file():
            raise RHError(f"head-score file {path} does not exist")
        try:
            raw = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RHError(f"head-score file {path} is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})") from None
        if not isinstance(raw, dict) or not raw:
            raise RHError(f"head-score file {path} must be a non-empty JSON object {{\"L-H\": [scores...]}}")
        per_test: dict[Head, list[float]] = {}
        for key, value in raw.items():
            head = parse_head(key, where=str(path))
            values = value if isinstance(value, list) else [value]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
                raise RHError(f"head-score file {path}: scores of {key} must be numbers or a list of numbers")
            per_test[head] = [float(v) for v in values]
        file_layers = max(layer for layer, _ in per_test) + 1
        file_heads = max(head for _, head in per_test) + 1
        if n_layers is not None and n_heads is not None and (file_layers, file_heads) != (n_layers, n_heads):
            raise RHError(
                f"head-score file {path} is for a model with {file_layers} layers x {file_heads} heads, "
                f"but this model has {n_layers} x {n_heads}"
            )
        return cls(per_test, n_layers or file_layers, n_heads or file_heads, source=str(path))

    def mean(self, head: Head) -> float:
        values = self.per_test.get(head) or [0.0]
        return sum(values) / len(values)

    def ranked(self) -> list[tuple[Head, float]]:
        """All heads of the model, best first; ties broken by (layer, head) so the order is deterministic."""
        all_heads = [(layer, head) for layer in range(self.n_layers) for head in range(self.n_heads)]
        return sorted(((h, self.mean(h)) for h in all_heads), key=lambda item: (-item[1], item[0]))

    def top(self, k: int) -> list[Head]:
        return [head for head, _ in self.ranked()[:k]]

    def share_above(self, threshold: float) -> float:
        """Sparsity as the paper reports it: the share of all the model's heads whose mean score exceeds ``threshold``."""
        return len(self.above(threshold)) / (self.n_layers * self.n_heads)

    def above(self, threshold: float) -> list[Head]:
        return [head for head, score in self.ranked() if score > threshold]


@dataclass(frozen=True)
class HeadSpec:
    """A ``mask_heads`` value as written, checked for syntax only: no model shape, no score file.

    Why separate from :func:`select_heads`: the spec is checked before the model loads (a typo should not cost a
    minute of loading), but what it *means* -- which heads ``top:K`` or ``random:K`` are, whether a layer
    exists -- depends on the loaded model's shape. Resolving against a made-up shape once built a pool of
    10^18 heads and exhausted memory.
    """

    kind: str  # "none", "heads" (explicit L-H list), "top" or "random"
    text: str
    count: int = 0
    heads: tuple[Head, ...] = ()
    share: float | None = None  # ``top:10%``: a percentage of all the model's heads instead of a count

    def resolve_count(self, total_heads: int) -> int:
        """K for a model with ``total_heads`` heads: the count as written, or the share rounded half up (at least 1)."""
        if self.share is None:
            return self.count
        return max(1, math.floor(self.share * total_heads / 100 + 0.5))

    @property
    def needs_scores(self) -> bool:
        """``top:K`` ranks heads by a score file; ``random:K`` only uses one to exclude retrieval heads."""
        return self.kind == "top"


def spec_text(value: "str | HeadSpec | HeadSet") -> str:
    """How a head selection was asked for, as written (a resolved :class:`HeadSet` in ``L-H`` notation)."""
    if isinstance(value, HeadSet):
        return value.spec()
    return value.text if isinstance(value, HeadSpec) else str(value)


def parse_head_spec(spec: str | None) -> HeadSpec:
    """``none`` · ``L-H;L-H;...`` · ``top:K`` · ``random:K`` (K a count, or a share such as ``10%``) ->
    :class:`HeadSpec`, or one clear :class:`RHError`."""
    text = (spec or "none").strip()
    if text.lower() in ("", "none"):
        return HeadSpec("none", "none")
    kind, colon, count = text.partition(":")
    kind = kind.strip().lower()
    if colon and kind in ("top", "random"):
        if count.strip().endswith("%"):
            return HeadSpec(kind, text, share=_parse_share(count, text))
        return HeadSpec(kind, text, count=_parse_count(count, text))
    if colon:
        raise RHError(f"bad head spec {text!r}: expected none, L-H;L-H, top:K, random:K or top:P%")
    return HeadSpec("heads", text, heads=tuple(parse_head(part) for part in text.split(";") if part.strip()))


def check_random_match(random_match: str | None) -> str | None:
    """``random_match`` is ``None`` or ``"layer"``; anything else is refused (also before the model loads)."""
    if random_match in (None, "", "none"):
        return None
    if random_match != "layer":
        raise RHError(f"random_match={random_match!r} is not supported; use random_match=layer")
    return random_match


def select_heads(
    spec: str | HeadSpec | None,
    n_layers: int,
    n_heads: int,
    scores: HeadScores | None = None,
    seed: int = 0,
    random_exclude: int | None = None,
    random_match: str | None = None,
) -> HeadSet:
    """Resolve a ``mask_heads`` spec against a model's shape into a validated :class:`HeadSet`.

    ``random:K`` draws K heads with ``seed`` from the heads that are *not* retrieval heads: by default every
    head whose mean score exceeds 0.1 is excluded; ``random_exclude=N`` excludes the top N instead.
    ``random_match="layer"`` draws, per layer, as many heads as ``top:K`` has in that layer, so a random
    control differs from the retrieval condition only in *which* heads of those layers are masked.
    """
    parsed = spec if isinstance(spec, HeadSpec) else parse_head_spec(spec)
    random_match = check_random_match(random_match)
    if parsed.kind == "none":
        return HeadSet((), n_layers, n_heads)
    if parsed.kind == "heads":
        return HeadSet(parsed.heads, n_layers, n_heads)
    k = parsed.resolve_count(n_layers * n_heads)
    if parsed.kind == "top":
        scores = _require_scores(scores, parsed.text)
        if k > n_layers * n_heads:
            raise RHError(f"{parsed.text}: K={k} exceeds the model's {n_layers * n_heads} heads")
        return HeadSet(tuple(scores.top(k)), n_layers, n_heads)
    return _select_random(k, n_layers, n_heads, scores, seed, random_exclude, random_match, parsed.text)


def retrieval_pool_excluded(scores: HeadScores | None, random_exclude: int | None) -> set[Head]:
    """Heads a random control must never draw: the retrieval heads."""
    if scores is None:
        return set()
    if random_exclude is not None:
        return set(scores.top(random_exclude))
    return set(scores.above(DEFAULT_RETRIEVAL_THRESHOLD))


def _select_random(
    k: int,
    n_layers: int,
    n_heads: int,
    scores: HeadScores | None,
    seed: int,
    random_exclude: int | None,
    random_match: str | None,
    text: str,
) -> HeadSet:
    rng = random.Random(seed)
    excluded = retrieval_pool_excluded(scores, random_exclude)
    pool = [(l, h) for l in range(n_layers) for h in range(n_heads) if (l, h) not in excluded]
    if random_match is None:
        if k > len(pool):
            raise RHError(f"{text}: K={k} is larger than the {len(pool)} heads left after excluding retrieval heads")
        return HeadSet(tuple(sorted(rng.sample(pool, k))), n_layers, n_heads)
    scores = _require_scores(scores, f"{text} with random_match=layer")
    chosen: list[Head] = []
    for layer, top_heads in HeadSet(tuple(scores.top(k)), n_layers, n_heads).by_layer().items():
        layer_pool = [head for head in pool if head[0] == layer]
        if len(top_heads) > len(layer_pool):
            raise RHError(
                f"{text} with random_match=layer: layer {layer} needs {len(top_heads)} non-retrieval heads "
                f"but only {len(layer_pool)} are left"
            )
        chosen.extend(rng.sample(layer_pool, len(top_heads)))
    return HeadSet(tuple(sorted(chosen)), n_layers, n_heads)


def _parse_count(count: str, text: str) -> int:
    if not count.strip().isdigit() or int(count) <= 0:
        raise RHError(f"bad head spec {text!r}: expected top:K or random:K with K a positive integer")
    return int(count)


def _parse_share(count: str, text: str) -> float:
    number = count.strip()[:-1].strip()
    try:
        share = float(number)
    except ValueError:
        share = math.nan
    if not math.isfinite(share) or not 0 < share <= 100:
        raise RHError(f"bad head spec {text!r}: a share must be a percentage in (0, 100], such as top:10%")
    return share


def _require_scores(scores: HeadScores | None, text: str) -> HeadScores:
    if scores is None:
        raise RHError(f"{text} needs head_scores=PATH (a score file from `rh detect`)")
    return scores
