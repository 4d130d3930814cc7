"""``rh check``: a CI gate that fails when a metric falls below a committed baseline by more than a tolerance.

Usage::

    rh check --results out/leaderboard.json --baseline ci/baseline.json --tolerance 0.02
    rh check --results lm-out/model/results_2025-01-01T00-00-00.json --baseline base.json --metric acc
    rh check --update-baseline --results out/leaderboard.json --baseline ci/baseline.json   # deliberate

Why: a masking or recording change that silently shifts scores is exactly what a gate should catch, and the
numbers come from lm-eval, so the gate reads both our ``leaderboard.json`` (every condition row) and a plain
``lm_eval --output_path`` results file. A regression is a move in the *bad* direction (lm-eval's
``higher_is_better`` when the file has it, else higher is assumed better) larger than ``--tolerance``
(absolute). Small eval sets move by whole samples, so when per-sample files lie beside both sides with the
same doc ids, a paired test says whether a move is more than noise: exact McNemar for 0/1 metrics, a paired
bootstrap otherwise. Exit codes: 0 within tolerance, 1 regression, 2 unusable input.

Baselines are only written by ``--update-baseline`` (atomically). It also keeps a compact copy of the
per-sample scores in ``<baseline stem>.samples/`` so that later checks can still run the paired test.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from rh_eval.leaderboard import (
    FORMAT,
    Column,
    Leaderboard,
    higher_is_better,
    is_number,
    metric_values,
)
from rh_eval.run_files import RESULTS_NAME, newest_results, read_json, read_jsonl, samples_by_task, samples_name
from rh_models.atomic import write_text_atomic
from rh_models.errors import RHError

PLAIN_ROW = "lm-eval"  # the single row of a plain lm-eval results file; it matches a leaderboard's "full"


# ------------------------------------------------------------------------------------------------- loading


@dataclass
class SampleSource:
    """Where one condition's per-sample files are: ``folder/samples_<task>.jsonl`` or lm-eval's naming."""

    tag: str  # pairs conditions across runs: the random seed, or "" for unseeded conditions
    folder: Path | None  # None: this condition has no per-sample files
    date_id: str | None = None  # lm-eval's ``samples_<task>_<date_id>.jsonl``; None for ours

    def path(self, task: str) -> Path | None:
        if self.folder is None:
            return None
        if self.date_id is None or self.date_id:
            candidate = self.folder / samples_name(task, self.date_id)
            return candidate if candidate.is_file() else None
        found = [path for date, path in samples_by_task(self.folder).get(task, []) if date]
        return found[0] if len(found) == 1 else None


@dataclass
class RunScores:
    """One side of a check: metric values per (row, column id) and where its per-sample files are."""

    path: Path
    kind: str  # "leaderboard" or "lm-eval"
    values: dict[tuple[str, str], float]
    higher_is_better: dict[str, bool | None]
    samples: dict[str, list[SampleSource]] = field(default_factory=dict)  # row -> its conditions' sources
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> list[str]:
        return list(dict.fromkeys(row for row, _ in self.values))


def resolve_input(path: str | Path, what: str) -> Path:
    """A JSON file as given, or inside a folder: its ``leaderboard.json``, else the newest lm-eval results file."""
    path = Path(path)
    if path.is_dir():
        if (path / "leaderboard.json").is_file():
            return path / "leaderboard.json"
        newest = newest_results(path)
        if newest is None:
            raise RHError(f"{what} folder {path} has no leaderboard.json and no lm-eval results_*.json")
        others = sum(1 for _ in path.rglob("results_*.json")) - 1
        if others:
            print(f"rh check: {what}: {others + 1} results files under {path}; using the newest, {newest}", file=sys.stderr)
        return newest
    if not path.is_file():
        raise RHError(f"{what} {path} does not exist")
    return path


def load_scores(path: str | Path, what: str = "results") -> RunScores:
    """Read our ``leaderboard.json`` or a plain lm-eval results JSON; :class:`RHError` if it is neither."""
    path = resolve_input(path, what)
    data = read_json(path, what)
    if isinstance(data, dict) and data.get("format") == FORMAT:
        board = Leaderboard.from_json(data, f"{what} {path}")
        values = {key: cell.value for key, cell in board.cells.items()}
        samples = {
            row.name: [_leaderboard_source(path, name, board.conditions.get(name, {})) for name in row.conditions]
            for row in board.rows
        }
        scores = RunScores(path, "leaderboard", values, dict(board.higher_is_better), samples, data)
    elif isinstance(data, dict) and isinstance(data.get("results"), dict):
        values = {(PLAIN_ROW, column.id): value for column, value in metric_values(data["results"]).items()}
        flags = data.get("higher_is_better")
        higher = {column_id: higher_is_better(flags, Column.parse(column_id)) for _, column_id in values}
        scores = RunScores(path, "lm-eval", values, higher, {PLAIN_ROW: [_plain_source(path)]}, data)
    else:
        raise RHError(f"{what} {path} is neither an rh-eval leaderboard.json nor an lm-eval results JSON")
    if not scores.values:
        raise RHError(f"{what} {path} contains no numeric metrics")
    return scores


def _leaderboard_source(path: Path, name: str, record: dict[str, Any]) -> SampleSource:
    seed = record.get("seed")
    folder = record.get("samples_dir", f"conditions/{name}")
    return SampleSource("" if seed is None else str(seed), None if not folder else path.parent / folder)


def _plain_source(path: Path) -> SampleSource:
    sidecar = sidecar_dir(path)
    if sidecar.is_dir():
        return SampleSource("", sidecar)
    match = RESULTS_NAME.fullmatch(path.name)
    return SampleSource("", path.parent, match["date"] if match else "")


def sidecar_dir(baseline: Path) -> Path:
    return baseline.with_name(f"{baseline.stem}.samples")


# -------------------------------------------------------------------------------------------- paired tests


def read_sample_scores(path: Path, column: Column) -> dict[int, tuple[float, str | None]] | None:
    """{doc_id: (score, doc_hash)} of one metric/filter from an lm-eval samples JSONL; None if not per-sample."""
    scores: dict[int, tuple[float, str | None]] = {}
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    continue
                sample = json.loads(line)
                if sample.get("filter", "none") != column.filter or column.metric not in sample:
                    continue
                value = sample[column.metric]
                if isinstance(value, bool):
                    value = float(value)
                if not is_number(value):
                    return None  # e.g. corpus-level metrics log (prediction, reference) pairs
                scores[int(sample["doc_id"])] = (float(value), sample.get("doc_hash"))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    return scores or None


def mcnemar_exact(baseline: list[float], run: list[float]) -> float:
    """Two-sided exact McNemar p-value for paired 0/1 outcomes (binomial test on the discordant pairs)."""
    lost = sum(1 for b, r in zip(baseline, run) if b == 1 and r == 0)
    gained = sum(1 for b, r in zip(baseline, run) if b == 0 and r == 1)
    if lost + gained == 0:
        return 1.0
    return float(stats.binomtest(gained, lost + gained, 0.5).pvalue)


def paired_bootstrap(baseline: list[float], run: list[float], iters: int = 10_000, seed: int = 0) -> float:
    """Two-sided paired bootstrap p-value for ``mean(run - baseline) == 0`` (resampling centred differences)."""
    diffs = np.asarray(run, dtype=float) - np.asarray(baseline, dtype=float)
    observed = float(diffs.mean())
    if np.allclose(diffs, 0.0):
        return 1.0
    centred = diffs - observed
    rng = np.random.default_rng(seed)
    extreme = 0
    chunk = max(1, min(iters, 2_000_000 // len(diffs)))
    done = 0
    while done < iters:
        n = min(chunk, iters - done)
        means = centred[rng.integers(0, len(diffs), size=(n, len(diffs)))].mean(axis=1)
        extreme += int(np.count_nonzero(np.abs(means) >= abs(observed) - 1e-12))
        done += n
    return (extreme + 1) / (iters + 1)


def paired_test(baseline: list[float], run: list[float], iters: int = 10_000) -> tuple[str, float]:
    """McNemar when every score is 0/1, else the paired bootstrap: (test name, p-value)."""
    if all(v in (0.0, 1.0) for v in (*baseline, *run)):
        return "McNemar", mcnemar_exact(baseline, run)
    return "bootstrap", paired_bootstrap(baseline, run, iters)


def paired_samples(
    run: RunScores, run_row: str, baseline: RunScores, base_row: str, column: Column
) -> tuple[list[float], list[float], str] | None:
    """Aligned per-sample scores of both sides (pairs: seed x doc id), or None with nothing to pair."""
    base_sources = {s.tag: s for s in baseline.samples.get(base_row, [])}
    base_scores: list[float] = []
    run_scores: list[float] = []
    for source in run.samples.get(run_row, []):
        other = base_sources.get(source.tag)
        if other is None:
            continue
        run_path, base_path = source.path(column.task), other.path(column.task)
        if run_path is None or base_path is None:
            continue
        mine, theirs = read_sample_scores(run_path, column), read_sample_scores(base_path, column)
        if mine is None or theirs is None:
            continue
        for doc_id in sorted(set(mine) & set(theirs)):
            (r, r_hash), (b, b_hash) = mine[doc_id], theirs[doc_id]
            if r_hash and b_hash and r_hash != b_hash:
                return None  # same doc id, different document: not the same eval set
            run_scores.append(r)
            base_scores.append(b)
    if not run_scores:
        return None
    return base_scores, run_scores, f"n={len(run_scores)}"


# --------------------------------------------------------------------------------------------- comparing


@dataclass
class Comparison:
    row: str
    column: Column
    baseline: float | None
    run: float | None
    higher_is_better: bool | None
    tolerance: float
    test: str = ""
    p_value: float | None = None

    @property
    def delta(self) -> float | None:
        return None if self.baseline is None or self.run is None else self.run - self.baseline

    @property
    def worse_by(self) -> float | None:
        """How far the run moved in the bad direction (negative when it improved)."""
        if self.delta is None:
            return None
        return -self.delta if self.higher_is_better is not False else self.delta

    @property
    def status(self) -> str:
        if self.run is None:
            return "missing"
        if self.worse_by > self.tolerance + 1e-12:
            return "REGRESSION"
        if abs(self.delta) <= 1e-12:
            return "same"
        return "improved" if self.worse_by < 0 else "within tolerance"

    @property
    def failed(self) -> bool:
        return self.status in ("REGRESSION", "missing")


def metric_selected(column: Column, patterns: list[str]) -> bool:
    """True when any ``--metric`` pattern (glob) names the metric, ``metric,filter``, ``task/metric`` or the id."""
    if not patterns:
        return True
    names = (column.metric, f"{column.metric},{column.filter}", f"{column.task}/{column.metric}", column.id)
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns for name in names)


def row_pairs(run: RunScores, baseline: RunScores) -> list[tuple[str, str]]:
    """(run row, baseline row) pairs: same names, and a plain lm-eval row stands for a leaderboard's ``full``."""
    run_rows, base_rows = run.rows, baseline.rows
    pairs = [(row, row) for row in base_rows if row in run_rows]
    if not pairs:
        if run_rows == [PLAIN_ROW] and "full" in base_rows:
            pairs = [(PLAIN_ROW, "full")]
        elif base_rows == [PLAIN_ROW] and "full" in run_rows:
            pairs = [("full", PLAIN_ROW)]
    return pairs


