"""``rh heads compare``: do several rankings of heads agree? Every pair, per query head and per KV head.

Usage::

    rh heads compare a.json b.json --top 10                       # two files: the two summary lines, and the table
    rh heads compare copy=a.json duo=b.json mine=c.json --top 10 --model smollm2-135m \\
        --output agreement.json --plot agreement.png

For every pair of score files: the overlap of their top-K heads (count and Jaccard) and Kendall's tau-b over all
heads' mean scores (scipy), once per query head and once per KV head. Why per KV head: under GQA a KV cache is
kept per KV head, so two rankings can pick the same KV groups (the same KV budget) through different query heads;
a KV head's score here is the highest of its query heads' scores -- a KV budget keeps a KV head's cache as soon as
any of its query heads is chosen, so that is where a ranking reaches it -- and its top-k is ``--top-kv`` (default K
divided by the group size, rounded up: the fewest KV heads K query heads can fill).

The KV-head count comes from ``--kv-heads``, else ``--model`` (its config only), else the score files' provenance
(``n_kv_heads`` in the ``.meta.json`` that ``rh detect`` and ``rh heads import`` write, when they agree); which one
is printed and written. Without one, the per-KV-head columns are left out, and the output says why.

A top-K set stops where the scores stop (as every ranking of :mod:`rh_models.heads` does): a file with fewer than K
heads above 0 contributes only those, and the counts say so; two files that rank nothing agree on nothing.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from rh_eval.rankings import parse_ranking, unique_names
from rh_models.errors import RHError
from rh_models.heads import HeadScores, format_heads, read_score_provenance
from rh_models.shape import HeadShape, kv_head_of


@dataclass(frozen=True)
class LoadedRanking:
    """A ranking (:class:`rh_eval.rankings.Ranking`: ``name=path`` on the command line, else its path) read."""

    name: str
    path: str
    scores: HeadScores
    provenance: dict = field(default_factory=dict)


def load_rankings(items: list[str]) -> list[LoadedRanking]:
    """``["copy=a.json", "b.json"]`` -> rankings of one shape, uniquely named; at least two."""
    if len(items) < 2:
        raise RHError("rh heads compare needs at least two score files")
    parsed = [parse_ranking(item, "rh heads compare", bare_path=True) for item in items]
    unique_names(parsed, "rh heads compare")
    rankings = [LoadedRanking(r.name, str(r.path), HeadScores.load(r.path), read_score_provenance(r.path))
                for r in parsed]
    first = rankings[0].scores
    for ranking in rankings[1:]:
        if (ranking.scores.n_layers, ranking.scores.n_heads) != (first.n_layers, first.n_heads):
            raise RHError(f"score files are for different shapes: {rankings[0].path} is {first.n_layers} x "
                          f"{first.n_heads}, {ranking.path} is {ranking.scores.n_layers} x {ranking.scores.n_heads}")
    return rankings


def kv_count(rankings: list[LoadedRanking], kv_heads: int | None = None, model_shape: HeadShape | None = None,
             model: str | None = None) -> tuple[int | None, str]:
    """KV heads per layer and where that came from; (None, why not) when nothing says.

    A count given (``--kv-heads``, ``--model``) must agree with every file's provenance that records one, and
    ``--model``'s query-head shape with the files'. Files whose provenance records different counts (rankings of
    two models of one shape) are not grouped unless a count is given.
    """
    scores = rankings[0].scores
    if model_shape is not None and (model_shape.n_layers, model_shape.n_heads) != (scores.n_layers, scores.n_heads):
        raise RHError(f"the score files are for {scores.n_layers} layers x {scores.n_heads} heads, but {model} has "
                      f"{model_shape.n_layers} x {model_shape.n_heads}")
    recorded = {r.path: r.provenance.get("n_kv_heads") for r in rankings if r.provenance.get("n_kv_heads")}
    if kv_heads is not None:
        count, source = kv_heads, "--kv-heads"
    elif model_shape is not None:
        count, source = model_shape.n_kv_heads, f"--model {model}"
    elif len(set(recorded.values())) > 1:  # files of different models: which grouping is meant is not ours to pick
        return None, ("the score files' provenance disagrees (" + ", ".join(f"{path} {value}" for path, value in
                      recorded.items()) + " KV heads per layer): pass --kv-heads or --model to group by one")
    elif recorded:
        count, source = next(iter(recorded.values())), f"the provenance of {', '.join(recorded)}"
    else:
        return None, ("no KV-head count: pass --model or --kv-heads (score files from `rh detect` or "
                      "`rh heads import` record it)")
    if scores.n_heads % count:
        raise RHError(f"{scores.n_heads} query heads do not split into {count} KV heads ({source})")
    for path, value in recorded.items():
        if value != count:
            raise RHError(f"{path} was made for a model with {value} KV heads per layer (its provenance), but "
                          f"{source} says {count}")
    return count, source


def by_kv_head(scores: HeadScores, n_kv_heads: int) -> HeadScores:
    """Each KV head's score: the highest of its query heads' mean scores (layers x KV heads), the rank at which a
    KV budget by this ranking first keeps that KV head's cache (it keeps it when any of its query heads is chosen)."""
    sums: dict[tuple[int, int], list[float]] = {}
    for layer in range(scores.n_layers):
        for head in range(scores.n_heads):
            key = (layer, kv_head_of(head, scores.n_heads, n_kv_heads))
            sums.setdefault(key, []).append(scores.mean((layer, head)))
    return HeadScores({key: [max(v)] for key, v in sums.items()}, scores.n_layers, n_kv_heads,
                      source=f"{scores.source} by KV head")


