"""The ``rh`` command: detection, comparison tables, CI gates and the demo, on top of lm-eval.

Usage::

    rh models                      # list embedded model aliases
    rh models path smollm2-135m    # local folder usable by stock `lm_eval --model hf`
    rh detect --model smollm2-135m --output scores.json
    rh means --model smollm2-135m --output means.json   # for mask_method=mean
    rh compare --model smollm2-135m --head-scores scores.json --tasks rh_niah --k 6,12 --seeds 3 --output-dir out
    rh check --results out/leaderboard.json --baseline baseline.json
    rh plot niah samples.jsonl --out heatmap.png
    rh demo
    rh report demo-out             # demo-out/report.html: one page to open, print and share

Each subcommand lives in its own module that exposes ``configure(parser)`` and ``run(args) -> int``; this
file only dispatches (imported lazily so ``rh --help`` stays instant). Bad input raises
:class:`~rh_models.errors.RHError`, printed here as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from rh_models.errors import RHError

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("rh_eval.models_cli", "list embedded model aliases, or print the local folder of one"),
    "detect": ("rh_eval.detect_cli", "run the paper's NIAH retrieval-head detection and write a score file"),
    "means": ("rh_eval.means", "each head's mean output over a reference set, for mask_method=mean"),
    "heads": ("rh_eval.heads_cli", "inspect and compare head-score files"),
    "compare": ("rh_eval.compare", "full vs retrieval-masked vs random-masked leaderboard"),
    "check": ("rh_eval.check", "CI gate: compare results to a baseline within a tolerance"),
    "plot": ("rh_eval.plot", "the NIAH length x depth heatmap from lm-eval samples or results"),
    "demo": ("rh_eval.demo", "detect -> compare -> leaderboard and plots on the embedded model"),
    "report": ("rh_eval.report", "one self-contained HTML page of a finished rh compare / rh demo folder"),
    "bench": ("rh_eval.bench.overhead", "overhead of masking and recording vs stock lm-eval (see benchmarks/)"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rh", description="Retrieval heads on lm-evaluation-harness.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == only:
            importlib.import_module(module_name).configure(sub_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    try:
        module = importlib.import_module(COMMANDS[args.command][0])
        return int(module.run(args) or 0)
    except RHError as exc:
        print(f"rh {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rh {args.command}: interrupted; finished parts are kept and a re-run resumes", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
