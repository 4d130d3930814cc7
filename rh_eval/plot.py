"""``rh plot``: figures from lm-eval output on the command line (the drawing lives in :mod:`rh_eval.plots`).

Usage::

    rh plot niah out/                      --out heatmap.png   # folder written by --output_path --log_samples
    rh plot niah out/conditions/full       --out heatmap.png   # a condition folder of rh compare / rh demo
    rh plot niah samples_rh_niah_paper_2025-01-01T00-00-00.jsonl --out heatmap.png
    rh plot niah results_2025-01-01T00-00-00.json --task rh_niah_paper --out heatmap.png

Plot kinds are subcommands (``rh plot niah ...``) so more kinds can join later.
"""

from __future__ import annotations

import argparse

from rh_eval.plots.niah import niah_cells, plot_niah_heatmap
from rh_models.errors import RHError


def configure(parser: argparse.ArgumentParser) -> None:
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    niah = kinds.add_parser("niah", help="length x depth heatmap from lm-eval NIAH samples or results",
                            description="Length x depth heatmap from lm-eval NIAH samples or results.")
    niah.add_argument("source", metavar="RESULTS_OR_SAMPLES",
                      help="samples_*.jsonl, results_*.json, or the --output_path folder of an lm-eval run")
    niah.add_argument("--out", required=True, help="image to write (png, pdf, svg)")
    niah.add_argument("--task", help="task to plot when the source holds several (e.g. rh_niah_kv)")
    niah.add_argument("--title", help="plot title")


def run(args: argparse.Namespace) -> int:
    if args.kind == "niah":
        cells = niah_cells(args.source, task=args.task)
        out = plot_niah_heatmap(cells, args.out, title=args.title)
        mean = sum(cells.values()) / len(cells)
        print(f"{out}: {len(cells)} cells, mean score {mean:.3f}")
        return 0
    raise RHError(f"unknown plot kind {args.kind!r}")