def _tau(a: list[float], b: list[float]) -> tuple[float | None, float | None]:
    """Kendall's tau-b and its p-value; None where it is undefined (a ranking that scores every head the same)."""
    from scipy.stats import kendalltau

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on constant input; None says it in the output
        tau, p_value = kendalltau(a, b)
    return (None, None) if math.isnan(tau) else (float(tau), float(p_value))


def compare_scores(a: HeadScores, b: HeadScores, top: int = 10) -> dict:
    """Top-K overlap (count and Jaccard) and Kendall's tau-b between two score files of one shape.

    A top-K set holds the first K heads scored above 0; ``top_a`` / ``top_b`` say how many that is.
    """
    if (a.n_layers, a.n_heads) != (b.n_layers, b.n_heads):
        raise RHError(f"score files are for different shapes: {a.n_layers} x {a.n_heads} vs {b.n_layers} x {b.n_heads}")
    if top < 1:
        raise RHError(f"--top must be at least 1, not {top}")
    heads = [(layer, head) for layer in range(a.n_layers) for head in range(a.n_heads)]
    tau, p_value = _tau([a.mean(h) for h in heads], [b.mean(h) for h in heads])
    top_a, top_b = set(a.above(0.0)[:top]), set(b.above(0.0)[:top])
    shared = sorted(top_a & top_b)
    union = top_a | top_b
    return {
        "top": top,
        "top_a": len(top_a),
        "top_b": len(top_b),
        "overlap": len(shared),
        "jaccard": len(shared) / len(union) if union else None,
        "shared": format_heads(shared),
        "kendall_tau": tau,
        "kendall_p": p_value,
    }


def tie_at_cut(scores: HeadScores, top: int) -> dict[str, Any] | None:
    """Heads that share the K-th score with heads left out, or None when the top-K set is not an arbitrary pick.

    Why: trained gates saturate (440 of the 1024 heads in DuoAttention's Mistral-7B file are exactly 1.0), and a
    tie at the cut makes the top-K set the first tied heads by (layer, head): any overlap measured on it is partly
    that order's, and must be said.
    """
    chosen = scores.above(0.0)[:top]
    if len(chosen) < top:
        return None
    score = scores.mean(chosen[-1])
    tied = [head for head in scores.above(0.0) if scores.mean(head) == score]
    inside = sum(1 for head in chosen if scores.mean(head) == score)
    return {"score": score, "tied": len(tied), "inside": inside} if len(tied) > inside else None


