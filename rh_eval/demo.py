"""``rh demo``: detect retrieval heads, mask them, and show that needle retrieval collapses -- in minutes, on CPU.

Usage::

    rh demo                                   # = make demo: smollm2-135m, offline, 4.5 min on 2 CPU cores
    rh demo --output-dir demo-out --k 4,8     # more K values: more rows, a real dose-response curve
    rh demo --model path/to/hf-model --cot-task "" --limit 6    # any local model; NIAH only
    rh demo --backend vllm                    # detection on rh-hf, the conditions on one rh-vllm engine

    demo-out/head_scores.json (+ .meta.json, .tests.jsonl)   stage 1: `rh detect` on a small grid
    demo-out/conditions/, run.json, leaderboard.*            stage 2: `rh compare` (full / retrieval@K / random@K)
    demo-out/plots/*.png                                     dose-response, CoT-vs-direct, NIAH heatmaps, heads
    demo-out/demo.json                                       settings, timings, runs and the shape check
    demo-out/summary.md                                      the table, the shape check and the plots, for docs
    demo-out/report.html                                     one page of it all to open and share (rh_eval.report)

Why: the project's claim fits in one table. Masking the few heads that copy from the context (Wu et al. 2024)
should break needle-in-a-haystack retrieval, while masking as many *random* heads should barely matter, and
chain-of-thought, which copies facts step by step, should suffer more than answering directly. This command
runs the whole chain -- detection, then every masking condition -- on the embedded SmolLM2 with grids sized to
finish in about 4.5 minutes on 2 CPU cores (README, "What it finds"), and ends with a one-line check computed from the numbers, so a reader
sees at once whether the expected shape showed up this time.

The model is loaded once: detection and every condition run on the same :class:`~rh_models.lm.RHHFLM`, only its
head mask is swapped (through :func:`rh_eval.compare.compare`). Both stages resume: detection keeps
finished tests in ``head_scores.tests.jsonl`` and the comparison keeps finished conditions, so an interrupted
demo re-run continues, and a finished one re-prints its table without loading the model.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, TextIO

from rh_eval.cli_args import parse_ints, parse_ks, parse_kv_budgets, parse_model_args
from rh_eval.compare import BACKENDS, OUTPUTS, CompareConfig, compare, load_model, plan_conditions
from rh_eval.console import quiet_console
from rh_eval.leaderboard import Leaderboard
from rh_eval.provenance import run_entry
from rh_eval.run_files import DEMO_FILE, DETECTED_SCORES
from rh_eval.verdicts import cot_line, headline, kv_line, shape_checks
from rh_eval.resume import clear_outputs, resume_record, save_record
from rh_models.atomic import write_text_atomic
from rh_models.errors import RHError
from rh_models.heads import TIE_BREAKS
from rh_models.kv_budget import DEFAULT_SINK, DEFAULT_WINDOW
from rh_models.zoo import DEFAULT_MODEL

SUMMARY_FILE = "summary.md"
LOG_FILE = "demo.log"  # lm-eval's warnings, progress bars and per-condition tables

# Sized for SmolLM2-135M on 2 CPU cores (README, "What it finds", gives the measured time).
DETECT_SAMPLES = 3  # needles per detection cell, as in the paper
HEAD_SHARE = 0.03  # K of the default condition: the paper's masks are a few percent of the heads
NIAH_SAMPLES = 2
NIAH_SEED = 1  # evaluation haystack differs from detection's (seed 0): no scoring on the detection prompts
LIMIT = 48  # CoT/direct documents per condition; the NIAH grid (12 prompts) is complete well below it
# --backend vllm: fp32 as rh-hf (vLLM would otherwise down-cast), and a share of memory that fits our CPU machines
# (on vLLM's CPU backend it is the share of the NUMA node's memory); --model-args override either
VLLM_ENGINE_ARGS = {"dtype": "float32", "gpu_memory_utilization": 0.3}
BATCH_SIZE = 48  # a CoT task in one batch: decoding 48 rows costs 8 ms a row-step on 2 cores, one row 75 ms


# --------------------------------------------------------------------------------------------- arguments


@dataclass(frozen=True)
class DemoConfig:
    """The demo's grids and tasks; :meth:`check` refuses a bad value before the model loads."""

    output_dir: Path = Path("demo-out")
    model: str = DEFAULT_MODEL
    ks: tuple[int, ...] = ()  # empty: one K, about 3 % of the model's heads (8 of SmolLM2's 270)
    seeds: int = 3
    detect_lengths: tuple[int, ...] = (500, 1000)
    detect_depths: tuple[int, ...] = (0, 50, 100)
    detect_samples: int = DETECT_SAMPLES
    niah_task: str = "rh_niah_paper"  # the rh_niah suite's one task: one column instead of group + task
    niah_lengths: tuple[int, ...] = (500, 1000)
    niah_depths: tuple[int, ...] = (0, 50, 100)
    niah_samples: int = NIAH_SAMPLES
    niah_seed: int = NIAH_SEED
    # of the rh_cot pairs, the one where SmolLM2's chain of thought is clearly above floor and above direct
    cot_task: str = "rh_factsum_cot"
    direct_task: str = "rh_factsum"
    limit: int = LIMIT
    chat_template: str = "auto"  # auto | yes | no
    batch_size: int = BATCH_SIZE
    include_path: tuple[str, ...] = ()
    prefix_reuse: bool = True  # rh-hf's; vLLM caches shared prefixes itself
    backend: str = "hf"  # where the conditions run; detection always runs on rh-hf (it needs attention rows)
    model_args: dict[str, Any] = field(default_factory=dict)  # extra rh-vllm engine args (--backend vllm)
    kv_budgets: tuple[float, ...] = ()  # adds rh compare's KV-budget rows (streaming, retrieval-kv@P%, random-kv@P%)
    kv_sink: int = DEFAULT_SINK
    kv_window: int = DEFAULT_WINDOW
    tie_break: str = "none"  # rh compare's --tie-break: random lets K or a KV share reach past the scored heads

    @property
    def tasks(self) -> list[str]:
        """NIAH first, then the chain-of-thought task and its direct twin (either may be left out with "")."""
        return [t for t in (self.niah_task, self.cot_task, self.direct_task) if t]

    def niah_metadata(self) -> dict[str, Any]:
        """The task metadata handed to the comparison: the NIAH evaluation grid."""
        return {"lengths": list(self.niah_lengths), "depths": list(self.niah_depths), "samples": self.niah_samples,
                "seed": self.niah_seed}

    def detection_settings(self) -> dict[str, Any]:
        """What makes a detection run: a resumed demo must match it (the comparison guards the rest itself)."""
        from rh_eval.fingerprint import versions, weights
        from rh_models.shape import model_config_sha256

        return {
            "model": str(Path(self.model).resolve()) if Path(self.model).exists() else self.model,
            "model_config_sha256": model_config_sha256(self.model),
            "lengths": list(self.detect_lengths),
            "depths": list(self.detect_depths),
            "samples": self.detect_samples,
            "needles": "paper",
            "haystack": "pg_essays",
            "seed": 0,
            "versions": versions("hf"),  # detection runs on rh-hf; its journal holds the whole fingerprint
            "weights": weights(self.model),
        }

    def check(self) -> None:
        if any(k <= 0 for k in self.ks):
            raise RHError("--k takes positive integers separated by commas")
        if self.seeds < 1:
            raise RHError("--seeds must be at least 1: the random control is the point of the demo")
        for name in ("detect_samples", "niah_samples", "limit", "batch_size"):
            if getattr(self, name) < 1:
                raise RHError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("detect_lengths", "detect_depths", "niah_lengths", "niah_depths"):
            if not getattr(self, name):
                raise RHError(f"--{name.replace('_', '-')} is empty")
        if self.backend not in BACKENDS:
            raise RHError(f"--backend {self.backend} is not one of {', '.join(BACKENDS)}")
        if self.kv_budgets or self.tie_break != "none":  # the comparison's own rules, before detection, not after
            replace(CompareConfig(tasks=("t",), output_dir=self.output_dir), backend=self.backend, ks=self.ks or (1,),
                    kv_budgets=self.kv_budgets, kv_sink=self.kv_sink, kv_window=self.kv_window,
                    tie_break=self.tie_break).check()
        if self.model_args and self.backend != "vllm":
            raise RHError("--model-args are rh-vllm engine args: use them with --backend vllm")
        if self.chat_template not in ("auto", "yes", "no"):
            raise RHError(f"--chat-template takes auto, yes or no, got {self.chat_template!r}")
        if not self.tasks:
            raise RHError("no tasks: give at least --niah-task")
        if len(set(self.tasks)) != len(self.tasks):
            raise RHError(f"a task is named twice: {', '.join(self.tasks)}")
        size = len(self.niah_lengths) * len(self.niah_depths) * self.niah_samples
        if self.niah_task and size > self.limit:
            raise RHError(
                f"the NIAH grid has {size} prompts but --limit {self.limit} applies to every task and would cut it; "
                f"raise --limit to {size} or shrink --niah-lengths/--niah-depths/--niah-samples"
            )
        if Path(self.output_dir).exists() and not Path(self.output_dir).is_dir():
            raise RHError(f"--output-dir {self.output_dir} is a file")


