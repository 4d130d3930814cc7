"""``rh detect``'s command line: which score, the options each score reads, and the run.

Usage::

    rh detect --model smollm2-135m --output scores.json --lengths 500,1000 --depths 0,50,100      # copy score
    rh detect --model smollm2-135m --score induction --output induction.json --lengths 500,1000

Why a module of its own: the copy score (:mod:`rh_eval.detect`) and the attention-mass scores
(:mod:`rh_eval.detect_mass`, which builds on the first's needle tests and journal) are two modules; the command that
chooses between them imports both, so neither has to import the other back.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rh_eval.detect import DEFAULT_NUM_LENGTHS, SCORES, detect, print_summary
from rh_models.answers import ANSWERED_ABOVE
from rh_models.arguments import comma_ints
from rh_models.errors import RHError
from rh_models.heads import HeadScores
from rh_models.zoo import DEFAULT_MODEL

# the options each score reads beyond --model/--output/--lengths/--samples/--seed/--device/--dtype/--force/--plot:
# any other given with a score is refused (an option that would change nothing is an error, not a silent no-op)
NIAH_OPTIONS = ("max_length", "num_lengths", "depths", "needles", "haystack", "chat_template")
GENERATION_OPTIONS = ("batch_cells", "batch_lengths", "max_gen_toks", "no_prefix_reuse", "count_repeats", "min_score")
SCORE_OPTIONS = {"copy": NIAH_OPTIONS + GENERATION_OPTIONS, "attention": NIAH_OPTIONS, "induction": (), "echo": ()}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="alias, local folder or hub id (default: %(default)s)")
    parser.add_argument("--output", required=True, type=Path, help="score file to write (paper format)")
    parser.add_argument("--score", choices=SCORES, default="copy",
                        help="copy: the paper's copy score (default); attention: needle attention mass from the "
                             "question, minus a null question's; induction / echo: on random tokens repeated twice "
                             "(docs/scores.md)")
    parser.add_argument("--lengths", type=comma_ints,
                        help="context lengths in the model's tokens, e.g. 500,1000,2000 (induction / echo: of the "
                             "repeated random sequences, default 200,400)")
    parser.add_argument("--max-length", type=int, help="longest context (default: the model's maximum)")
    parser.add_argument("--num-lengths", type=int, help=f"lengths from 1K to --max-length (default {DEFAULT_NUM_LENGTHS})")
    parser.add_argument("--depths", type=comma_ints, help="needle depths in percent (default 0,10,...,100)")
    parser.add_argument("--needles", help="needle kind: paper (default), kv, multikey, ...")
    parser.add_argument("--samples", type=int, default=3,
                        help="needles per cell (default 3, as the paper); induction / echo: sequences per length")
    parser.add_argument("--haystack", help="pg_essays (default), noise, needles, a folder of .txt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-cells", action="store_true",
                        help="generate a cell's needles as one batch (default: one test at a time)")
    parser.add_argument("--batch-lengths", action="store_true",
                        help="generate all tests of a context length as one batch (the demo's choice on CPU)")
    parser.add_argument("--max-gen-toks", type=int, help="tokens generated per test (default 32)")
    parser.add_argument("--chat-template", action="store_true", help="render prompts with the chat template")
    parser.add_argument("--no-prefix-reuse", action="store_true", help="prefill every prompt from scratch")
    parser.add_argument("--count-repeats", action="store_true", help="count repeated copies as the paper's code does")
    parser.add_argument("--min-score", type=float,
                        help="a test counts when its answer scores above this with the task's metric (paper: ROUGE-1 "
                             f"recall > {ANSWERED_ABOVE})")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--force", action="store_true", help="overwrite an existing score file")
    parser.add_argument("--plot", type=Path, help="write a layers x heads heatmap of mean scores")


def score_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line (the detection functions' own defaults fill the rest); one that
    ``--score`` does not read, given, is refused in one line."""
    given = {name: getattr(args, name) for name in NIAH_OPTIONS + GENERATION_OPTIONS  # 0 is given too
             if getattr(args, name) is not None and getattr(args, name) is not False}
    ignored = [name for name in given if name not in SCORE_OPTIONS[args.score]]
    if ignored:
        flags = ", ".join("--" + name.replace("_", "-") for name in ignored)
        raise RHError(f"--score {args.score} does not use {flags} (see docs/scores.md for what each score reads)")
    return given


def run(args: argparse.Namespace) -> int:
    model_args = {k: v for k, v in (("device", args.device), ("dtype", args.dtype)) if v}
    options = score_options(args)
    common = dict(lengths=args.lengths, samples=args.samples, seed=args.seed, force=args.force, model_args=model_args)
    if args.score == "copy":
        by_length, by_cell = options.pop("batch_lengths", False), options.pop("batch_cells", False)
        summary = detect(args.model, args.output, prefix_reuse=not options.pop("no_prefix_reuse", False),
                         batch_by="length" if by_length else "cell" if by_cell else "none", **options, **common)
    else:
        from rh_eval.detect_mass import detect_mass

        summary = detect_mass(args.model, args.output, args.score, **options, **common)
    print_summary(summary, args.output)
    if args.plot:
        from rh_eval.plots.heads import plot_head_scores

        plot_head_scores(HeadScores.load(args.output), args.plot,
                         label="retrieval score" if args.score == "copy" else f"{args.score} score")
        print(f"wrote {args.plot}")
    return 0
