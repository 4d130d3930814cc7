"""``rh compare``: full vs retrieval-masked vs random-masked, on one loaded model, into a leaderboard.

Usage::

    rh compare --model smollm2-135m --head-scores scores.json --tasks rh_niah,rh_vartrack,rh_vartrack_cot \\
        --k 6,12 --seeds 3 --output-dir out --limit 20
    rh compare --backend vllm --model-args tensor_parallel_size=2 ...   # one rh-vllm engine (weight edits)
    rh compare --head-scores scores.json --tasks rh_niah --kv-budgets 10%,25%,50% --seeds 3 --output-dir kv
    rh compare --head-scores scores.json --head-means means.json --methods zero,uniform,mean --tasks rh_niah ...
        # one retrieval@K and random@K rows per ablation method (means from `rh means`)
        # KV budgets by head: full, streaming, retrieval-kv@P%, random-kv@P% (see rh_models.kv_budget)
    rh compare --rankings copy=copy.json,attention=attention.json --tasks rh_niah --k 8 --kv-budgets 10% ...
        # rows copy@8, attention@8, random@8, copy-kv@10%, attention-kv@10%, ... (see rh_eval.rankings)

    from rh_eval.compare import CompareConfig, compare
    config = CompareConfig(model="smollm2-135m", tasks=("rh_niah",), output_dir=Path("out"), ks=(6,))
    board, plots = compare(config, head_scores=Path("scores.json"))

    out/conditions/<name>/results.json        lm-eval's output (no samples); its presence = condition done
    out/conditions/<name>/samples_<task>.jsonl per-sample results (paired tests in `rh check`, NIAH heatmaps)
    out/conditions/<name>/condition.json      kind, K, seed, method, scope and the exact heads masked (KV
                                              conditions: the heads that keep the full context and the budget)
    out/leaderboard.{md,csv,html,tex,json}    see rh_eval.leaderboard
    out/plots/*.png                           see rh_eval.plots.conditions (+ head_scores.png, the heads ranked by)
    out/report.html                           one page of all the above, see rh_eval.report

Why: the paper's evidence is a contrast between conditions, so every condition must run on the *same*
weights, tasks, limits and prompts. The model is loaded once and only the head mask is swapped between
``simple_evaluate`` calls (each swap is self-checked by ``RHHFLM.set_mask``). Random controls vary a lot
between draws, so ``random@K`` runs for every seed in ``0..S-1``. Runs are long on CPU: each finished
condition is kept, a re-run with the same settings re-uses it, and a re-run with *different* settings is
refused instead of silently mixing two experiments in one table.

KV budgets (``--kv-budgets``) ask the compression question with the same machinery: ``streaming`` (no head keeps
the full context), ``retrieval-kv@P%`` (the top P % of heads by retrieval score keep it) and ``random-kv@P%``
(P % drawn uniformly from all heads, per seed), each with the share of key/value entries it kept.

Several rankings (``--rankings NAME=FILE,...``, any score files) replace ``--head-scores``: each ranking gets its
own ``<ranking>@K`` and ``<ranking>-kv@P%`` rows beside one ``full``, ``streaming`` and random rows, on one loaded
model; which heads the random rows exclude is said in :mod:`rh_eval.rankings`.

Rankings stop where the scores stop: a score file in which no head scored above 0 is refused, and so is a K or a
share P % asking for more heads than scored above 0, before the first condition, unless ``--tie-break random``
draws the rest at random from the unscored heads (recorded per condition as ``tie_break`` and ``unscored_heads``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, TextIO

from rh_eval.cli_args import (
    parse_batch_size,
    parse_ints,
    parse_ks,
    parse_kv_budgets,
    parse_limit,
    parse_list,
    parse_metadata,
    parse_model_args,
)
from rh_eval.leaderboard import (
    EXTENSIONS,
    KV_KINDS,
    ConditionResult,
    Leaderboard,
    build_leaderboard,
    condition_name,
    leaderboard_paths,
    share_text,
    write_leaderboard,
)
from rh_eval.fingerprint import numerics, versions, weights
from rh_eval.provenance import run_entry
from rh_eval.rankings import (
    Ranking,
    check_random_pool,
    check_rankings,
    load_rankings,
    parse_rankings,
    random_control,
    ranking_hashes,
)
from rh_eval.resume import clear_outputs, resume_record, save_record, settle
from rh_eval.detect import work_file
from rh_eval.run_files import DETECTED_SCORES, RUN_FILE, samples_name
from rh_models.atomic import write_text_atomic
from rh_models.attention import MASK_METHODS, MASK_SCOPES
from rh_models.compat import as_logged_sample
from rh_models.errors import RHError
from rh_models.files import read_json, require_file
from rh_models.head_means import check_means_request
from rh_models.heads import TIE_BREAKS, HeadScores, check_ranking, parse_head_spec, score_meta_path
from rh_models.kv_budget import DEFAULT_SINK, DEFAULT_WINDOW
from rh_models.zoo import DEFAULT_MODEL

NUMERICS = "numerics"  # the settings only a loaded model knows (dtype, device, attention): run.json records them then
BACKENDS = ("hf", "vllm")
HEADS_PLOT = "head_scores.png"  # under plots/: the layers x heads map of the scores the conditions rank by


# ------------------------------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class ConditionPlan:
    """One condition to evaluate: which mask spec, and how it is named on disk and in the table."""

    kind: str  # full | retrieval | random | streaming | retrieval-kv | random-kv
    k: int = 0
    seed: int | None = None
    share: float | None = None  # KV kinds: percentage of heads that keep the full context
    method: str | None = None  # with several --methods: this row's ablation method (named in the row)
    ranking: str | None = None  # with --rankings: the ranking a retrieval / retrieval-kv condition ranks by

    @property
    def is_kv(self) -> bool:
        return self.kind in KV_KINDS

    @property
    def name(self) -> str:
        return condition_name(self.kind, self.k, self.share, self.method, self.seed, self.ranking)

    @property
    def spec(self) -> str:
        """The ``mask_heads`` value of a masking condition (KV conditions mask nothing)."""
        return {"retrieval": f"top:{self.k}", "random": f"random:{self.k}"}.get(self.kind, "none")

    @property
    def kv_spec(self) -> str | None:
        """The ``kv_full_heads`` value of a KV condition; None for masking conditions (full attention)."""
        if not self.is_kv:
            return None
        if self.kind == "streaming":
            return "none"
        return f"{'top' if self.kind == 'retrieval-kv' else 'random'}:{share_text(self.share)}"


def plan_conditions(ks: list[int], seeds: int, kv_budgets: list[float] = (),
                    methods: tuple[str, ...] = ("zero",), rankings: tuple[str, ...] = ()) -> list[ConditionPlan]:
    """``full``; per K (and per method, when there are several: ``retrieval@K-mean``, ...): ``retrieval@K``,
    ``random@K-seed0..S-1``; with KV budgets: ``streaming``, then per share P: ``retrieval-kv@P%``,
    ``random-kv@P%-seed0..S-1``. One method keeps the names without it (and earlier runs' folders). With
    ``rankings`` (their names), one ``<ranking>@K`` / ``<ranking>-kv@P%`` per ranking replaces the retrieval one."""
    ranked = rankings or (None,)
    plans = [ConditionPlan("full")]
    for k in ks:
        for method in methods if len(methods) > 1 else (None,):
            plans.extend(ConditionPlan("retrieval", k, method=method, ranking=ranking) for ranking in ranked)
            plans.extend(ConditionPlan("random", k, seed, method=method) for seed in range(seeds))
    if kv_budgets:
        plans.append(ConditionPlan("streaming"))
    for share in kv_budgets:
        plans.extend(ConditionPlan("retrieval-kv", share=share, ranking=ranking) for ranking in ranked)
        plans.extend(ConditionPlan("random-kv", seed=seed, share=share) for seed in range(seeds))
    return plans


@dataclass(frozen=True)
class CompareConfig:
    """What one comparison evaluates; :meth:`check` refuses a bad value before any work starts.

    ``head_scores=None`` runs detection first, on the loaded model, with ``detect_*`` (``None``: the paper's grid).
    ``prefix_reuse`` hands ``rh-hf``'s shared-prefix KV cache to every condition (exact; few-shot and NIAH
    prompts share long prefixes).
    """

    tasks: tuple[str, ...]
    output_dir: Path
    model: str = DEFAULT_MODEL
    head_scores: Path | None = None
    ks: tuple[int, ...] = (6,)
    seeds: int = 3
    methods: tuple[str, ...] = ("zero",)  # ablation methods; several give rows per method
    head_means: Path | None = None  # mask_method=mean's file (from `rh means`)
    scope: str = "all"
    random_match: str | None = None
    limit: int | float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    batch_size: int | str = 1
    apply_chat_template: bool = False
    num_fewshot: int | None = None
    include_path: tuple[str, ...] = ()
    plots: bool = True
    detect_lengths: tuple[int, ...] | None = None
    detect_depths: tuple[int, ...] | None = None
    detect_samples: int = 3
    prefix_reuse: bool = False
    backend: str = "hf"
    model_args: dict[str, Any] = field(default_factory=dict)
    kv_budgets: tuple[float, ...] = ()  # percentages of heads that keep the full context (KV conditions)
    kv_sink: int = DEFAULT_SINK
    kv_window: int = DEFAULT_WINDOW
    tie_break: str = "none"  # random: top:K past the heads that scored above 0 draws the rest (none: refused)
    rankings: tuple[Ranking, ...] = ()  # several score files compared (replaces head_scores; see rh_eval.rankings)

    def __post_init__(self) -> None:
        # one order (zero, uniform, mean) from here on: the order typed changes neither rows nor settings
        object.__setattr__(self, "methods", canonical_methods(list(self.methods)))

    def check(self) -> None:
        if self.backend not in BACKENDS:
            raise RHError(f"--backend {self.backend} is not one of {', '.join(BACKENDS)}")
        if self.backend == "vllm" and self.prefix_reuse:
            raise RHError("--prefix-reuse is rh-hf's cache; with --backend vllm pass --model-args enable_prefix_caching=True")
        if self.backend == "vllm" and self.scope != "all":
            raise RHError("--scope decode cannot be a weight edit; use --backend hf for it")
        if not self.tasks:
            raise RHError("--tasks is empty")
        if len(set(self.tasks)) != len(self.tasks):
            raise RHError(f"--tasks lists something twice: {','.join(self.tasks)}")
        if (not self.ks and not self.kv_budgets) or any(k <= 0 for k in self.ks) or len(set(self.ks)) != len(self.ks):
            raise RHError(f"--k takes distinct positive integers, got {','.join(map(str, self.ks)) or 'nothing'}")
        if self.kv_budgets and self.backend == "vllm":
            raise RHError("--kv-budgets needs --backend hf: KV budgets by head are simulated with attention masks")
        if any(not 0 < p <= 100 for p in self.kv_budgets) or len(set(self.kv_budgets)) != len(self.kv_budgets):
            raise RHError("--kv-budgets takes distinct percentages in (0, 100], e.g. 10%,25%,50%")
        if self.kv_sink < 0 or self.kv_window < 1:
            raise RHError("--kv-sink must be 0 or more and --kv-window at least 1")
        if self.seeds < 0:
            raise RHError("--seeds must be 0 or more")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise RHError("--num-fewshot must be 0 or more")
        if self.detect_samples < 1:
            raise RHError("--detect-samples must be at least 1")
        unknown = [m for m in self.methods if m not in MASK_METHODS]
        if not self.methods or unknown or len(set(self.methods)) != len(self.methods):
            raise RHError(f"--methods takes distinct methods of {', '.join(MASK_METHODS)}, got "
                          f"{','.join(self.methods) or 'nothing'}")
        if self.scope not in MASK_SCOPES:
            raise RHError(f"mask scope {self.scope} is not supported")
        check_means_request(self.methods, self.head_means, "--methods mean", "--head-means", "--head-means FILE")
        if self.head_scores is not None:
            require_file(self.head_scores, "head-score file")
        if Path(self.output_dir).exists() and not Path(self.output_dir).is_dir():
            raise RHError(f"--output-dir {self.output_dir} is a file")
        if self.tie_break not in TIE_BREAKS:
            raise RHError(f"--tie-break {self.tie_break} is not one of {', '.join(TIE_BREAKS)}")
        if self.head_scores is not None:
            self.check_ranking(HeadScores.load(self.head_scores))
        if self.rankings:
            self.check_rankings()

    def check_ranking(self, scores: HeadScores) -> None:
        """Every ranking the conditions will read, checked on the score file before the first condition: a file
        that ranks no head, or a K / KV share past the heads that scored above 0 without ``--tie-break random``."""
        for plan in plan_conditions(list(self.ks), min(self.seeds, 1), list(self.kv_budgets)):
            if plan.spec != "none":
                check_ranking(parse_head_spec(plan.spec), scores, self.tie_break, random_match=self.random_match)
            if plan.kv_spec not in (None, "none"):  # random-kv draws from every head (random_exclude=0)
                check_ranking(parse_head_spec(plan.kv_spec), scores, self.tie_break, random_exclude=0)

    def check_rankings(self) -> None:
        """``--rankings``: the files, each ranking's top K / top P % (as :meth:`check_ranking`), and enough heads
        outside every ranking's top K for random@K, all before the model loads."""
        if self.head_scores is not None:
            raise RHError("--rankings names every score file the rows rank by; drop --head-scores")
        if self.random_match is not None:
            raise RHError("--random-match layer matches the layers of one ranking; with --rankings the random rows "
                          "exclude every ranking's top K instead (see docs/compare-rankings.md)")
        scores = check_rankings(self.rankings)
        for plan in plan_conditions(list(self.ks), 0, list(self.kv_budgets)):
            spec = plan.kv_spec if plan.is_kv else plan.spec
            if plan.kind in ("retrieval", "retrieval-kv"):
                for ranking in scores.values():
                    check_ranking(parse_head_spec(spec), ranking, self.tie_break)
        check_random_pool(self.ks, scores, self.tie_break)

    def ranking_file(self, name: str) -> Path:
        """The score file of the ranking called ``name``."""
        return next(Path(r.path) for r in self.rankings if r.name == name)


def canonical_methods(methods: list[str]) -> tuple[str, ...]:
    """Ablation methods in one order (zero, uniform, mean): the order typed changes neither rows nor settings."""
    return tuple(sorted(methods, key=lambda m: MASK_METHODS.index(m) if m in MASK_METHODS else len(MASK_METHODS)))


# --------------------------------------------------------------------------------------------- run settings


def run_settings(config: CompareConfig, head_scores: Path | None) -> dict[str, Any]:
    """Everything that changes results, in the order a refusal names differences (K and seeds may grow).

    ``head_scores=None``: not known yet (detection still to run); its hash is then left out.
    """
    from rh_models.shape import model_config_sha256

    model_args = config.model_args
    settings = {
        "model": str(Path(config.model).resolve()) if Path(config.model).exists() else config.model,
        "model_config_sha256": model_config_sha256(config.model, model_args.get("revision"),
                                                   bool(model_args.get("trust_remote_code", False))),
        "backend": config.backend,
        "model_args": config.model_args,
        "tasks": list(config.tasks),
        "metadata": config.metadata,
        "limit": config.limit,
        "num_fewshot": config.num_fewshot,
        "apply_chat_template": bool(config.apply_chat_template),
        "method": ",".join(config.methods),  # canonical order (CompareConfig)
        "scope": config.scope,
        "random_match": config.random_match,
        "include_path": [str(Path(p).resolve()) for p in config.include_path],
        # batching pads prompts to one width (other matmul shapes: other bf16 numerics, another KV budget count);
        # prefix reuse prefills in other chunks: both change results, so both are settings
        "batch_size": config.batch_size,
        "prefix_reuse": config.prefix_reuse,
        "versions": versions(config.backend),  # the rest of the fingerprint (dtype, device, attention) once loaded
        "weights": weights(config.model),  # an alias's data package version and GGUF hash
        # detection run by rh compare itself (no --head-scores): its grid, since its score file is re-used as is
        "detection": None if config.head_scores is not None or config.rankings else
        [list(config.detect_lengths or []), list(config.detect_depths or []), config.detect_samples],
    }
    if config.kv_budgets:  # a setting only where it is used
        settings["kv"] = {"sink": config.kv_sink, "window": config.kv_window}
    if config.tie_break != "none":  # a setting only where it is used
        settings["tie_break"] = config.tie_break
    if config.head_means is not None:  # a setting only where it is used
        settings["head_means_sha256"] = hashlib.sha256(Path(config.head_means).read_bytes()).hexdigest()
    if head_scores is not None:
        settings["head_scores_sha256"] = hashlib.sha256(head_scores.read_bytes()).hexdigest()
    if config.rankings:  # a setting only where it is used: every ranking's name and file (random@K excludes them all)
        settings["rankings"] = ranking_hashes(config.rankings)
    return settings


# what rh compare writes into its output folder: --force removes these (and only these)
OUTPUTS = (RUN_FILE, "conditions", "plots", *(f"leaderboard.{ext}" for ext in EXTENSIONS), DETECTED_SCORES,
           score_meta_path(DETECTED_SCORES).name, work_file(Path(DETECTED_SCORES)).name, "report.html")


def start_over(config: CompareConfig) -> None:
    """``--force``: remove an earlier run's outputs from the folder; never the --head-scores file given (nor the
    ``.meta.json`` / ``.tests.jsonl`` beside it), and refuse when that file lies inside a folder it would remove."""
    out_dir = Path(config.output_dir)
    keep: set[Path] = set()
    given = [("--head-scores", Path(config.head_scores))] if config.head_scores is not None else []
    given += [(f"--rankings {r.name}", Path(r.path)) for r in config.rankings]
    for option, path in given:
        scores = path.resolve()
        keep |= {scores, score_meta_path(scores), work_file(scores)}
        for name in OUTPUTS:
            if (out_dir / name).is_dir() and (out_dir / name).resolve() in scores.parents:
                raise RHError(f"{option} {path} lies inside {out_dir / name}, which --force would remove; move it "
                              f"out first")
    clear_outputs(out_dir, [name for name in OUTPUTS if (out_dir / name).resolve() not in keep])


def check_settings(out_dir: Path, settings: dict[str, Any]) -> bool:
    """Record the settings in ``run.json``, or verify them on resume; True when resuming.

    Settings without ``head_scores_sha256`` or ``rankings`` (detection not run yet) are checked without it and not
    saved: a folder made by another run is refused before hours of detection, not after. Finished conditions with
    no ``run.json`` beside them cannot say what made them, so they are refused too.
    """
    path = out_dir / RUN_FILE
    resuming = path.exists()
    if not resuming and any((out_dir / "conditions").glob("*/results.json")):
        raise RHError(f"{out_dir} holds finished conditions but no {RUN_FILE} saying what made them; "
                      f"pass --force to start over, or use another --output-dir")
    if "head_scores_sha256" not in settings and "rankings" not in settings:  # detection to run: save once done
        if resuming:
            resume_record(path, settings, "rh compare", not_yet_known=("head_scores_sha256", NUMERICS))
        return resuming
    record = resume_record(path, settings, "rh compare", not_yet_known=(NUMERICS,))  # checked once loaded (settle)
    if not resuming:
        save_record(path, record)
    return resuming


# ---------------------------------------------------------------------------------------------- evaluation


def existing_head_scores(config: CompareConfig) -> Path | None:
    """The score file to rank heads by, if there is one: ``head_scores``, or an earlier detection in the folder."""
    if config.head_scores is not None:
        return Path(config.head_scores)
    detected = Path(config.output_dir) / DETECTED_SCORES
    if detected.is_file():
        print(f"rh compare: no --head-scores; re-using the detection in {detected}")
        return detected
    return None


def detect_first(lm: Any, config: CompareConfig) -> Path:
    """No score file: run ``rh detect`` on the model already loaded for the comparison (resumable as ever)."""
    from rh_eval.detect import detect, print_summary
    from rh_tasks.niah_docs import DEFAULT_DEPTHS

    detected = Path(config.output_dir) / DETECTED_SCORES
    print(f"rh compare: no --head-scores; running retrieval-head detection first -> {detected}")
    summary = detect(lm, detected, lengths=list(config.detect_lengths) if config.detect_lengths else None,
                     depths=list(config.detect_depths or DEFAULT_DEPTHS), samples=config.detect_samples)
    print_summary(summary, detected)
    return detected


def load_model(config: CompareConfig, head_scores: Path | None, backend: str | None = None):
    """Load the model once (``rh-hf``, or one ``rh-vllm`` engine); conditions only swap its mask."""
    scores = str(head_scores) if head_scores else None
    if (backend or config.backend) == "vllm":
        from rh_models.vllm_lm import RHVLLM

        batch_size = "auto" if config.batch_size == 1 else config.batch_size  # 1 (hf's default) would serialise vLLM
        return RHVLLM(pretrained=config.model, head_scores=scores, batch_size=batch_size, **config.model_args)
    from rh_eval.models import load_hf

    return load_hf(config.model, config.batch_size, scores, **config.model_args)


def refuse_decode_scope_without_generation(tasks: list[str], manager: Any) -> None:
    """``--scope decode`` masks only generated tokens: a task scored by loglikelihood would run unmasked in every
    condition. rh-hf refuses it at its first loglikelihood request; here it is refused before any condition runs."""
    from lm_eval.tasks import get_task_dict

    def leaves(node: Any) -> list[Any]:
        return [t for child in node.values() for t in leaves(child)] if isinstance(node, dict) else [node]

    scored = sorted({task.config.task for task in leaves(get_task_dict(tasks, manager))
                     if getattr(task, "OUTPUT_TYPE", "generate_until") != "generate_until"})
    if scored:
        raise RHError(f"--scope decode masks only generated tokens; {', '.join(scored)} "
                      f"{'is' if len(scored) == 1 else 'are'} scored by loglikelihood, which generates none: use "
                      "--scope all")


def task_manager(tasks: list[str], model: str, metadata: dict[str, Any], include_path: tuple[str, ...] = ()):
    """lm-eval's TaskManager with the include paths and metadata; unknown tasks fail before the model loads.

    As the stock ``lm_eval`` CLI does with ``--model_args``, ``pretrained`` (the model) is merged under the
    user's metadata: tasks that size prompts in the model's tokens (``rh_niah``) read the tokenizer from it.
    Indexing lm-eval's thousands of built-in tasks takes ~10 s, so our task folder and the include paths are
    tried alone first; the built-ins are indexed only when a task is not found there.
    """
    from lm_eval.tasks import TaskManager

    include = [str(p) for p in include_path] or None
    metadata = {"pretrained": model, **metadata}
    manager = TaskManager(include_path=include, include_defaults=False, metadata=metadata)
    if any(t not in manager.all_tasks for t in tasks):
        manager = TaskManager(include_path=include, metadata=metadata)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise RHError(f"unknown task(s) {', '.join(unknown)}; see `lm_eval --tasks list` (or pass --include-path)")
    return manager


def evaluate(lm: Any, tasks: list[str], config: CompareConfig, manager: Any) -> dict[str, Any]:
    """One ``simple_evaluate`` call on the already-masked model, with per-sample logging."""
    from lm_eval import simple_evaluate

    output = simple_evaluate(
        model=lm,
        tasks=tasks,
        limit=config.limit,
        log_samples=True,
        task_manager=manager,
        apply_chat_template=bool(config.apply_chat_template),
        num_fewshot=config.num_fewshot,
    )
    if output is None:
        raise RHError("lm-eval returned no results (not rank 0?)")
    return output


def run_condition(lm: Any, plan: ConditionPlan, config: CompareConfig, manager: Any,
                  rankings: dict[str, HeadScores] | None = None) -> tuple[dict, dict]:
    """Swap the mask (or KV budget) in, evaluate, and return (condition record, lm-eval output).

    A random-kv draw is uniform over *all* heads (``random_exclude=0``): it stands for "any ranking", whereas a
    random mask control excludes the retrieval heads it is contrasted with (with ``--rankings``: every ranking's
    top K, ``rankings`` being their scores on the loaded model's shape).
    """
    if config.kv_budgets:
        lm.set_kv(None)  # the mask's self-check runs on full attention
    if config.rankings:  # each ranked row ranks by its own file; the others name the first (their record says which)
        lm.use_head_scores(config.ranking_file(plan.ranking or config.rankings[0].name))
    method = plan.method or config.methods[0]  # full and KV rows: the first method (masking nothing)
    mask, excluded = plan.spec, None
    if config.rankings and plan.kind == "random":
        mask, excluded = random_control(plan.k, rankings.values(), plan.seed or 0, config.tie_break, plan.spec)
    lm.set_mask(mask, method=method, scope=config.scope, seed=plan.seed or 0, random_match=config.random_match,
                tie_break=config.tie_break)
    if plan.is_kv:
        lm.set_kv(plan.kv_spec, config.kv_sink, config.kv_window, seed=plan.seed or 0, random_exclude=0,
                  tie_break=config.tie_break)
    info = lm.mask_info()
    output = evaluate(lm, list(config.tasks), config, manager)
    record = {
        "name": plan.name,
        "kind": plan.kind,
        "k": plan.k,
        "seed": plan.seed,
        "heads": [list(h) for h in info["heads"]],
        "method": info.get("method", method),
        "method_in_name": plan.method is not None,
        "scope": info.get("scope", config.scope),
        "spec": info.get("spec", plan.spec),
        "random_match": config.random_match if plan.kind == "random" else None,
        "tie_break": config.tie_break,
        "unscored_heads": info.get("unscored_heads"),  # top:K's places the tie rule filled (KV rows: from kv)
        "mask": info,
    }
    if plan.ranking is not None:  # only under --rankings: earlier records stay as they were
        record.update(ranking=plan.ranking, ranking_file=str(config.ranking_file(plan.ranking)))
    if excluded is not None:  # the random control of rankings: drawn outside every ranking's top K
        record.update(spec=plan.spec, random_exclude=f"top:{plan.k} of {', '.join(r.name for r in config.rankings)}",
                      excluded_heads=[list(h) for h in sorted(excluded)])
    if plan.kind in ("retrieval", "random") and len(record["heads"]) != plan.k:
        raise RHError(f"{plan.name}: the mask holds {len(record['heads'])} heads, expected {plan.k}")
    if config.kv_budgets:
        kv = lm.kv_info() if plan.is_kv else None
        record.update(share=plan.share, kv=kv, kv_budget=kv["kv_budget"] if kv else 1.0)
        if kv:
            record["unscored_heads"] = kv.get("unscored_heads")
    return record, output


def write_condition(folder: Path, record: dict[str, Any], output: dict[str, Any]) -> None:
    """Samples and record first, ``results.json`` last: its presence marks the condition as finished."""
    from lm_eval.utils import handle_non_serializable

    for task, samples in (output.get("samples") or {}).items():
        lines = [json.dumps(as_logged_sample(s), default=handle_non_serializable, ensure_ascii=False) for s in samples]
        write_text_atomic(folder / samples_name(task), "".join(line + "\n" for line in lines))
    write_text_atomic(folder / "condition.json", json.dumps(record, indent=2) + "\n")
    results = {key: value for key, value in output.items() if key != "samples"}
    write_text_atomic(folder / "results.json", json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False) + "\n")