def has_chat_template(model: str) -> bool:
    """Does the model's tokenizer define a chat template? (``--chat-template auto`` uses it when it does.)

    Why: an instruct model such as SmolLM2-135M-Instruct answers its chain-of-thought prompts far better in
    its own chat format (factsum CoT: 0.50 with the template vs 0.22 without, direct 0.00 vs 0.17), and
    lm-eval users pass ``--apply_chat_template`` for instruct models anyway; a base model has no template.
    Reads the tokenizer only, so a finished demo still re-renders without loading the weights.
    """
    from rh_tasks.niah_docs import has_chat_template as defines_chat_template, load_tokenizer

    return defines_chat_template(load_tokenizer(model))


def use_chat_template(model: str, mode: str) -> bool:
    """``--chat-template``: ``yes``/``no`` as given, ``auto`` = whenever the tokenizer has one."""
    return mode == "yes" or (mode == "auto" and has_chat_template(model))


def share_of_heads(model: str, share: float = HEAD_SHARE) -> int:
    """About ``share`` of the model's heads (at least one), from its config alone: the paper masks a few percent."""
    from transformers import AutoConfig

    from rh_models.shape import head_shape
    from rh_models.zoo import resolve_pretrained

    n_layers, n_heads = head_shape(AutoConfig.from_pretrained(resolve_pretrained(model)))
    return max(1, round(share * n_layers * n_heads))


