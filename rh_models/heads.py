"""Which heads to mask: parse ``mask_heads`` specs and read head-score files (the paper's format).

Usage::

    scores = HeadScores.load("scores.json", n_layers=30, n_heads=9)
    heads = select_heads("top:6", n_layers=30, n_heads=9, scores=scores)       # HeadSet
    heads = select_heads("random:6", 30, 9, scores=scores, seed=1)             # excludes retrieval heads
    heads = select_heads("3-4;17-0", 30, 9)                                     # the paper's L-H notation
    heads = select_heads("top:10%", 30, 9, scores=scores)                       # a share: 27 of 270 heads
    heads = select_heads("top:50%", 30, 9, scores=scores, tie_break="random")  # more than scored: see below

A score file is one JSON object ``{"<layer>-<head>": [score per test, ...]}`` (mean = the head's score) or
``{"<layer>-<head>": float}``. Heads are *query* heads (under GQA several share one KV head).
Specs use ``;`` between heads because ``,`` separates lm-eval's ``--model_args``.

A ranking stops where the scores stop: a head whose mean is not above 0 was never seen retrieving, and ordering
such heads by (layer, head) would call layer-0 heads retrieval heads. So a file in which no head scored above 0 (no
test contributed, or every score 0) ranks nothing and is refused wherever a ranking is read, and ``top:K`` asking
for more heads than scored above 0 is refused -- unless ``tie_break="random"`` says how to choose among unscored
heads: the rest (for a file that ranks nothing, all K) are drawn from them with the seed, recorded as
``tie_break`` and ``unscored_heads``. That is what a tiny random model's detection (it answers no needle) needs
to exercise the workflows at all.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from rh_models.arguments import parse_percent
from rh_models.errors import RHError
from rh_models.files import read_json

Head = tuple[int, int]
_HEAD_RE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")
DEFAULT_RETRIEVAL_THRESHOLD = 0.1  # the paper calls a head "retrieval" when its mean score exceeds 0.1
TIE_BREAKS = ("none", "random")
# the seed of the ranking a random control refers to (its excluded heads, its layers): the one rh compare's
# retrieval rows draw their tie_break places with, whatever seed the control's own draw uses
RANKING_SEED = 0  # how top:K fills places past the heads that scored above 0 (none: refuse)


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


def format_head(head: Head) -> str:
    """``(3, 4)`` -> ``"3-4"``: one head in the paper's ``L-H`` notation (score files, means files, messages)."""
    layer, index = head
    return f"{layer}-{index}"


def format_heads(heads: Iterable[Head]) -> str:
    """``[(3, 4), (17, 0)]`` -> ``"3-4;17-0"``: a ``mask_heads`` spec (``;``, as ``,`` separates model args)."""
    return ";".join(format_head(head) for head in heads)


def parse_head(text: str, where: str = "mask_heads") -> Head:
    match = _HEAD_RE.match(text)
    if not match:
        raise RHError(f"bad head {text.strip()!r} in {where}: expected LAYER-HEAD such as 3-4 (heads separated by ';')")
    return int(match.group(1)), int(match.group(2))


def score_meta_path(path: str | Path) -> Path:
    """Where a score file's provenance lies: ``scores.json`` -> ``scores.meta.json`` (``rh detect`` and
    ``rh heads import`` write it; a score file from elsewhere may have none)."""
    return Path(path).with_suffix(".meta.json")


def read_score_provenance(path: str | Path) -> dict:
    """The provenance beside a score file, or ``{}`` when it has none; a malformed one is one line naming it."""
    meta = score_meta_path(path)
    if not meta.is_file():
        return {}
    record = read_json(meta, "score-file provenance")
    if not isinstance(record, dict):
        raise RHError(f"score-file provenance {meta} must be a JSON object")
    return record


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
        raw = read_json(path, "head-score file")
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

    def scored(self) -> list[Head]:
        """The heads a ranking can stand on (mean above 0), best first; refused when there are none.

        Why refuse: with no contributing test (every list empty) or every score 0, every mean is 0 and any "top"
        heads would be the first heads by (layer, head).
        """
        scored = self.above(0.0)
        if not scored:
            why = ("no test contributed (every list is empty)" if all(not v for v in self.per_test.values())
                   else "every score is 0")
            raise RHError(f"head-score file {self.source or '(in memory)'} ranks no head: {why}; detect again on "
                          "tests the model answers (see `rh detect`) before ranking heads by it")
        return scored


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
            return HeadSpec(kind, text, share=parse_percent(f"bad head spec {text!r}", count, "top:10%"))
        return HeadSpec(kind, text, count=_parse_count(count, text))
    if colon:
        raise RHError(f"bad head spec {text!r}: expected none, L-H;L-H, top:K, random:K or top:P%")
    return HeadSpec("heads", text, heads=tuple(parse_head(part) for part in text.split(";") if part.strip()))