# ------------------------------------------------------------------------------------------------------ CLI


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="alias (see `rh models`) or a local HF folder")
    parser.add_argument("--head-scores", help="score file from `rh detect`; without it detection runs first")
    parser.add_argument("--rankings", default=None,
                        help="instead of --head-scores: several score files as NAME=FILE,..., e.g. "
                             "copy=copy.json,attention=attention.json; rows <name>@K and <name>-kv@P%% per ranking, "
                             "random@K drawn outside every ranking's top K (docs/compare-rankings.md)")
    parser.add_argument("--detect-lengths", default=None,
                        help="without --head-scores: detection lengths in tokens (default: the paper's grid up to the "
                             "model's context)")
    parser.add_argument("--detect-depths", default=None, help="without --head-scores: detection depths in %% "
                                                              "(default 0,10,...,100)")
    parser.add_argument("--detect-samples", type=int, default=3, help="without --head-scores: needles per cell")
    parser.add_argument("--tasks", required=True, help="comma-separated lm-eval tasks, e.g. rh_niah,rh_vartrack_cot")
    parser.add_argument("--k", default=None,
                        help="comma-separated numbers of heads to mask (default 6; none with --kv-budgets)")
    parser.add_argument("--kv-budgets", default=None,
                        help="KV budgets by head: percentages of heads that keep the full context, e.g. 5%%,10%%,25%%; "
                             "adds the streaming, retrieval-kv@P%% and random-kv@P%% rows")
    parser.add_argument("--kv-sink", type=int, default=DEFAULT_SINK,
                        help=f"with --kv-budgets: first positions every head keeps (default {DEFAULT_SINK})")
    parser.add_argument("--kv-window", type=int, default=DEFAULT_WINDOW,
                        help=f"with --kv-budgets: recent positions a streaming head keeps (default {DEFAULT_WINDOW})")
    parser.add_argument("--seeds", type=int, default=3, help="random-head draws per K: seeds 0..S-1 (default 3)")
    parser.add_argument("--output-dir", required=True, help="folder for conditions/, leaderboard.* and plots/")
    parser.add_argument("--method", "--methods", dest="methods", default="zero",
                        help=f"how a masked head is silenced: {', '.join(MASK_METHODS)}, or several comma-separated "
                             "(rows per method), e.g. zero,uniform,mean (default zero)")
    parser.add_argument("--head-means", default=None, help="with --methods mean: the file from `rh means`")
    parser.add_argument("--scope", choices=MASK_SCOPES, default="all", help="mask on every forward or only while decoding")
    parser.add_argument("--random-match", choices=("layer",), default=None,
                        help="draw random heads from the same layers as the top-K retrieval heads")
    parser.add_argument("--tie-break", choices=TIE_BREAKS, default="none",
                        help="when --k or a --kv-budgets share asks for more heads than scored above 0: none refuses "
                             "(default); random draws the rest from the unscored heads with the condition's seed "
                             "(recorded as tie_break and unscored_heads)")
    parser.add_argument("--limit", help="examples per task (a fraction if < 1); for quick runs")
    parser.add_argument("--metadata", help="JSON object passed to the tasks, e.g. '{\"max_seq_lengths\": [1024]}'")
    parser.add_argument("--batch-size", default="1", help="lm-eval batch size (default 1)")
    parser.add_argument("--prefix-reuse", action="store_true",
                        help="reuse the KV cache of the prefix consecutive prompts share (exact; faster for few-shot "
                             "and NIAH prompts)")
    parser.add_argument("--backend", choices=BACKENDS, default="hf",
                        help="hf: rh-hf (default); vllm: one rh-vllm engine, masks as weight edits (detection, if "
                             "needed, still runs on rh-hf first)")
    parser.add_argument("--model-args", default=None,
                        help="extra model args as lm-eval takes them, e.g. tensor_parallel_size=2,dtype=bfloat16")
    parser.add_argument("--apply-chat-template", action="store_true", help="format prompts with the chat template")
    parser.add_argument("--num-fewshot", type=int, default=None, help="override the tasks' few-shot count")
    parser.add_argument("--include-path", action="append", default=[], help="extra folder of task YAMLs (repeatable)")
    parser.add_argument("--no-plots", action="store_true", help="write the leaderboard only")
    parser.add_argument("--force", action="store_true",
                        help="start over: remove this command's earlier outputs in --output-dir instead of resuming")


