"""Several head rankings in one ``rh compare``: their names and files, and the random control they share.

Usage::

    rankings = parse_rankings("copy=copy.json,attention=attention.json")  # (Ranking("copy", Path(...)), ...)
    scores = check_rankings(rankings)                    # {name: HeadScores}: files read, one head shape for all
    heads, excluded = random_control(8, scores.values(), seed=1)  # random@8-seed1: 8 heads in no ranking's top 8
    ranking_hashes(rankings)                             # {name: sha256}: what the resume guard compares

Why: the paper ranks heads by one score (copying needle tokens); other work ranks them by attention mass,
induction or echo patterns, or trained gates, and each claims its ranking is the one to keep or to mask. Any score
file is a ranking here: ``rh compare --rankings`` masks each ranking's top K (rows ``<ranking>@K``) and keeps each
ranking's top P % under a KV budget (rows ``<ranking>-kv@P%``), beside one ``full``, ``streaming`` and random
rows, on one loaded model, so that every ranking is compared on the same documents and against the same controls.

The random control of the masking rows, ``random@K``, draws K heads from those that *no* ranking puts in its top
K (each ranking's top K is exactly what its ``<ranking>@K`` row masks). Why not the copy score's rule (exclude
every head above 0.1): 0.1 is a share of needle tokens copied, a threshold on the copy score's scale that means
nothing for an attention mass or a gate value, whereas "the top K" means the same under every score. One control
shared by every ranking, disjoint from all of them, keeps the ranking-vs-random tests comparable across rankings.
The KV rows' control, ``random-kv@P%``, draws from all heads as without ``--rankings`` (a random ranking).
The set of rankings is therefore part of the experiment: a re-run with another ranking or file is refused.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from rh_eval.cli_args import parse_list
from rh_models.errors import RHError
from rh_models.files import require_file
from rh_models.heads import Head, HeadScores, HeadSet, draw_heads, retrieval_pool_excluded

NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")  # no "-", "@" or "%": they separate a row name's parts
RESERVED = ("full", "streaming", "random")  # rows of every comparison that rank nothing


@dataclass(frozen=True)
class Ranking:
    """One ranking: the name its rows carry and the score file it ranks heads by."""

    name: str
    path: Path


def parse_ranking(item: str, option: str, bare_path: bool = False) -> Ranking:
    """``NAME=FILE`` -> a Ranking; a bad name or an item without ``=`` is refused in one line. With ``bare_path``
    (``rh heads compare``, where a name only labels a table) a plain FILE is a ranking named by its path."""
    name, equals, path = (part.strip() for part in item.partition("="))
    if bare_path and (not equals or Path(item).is_file()):
        return Ranking(item.strip(), Path(item.strip()))
    if not equals or not path:
        raise RHError(f"{option} takes NAME=FILE items, e.g. copy=copy.json,attention=attention.json; got {item!r}")
    if not NAME.match(name) or name in RESERVED:
        raise RHError(f"{option}: {name!r} cannot name a ranking: use letters, digits and _ (starting with a "
                      f"letter), other than {', '.join(RESERVED)}")
    return Ranking(name, Path(path))


def unique_names(rankings: Iterable[Ranking], option: str) -> None:
    names = [r.name for r in rankings]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise RHError(f"{option} names a ranking twice: {', '.join(twice)}")


def parse_rankings(text: str | None) -> tuple[Ranking, ...]:
    """``copy=a.json,attention=b.json`` -> rankings in the order typed; None/empty -> (). Bad names, a name twice
    or an item without ``=`` are refused in one line."""
    if text in (None, ""):
        return ()
    rankings = tuple(parse_ranking(item, "--rankings") for item in parse_list(text, "--rankings"))
    unique_names(rankings, "--rankings")
    return rankings


def check_rankings(rankings: Iterable[Ranking]) -> dict[str, HeadScores]:
    """Every ranking's score file read (missing, not JSON, not a score file: one line), all for one head shape.

    Why here: the files are checked before the model loads; whether that shape is the model's is checked once it
    has (:func:`load_rankings`)."""
    scores: dict[str, HeadScores] = {}
    for ranking in rankings:
        require_file(ranking.path, f"--rankings {ranking.name}")
        scores[ranking.name] = HeadScores.load(ranking.path)
    shapes = {name: (s.n_layers, s.n_heads) for name, s in scores.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {layers} x {heads}" for name, (layers, heads) in shapes.items())
        raise RHError(f"--rankings: the score files are for different head shapes (layers x heads: {listed})")
    return scores


def load_rankings(rankings: Iterable[Ranking], n_layers: int, n_heads: int) -> dict[str, HeadScores]:
    """Every ranking read for a loaded model's shape; a file for another shape is refused naming both."""
    return {r.name: HeadScores.load(r.path, n_layers, n_heads) for r in rankings}


def excluded_heads(k: int, scores: Iterable[HeadScores], tie_break: str = "none") -> set[Head]:
    """The union of every ranking's top K: the heads some ``<ranking>@K`` row masks (its tie places included,
    drawn with the same seed as the row's)."""
    return set().union(*(retrieval_pool_excluded(s, k, tie_break) for s in scores))


def random_control(k: int, scores: Iterable[HeadScores], seed: int, tie_break: str = "none",
                   text: str | None = None) -> tuple[HeadSet, set[Head]]:
    """``random@K`` of a comparison of rankings: K heads drawn with ``seed`` from those in no ranking's top K;
    returns (heads, excluded heads). Refused when fewer than K heads are left."""
    scores = list(scores)
    if not scores:
        raise RHError("a random control of rankings needs at least one ranking")
    excluded = excluded_heads(k, scores, tie_break)
    n_layers, n_heads = scores[0].n_layers, scores[0].n_heads
    return draw_heads(k, n_layers, n_heads, excluded, seed, text or f"random:{k} (no ranking's top {k})"), excluded


def check_random_pool(ks: Iterable[int], scores: dict[str, HeadScores], tie_break: str = "none") -> None:
    """Refuse, before the model loads, a K for which the rankings' top K leave fewer than K heads to draw from."""
    if not scores:
        return
    total = next(iter(scores.values())).n_layers * next(iter(scores.values())).n_heads
    for k in ks:
        left = total - len(excluded_heads(k, scores.values(), tie_break))
        if k > left:
            raise RHError(f"--k {k}: the top {k} of the {len(scores)} rankings ({', '.join(scores)}) cover "
                          f"{total - left} of {total} heads, leaving {left} for random@{k}; ask for a smaller K")


def ranking_hashes(rankings: Iterable[Ranking]) -> dict[str, str]:
    """{name: sha256 of its file}: what a finished comparison of rankings was made with (the resume guard's)."""
    return {r.name: hashlib.sha256(Path(r.path).read_bytes()).hexdigest() for r in rankings}
