"""``rh check``: a CI gate that fails when a run no longer measures what its committed baseline measured.

Usage::

    rh check --results out/leaderboard.json --baseline ci/baseline.json --tolerance 0.02
    rh check --results lm-out/model/results_2025-01-01T00-00-00.json --baseline base.json --metric acc
    rh check --results out/leaderboard.json --baseline ci/baseline.json --allow-missing 'random@16*'
    rh check --update-baseline --results out/leaderboard.json --baseline ci/baseline.json   # deliberate

Why: a change to masking, recording or a model that silently changes what the tool measures is exactly what a
gate should catch, and the numbers come from lm-eval, so the gate reads both our ``leaderboard.json`` (every
condition row) and a plain ``lm_eval --output_path`` results file.

* The unmasked row (``full``, or a plain lm-eval file's only row) is judged by its value: a move in the bad
  direction (lm-eval's ``higher_is_better``; higher assumed when it does not say) by more than ``--tolerance``
  is a regression.
* Every masked row (retrieval, random, KV-budget, per-method rows) is judged by its **effect**: its change
  against the same run's ``full``. A mask that stopped working moves its row *up* to ``full``, which "higher is
  better" would call an improvement; here its effect shrinks to 0 and that is a regression, as is an effect that
  grew. The verdict the baseline had -- a retrieval row below its random control -- must still hold.
* A baseline row or metric the run lacks fails, unless ``--allow-missing PATTERN`` names it (globs over the row
  name, or ``row task/metric``): a gate cannot pass on what it did not see.

Small eval sets move by whole documents, so when per-sample files lie beside both sides, a paired test on the
documents both scored says whether a move is more than noise (:mod:`rh_eval.statistics`; a document's seeds are
averaged first; for masked rows the test is on the per-document effects). Exit codes: 0 within tolerance,
1 regression or missing, 2 unusable input.

Baselines are only written by ``--update-baseline`` (atomically). It also keeps a compact copy of the
per-sample scores in ``<baseline stem>.samples/`` so that later checks can still run the paired test.
What the gate reads is :mod:`rh_eval.check_inputs`; the baseline writer :mod:`rh_eval.baseline`.
"""

from __future__ import annotations

import argparse
import fnmatch
import math
from dataclasses import dataclass
from pathlib import Path

from rh_eval.baseline import update_baseline
from rh_eval.check_inputs import PLAIN_ROW, RunScores, load_scores, row_doc_means
from rh_eval.doc_scores import DocScore, DocScores, paired
from rh_eval.leaderboard import Column
from rh_eval.statistics import paired_test
from rh_models.errors import RHError

VALUE, EFFECT = "value", "effect"  # what a comparison judges: the row's score, or its change against full

# --------------------------------------------------------------------------------------------- comparing


@dataclass
class Comparison:
    row: str
    column: Column
    baseline: float | None
    run: float | None
    higher_is_better: bool | None
    tolerance: float
    measure: str = VALUE
    test: str = ""
    p_value: float | None = None

    @property
    def delta(self) -> float | None:
        return None if self.baseline is None or self.run is None else self.run - self.baseline

    @property
    def worse_by(self) -> float | None:
        """How far the run moved in the bad direction: for a value, against lm-eval's direction (negative when it
        improved); for an effect, in either direction (a mask's effect that shrinks or grows is a change)."""
        if self.delta is None:
            return None
        if self.measure == EFFECT:
            return abs(self.delta)
        return -self.delta if self.higher_is_better is not False else self.delta

    @property
    def status(self) -> str:
        if self.run is None:
            return "missing"
        if self.worse_by > self.tolerance + 1e-12:
            return "REGRESSION"
        if abs(self.delta) <= 1e-12:
            return "same"
        if self.measure == EFFECT:
            return "within tolerance"
        return "improved" if self.worse_by < 0 else "within tolerance"

    @property
    def failed(self) -> bool:
        return self.status in ("REGRESSION", "missing")

    def explain(self) -> str:
        """One line for a failed masked row: what happened to its effect."""
        what = f"{self.row} {self.column.label}"
        if self.run is None:
            return f"{what}: absent from the run"
        if self.measure != EFFECT:
            return f"{what}: {self.baseline:.4f} -> {self.run:.4f}"
        change = f"{what}: effect {_signed(self.baseline)} → {_signed(self.run)}"
        if abs(self.run) <= self.tolerance:
            return f"{change}: the mask no longer changes this score"
        if self.baseline * self.run < 0:
            return f"{change}: the mask now moves this score the other way"
        if abs(self.run) < abs(self.baseline):
            return f"{change}: the mask changes this score less than it did"
        return f"{change}: the mask changes this score more than it did"