def config_from_args(args: argparse.Namespace) -> CompareConfig:
    """The CLI's strings as a checked :class:`CompareConfig`."""
    config = CompareConfig(
        tasks=tuple(parse_list(args.tasks, "--tasks")),
        output_dir=Path(args.output_dir),
        model=args.model,
        head_scores=Path(args.head_scores) if args.head_scores else None,
        ks=tuple(parse_ks(args.k)) if args.k is not None else (() if args.kv_budgets else (6,)),
        seeds=args.seeds,
        methods=tuple(parse_list(args.methods, "--methods")),
        head_means=Path(args.head_means) if args.head_means else None,
        scope=args.scope,
        random_match=args.random_match,
        limit=parse_limit(args.limit),
        metadata=parse_metadata(args.metadata),
        batch_size=parse_batch_size(args.batch_size),
        apply_chat_template=bool(args.apply_chat_template),
        num_fewshot=args.num_fewshot,
        include_path=tuple(str(p) for p in args.include_path or []),
        plots=not args.no_plots,
        detect_lengths=parse_ints(args.detect_lengths, "--detect-lengths"),
        detect_depths=parse_ints(args.detect_depths, "--detect-depths"),
        detect_samples=args.detect_samples,
        prefix_reuse=bool(args.prefix_reuse),
        backend=args.backend,
        model_args=parse_model_args(args.model_args),
        kv_budgets=parse_kv_budgets(args.kv_budgets),
        kv_sink=args.kv_sink,
        kv_window=args.kv_window,
        tie_break=args.tie_break,
        rankings=parse_rankings(args.rankings),
    )
    config.check()
    return config