def compare_rankings(rankings: list[LoadedRanking], top: int = 10, n_kv_heads: int | None = None,
                     kv_source: str = "", top_kv: int | None = None) -> dict[str, Any]:
    """Every pair's agreement, per query head and (with a KV-head count) per KV head: what ``--output`` writes."""
    scores = rankings[0].scores
    kv: dict[str, Any] | None = None
    if n_kv_heads is not None:
        group = scores.n_heads // n_kv_heads
        top_kv = math.ceil(top / group) if top_kv is None else top_kv
        kv = {"n_kv_heads": n_kv_heads, "group": group, "source": kv_source, "top": top_kv,
              "aggregate": "highest of the group's query heads"}
        per_kv = {r.name: by_kv_head(r.scores, n_kv_heads) for r in rankings}
    pairs = []
    for a, b in combinations(rankings, 2):
        pair = {"a": a.name, "b": b.name, "query": compare_scores(a.scores, b.scores, top)}
        if kv is not None:
            pair["kv"] = compare_scores(per_kv[a.name], per_kv[b.name], kv["top"])
        pairs.append(pair)
    return {
        "n_layers": scores.n_layers, "n_heads": scores.n_heads, "top": top,
        "rankings": [{"name": r.name, "path": r.path, "made_by": r.provenance.get("protocol"),
                      "heads_above_0": len(r.scores.above(0.0)), "tie_at_cut": tie_at_cut(r.scores, top),
                      **({"kv_tie_at_cut": tie_at_cut(per_kv[r.name], kv["top"])} if kv else {})}
                     for r in rankings],
        "kv": kv, "kv_missing": None if kv is not None else kv_source,
        "pairs": pairs,
    }


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def agreement_table(result: dict[str, Any]) -> str:
    """The pairs as a Markdown table (pytablewriter): overlap, Jaccard, tau; per KV head when counted."""
    from pytablewriter import MarkdownTableWriter
    from typepy import String

    top, kv = result["top"], result["kv"]
    headers = ["a", "b", f"top-{top} overlap", "Jaccard", "Kendall tau"]
    if kv:
        headers += [f"KV top-{kv['top']} overlap", "KV Jaccard", "KV Kendall tau"]
    rows = []
    for pair in result["pairs"]:
        row = [pair["a"], pair["b"]]
        for level in ("query", "kv") if kv else ("query",):
            cell = pair[level]
            row += [f"{cell['overlap']}/{cell['top']}", _cell(cell["jaccard"]), _cell(cell["kendall_tau"])]
        rows.append(row)
    writer = MarkdownTableWriter(headers=headers, value_matrix=rows, margin=1, type_hints=[String] * len(headers))
    return writer.dumps()


def describe(result: dict[str, Any]) -> str:
    """The lines above the table: the shape, how many heads each file scored, and the KV grouping or its absence."""
    lines = [f"{len(result['rankings'])} rankings of {result['n_layers']} layers x {result['n_heads']} heads; "
             "heads scored above 0: " + ", ".join(f"{r['name']} {r['heads_above_0']}" for r in result["rankings"])]
    kv = result["kv"]
    if kv:
        lines.append(f"per KV head: {kv['n_kv_heads']} KV heads per layer (from {kv['source']}), each scored by the "
                     f"highest of its {kv['group']} query heads; top-{kv['top']} KV heads")
    else:
        lines.append(f"per KV head: not computed ({result['kv_missing']})")
    for ranking in result["rankings"]:
        for key, what, top in (("tie_at_cut", "heads", result["top"]), ("kv_tie_at_cut", "KV heads",
                                                                         kv["top"] if kv else 0)):
            tie = ranking.get(key)
            if tie:
                lines.append(f"tie: {tie['tied']} {what} of {ranking['name']} share the top-{top} cut's score "
                             f"{tie['score']:.4g}; its top-{top} takes the first {tie['inside']} of them by (layer, "
                             "head), an arbitrary pick")
    return "\n".join(lines)


def two_file_lines(result: dict[str, Any]) -> str:
    """The two-file summary ``rh heads compare a.json b.json`` has always printed first."""
    pair = result["pairs"][0]["query"]
    names = [r["name"] for r in result["rankings"]]
    short = (f" (heads above 0 among them: {names[0]} {pair['top_a']}, {names[1]} {pair['top_b']})"
             if min(pair["top_a"], pair["top_b"]) < pair["top"] else "")
    tau = ("n/a (a file scores every head the same)" if pair["kendall_tau"] is None
           else f"{pair['kendall_tau']:.3f} (p = {pair['kendall_p']:.2g})")
    return "\n".join([f"top-{pair['top']} overlap: {pair['overlap']}/{pair['top']} (Jaccard {_cell(pair['jaccard'])}); "
                      f"shared: {pair['shared'] or 'none'}{short}",
                      f"Kendall tau over all heads: {tau}"])