@dataclass
class Verdict:
    """A retrieval row that was below (worse than) its random control in the baseline, and whether it still is."""

    row: str
    against: str
    column: Column
    baseline: tuple[float, float]  # (retrieval, random) in the baseline
    run: tuple[float, float] | None
    higher_is_better: bool | None

    @property
    def holds(self) -> bool:
        if self.run is None:
            return False
        retrieval, random = self.run
        return retrieval < random if self.higher_is_better is not False else retrieval > random

    def line(self) -> str:
        side = "below" if self.higher_is_better is not False else "above"
        now = "absent from the run" if self.run is None else f"now {self.run[0]:.4f} vs {self.run[1]:.4f}"
        return (f"{self.row} {self.column.label}: no longer {side} {self.against} "
                f"(baseline {self.baseline[0]:.4f} vs {self.baseline[1]:.4f}, {now})")


def _signed(value: float) -> str:
    return f"{value:+.2f}".replace("-", "−")


def metric_selected(column: Column, patterns: list[str]) -> bool:
    """True when any ``--metric`` pattern (glob) names the metric, ``metric,filter``, ``task/metric`` or the id."""
    if not patterns:
        return True
    names = (column.metric, f"{column.metric},{column.filter}", f"{column.task}/{column.metric}", column.id)
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns for name in names)


def allowed_missing(row: str, column: Column | None, patterns: list[str]) -> bool:
    """``--allow-missing``: a glob over the row name, or over ``row task/metric`` (``row task/metric,filter``)."""
    names = [row] if column is None else [row, f"{row} {column.task}/{column.metric}", f"{row} {column.id}"]
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns for name in names)


def row_pairs(run: RunScores, baseline: RunScores) -> list[tuple[str | None, str]]:
    """(run row or None when the run lacks it, baseline row). A plain lm-eval row stands for a leaderboard's
    ``full``, and then only that row is compared (a plain file has no masked rows)."""
    run_rows, base_rows = run.rows, baseline.rows
    if run.kind == "lm-eval" or baseline.kind == "lm-eval":
        pairs = [(row, row) for row in base_rows if row in run_rows]
        if not pairs:
            if run_rows == [PLAIN_ROW] and "full" in base_rows:
                pairs = [(PLAIN_ROW, "full")]
            elif base_rows == [PLAIN_ROW] and "full" in run_rows:
                pairs = [("full", PLAIN_ROW)]
        return pairs
    return [(row if row in run_rows else None, row) for row in base_rows]


def _effect(scores: RunScores, row: str | None, column_id: str) -> float | None:
    full = scores.full_row
    if row is None or full is None:
        return None
    value, reference = scores.values.get((row, column_id)), scores.values.get((full, column_id))
    return None if value is None or reference is None else value - reference


def _paired(run: RunScores, run_row: str, baseline: RunScores, base_row: str, column: Column,
            measure: str) -> tuple[str, float] | None:
    """The paired test of a comparison on the documents both sides scored (per-document effects for EFFECT)."""
    mine, theirs = row_doc_means(run, run_row, column), row_doc_means(baseline, base_row, column)
    if mine is None or theirs is None:
        return None
    if measure == EFFECT:
        run_full = row_doc_means(run, run.full_row, column) if run.full_row else None
        base_full = row_doc_means(baseline, baseline.full_row, column) if baseline.full_row else None
        if run_full is None or base_full is None:
            return None
        mine, theirs = _effects(mine, run_full), _effects(theirs, base_full)
    try:
        base_scores, run_scores = paired(theirs, mine, f"{run_row} {column.id}")
    except RHError:
        return None  # same doc ids, different documents: not the same eval set, nothing to pair
    if not len(run_scores):
        return None
    name, p_value = paired_test(base_scores, run_scores)
    return f"{name} n={len(run_scores)}", p_value


def _effects(scores: DocScores, full: DocScores) -> DocScores:
    """Each document's change against the same run's ``full`` (documents ``full`` did not score left out)."""
    return {d: DocScore(s.value - full[d].value, s.doc_hash) for d, s in scores.items() if d in full}


def compare_scores(
    run: RunScores,
    baseline: RunScores,
    tolerance: float,
    patterns: list[str] | None = None,
    allow_missing: list[str] | None = None,
) -> tuple[list[Comparison], list[Verdict]]:
    """Every baseline metric of every baseline row, judged by value (full) or effect (masked rows); and the
    baseline's retrieval-below-random verdicts, checked again on the run."""
    patterns, allow_missing = patterns or [], allow_missing or []
    comparisons: list[Comparison] = []
    for run_row, base_row in row_pairs(run, baseline):
        masked = baseline.kind == "leaderboard" and base_row != baseline.full_row
        for (row, column_id), base_value in baseline.values.items():
            column = Column.parse(column_id)
            if row != base_row or not metric_selected(column, patterns):
                continue
            present = run_row is not None and (run_row, column_id) in run.values
            if not present and allowed_missing(base_row, column, allow_missing):
                continue
            flag = baseline.higher_is_better.get(column_id)
            if flag is None:
                flag = run.higher_is_better.get(column_id)
            if masked:
                item = Comparison(base_row, column, _effect(baseline, base_row, column_id),
                                  _effect(run, run_row, column_id), flag, tolerance, EFFECT)
                if item.baseline is None:  # an effect needs full: never fall back to "higher is better"
                    raise RHError(f"baseline {baseline.path} has no full value of {column_id} to measure "
                                  f"{base_row}'s effect against; rewrite it with rh check --update-baseline")
            else:
                item = Comparison(base_row, column, base_value, run.values.get((run_row, column_id)) if run_row else None,
                                  flag, tolerance)
            if item.run is not None:
                tested = _paired(run, run_row, baseline, base_row, column, item.measure)
                if tested is not None:
                    item.test, item.p_value = tested
            comparisons.append(item)
    plain = "lm-eval" in (run.kind, baseline.kind)
    if not comparisons or (plain and all(c.run is None for c in comparisons)):
        what = f" matching --metric {' '.join(patterns)}" if patterns else ""
        wanted = sorted({c.column.id for c in comparisons})
        raise RHError(
            f"nothing in common{what}: rows {run.rows} of {run.path} vs rows {baseline.rows} of {baseline.path}"
            + (f"; metrics wanted: {', '.join(wanted[:5])}" if wanted else "")
        )
    return comparisons, verdicts(run, baseline, patterns, allow_missing)