def check_tie_break(tie_break: str | None) -> str:
    """``tie_break`` is ``none`` (the default: refuse to rank unscored heads) or ``random``; else refused."""
    value = "none" if tie_break in (None, "") else str(tie_break)
    if value not in TIE_BREAKS:
        raise RHError(f"tie_break={tie_break!r} is not supported; use tie_break=random or tie_break=none")
    return value


def top_heads(scores: HeadScores, k: int, text: str, tie_break: str = "none", seed: int = 0) -> list[Head]:
    """The ``k`` best heads by mean score: never more than scored above 0, unless ``tie_break="random"`` draws the
    rest from the unscored heads with ``seed`` (they have no order of their own to be taken in)."""
    total = scores.n_layers * scores.n_heads
    if k > total:
        raise RHError(f"{text}: K={k} exceeds the model's {total} heads")
    # a file that ranks no head is refused, unless the caller said how to choose among unscored heads
    scored = scores.above(0.0) if check_tie_break(tie_break) == "random" else scores.scored()
    if k <= len(scored):
        return scored[:k]
    if check_tie_break(tie_break) == "none":
        raise RHError(f"{text}: {k} heads asked for, but only {len(scored)} of {total} heads scored above 0 in "
                      f"{scores.source or 'the scores'}; ask for at most {len(scored)}, or pass tie_break=random (rh "
                      f"compare / rh demo: --tie-break random) to draw the other {k - len(scored)} at random from the "
                      "unscored heads (recorded)")
    ranked = set(scored)
    unscored = [(l, h) for l in range(scores.n_layers) for h in range(scores.n_heads) if (l, h) not in ranked]
    return scored + sorted(random.Random(f"tie_break:{seed}").sample(unscored, k - len(scored)))


def unscored_heads(spec: "str | HeadSpec | HeadSet", heads: HeadSet, scores: HeadScores | None) -> int | None:
    """How many heads a ranking (``top:K``) chose without a score above 0 -- the places ``tie_break`` filled; None
    for selections that rank nothing (explicit heads, random draws)."""
    if isinstance(spec, HeadSet) or scores is None:
        return None
    parsed = spec if isinstance(spec, HeadSpec) else parse_head_spec(spec)
    return sum(1 for head in heads if scores.mean(head) <= 0) if parsed.kind == "top" else None


def check_ranking(spec: HeadSpec, scores: HeadScores, tie_break: str = "none", random_exclude: int | None = None,
                  random_match: str | None = None) -> None:
    """Refuse, from the score file alone, what :func:`select_heads` would refuse about its ranking -- so that it
    is refused before the model loads. K is resolved on the file's shape, which must be the model's anyway."""
    total = scores.n_layers * scores.n_heads
    if spec.kind == "top" or (spec.kind == "random" and check_random_match(random_match)):
        top_heads(scores, min(spec.resolve_count(total), total), spec.text, tie_break)
    if spec.kind == "random":
        retrieval_pool_excluded(scores, random_exclude, tie_break)


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
    tie_break: str = "none",
) -> HeadSet:
    """Resolve a ``mask_heads`` spec against a model's shape into a validated :class:`HeadSet`.

    ``random:K`` draws K heads with ``seed`` from the heads that are *not* retrieval heads: by default every
    head whose mean score exceeds 0.1 is excluded; ``random_exclude=N`` excludes the top N instead.
    ``random_match="layer"`` draws, per layer, as many heads as ``top:K`` has in that layer, so a random
    control differs from the retrieval condition only in *which* heads of those layers are masked.
    Every ranking read here (``top:K``, the top N excluded, the layers matched) stops at the heads that scored
    above 0 unless ``tie_break="random"`` (see :func:`top_heads`).
    """
    parsed = spec if isinstance(spec, HeadSpec) else parse_head_spec(spec)
    random_match = check_random_match(random_match)
    if parsed.kind == "none":
        return HeadSet((), n_layers, n_heads)
    if parsed.kind == "heads":
        return HeadSet(parsed.heads, n_layers, n_heads)
    k = parsed.resolve_count(n_layers * n_heads)
    if parsed.kind == "top":
        scores = require_scores(scores, parsed.text)
        return HeadSet(tuple(top_heads(scores, k, parsed.text, tie_break, seed)), n_layers, n_heads)
    return _select_random(k, n_layers, n_heads, scores, seed, random_exclude, random_match, parsed.text, tie_break)