def compare_scores(
    run: RunScores,
    baseline: RunScores,
    tolerance: float,
    patterns: list[str] | None = None,
    bootstrap_iters: int = 10_000,
) -> list[Comparison]:
    """Every baseline metric of the rows both sides share, with the run's value and a paired test."""
    patterns = patterns or []
    comparisons: list[Comparison] = []
    for run_row, base_row in row_pairs(run, baseline):
        for (row, column_id), base_value in baseline.values.items():
            column = Column.parse(column_id)
            if row != base_row or not metric_selected(column, patterns):
                continue
            flag = baseline.higher_is_better.get(column_id)
            if flag is None:
                flag = run.higher_is_better.get(column_id)
            item = Comparison(run_row, column, base_value, run.values.get((run_row, column_id)), flag, tolerance)
            if item.run is not None:
                paired = paired_samples(run, run_row, baseline, base_row, column)
                if paired is not None:
                    base_scores, run_scores, size = paired
                    name, item.p_value = paired_test(base_scores, run_scores, bootstrap_iters)
                    item.test = f"{name} {size}"
            comparisons.append(item)
    if all(c.run is None for c in comparisons):
        what = f" matching --metric {' '.join(patterns)}" if patterns else ""
        wanted = sorted({c.column.id for c in comparisons})
        raise RHError(
            f"nothing in common{what}: rows {run.rows} of {run.path} vs rows {baseline.rows} of {baseline.path}"
            + (f"; metrics wanted: {', '.join(wanted[:5])}" if wanted else "")
        )
    return comparisons


