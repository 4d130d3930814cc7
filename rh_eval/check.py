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

This module compares and reports; what it reads is :mod:`rh_eval.check_inputs`, the tests
:mod:`rh_eval.paired_tests`, and the baseline writer :mod:`rh_eval.baseline`.
"""

from __future__ import annotations

import argparse
import fnmatch
import math
from dataclasses import dataclass
from pathlib import Path

from rh_eval.baseline import update_baseline
from rh_eval.check_inputs import PLAIN_ROW, RunScores, load_scores
from rh_eval.leaderboard import Column
from rh_eval.paired_tests import paired_samples, paired_test
from rh_models.errors import RHError

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