def retrieval_pool_excluded(scores: HeadScores | None, random_exclude: int | None,
                            tie_break: str = "none") -> set[Head]:
    """Heads a random control must never draw: the retrieval heads. Excluding by a file that ranks no head would
    exclude nothing while the record says retrieval heads were excluded: refused (``random_exclude=0`` reads no
    ranking and is always allowed)."""
    if scores is None or random_exclude == 0:
        return set()
    if random_exclude is not None:
        total = scores.n_layers * scores.n_heads
        return set(top_heads(scores, min(random_exclude, total), f"random_exclude={random_exclude}", tie_break,
                             RANKING_SEED))
    if check_tie_break(tie_break) == "none":
        scores.scored()
    return set(scores.above(DEFAULT_RETRIEVAL_THRESHOLD))


def draw_heads(k: int, n_layers: int, n_heads: int, excluded: set[Head], seed: int, text: str) -> HeadSet:
    """K heads drawn uniformly with ``seed`` from the heads not ``excluded`` (a random control's draw).

    Why public: ``random:K`` excludes the retrieval heads of one score file, and ``rh compare --rankings`` excludes
    the top K of every ranking; both draw the same way, so the same seed over the same pool gives the same heads.
    """
    pool = [(l, h) for l in range(n_layers) for h in range(n_heads) if (l, h) not in excluded]
    if k > len(pool):
        raise RHError(f"{text}: K={k} is larger than the {len(pool)} heads left after excluding retrieval heads")
    return HeadSet(tuple(sorted(random.Random(seed).sample(pool, k))), n_layers, n_heads)


def _select_random(
    k: int,
    n_layers: int,
    n_heads: int,
    scores: HeadScores | None,
    seed: int,
    random_exclude: int | None,
    random_match: str | None,
    text: str,
    tie_break: str = "none",
) -> HeadSet:
    excluded = retrieval_pool_excluded(scores, random_exclude, tie_break)
    if random_match is None:
        return draw_heads(k, n_layers, n_heads, excluded, seed, text)
    rng = random.Random(seed)
    pool = [(l, h) for l in range(n_layers) for h in range(n_heads) if (l, h) not in excluded]
    scores = require_scores(scores, f"{text} with random_match=layer")
    chosen: list[Head] = []
    ranked = top_heads(scores, k, f"{text} with random_match=layer", tie_break, RANKING_SEED)
    for layer, layer_top in HeadSet(tuple(ranked), n_layers, n_heads).by_layer().items():
        layer_pool = [head for head in pool if head[0] == layer]
        if len(layer_top) > len(layer_pool):
            raise RHError(
                f"{text} with random_match=layer: layer {layer} needs {len(layer_top)} non-retrieval heads "
                f"but only {len(layer_pool)} are left"
            )
        chosen.extend(rng.sample(layer_pool, len(layer_top)))
    return HeadSet(tuple(sorted(chosen)), n_layers, n_heads)


def _parse_count(count: str, text: str) -> int:
    if not count.strip().isdigit() or int(count) <= 0:
        raise RHError(f"bad head spec {text!r}: expected top:K or random:K with K a positive integer")
    return int(count)


def require_scores(scores: HeadScores | None, text: str) -> HeadScores:
    """A ranking (``top:K``, ``random_match=layer``) reads a score file: without one, one line saying so."""
    if scores is None:
        raise RHError(f"{text} needs head_scores=PATH (a score file from `rh detect`)")
    return scores