def comparison_table(comparisons: list[Comparison]) -> str:
    """Markdown table of the metrics that moved (or vanished)."""
    from pytablewriter import MarkdownTableWriter
    from typepy import String

    headers = ["condition", "task", "metric", "filter", "better", "baseline", "run", "Δ", "paired test", "p", "status"]
    matrix = []
    for c in comparisons:
        if c.status == "same":
            continue
        matrix.append([
            c.row, c.column.task, c.column.metric, c.column.filter,
            {True: "higher", False: "lower"}.get(c.higher_is_better, "higher (assumed)"),
            f"{c.baseline:.4f}", "–" if c.run is None else f"{c.run:.4f}",
            "–" if c.delta is None else f"{c.delta:+.4f}",
            c.test or "–", "–" if c.p_value is None else f"{c.p_value:.3g}", c.status,
        ])
    if not matrix:
        return ""
    writer = MarkdownTableWriter(headers=headers, value_matrix=matrix, margin=1, type_hints=[String] * len(headers))
    return writer.dumps()


# ------------------------------------------------------------------------------------------ baseline update


def update_baseline(run_path: str | Path, baseline_path: str | Path) -> tuple[Path, bool]:
    """Write the baseline from a run (atomically), with a compact per-sample sidecar; (path, replaced?)."""
    scores = load_scores(run_path, "results")
    target = Path(baseline_path)
    if target.is_dir():
        raise RHError(f"baseline {target} is a folder; give a JSON file path")
    replaced = target.exists()
    data = dict(scores.raw)
    data.pop("samples", None)

    staging = Path(tempfile.mkdtemp(prefix=f".{target.stem}.samples-", dir=target.parent if target.parent.exists() else None))
    sidecar = sidecar_dir(target)
    try:
        if scores.kind == "leaderboard":
            conditions = {name: dict(record) for name, record in (data.get("conditions") or {}).items()}
            for row, sources in scores.samples.items():
                for name, source in zip(_row_conditions(data, row), sources):
                    copied = _copy_samples(source, staging / name)
                    conditions.setdefault(name, {})["samples_dir"] = f"{sidecar.name}/{name}" if copied else None
            data["conditions"] = conditions
        else:
            _copy_samples(scores.samples[PLAIN_ROW][0], staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        _swap_folder(staging, sidecar)
        write_text_atomic(target, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target, replaced


def _row_conditions(data: dict[str, Any], row: str) -> list[str]:
    return next((list(r["conditions"]) for r in data.get("rows", []) if r.get("name") == row), [])


def _copy_samples(source: SampleSource, dest: Path) -> bool:
    """Copy each task's per-sample scores (ids, hashes, metric values; no documents) into ``dest``."""
    if source.folder is None or not source.folder.is_dir():
        return False
    copied = False
    for task in sorted(samples_by_task(source.folder)):
        path = source.path(task)
        if path is None:
            continue
        lines = [json.dumps(_compact_sample(sample)) for sample in read_jsonl(path)]
        write_text_atomic(dest / samples_name(task), "\n".join(lines) + "\n")
        copied = True
    return copied


def _compact_sample(sample: dict[str, Any]) -> dict[str, Any]:
    keep = {key: sample[key] for key in ("doc_id", "filter", "doc_hash", "metrics") if key in sample}
    for metric in sample.get("metrics") or []:
        value = sample.get(metric)
        if isinstance(value, bool) or is_number(value):
            keep[metric] = value
    return keep


def _swap_folder(staging: Path, target: Path) -> None:
    """Replace ``target`` by ``staging``'s content (an empty staging removes an old sidecar)."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    if any(staging.iterdir()):
        shutil.copytree(staging, target)
    shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------------------------ CLI


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", required=True, help="this run: leaderboard.json, lm-eval results JSON, or a folder")
    parser.add_argument("--baseline", required=True, help="committed baseline JSON (written by --update-baseline)")
    parser.add_argument("--tolerance", type=float, default=0.02, help="largest allowed drop, absolute (default 0.02)")
    parser.add_argument(
        "--metric", nargs="+", action="extend", default=[], metavar="PATTERN",
        help="only these metrics (globs; metric, metric,filter, task/metric or task/metric,filter), "
        "e.g. --metric acc 'rh_niah/*'",
    )
    parser.add_argument("--bootstrap-iters", type=int, default=10_000, help="paired bootstrap resamples (default 10000)")
    parser.add_argument(
        "--update-baseline", action="store_true",
        help="write --results as the new baseline (replacing the old one) instead of checking",
    )


def run(args: argparse.Namespace) -> int:
    if not math.isfinite(args.tolerance) or args.tolerance < 0:
        raise RHError(f"--tolerance must be a non-negative number, got {args.tolerance}")
    if args.bootstrap_iters < 1:
        raise RHError("--bootstrap-iters must be at least 1")
    patterns = [p.strip() for p in args.metric if p.strip()]

    if args.update_baseline:
        path, replaced = update_baseline(args.results, args.baseline)
        print(f"rh check: baseline {path} {'replaced' if replaced else 'written'} from {args.results}")
        return 0

    baseline_path = Path(args.baseline)
    if not baseline_path.exists():
        raise RHError(
            f"baseline {baseline_path} does not exist; write it deliberately with "
            f"rh check --update-baseline --results {args.results} --baseline {baseline_path}"
        )
    run_scores = load_scores(args.results, "results")
    base_scores = load_scores(baseline_path, "baseline")
    comparisons = compare_scores(run_scores, base_scores, args.tolerance, patterns, args.bootstrap_iters)

    table = comparison_table(comparisons)
    failed = [c for c in comparisons if c.failed]
    unpaired_rows = sorted(set(base_scores.rows) - {b for _, b in row_pairs(run_scores, base_scores)})
    if table:
        print(table)
    if unpaired_rows:
        print(f"not compared (absent from the run): {', '.join(unpaired_rows)}")
    if failed:
        print(
            f"rh check: FAIL: {len(failed)} of {len(comparisons)} metrics fell by more than {args.tolerance} "
            f"(or are missing) vs {base_scores.path}"
        )
        return 1
    print(f"rh check: OK: {len(comparisons)} metrics within {args.tolerance} of {base_scores.path}")
    return 0