def compare_config(config: DemoConfig, head_scores: Path) -> CompareConfig:
    """The comparison this demo amounts to."""
    return CompareConfig(
        tasks=tuple(config.tasks), output_dir=Path(config.output_dir), model=config.model, head_scores=head_scores,
        ks=tuple(sorted(config.ks)), seeds=config.seeds, limit=config.limit, metadata=config.niah_metadata(),
        apply_chat_template=use_chat_template(config.model, config.chat_template),
        include_path=tuple(config.include_path), prefix_reuse=config.prefix_reuse and config.backend == "hf",
        backend=config.backend,
        model_args={**VLLM_ENGINE_ARGS, **config.model_args} if config.backend == "vllm" else {},
        batch_size=config.batch_size if config.backend == "hf" else "auto",  # vLLM schedules all prompts itself
        kv_budgets=tuple(config.kv_budgets), kv_sink=config.kv_sink, kv_window=config.kv_window,
        tie_break=config.tie_break,
    )


# ------------------------------------------------------------------------------------------------- state


def load_state(out_dir: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """``demo.json``: refuse a folder that holds a demo with another detection grid; fresh state otherwise."""
    return resume_record(out_dir / DEMO_FILE, settings, "rh demo")


def save_state(out_dir: Path, state: dict[str, Any]) -> None:
    save_record(out_dir / DEMO_FILE, state)


def start_over(out_dir: Path) -> None:
    """``--force``: remove an earlier demo's outputs (its own files and the comparison's), nothing else."""
    clear_outputs(out_dir, [DEMO_FILE, SUMMARY_FILE, LOG_FILE, *OUTPUTS])


class ModelOnce:
    """Loads the model on first use only, so a finished demo re-renders without touching the weights."""

    def __init__(self, model: str, batch_size: int = BATCH_SIZE) -> None:
        self.model = model
        self.batch_size = batch_size
        self.lm: Any = None

    def __call__(self) -> Any:
        if self.lm is None:
            from rh_eval.models import load_hf

            print(f"rh demo: loading {self.model}")
            # batch_size is the conditions'; detection batches by context length (one batch per length, its own
            # size: `rh detect --batch-lengths`), each row still resuming the longest cached prefix
            self.lm = load_hf(self.model, batch_size=self.batch_size)
        return self.lm

    def release(self) -> None:
        """Drop the model (before a vLLM engine reserves its share of memory)."""
        self.lm = None


class EngineOnce:
    """The comparison's ``rh-vllm`` engine, loaded on first use (a finished demo loads nothing)."""

    def __init__(self, load: Callable[[], Any]) -> None:
        self.load = load
        self.lm: Any = None

    def __call__(self) -> Any:
        if self.lm is None:
            print("rh demo: loading one rh-vllm engine for every condition")
            self.lm = self.load()
        return self.lm


# -------------------------------------------------------------------------------------------------- stages


def run_detection(out_dir: Path, state: dict[str, Any], get_lm: ModelOnce, terminal: TextIO | None = None) -> Path:
    """Stage 1: ``rh detect`` on the demo's grid, re-used once finished (resumed if interrupted)."""
    from rh_eval.detect import detect, print_summary

    scores = out_dir / DETECTED_SCORES
    if state.get("detection", {}).get("done") and scores.is_file():
        print(f"rh demo: detection: re-using {scores}", file=terminal)
        return scores
    settings = state["settings"]
    print(f"rh demo: detecting retrieval heads ({len(settings['lengths'])} lengths x {len(settings['depths'])} depths "
          f"x {settings['samples']} needles) -> {scores}", file=terminal)
    started = time.perf_counter()
    summary = detect(get_lm(), scores, lengths=settings["lengths"], depths=settings["depths"],
                     samples=settings["samples"], needles=settings["needles"], haystack=settings["haystack"],
                     seed=settings["seed"], batch_by="length", progress=terminal or True)
    print_summary(summary, scores, file=terminal)
    state["detection"] = {"done": True, "seconds": round(time.perf_counter() - started, 1),
                          "top": summary["top"][:12], "fraction_above_0.1": summary["fraction_above_0.1"]}
    save_state(out_dir, state)
    return scores


# ------------------------------------------------------------------------------------------------ summary


def write_summary(out_dir: Path, board: Leaderboard, lines: list[str], plots: list[Path], seconds: float | None) -> Path:
    """``summary.md``: the table, the checks, the plot paths and the wall time -- what the README shows."""
    text = ["# rh demo results", "", headline(board).markdown().rstrip(), ""]
    text += [f"- {line}" for line in lines]
    if seconds is not None:
        text.append(f"- wall time (model load, detection and every condition): {seconds / 60:.1f} min")
    text += ["", "Plots:", ""]
    text += [f"- `{os.path.relpath(p, out_dir)}`" for p in plots]
    return write_text_atomic(out_dir / SUMMARY_FILE, "\n".join(text) + "\n")


# ---------------------------------------------------------------------------------------------------- CLI


def configure(parser: argparse.ArgumentParser) -> None:
    d = DemoConfig()
    ints = ",".join
    parser.add_argument("--output-dir", default=str(d.output_dir), help="folder for everything the demo writes")
    parser.add_argument("--model", default=d.model, help="alias (see `rh models`) or a local HF folder")
    parser.add_argument("--k", default="", help="heads to mask, comma-separated (default: about 3 %% of the model's heads)")
    parser.add_argument("--seeds", type=int, default=d.seeds, help="random-head draws per K (default %(default)s)")
    parser.add_argument("--detect-lengths", default=ints(map(str, d.detect_lengths)), help="detection context lengths")
    parser.add_argument("--detect-depths", default=ints(map(str, d.detect_depths)), help="detection needle depths (%%)")
    parser.add_argument("--detect-samples", type=int, default=d.detect_samples, help="needles per detection cell")
    parser.add_argument("--niah-task", default=d.niah_task, help="NIAH task to evaluate (\"\" to skip)")
    parser.add_argument("--niah-lengths", default=ints(map(str, d.niah_lengths)), help="evaluation context lengths")
    parser.add_argument("--niah-depths", default=ints(map(str, d.niah_depths)), help="evaluation needle depths (%%)")
    parser.add_argument("--niah-samples", type=int, default=d.niah_samples, help="needles per evaluation cell")
    parser.add_argument("--niah-seed", type=int, default=d.niah_seed, help="evaluation haystack seed (detection uses 0)")
    parser.add_argument("--cot-task", default=d.cot_task, help="chain-of-thought task (\"\" to skip)")
    parser.add_argument("--direct-task", default=d.direct_task, help="its direct-answer twin (\"\" to skip)")
    parser.add_argument("--limit", type=int, default=d.limit, help="examples per task (default %(default)s; covers the NIAH grid)")
    parser.add_argument("--chat-template", choices=("auto", "yes", "no"), default=d.chat_template,
                        help="format the evaluated prompts with the tokenizer's chat template (auto: if it has one; "
                             "detection always uses the paper's plain prompt)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="lm-eval batch size (default %(default)s)")
    parser.add_argument("--no-prefix-reuse", action="store_true",
                        help="prefill every prompt from scratch (default: reuse the KV cache of shared prefixes)")
    parser.add_argument("--include-path", action="append", default=[], help="extra folder of task YAMLs (repeatable)")
    parser.add_argument("--backend", choices=BACKENDS, default=d.backend,
                        help="run the conditions on rh-hf or on one rh-vllm engine (detection always uses rh-hf)")
    parser.add_argument("--model-args", default=None, help="rh-vllm engine args k=v,... (with --backend vllm)")
    parser.add_argument("--kv-budgets", default=None,
                        help="also KV budgets by head, e.g. 10%%,25%%,50%%: streaming, retrieval-kv@P%% and random-kv@P%% "
                             "rows (as rh compare --kv-budgets)")
    parser.add_argument("--kv-sink", type=int, default=DEFAULT_SINK, help="with --kv-budgets: sink positions")
    parser.add_argument("--kv-window", type=int, default=DEFAULT_WINDOW, help="with --kv-budgets: recent positions")
    parser.add_argument("--tie-break", choices=TIE_BREAKS, default=d.tie_break,
                        help="when K or a --kv-budgets share asks for more heads than the detection scored above 0: "
                             "none refuses (default); random draws the rest at random (as rh compare --tie-break)")
    parser.add_argument("--force", action="store_true",
                        help="start over: remove an earlier demo's outputs in --output-dir instead of resuming")


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    """The CLI's strings as a checked :class:`DemoConfig`."""
    config = DemoConfig(
        output_dir=Path(args.output_dir), model=args.model, ks=tuple(parse_ks(args.k)) if args.k else (), seeds=args.seeds,
        detect_lengths=parse_ints(args.detect_lengths, "--detect-lengths") or (),
        detect_depths=parse_ints(args.detect_depths, "--detect-depths") or (),
        detect_samples=args.detect_samples, niah_task=args.niah_task,
        niah_lengths=parse_ints(args.niah_lengths, "--niah-lengths") or (),
        niah_depths=parse_ints(args.niah_depths, "--niah-depths") or (),
        niah_samples=args.niah_samples, niah_seed=args.niah_seed, cot_task=args.cot_task,
        direct_task=args.direct_task, limit=args.limit, chat_template=args.chat_template, batch_size=args.batch_size,
        include_path=tuple(str(p) for p in args.include_path or []), prefix_reuse=not args.no_prefix_reuse,
        backend=args.backend, model_args=parse_model_args(args.model_args),
        kv_budgets=parse_kv_budgets(args.kv_budgets), kv_sink=args.kv_sink, kv_window=args.kv_window,
        tie_break=args.tie_break,
    )
    config.check()
    return config


def demo(config: DemoConfig) -> int:
    """Detection, then every condition on the same loaded model, then the table, checks and plots."""
    started, wall_started = time.perf_counter(), time.time()
    config.check()
    if not config.ks:
        config = replace(config, ks=(share_of_heads(config.model),))
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = load_state(out_dir, config.detection_settings())
    save_state(out_dir, state)
    get_lm = ModelOnce(config.model, config.batch_size)
    log = out_dir / LOG_FILE
    with quiet_console(log) as terminal:
        scores = run_detection(out_dir, state, get_lm, terminal)
        comparison = compare_config(config, scores)
        detection_loaded = get_lm.lm is not None
        if config.backend == "vllm":
            get_lm.release()
            engine = EngineOnce(lambda: load_model(comparison, scores))
            get_eval_lm: Callable[[], Any] = engine
        else:
            engine = None
            get_eval_lm = lambda: get_lm().use_head_scores(scores)  # noqa: E731
        compare_started = time.perf_counter()
        plans = plan_conditions(list(comparison.ks), comparison.seeds, list(comparison.kv_budgets))
        swapped = "the mask or KV budget" if comparison.kv_budgets else "the mask"
        print(f"rh demo: {len(plans)} conditions x {', '.join(comparison.tasks)} on the same model, only {swapped} "
              "swapped", file=terminal)
        board, plots = compare(comparison, scores, get_lm=get_eval_lm, log="rh demo",
                               show_table=False, progress=terminal, report=False)

    checks = shape_checks(board, config.niah_task) if config.niah_task else []
    lines = [check.line() for check in checks]
    if config.niah_task and not checks:
        lines.append(f"shape check: not computable (no {config.niah_task} score for full, retrieval@K and random@K)")
    kv = kv_line(board, config.niah_task) if config.kv_budgets and config.niah_task else None
    if kv:
        lines.append(kv)
    cot = cot_line(board, config.cot_task, config.direct_task) if config.cot_task and config.direct_task else None
    if cot:
        lines.append(cot)
    loaded = detection_loaded or get_lm.lm is not None or (engine is not None and engine.lm is not None)
    seconds = time.perf_counter() - started
    state.setdefault("runs", []).append({
        **run_entry(wall_started), "comparison_seconds": round(time.perf_counter() - compare_started, 1),
        "model_loaded": loaded,  # run_entry's machine holds the cores (a top-level cpu_count: runs before it)
    })
    state["shape_checks"] = [{**asdict(c), "holds": c.holds} for c in checks]
    state["plots"] = [os.path.relpath(p, out_dir) for p in plots]
    # the demo's wall time: every run that did work (one, unless it was interrupted and resumed)
    state["wall_seconds"] = round(sum(r["seconds"] for r in state["runs"] if r["model_loaded"]), 1) or None
    save_state(out_dir, state)
    summary = write_summary(out_dir, board, lines, plots, state.get("wall_seconds"))
    from rh_eval.report import write_report

    report = write_report(out_dir)

    print()
    print(headline(board).markdown())
    for line in lines:
        print(f"rh demo: {line}")
    print(f"rh demo: {len(plots)} plots in {out_dir / 'plots'}; summary in {summary}; report in {report}; "
          f"full log in {log}")
    print(f"rh demo: finished in {seconds / 60:.1f} min" + ("" if loaded else " (everything re-used)"))
    return 0


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.force:
        start_over(Path(config.output_dir))
    return demo(config)
