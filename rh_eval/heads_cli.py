"""``rh heads``: look at and compare head-score files.

Usage::

    rh heads show scores.json --top 20
    rh heads compare scores_needles_a.json scores_needles_b.json --top 10
    rh heads summary demo-out/head_scores.json g3/head_scores.json --results demo-out g3   # see rh_eval.heads_summary

``compare`` answers "are these the same retrieval heads?" across needle sets, seeds or library versions:
overlap of the top-K sets and Kendall's tau over all heads' mean scores (scipy).
"""

from __future__ import annotations

import argparse

from rh_models.errors import RHError
from rh_models.heads import DEFAULT_RETRIEVAL_THRESHOLD, HeadScores, format_head, format_heads


def compare_scores(a: HeadScores, b: HeadScores, top: int = 10) -> dict:
    """Top-K overlap (count and Jaccard) and Kendall's tau-b between two score files of one model shape."""
    from scipy.stats import kendalltau

    if (a.n_layers, a.n_heads) != (b.n_layers, b.n_heads):
        raise RHError(f"score files are for different shapes: {a.n_layers} x {a.n_heads} vs {b.n_layers} x {b.n_heads}")
    heads = [(layer, head) for layer in range(a.n_layers) for head in range(a.n_heads)]
    tau, p_value = kendalltau([a.mean(h) for h in heads], [b.mean(h) for h in heads])
    top_a, top_b = set(a.top(top)), set(b.top(top))
    shared = sorted(top_a & top_b)
    return {
        "top": top,
        "overlap": len(shared),
        "jaccard": len(shared) / len(top_a | top_b),
        "shared": format_heads(shared),
        "kendall_tau": float(tau),
        "kendall_p": float(p_value),
    }


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    show = sub.add_parser("show", help="top heads and sparsity of one score file")
    show.add_argument("scores")
    show.add_argument("--top", type=int, default=20)
    compare = sub.add_parser("compare", help="top-K overlap and Kendall tau between two score files")
    compare.add_argument("a")
    compare.add_argument("b")
    compare.add_argument("--top", type=int, default=10)
    summary = sub.add_parser("summary", help="the paper's universal-and-sparse table over score files")
    summary.add_argument("scores", nargs="+", help="score files, one per model")
    summary.add_argument("--results", nargs="+", default=[],
                         help="per score file, the folder of an `rh compare` / `rh demo` run: adds NIAH full / "
                              "retrieval@K / random@K")


def run(args: argparse.Namespace) -> int:
    if args.action == "summary":
        from rh_eval.heads_summary import summary_table

        print(summary_table(args.scores, args.results))
        return 0
    if args.action == "show":
        scores = HeadScores.load(args.scores)
        print(f"{scores.n_layers} layers x {scores.n_heads} heads; "
              f"> {DEFAULT_RETRIEVAL_THRESHOLD}: {scores.share_above(DEFAULT_RETRIEVAL_THRESHOLD):.1%}; > 0.5: {scores.share_above(0.5):.1%}")
        for head, score in scores.ranked()[: args.top]:
            print(f"{format_head(head)}\t{score:.4f}")
        return 0
    result = compare_scores(HeadScores.load(args.a), HeadScores.load(args.b), args.top)
    print(f"top-{result['top']} overlap: {result['overlap']}/{result['top']} (Jaccard {result['jaccard']:.2f}); "
          f"shared: {result['shared'] or 'none'}")
    print(f"Kendall tau over all heads: {result['kendall_tau']:.3f} (p = {result['kendall_p']:.2g})")
    return 0