def compare(
    config: CompareConfig,
    head_scores: Path | None = None,
    get_lm: Callable[[], Any] | None = None,
    log: str = "rh compare",
    show_table: bool = True,
    progress: TextIO | None = None,
    report: bool = True,
) -> tuple[Leaderboard, list[Path]]:
    """Evaluate the missing conditions, then write the leaderboard, plots and report; returns (board, plot paths).

    ``get_lm`` returns the model to mask; it is called only when some condition is still missing, so a
    finished run re-renders its table without loading anything. ``rh demo`` passes the model it already
    loaded for detection; by default the model named by ``config.model`` is loaded here. ``show_table=False``
    leaves printing the table to the caller; ``progress`` is where the conditions bar is drawn (stderr by default);
    ``report=False`` leaves ``report.html`` to the caller (``rh demo`` writes it once its own files are there).
    A run that evaluated something is recorded in ``run.json``'s ``runs`` (:mod:`rh_eval.provenance`).
    With ``config.rankings`` there is no ``head_scores``: the rankings' files are the score files.
    """
    started = time.time()
    config.check()
    if not config.rankings:  # a detection made here or by rh demo: checked before any use
        if head_scores is None:
            raise RHError("rh compare needs --head-scores, --rankings or a detection first")
        config.check_ranking(HeadScores.load(head_scores))
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = list(config.tasks)
    check_settings(out_dir, run_settings(config, None if config.rankings else head_scores))
    plans = plan_conditions(sorted(config.ks), config.seeds, sorted(config.kv_budgets), config.methods,
                            tuple(r.name for r in config.rankings))
    folders = {plan.name: out_dir / "conditions" / plan.name for plan in plans}
    pending = [plan for plan in plans if not (folders[plan.name] / "results.json").is_file()]
    for plan in plans:
        if plan not in pending:
            print(f"{log}: {plan.name}: re-using {folders[plan.name] / 'results.json'}")

    if pending:
        from lm_eval.utils import make_table
        from tqdm import tqdm

        manager = task_manager(tasks, config.model, config.metadata, config.include_path)
        if config.scope == "decode":
            refuse_decode_scope_without_generation(tasks, manager)
        lm = get_lm() if get_lm is not None else load_model(
            config, Path(config.rankings[0].path) if config.rankings else head_scores)
        settle(out_dir / RUN_FILE, NUMERICS, numerics(lm), "rh compare")
        if config.head_means is not None:
            lm.use_head_means(config.head_means)
        rankings = load_rankings(config.rankings, lm.n_layers, lm.n_heads)  # another model's files: refused here
        bar = tqdm(pending, desc="conditions", unit="condition", file=progress or sys.stderr)
        with lm.settings(prefix_reuse=True) if config.prefix_reuse else nullcontext():
            for plan in bar:
                bar.set_postfix_str(plan.name)
                record, output = run_condition(lm, plan, config, manager, rankings)
                write_condition(folders[plan.name], record, output)
                if plan.is_kv:
                    budget = record["kv_budget"]
                    tqdm.write(f"\n{plan.name} (KV budget "
                               f"{'not measured' if budget is None else f'{100 * budget:.1f} %'}, "
                               f"{len(record['kv']['full_query_heads'])} query heads full)")
                else:
                    tqdm.write(f"\n{plan.name} ({len(record['heads'])} heads masked, {record['method']}/{record['scope']})")
                tqdm.write(make_table(output))

    board = build_leaderboard([ConditionResult.from_dir(folders[p.name], root=out_dir) for p in plans])
    replacing = any(path.exists() for path in leaderboard_paths(out_dir).values())
    paths = write_leaderboard(board, out_dir, overwrite=True)
    if show_table:
        print(board.markdown())
    print(f"{log}: leaderboard {'updated' if replacing else 'written'}: {paths['md'].with_suffix('.*')}")
    plots: list[Path] = []
    if config.plots:
        from rh_eval.plots.conditions import make_plots, safe_name
        from rh_eval.plots.heads import plot_head_scores

        plots = make_plots(board, out_dir / "plots", conditions_dir=out_dir / "conditions", tasks=tasks)
        # the score map the conditions rank heads by: one, or one per ranking (head_scores_<ranking>.png)
        # labelled by what ranks them: the copy score's retrieval score, or the ranking's own name
        maps = ([(HEADS_PLOT, head_scores, "retrieval score")]
                if head_scores is not None and not config.rankings else [])
        maps += [(f"{Path(HEADS_PLOT).stem}_{safe_name(r.name)}.png", Path(r.path), f"{r.name} score")
                 for r in config.rankings]
        for name, scores, label in maps:
            plots.append(plot_head_scores(HeadScores.load(scores), out_dir / "plots" / name,
                                          title=f"{label} per head ({Path(scores).name})", label=label))
        print(f"{log}: {len(plots)} plots in {out_dir / 'plots'}")
    if pending:
        record = read_json(out_dir / RUN_FILE, "resume record")
        record.setdefault("runs", []).append(run_entry(started))
        save_record(out_dir / RUN_FILE, record)
    if report:
        from rh_eval.report import write_report

        print(f"{log}: report: {write_report(out_dir)}")
    return board, plots


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.force:
        start_over(config)
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    if config.rankings:  # every score file given: nothing to detect
        compare(config)
        return 0
    if config.head_scores is None:  # a folder of another run is refused now, not after a detection
        check_settings(Path(config.output_dir), run_settings(config, None))
    head_scores = existing_head_scores(config)
    if head_scores is not None:
        compare(config, head_scores)
        return 0
    if config.backend == "vllm":  # vLLM's kernels expose no attention weights: detect on rh-hf, then free it
        detector = load_model(replace(config, model_args={}), None, backend="hf")  # engine args are vLLM's
        head_scores = detect_first(detector, config)
        del detector
        compare(config, head_scores)
        return 0
    lm = load_model(config, None)  # one model for detection and every condition
    head_scores = detect_first(lm, config)
    compare(config, head_scores, get_lm=lambda: lm.use_head_scores(head_scores))
    return 0
