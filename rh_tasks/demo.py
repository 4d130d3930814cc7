"""``rh demo``: detect retrieval heads, mask them, and show that needle retrieval collapses -- in minutes, on CPU.

Usage::

    rh demo                                   # = make demo: smollm2-135m, offline, < 15 min on 2 CPU cores
    rh demo --output-dir demo-out --k 4,8     # more K values: more rows, a real dose-response curve
    rh demo --model path/to/hf-model --cot-task "" --limit 6    # any local model; NIAH only

    demo-out/head_scores.json (+ .meta.json, .tests.jsonl)   stage 1: `rh detect` on a small grid
    demo-out/conditions/, run.json, leaderboard.*            stage 2: `rh compare` (full / retrieval@K / random@K)
    demo-out/plots/*.png                                     dose-response, CoT-vs-direct, NIAH heatmaps, heads
    demo-out/demo.json                                       settings, timings and the shape check
    demo-out/summary.md                                      the table, the shape check and the plots, for docs

Why: the project's claim fits in one table. Masking the few heads that copy from the context (Wu et al. 2024)
should break needle-in-a-haystack retrieval, while masking as many *random* heads should barely matter, and
chain-of-thought, which copies facts step by step, should suffer more than answering directly. This command
runs the whole chain -- detection, then every masking condition -- on the embedded SmolLM2 with grids sized to
finish in about a quarter of an hour, and ends with a one-line check computed from the numbers, so a reader
sees at once whether the expected shape showed up this time.

The model is loaded once: detection and every condition run on the same :class:`~rh_models.lm.RHHFLM`, only its
head mask is swapped (through :func:`rh_tasks.compare.run_comparison`). Both stages resume: detection keeps
finished tests in ``head_scores.tests.jsonl`` and the comparison keeps finished conditions, so an interrupted
demo re-run continues, and a finished one re-prints its table without loading the model.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from rh_models.errors import RHError
from rh_tasks.compare import parse_ints
from rh_tasks.leaderboard import Column, Leaderboard, read_json, write_atomic

DEMO_FILE = "demo.json"
SUMMARY_FILE = "summary.md"
SCORES_FILE = "head_scores.json"
HEADS_PLOT = "head_scores.png"

# Sized for SmolLM2-135M on 2 CPU cores: about 8 minutes on a quiet machine (README, "What it finds").
DEFAULTS: dict[str, str] = {
    "k": "8",
    "detect_lengths": "500,1000",
    "detect_depths": "0,50,100",
    "niah_lengths": "500,1000",
    "niah_depths": "0,50,100",
    "niah_task": "rh_niah_paper",  # the rh_niah suite's one task: one column instead of group + task
    # of the rh_cot pairs, the one where SmolLM2's chain of thought is clearly above floor and above direct
    "cot_task": "rh_factsum_cot",
    "direct_task": "rh_factsum",
}
DETECT_SAMPLES = 3  # needles per detection cell, as in the paper
NIAH_SAMPLES = 2
NIAH_SEED = 1  # evaluation haystack differs from detection's (seed 0): no scoring on the detection prompts
LIMIT = 48  # CoT/direct documents per condition; the NIAH grid (12 prompts) is complete well below it
BATCH_SIZE = 6  # one NIAH length per batch; batching cuts CPU decoding time 2-4x with identical greedy outputs


# --------------------------------------------------------------------------------------------- arguments


def int_list(text: str, what: str) -> list[int]:
    """``"500,1000"`` -> ``[500, 1000]`` (``rh compare``'s parser); empty is an error here: the demo needs a grid."""
    values = parse_ints(text, what)
    if not values:
        raise RHError(f"{what} is empty")
    return values


def niah_metadata(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--metadata`` handed to ``rh compare``: the NIAH evaluation grid."""
    return {
        "lengths": int_list(args.niah_lengths, "--niah-lengths"),
        "depths": int_list(args.niah_depths, "--niah-depths"),
        "samples": args.niah_samples,
        "seed": args.niah_seed,
    }


def demo_tasks(args: argparse.Namespace) -> list[str]:
    """NIAH first, then the chain-of-thought task and its direct twin (either may be left out with "")."""
    tasks = [t for t in (args.niah_task, args.cot_task, args.direct_task) if t]
    if not tasks:
        raise RHError("no tasks: give at least --niah-task")
    if len(set(tasks)) != len(tasks):
        raise RHError(f"a task is named twice: {', '.join(tasks)}")
    return tasks


def has_chat_template(model: str) -> bool:
    """Does the model's tokenizer define a chat template? (``--chat-template auto`` uses it when it does.)

    Why: an instruct model such as SmolLM2-135M-Instruct answers its chain-of-thought prompts far better in
    its own chat format (factsum CoT: 0.50 with the template vs 0.22 without, direct 0.00 vs 0.17), and
    lm-eval users pass ``--apply_chat_template`` for instruct models anyway; a base model has no template.
    Reads the tokenizer only, so a finished demo still re-renders without loading the weights.
    """
    from transformers import AutoTokenizer

    from rh_models.zoo import resolve_pretrained

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(model))
    except (OSError, ValueError) as error:
        raise RHError(f"cannot read the tokenizer of {model!r} to decide on the chat template: {error}") from None
    return bool(getattr(tokenizer, "chat_template", None))


def use_chat_template(args: argparse.Namespace) -> bool:
    """``--chat-template``: ``yes``/``no`` as given, ``auto`` = whenever the tokenizer has one."""
    return args.chat_template == "yes" or (args.chat_template == "auto" and has_chat_template(args.model))


def detection_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What makes a detection run: a resumed demo must match it (the comparison guards the rest itself)."""
    return {
        "model": str(Path(args.model).resolve()) if Path(args.model).exists() else args.model,
        "lengths": int_list(args.detect_lengths, "--detect-lengths"),
        "depths": int_list(args.detect_depths, "--detect-depths"),
        "samples": args.detect_samples,
        "needles": "paper",
        "haystack": "pg_essays",
        "seed": 0,
    }


def compare_args(args: argparse.Namespace, head_scores: Path) -> argparse.Namespace:
    """The ``rh compare`` arguments this demo amounts to, parsed by compare's own parser (same defaults)."""
    from rh_tasks import compare

    parser = argparse.ArgumentParser(prog="rh compare")
    compare.configure(parser)
    argv = [
        "--model", args.model, "--head-scores", str(head_scores), "--tasks", ",".join(demo_tasks(args)),
        "--k", args.k, "--seeds", str(args.seeds), "--output-dir", str(args.output_dir),
        "--limit", str(args.limit), "--metadata", json.dumps(niah_metadata(args)), "--batch-size", str(args.batch_size),
    ]
    for path in args.include_path or []:
        argv += ["--include-path", str(path)]
    if use_chat_template(args):
        argv.append("--apply-chat-template")
    return parser.parse_args(argv)


def validate(args: argparse.Namespace) -> None:
    """Every bad argument fails here, before the model loads."""
    from rh_tasks.compare import parse_ks

    parse_ks(args.k)
    if args.seeds < 1:
        raise RHError("--seeds must be at least 1: the random control is the point of the demo")
    for name in ("detect_samples", "niah_samples", "limit", "batch_size"):
        if getattr(args, name) < 1:
            raise RHError(f"--{name.replace('_', '-')} must be at least 1")
    detection_settings(args)
    grid = niah_metadata(args)
    if args.niah_task:
        size = len(grid["lengths"]) * len(grid["depths"]) * grid["samples"]
        if size > args.limit:
            raise RHError(
                f"the NIAH grid has {size} prompts but --limit {args.limit} applies to every task and would cut it; "
                f"raise --limit to {size} or shrink --niah-lengths/--niah-depths/--niah-samples"
            )
    demo_tasks(args)
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise RHError(f"--output-dir {out} is a file")


# ------------------------------------------------------------------------------------------------- state


def load_state(out_dir: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """``demo.json``: refuse a folder that holds a demo with another detection grid; fresh state otherwise."""
    path = out_dir / DEMO_FILE
    if not path.exists():
        return {"settings": settings}
    state = read_json(path, "demo record")
    previous = state.get("settings", {}) if isinstance(state, dict) else {}
    differ = sorted(key for key in set(settings) | set(previous) if settings.get(key) != previous.get(key))
    if differ:
        details = "; ".join(f"{key}: was {previous.get(key)!r}, now {settings.get(key)!r}" for key in differ)
        raise RHError(f"{out_dir} holds a demo with another detection ({details}); use another --output-dir")
    return state


def save_state(out_dir: Path, state: dict[str, Any]) -> None:
    write_atomic(out_dir / DEMO_FILE, json.dumps(state, indent=2) + "\n")


class ModelOnce:
    """Loads the model on first use only, so a finished demo re-renders without touching the weights."""

    def __init__(self, model: str, batch_size: int = BATCH_SIZE) -> None:
        self.model = model
        self.batch_size = batch_size
        self.lm: Any = None

    def __call__(self) -> Any:
        if self.lm is None:
            from rh_models.lm import RHHFLM

            print(f"rh demo: loading {self.model}")
            # detection still runs one prompt per call (its resume and prefix reuse need that)
            self.lm = RHHFLM(pretrained=self.model, batch_size=self.batch_size)
        return self.lm


# -------------------------------------------------------------------------------------------------- stages


def run_detection(args: argparse.Namespace, out_dir: Path, state: dict[str, Any], get_lm: ModelOnce) -> Path:
    """Stage 1: ``rh detect`` on the demo's grid, re-used once finished (resumed if interrupted)."""
    from rh_models.detect import detect, print_summary

    scores = out_dir / SCORES_FILE
    if state.get("detection", {}).get("done") and scores.is_file():
        print(f"rh demo: detection: re-using {scores}")
        return scores
    settings = state["settings"]
    print(f"rh demo: detecting retrieval heads ({len(settings['lengths'])} lengths x {len(settings['depths'])} depths "
          f"x {settings['samples']} needles) -> {scores}")
    lm = get_lm()
    reuse_before = lm.prefix_reuse
    started = time.perf_counter()
    try:
        summary = detect(lm, scores, lengths=settings["lengths"], depths=settings["depths"],
                         samples=settings["samples"], needles=settings["needles"], haystack=settings["haystack"],
                         seed=settings["seed"])
    finally:
        lm.prefix_reuse = reuse_before  # detection's KV-prefix reuse stays out of the comparison
    print_summary(summary, scores)
    state["detection"] = {"done": True, "seconds": round(time.perf_counter() - started, 1),
                          "top": summary["top"][:12], "fraction_above_0.1": summary["fraction_above_0.1"]}
    save_state(out_dir, state)
    return scores


def plot_heads(scores: Path, out: Path) -> Path:
    """The layers x heads heatmap of the detection, written atomically."""
    from rh_models.head_plot import plot_head_scores
    from rh_models.heads import HeadScores

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=".png", dir=out.parent)
    os.close(fd)
    try:
        plot_head_scores(HeadScores.load(scores), tmp, title="retrieval score per head (rh demo detection)")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


# ---------------------------------------------------------------------------------------- headline table

BREAKDOWN_PREFIXES = ("score_len_", "score_depth_", "score_cell_")  # NIAH per-length/-depth/-cell keys


def headline(board: Leaderboard) -> Leaderboard:
    """The board without NIAH's per-length/per-depth breakdown columns (they stay in leaderboard.*)."""
    columns = [c for c in board.columns if not c.metric.startswith(BREAKDOWN_PREFIXES)]
    return replace(board, columns=columns or board.columns)


# ------------------------------------------------------------------------------------------- shape check


@dataclass
class ShapeCheck:
    """Did masking the top-K retrieval heads hurt NIAH more than K random heads (and below full)?"""

    column: str
    k: int
    full: float
    retrieval: float
    random_mean: float
    random_seeds: dict[str, float]

    @property
    def holds(self) -> bool:
        return self.retrieval < self.full and self.retrieval < self.random_mean

    def line(self) -> str:
        seeds = ", ".join(f"{value:.3f}" for value in self.random_seeds.values())
        verdict = "expected shape holds" if self.holds else "expected shape does NOT hold"
        return (f"shape check ({self.column}): retrieval@{self.k} {self.retrieval:.3f} vs full {self.full:.3f} and "
                f"random@{self.k} mean {self.random_mean:.3f} (seeds: {seeds}) -> {verdict}")


def niah_column(board: Leaderboard, task: str) -> Column | None:
    """The NIAH task's headline metric: its first higher-is-better column (unfiltered preferred)."""
    columns = [c for c in board.columns if c.task == task]
    columns.sort(key=lambda c: (board.higher_is_better.get(c.id) is not True, c.filter != "none", c.metric))
    return columns[0] if columns else None


def shape_checks(board: Leaderboard, task: str) -> list[ShapeCheck]:
    """One check per K from the leaderboard's numbers (none without NIAH, full or a random row)."""
    column = niah_column(board, task)
    full = next((board.cell(r.name, column) for r in board.rows if r.kind == "full"), None) if column else None
    if column is None or full is None:
        return []
    checks = []
    for k in sorted({r.k for r in board.rows if r.kind == "retrieval"}):
        retrieval = board.cell(f"retrieval@{k}", column)
        random = board.cell(f"random@{k}", column)
        if retrieval is not None and random is not None:
            checks.append(ShapeCheck(column.id, k, full.value, retrieval.value, random.value, dict(random.per_seed)))
    return checks


def cot_line(board: Leaderboard, cot_task: str, direct_task: str) -> str | None:
    """How much chain-of-thought and direct answering lost under each retrieval@K (informational)."""
    from rh_tasks.compare_plots import cot_column_pairs

    pairs = [(c, d) for c, d in cot_column_pairs(board) if c.task == cot_task and d.task == direct_task]
    if not pairs:
        return None
    cot, direct = pairs[0]
    parts = []
    for row in (r for r in board.rows if r.kind in ("retrieval", "random")):
        c, d = board.cell(row.name, cot), board.cell(row.name, direct)
        if c is not None and d is not None and c.drop is not None and d.drop is not None:
            parts.append(f"{row.name}: CoT {-c.drop:+.3f}, direct {-d.drop:+.3f}")
    full_c = next((board.cell(r.name, cot) for r in board.rows if r.kind == "full"), None)
    full_d = next((board.cell(r.name, direct) for r in board.rows if r.kind == "full"), None)
    if not parts or full_c is None or full_d is None:
        return None
    return (f"CoT vs direct ({cot.metric}): full CoT {full_c.value:.3f}, direct {full_d.value:.3f}; "
            f"change vs full -- " + "; ".join(parts))


# ------------------------------------------------------------------------------------------------ summary


def write_summary(out_dir: Path, board: Leaderboard, lines: list[str], plots: list[Path], seconds: float | None) -> Path:
    """``summary.md``: the table, the checks, the plot paths and the wall time -- what the README shows."""
    text = ["# rh demo results", "", headline(board).markdown().rstrip(), ""]
    text += [f"- {line}" for line in lines]
    if seconds is not None:
        text.append(f"- wall time (model load, detection and every condition): {seconds / 60:.1f} min")
    text += ["", "Plots:", ""]
    text += [f"- `{os.path.relpath(p, out_dir)}`" for p in plots]
    return write_atomic(out_dir / SUMMARY_FILE, "\n".join(text) + "\n")


# ---------------------------------------------------------------------------------------------------- CLI


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", default="demo-out", help="folder for everything the demo writes (default demo-out)")
    parser.add_argument("--model", default="smollm2-135m", help="alias (see `rh models`) or a local HF folder")
    parser.add_argument("--k", default=DEFAULTS["k"], help=f"heads to mask, comma-separated (default {DEFAULTS['k']})")
    parser.add_argument("--seeds", type=int, default=3, help="random-head draws per K (default 3)")
    parser.add_argument("--detect-lengths", default=DEFAULTS["detect_lengths"], help="detection context lengths (tokens)")
    parser.add_argument("--detect-depths", default=DEFAULTS["detect_depths"], help="detection needle depths (percent)")
    parser.add_argument("--detect-samples", type=int, default=DETECT_SAMPLES, help="needles per detection cell")
    parser.add_argument("--niah-task", default=DEFAULTS["niah_task"], help="NIAH task to evaluate (\"\" to skip)")
    parser.add_argument("--niah-lengths", default=DEFAULTS["niah_lengths"], help="evaluation context lengths (tokens)")
    parser.add_argument("--niah-depths", default=DEFAULTS["niah_depths"], help="evaluation needle depths (percent)")
    parser.add_argument("--niah-samples", type=int, default=NIAH_SAMPLES, help="needles per evaluation cell")
    parser.add_argument("--niah-seed", type=int, default=NIAH_SEED, help="evaluation haystack seed (detection uses 0)")
    parser.add_argument("--cot-task", default=DEFAULTS["cot_task"], help="chain-of-thought task (\"\" to skip)")
    parser.add_argument("--direct-task", default=DEFAULTS["direct_task"], help="its direct-answer twin (\"\" to skip)")
    parser.add_argument("--limit", type=int, default=LIMIT, help=f"examples per task (default {LIMIT}; covers the NIAH grid)")
    parser.add_argument("--chat-template", choices=("auto", "yes", "no"), default="auto",
                        help="format the evaluated prompts with the tokenizer's chat template (auto: if it has one; "
                             "detection always uses the paper's plain prompt)")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=f"lm-eval batch size (default {BATCH_SIZE})")
    parser.add_argument("--include-path", action="append", default=[], help="extra folder of task YAMLs (repeatable)")


def run(args: argparse.Namespace) -> int:
    from rh_tasks.compare import run_comparison, use_head_scores

    started = time.perf_counter()
    validate(args)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = load_state(out_dir, detection_settings(args))
    save_state(out_dir, state)
    get_lm = ModelOnce(args.model, args.batch_size)

    scores = run_detection(args, out_dir, state, get_lm)
    comparison = compare_args(args, scores)
    compare_started = time.perf_counter()
    board, plots = run_comparison(comparison, scores, get_lm=lambda: use_head_scores(get_lm(), scores), log="rh demo",
                                  show_table=False)
    plots.append(plot_heads(scores, out_dir / "plots" / HEADS_PLOT))

    checks = shape_checks(board, args.niah_task) if args.niah_task else []
    lines = [check.line() for check in checks]
    if args.niah_task and not checks:
        lines.append(f"shape check: not computable (no {args.niah_task} score for full, retrieval@K and random@K)")
    cot = cot_line(board, args.cot_task, args.direct_task) if args.cot_task and args.direct_task else None
    if cot:
        lines.append(cot)
    loaded = get_lm.lm is not None
    seconds = time.perf_counter() - started
    state.setdefault("runs", []).append({
        "seconds": round(seconds, 1), "comparison_seconds": round(time.perf_counter() - compare_started, 1),
        "model_loaded": loaded, "cpu_count": os.cpu_count(),
    })
    state["shape_checks"] = [{**asdict(c), "holds": c.holds} for c in checks]
    state["plots"] = [os.path.relpath(p, out_dir) for p in plots]
    # the demo's wall time: every run that did work (one, unless it was interrupted and resumed)
    state["wall_seconds"] = round(sum(r["seconds"] for r in state["runs"] if r["model_loaded"]), 1) or None
    save_state(out_dir, state)
    summary = write_summary(out_dir, board, lines, plots, state.get("wall_seconds"))

    print()
    print(headline(board).markdown())
    for line in lines:
        print(f"rh demo: {line}")
    print(f"rh demo: {len(plots)} plots in {out_dir / 'plots'}; summary in {summary}")
    print(f"rh demo: finished in {seconds / 60:.1f} min" + ("" if loaded else " (everything re-used)"))
    return 0