def verdicts(run: RunScores, baseline: RunScores, patterns: list[str], allow_missing: list[str]) -> list[Verdict]:
    """Each (retrieval row, random control, metric) where the baseline had retrieval worse than random (none when
    either side is a plain lm-eval file: it has one row, the unmasked model)."""
    found = []
    if "lm-eval" in (run.kind, baseline.kind):
        return found
    for row, against in baseline.counterparts.items():
        for (name, column_id), value in baseline.values.items():
            column = Column.parse(column_id)
            other = baseline.values.get((against, column_id))
            if name != row or other is None or not metric_selected(column, patterns):
                continue
            flag = baseline.higher_is_better.get(column_id)
            worse = value < other if flag is not False else value > other
            if not worse or allowed_missing(row, column, allow_missing) or allowed_missing(against, column, allow_missing):
                continue
            now = (run.values.get((row, column_id)), run.values.get((against, column_id)))
            found.append(Verdict(row, against, column, (value, other), None if None in now else now, flag))
    return found


def comparison_table(comparisons: list[Comparison]) -> str:
    """Markdown table of the metrics that moved (or vanished)."""
    from pytablewriter import MarkdownTableWriter
    from typepy import String

    headers = ["condition", "task", "metric", "filter", "judged by", "baseline", "run", "Δ", "paired test", "p",
               "status"]
    matrix = []
    for c in comparisons:
        if c.status == "same":
            continue
        judged = ("effect vs full" if c.measure == EFFECT else
                  {True: "higher", False: "lower"}.get(c.higher_is_better, "higher (assumed)"))
        matrix.append([
            c.row, c.column.task, c.column.metric, c.column.filter, judged,
            "–" if c.baseline is None else f"{c.baseline:.4f}", "–" if c.run is None else f"{c.run:.4f}",
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
    parser.add_argument("--tolerance", type=float, default=0.02,
                        help="largest allowed move, absolute: a drop of full, any change of a masked row's effect "
                             "(default 0.02)")
    parser.add_argument(
        "--metric", nargs="+", action="extend", default=[], metavar="PATTERN",
        help="only these metrics (globs; metric, metric,filter, task/metric or task/metric,filter), "
        "e.g. --metric acc 'rh_niah/*'",
    )
    parser.add_argument(
        "--allow-missing", nargs="+", action="extend", default=[], metavar="PATTERN",
        help="baseline rows or metrics the run may lack (globs over 'row' or 'row task/metric'), "
        "e.g. --allow-missing 'random@16*'",
    )
    parser.add_argument(
        "--update-baseline", action="store_true",
        help="write --results as the new baseline (replacing the old one) instead of checking",
    )


def run(args: argparse.Namespace) -> int:
    if not math.isfinite(args.tolerance) or args.tolerance < 0:
        raise RHError(f"--tolerance must be a non-negative number, got {args.tolerance}")
    patterns = [p.strip() for p in args.metric if p.strip()]
    allow_missing = [p.strip() for p in args.allow_missing if p.strip()]

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
    comparisons, checked = compare_scores(run_scores, base_scores, args.tolerance, patterns, allow_missing)

    table = comparison_table(comparisons)
    failed = [c for c in comparisons if c.failed]
    lost = [v for v in checked if not v.holds]
    if table:
        print(table)
    for item in failed:
        print(f"rh check: {item.explain()}")
    for verdict in lost:
        print(f"rh check: verdict lost: {verdict.line()}")
    if failed or lost:
        print(
            f"rh check: FAIL: {len(failed)} of {len(comparisons)} metrics moved by more than {args.tolerance} "
            f"or are missing, {len(lost)} of {len(checked)} retrieval-below-random verdicts lost, vs {base_scores.path}"
        )
        return 1
    print(f"rh check: OK: {len(comparisons)} metrics within {args.tolerance} of {base_scores.path}"
          + (f"; {len(checked)} retrieval-below-random verdicts hold" if checked else ""))
    return 0
