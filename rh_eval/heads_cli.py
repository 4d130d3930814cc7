"""``rh heads``: look at, import and compare head-score files.

Usage::

    rh heads show scores.json --top 20
    rh heads compare scores_needles_a.json scores_needles_b.json --top 10
    rh heads compare copy=a.json duo=duo.json mine=c.json --top 10 --model smollm2-135m --output agreement.json \\
        --plot agreement.png                                                     # see rh_eval.heads_compare
    rh heads import duo full_attention_heads.tsv --model smollm2-135m --output duo.json   # see rh_eval.heads_import
    rh heads import csv heads.csv --layers 30 --heads 9 --output mine.json
    rh heads summary demo-out/head_scores.json g3/head_scores.json --results demo-out g3   # see rh_eval.heads_summary

``compare`` answers "are these the same retrieval heads?" across needle sets, seeds, scores or tools; ``import``
turns other tools' rankings into score files that every ``rh`` ranking path reads. This module only parses the
command line and prints; the work is in the modules named above.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rh_models.errors import RHError
from rh_models.heads import DEFAULT_RETRIEVAL_THRESHOLD, HeadScores, format_head
from rh_models.shape import HeadShape


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    show = sub.add_parser("show", help="top heads and sparsity of one score file")
    show.add_argument("scores")
    show.add_argument("--top", type=int, default=20)
    compare = sub.add_parser("compare", help="top-K overlap, Jaccard and Kendall tau between every pair of score "
                                             "files, per query head and per KV head")
    compare.add_argument("scores", nargs="+", metavar="[NAME=]SCORES", help="two or more score files")
    compare.add_argument("--top", type=int, default=10, help="K of the top-K sets (default %(default)s)")
    compare.add_argument("--top-kv", type=int, help="k of the KV heads' top-k sets (default: K / group, rounded up)")
    compare.add_argument("--model", help="alias or folder whose config gives the KV-head count (no weights loaded)")
    compare.add_argument("--kv-heads", type=int, help="KV heads per layer (instead of --model)")
    compare.add_argument("--output", type=Path, help="write every pair's numbers as JSON")
    compare.add_argument("--plot", type=Path, help="write the heatmap of pairwise top-K overlap")
    imported = sub.add_parser("import", help="another tool's head ranking as a score file (DuoAttention patterns, "
                                             "layer,head,score tables)")
    imported.add_argument("format", choices=("duo", "csv"),
                          help="duo: DuoAttention's full_attention_heads.tsv (or its folder); csv: layer, head, score")
    imported.add_argument("source")
    imported.add_argument("--output", type=Path, required=True, help="score file to write (+ .meta.json)")
    imported.add_argument("--model", help="alias or folder whose config gives the shape (no weights loaded)")
    imported.add_argument("--layers", type=int, help="layers (instead of --model)")
    imported.add_argument("--heads", type=int, help="query heads per layer (instead of --model)")
    imported.add_argument("--kv-heads", type=int, help="KV heads per layer (instead of --model; duo needs it)")
    imported.add_argument("--force", action="store_true", help="overwrite an existing score file")
    summary = sub.add_parser("summary", help="the paper's universal-and-sparse table over score files")
    summary.add_argument("scores", nargs="+", help="score files, one per model")
    summary.add_argument("--results", nargs="+", default=[],
                         help="per score file, the folder of an `rh compare` / `rh demo` run: adds NIAH full / "
                              "retrieval@K / random@K")


def model_shape(model: str | None) -> HeadShape | None:
    """``--model``'s head shape from its config (no weights), or None without ``--model``."""
    from rh_models.shape import read_config

    return HeadShape.of_config(read_config(model)) if model else None


def import_shape(args: argparse.Namespace) -> tuple[HeadShape, dict]:
    """The shape ``rh heads import`` checks the file against (``--model``, or ``--layers``/``--heads``/``--kv-heads``)
    and the provenance that says where it came from."""
    explicit = {"--layers": args.layers, "--heads": args.heads, "--kv-heads": args.kv_heads}
    given = [flag for flag, value in explicit.items() if value is not None]
    if args.model and given:
        raise RHError(f"give --model or {'/'.join(given)}, not both: the shape comes from one place")
    if args.model:
        from rh_models.shape import config_sha256, read_config

        config = read_config(args.model)
        return HeadShape.of_config(config), {"model": args.model, "model_config_sha256": config_sha256(config),
                                             "shape_from": f"--model {args.model}"}
    if args.layers is None or args.heads is None:
        raise RHError("the model's shape is needed: give --model, or --layers and --heads (and --kv-heads under GQA)")
    return HeadShape(args.layers, args.heads, args.kv_heads), {"model": None, "shape_from": "/".join(given)}


def run_import(args: argparse.Namespace) -> int:
    from rh_eval.heads_import import describe_import, import_scores

    shape, provenance = import_shape(args)
    record = import_scores(args.format, args.source, shape, args.output, force=args.force, provenance=provenance)
    print(describe_import(record, args.output))
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from rh_eval.heads_compare import (agreement_table, compare_rankings, describe, kv_count, load_rankings,
                                       two_file_lines)

    for flag, value in (("--top", args.top), ("--top-kv", args.top_kv), ("--kv-heads", args.kv_heads)):
        if value is not None and value < 1:
            raise RHError(f"{flag} must be at least 1, not {value}")
    if args.model and args.kv_heads is not None:
        raise RHError("give --model or --kv-heads, not both: the KV-head count comes from one place")
    rankings = load_rankings(args.scores)
    n_kv, source = kv_count(rankings, args.kv_heads, model_shape(args.model), args.model)
    result = compare_rankings(rankings, args.top, n_kv, source, args.top_kv)
    if len(rankings) == 2:
        print(two_file_lines(result))
    print(describe(result))
    print(agreement_table(result))
    if args.output:
        from rh_models.atomic import write_json_atomic

        write_json_atomic(args.output, result)
        print(f"wrote {args.output}")
    if args.plot:
        from rh_eval.plots.agreement import plot_agreement

        plot_agreement(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "summary":
        from rh_eval.heads_summary import summary_table

        print(summary_table(args.scores, args.results))
        return 0
    if args.action == "import":
        return run_import(args)
    if args.action == "compare":
        return run_compare(args)
    scores = HeadScores.load(args.scores)
    print(f"{scores.n_layers} layers x {scores.n_heads} heads; "
          f"> {DEFAULT_RETRIEVAL_THRESHOLD}: {scores.share_above(DEFAULT_RETRIEVAL_THRESHOLD):.1%}; > 0.5: {scores.share_above(0.5):.1%}")
    for head, score in scores.ranked()[: args.top]:
        print(f"{format_head(head)}\t{score:.4f}")
    return 0
