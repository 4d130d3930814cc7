"""Leaderboard of masking conditions: full vs retrieval@K vs random@K, with intervals, changes and paired tests.

Usage::

    from rh_eval.leaderboard import ConditionResult, build_leaderboard, write_leaderboard
    conditions = [ConditionResult.from_dir(d) for d in sorted(Path("out/conditions").iterdir())]
    board = build_leaderboard(conditions)
    paths = write_leaderboard(board, "out", overwrite=True)   # leaderboard.{md,csv,html,tex,json}
    print(board.markdown())

Why: the paper's claim is comparative. Masking the top-K retrieval heads should hurt far more than masking K
random heads, and random draws vary a lot, so one random seed proves nothing. Every cell rests on N documents
(random@K rows also on S seeds) and gets a 95 % interval that resamples both (:mod:`rh_eval.statistics`); every
cell shows how far it moved from the unmasked model; and rows are compared on the same documents by paired
tests (each row against ``full``, each retrieval row against its random control). The JSON twin keeps
everything a gate or a later analysis needs: per-seed values, intervals, tests and the exact heads of every
condition.

A *condition* is one lm-eval run with one mask: its record (``name``, ``kind`` = full/retrieval/random,
``k``, ``seed``, ``heads``, ``method``, ``scope``) plus the ``results`` mapping of ``simple_evaluate``.
KV-budget conditions (``rh compare --kv-budgets``) have kinds streaming/retrieval-kv/random-kv, a ``share`` (the
percentage of heads that keep the full context) and the measured ``kv_budget``; their rows show it in a column.
A comparison of several rankings (``rh compare --rankings``, :mod:`rh_eval.rankings`) gives its retrieval and
retrieval-kv conditions a ``ranking``: the rows are named after it (``copy@8``, ``copy-kv@10%``), each is tested
against the random control like a retrieval row, and the rankings of one K (or share) against each other.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from rh_eval.doc_scores import DocScores, paired_documents, read_doc_scores, seed_table
from rh_eval.statistics import BINOMIAL, CONFIDENCE, CONSTANT, Interval, paired_test, score_interval
from rh_models.atomic import write_text_atomic
from rh_models.errors import RHError
from rh_models.files import read_json

FORMAT = "rh-eval-leaderboard"
FORMAT_VERSION = 2  # 2: intervals over documents (and seeds) with their method, paired tests
MASK_KINDS = ("full", "retrieval", "random")
KV_KINDS = ("streaming", "retrieval-kv", "random-kv")
KINDS = MASK_KINDS + KV_KINDS
SEEDED_KINDS = ("random", "random-kv")  # rows that average over random draws
RANKED_KINDS = ("retrieval", "retrieval-kv")  # rows that take a ranking's name under rh compare --rankings
METHODS = ("zero", "uniform", "mean")  # rows of one K, several ablation methods: in this order
EXTENSIONS = ("md", "csv", "html", "tex", "json")
_NOT_METRICS = {"alias", "name", "sample_len", "sample_count", "samples"}


# ----------------------------------------------------------------------------------------------- helpers


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ------------------------------------------------------------------------------------------------ inputs


@dataclass(frozen=True, order=True)
class Column:
    """One task/metric/filter cell of lm-eval's ``results``; ``id`` is ``task/metric,filter``."""

    task: str
    metric: str
    filter: str = "none"

    @property
    def id(self) -> str:
        return f"{self.task}/{self.metric},{self.filter}"

    @property
    def label(self) -> str:
        return f"{self.task} {self.metric}" + ("" if self.filter == "none" else f" ({self.filter})")

    @classmethod
    def parse(cls, column_id: str) -> "Column":
        task, _, rest = column_id.rpartition("/")
        metric, _, filt = rest.partition(",")
        if not task or not metric:
            raise RHError(f"bad column id {column_id!r}: expected task/metric,filter")
        return cls(task, metric, filt or "none")


def metric_values(results: dict[str, dict[str, Any]]) -> dict[Column, float]:
    """Every numeric metric of an lm-eval ``results`` mapping, without stderrs, aliases and counts."""
    values: dict[Column, float] = {}
    for task, metrics in results.items():
        if not isinstance(metrics, dict):
            continue
        for key, value in metrics.items():
            metric, _, filt = key.partition(",")
            if key in _NOT_METRICS or metric.endswith("_stderr") or not is_number(value):
                continue
            values[Column(task, metric, filt or "none")] = float(value)
    return values


def higher_is_better(flags: Any, column: Column) -> bool | None:
    """lm-eval's ``higher_is_better`` (``{task: {metric: bool}}``) for one column; None when it does not say."""
    task_flags = flags.get(column.task) if isinstance(flags, dict) else None
    flag = task_flags.get(column.metric) if isinstance(task_flags, dict) else None
    return flag if isinstance(flag, bool) else None


@dataclass
class ConditionResult:
    """One evaluated condition: its record (mask and heads) and lm-eval's output for it."""

    record: dict[str, Any]
    results: dict[str, dict[str, Any]]
    higher_is_better: dict[str, dict[str, bool]] = field(default_factory=dict)
    samples_dir: str | None = None  # relative to the leaderboard's folder, for the gate's paired test
    docs: dict[str, DocScores] = field(default_factory=dict)  # column id -> per-document scores (from samples)

    @property
    def name(self) -> str:
        return str(self.record["name"])

    @property
    def row_name(self) -> str:
        record = self.record
        return row_name(record["kind"], record["k"], record.get("share"),
                        record.get("method") if record.get("method_in_name") else None, record.get("ranking"))

    @classmethod
    def from_dir(cls, path: str | Path, root: str | Path | None = None) -> "ConditionResult":
        """Read ``condition.json`` and ``results.json`` written by ``rh compare`` into ``path``."""
        path = Path(path)
        record = read_json(path / "condition.json", "condition record")
        output = read_json(path / "results.json", "condition results")
        check_record(record, str(path / "condition.json"))
        if not isinstance(output, dict) or not isinstance(output.get("results"), dict):
            raise RHError(f"{path / 'results.json'} has no lm-eval 'results' mapping")
        relative = os.path.relpath(path, root) if root is not None else str(path)
        return cls(record, output["results"], output.get("higher_is_better") or {}, relative, read_doc_scores(path))


def row_name(kind: str, k: int = 0, share: float | None = None, method: str | None = None,
             ranking: str | None = None) -> str:
    """The one naming of leaderboard rows: ``full``, ``streaming``, ``retrieval@8``, ``random@8``, ``retrieval@8
    (mean)`` (``method``: on boards of several ablation methods), ``retrieval-kv@10%``, ``random-kv@10%``; under
    ``rh compare --rankings`` a ranked row carries its ``ranking`` instead: ``copy@8``, ``copy-kv@10%``.
    The conditions behind a row are named by :func:`condition_name`."""
    if kind in ("full", "streaming"):
        return kind
    size = f"@{share_text(share)}" if kind in KV_KINDS else f"@{k}" + ("" if method is None else f" ({method})")
    if ranking is not None and kind in RANKED_KINDS:
        kind = ranking if kind == "retrieval" else f"{ranking}-kv"
    return kind + size


def condition_name(kind: str, k: int = 0, share: float | None = None, method: str | None = None,
                   seed: int | None = None, ranking: str | None = None) -> str:
    """A condition's name (its folder under ``conditions/``): its row's kind (or ranking) and size, then
    ``-seedS`` and ``-method``: ``random@8-seed0``, ``retrieval@8-mean``, ``random-kv@10%-seed1``, ``copy@8``;
    ``full`` and ``streaming``."""
    if kind in ("full", "streaming"):
        return kind
    return (row_name(kind, k, share, ranking=ranking) + ("" if seed is None else f"-seed{seed}")
            + ("" if method is None else f"-{method}"))


def share_text(share: Any) -> str:
    """``10`` -> ``"10%"``, ``12.5`` -> ``"12.5%"``: how a KV condition names its share of full heads."""
    if not is_number(share):
        raise RHError(f"a KV condition needs a numeric share of heads, got {share!r}")
    return f"{float(share):g}%"


def check_record(record: object, where: str) -> None:
    """Reject a condition record that lacks what the leaderboard groups and reports by."""
    if not isinstance(record, dict):
        raise RHError(f"{where}: a condition record must be a JSON object")
    missing = [key for key in ("name", "kind", "k", "heads") if key not in record]
    if missing:
        raise RHError(f"{where}: condition record lacks {', '.join(missing)}")
    if record["kind"] not in KINDS:
        raise RHError(f"{where}: kind {record['kind']!r} is not one of {', '.join(KINDS)}")


# ----------------------------------------------------------------------------------------------- the table


@dataclass
class Row:
    """A leaderboard row: one condition, or every seed of random@K."""

    name: str
    kind: str
    k: int
    conditions: list[str]
    seeds: list[int | None]
    share: float | None = None  # KV rows: percentage of heads asked to keep the full context
    kv_budget: float | None = None  # share of key/value entries kept (mean over seeds); None: not measured
    method: str | None = None  # boards of several ablation methods: this row's (named in the row); else None
    ranking: str | None = None  # rh compare --rankings: the ranking a retrieval / retrieval-kv row ranks by

    def to_json(self) -> dict[str, Any]:
        """The row's fields; ``ranking`` only where there is one (boards without rankings: as before it)."""
        return {key: value for key, value in self.__dict__.items() if key != "ranking" or value is not None}


@dataclass
class Cell:
    value: float
    interval: tuple[float, float] | None
    drop: float | None  # full - value: positive when the score fell below the unmasked model's
    per_seed: dict[str, float]  # seed (as text; "none" for unseeded) -> value
    interval_method: str | None = None  # statistics.BOOTSTRAP/BINOMIAL/CONSTANT; None: no per-document samples
    n_docs: int | None = None  # documents the interval rests on


@dataclass(frozen=True)
class PairedTest:
    """``row`` against ``against`` on one column, paired by document (a document's seeds averaged first)."""

    row: str
    against: str
    column: str  # column id
    test: str  # "McNemar" or "permutation"
    n_docs: int
    effect: float  # mean(row) - mean(against) over the paired documents
    p_value: float


@dataclass
class Leaderboard:
    rows: list[Row]
    columns: list[Column]
    cells: dict[tuple[str, str], Cell]  # (row name, column id) -> cell
    higher_is_better: dict[str, bool | None]  # column id -> lm-eval's flag, None when unknown
    conditions: dict[str, dict[str, Any]]  # condition name -> record (+ samples_dir)
    confidence: float = CONFIDENCE
    tests: list[PairedTest] = field(default_factory=list)

    @property
    def has_kv(self) -> bool:
        """Whether any row is a KV-budget condition (the table then shows each row's budget)."""
        return any(row.kind in KV_KINDS for row in self.rows)

    def cell(self, row: str, column: str | Column) -> Cell | None:
        return self.cells.get((row, column.id if isinstance(column, Column) else column))

    # -- renderings -------------------------------------------------------------------------------------
    def display_matrix(self, ascii: bool = False) -> tuple[list[str], list[list[str]]]:
        """Headers and text cells: ``score [interval] (change vs full)``; ``ascii`` for LaTeX's \\verb."""
        headers = ["condition", "seeds"] + (["KV budget"] if self.has_kv else [])
        headers += [c.label if ascii else _with_arrow(c.label, self.higher_is_better.get(c.id)) for c in self.columns]
        matrix = []
        for row in self.rows:
            texts = [row.name, str(len(row.seeds)) if row.kind in SEEDED_KINDS else ""]
            if self.has_kv:
                texts.append(("-" if ascii else "–") if row.kv_budget is None else f"{100 * row.kv_budget:.1f} %")
            for column in self.columns:
                text = _cell_text(self.cell(row.name, column), row.kind == "full", ascii)
                texts.append(text.replace("−", "-").replace("–", "-") if ascii else text)
            matrix.append(texts)
        return headers, matrix

    def _writer(self, writer_class: type, ascii: bool = False, **kwargs: Any):
        from typepy import String

        headers, matrix = self.display_matrix(ascii)
        # all text: keeps "0.900" as written instead of re-formatting numbers column by column
        return writer_class(headers=headers, value_matrix=matrix, type_hints=[String] * len(headers), **kwargs)

    def markdown(self) -> str:
        from pytablewriter import MarkdownTableWriter

        writer = self._writer(MarkdownTableWriter, margin=1)
        tests = self.tests_markdown()
        return writer.dumps().rstrip() + "\n\n" + self.cells_note() + (f"\n{tests}" if tests else "")

    def cells_note(self) -> str:
        """What a cell's text means (interval, marks, arrows; KV budgets on boards that have them): under every table."""
        level = round(self.confidence * 100)
        note = (
            f"Cells: score [{level} % interval] (change vs full). Intervals resample the documents (and, for rows "
            "over several seeds, the seeds first): a percentile bootstrap, inside the metric's range. "
            f"{BINOMIAL_MARK}: every document scored the same, exact binomial interval; {CONSTANT_MARK}: every "
            "document scored the same (no interval). ↑/↓ in a header: higher/lower is better.\n"
        )
        if self.has_kv:
            note += ("KV budget: share of key/value entries kept against full attention (measured over the run; "
                     "rh-hf simulates the eviction with attention masks). @P%: the top P % of heads by retrieval "
                     "score (random-kv: P % drawn at random) keep the full context, every other head a sink and a "
                     "recent window.\n")
        rankings = list(dict.fromkeys(row.ranking for row in self.rows if row.ranking is not None))
        if rankings:
            note += (f"Rankings ({', '.join(rankings)}): <ranking>@K masks that ranking's top K heads, "
                     "<ranking>-kv@P% lets its top P % keep the full context; random@K masks K heads drawn from those "
                     "in no ranking's top K, random-kv@P% lets P % drawn from all heads keep it.\n")
        return note

    def tests_matrix(self) -> tuple[list[str], list[list[str]]]:
        """Headers and text cells of the paired tests: one line per comparison (row vs full, retrieval vs random,
        ranking vs ranking), one column per metric tested, ``effect, p``; no lines without tests."""
        pairs = list(dict.fromkeys((t.row, t.against) for t in self.tests))
        by_key = {(t.row, t.against, t.column): t for t in self.tests}
        columns = [c for c in self.columns if any((r, a, c.id) in by_key for r, a in pairs)]
        matrix = []
        for row, against in pairs:
            texts = [f"{row} vs {against}"]
            for column in columns:
                test = by_key.get((row, against, column.id))
                texts.append("–" if test is None else f"{test.effect:+.3f}, {_p_text(test.p_value)}")
            matrix.append(texts)
        return ["paired test (documents)"] + [c.label for c in columns], matrix

    def tests_markdown(self) -> str:
        """:meth:`tests_matrix` as a markdown table with its note ("" without tests)."""
        from pytablewriter import MarkdownTableWriter
        from typepy import String

        headers, matrix = self.tests_matrix()
        if not matrix:
            return ""
        writer = MarkdownTableWriter(headers=headers, value_matrix=matrix, margin=1, type_hints=[String] * len(headers))
        return writer.dumps().rstrip() + "\n\n" + TESTS_NOTE + "\n"

    def latex(self) -> str:
        """pytablewriter's math-mode ``array`` of ``\\verb`` cells (ASCII only, so pdflatex accepts it)."""
        from pytablewriter import LatexTableWriter

        return "% inside math mode, e.g. \\[ \\input{leaderboard.tex} \\]\n" + self._writer(LatexTableWriter, ascii=True).dumps()

    def html(self) -> str:
        from pytablewriter import HtmlTableWriter

        return self._writer(HtmlTableWriter, table_name="leaderboard").dumps()

    def csv(self) -> str:
        """Long format, one line per row x column, numbers only: easy to load anywhere."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(
            ["condition", "kind", "k", "n_seeds", "task", "metric", "filter", "value", "ci_low", "ci_high",
             "interval_method", "n_docs", "drop", "higher_is_better", "kv_budget", "p_vs_full", "p_vs_random"]
        )
        p_values = {(t.row, t.column, t.against): t.p_value for t in self.tests}
        for row in self.rows:
            random_row = random_counterpart(row, self.rows)
            for column in self.columns:
                cell = self.cell(row.name, column)
                if cell is None:
                    continue
                low, high = cell.interval if cell.interval else ("", "")
                writer.writerow(
                    [row.name, row.kind, row.k, len(row.seeds), column.task, column.metric, column.filter,
                     cell.value, low, high, cell.interval_method or "", "" if cell.n_docs is None else cell.n_docs,
                     "" if cell.drop is None else cell.drop,
                     _flag_text(self.higher_is_better.get(column.id)), "" if row.kv_budget is None else row.kv_budget,
                     p_values.get((row.name, column.id, "full"), ""),
                     p_values.get((row.name, column.id, random_row.name), "") if random_row else ""]
                )
        return buffer.getvalue()

    def to_json(self) -> dict[str, Any]:
        def per_row(getter) -> dict[str, dict[str, Any]]:
            return {
                row.name: {
                    column.id: getter(cell)
                    for column in self.columns
                    if (cell := self.cell(row.name, column)) is not None
                }
                for row in self.rows
            }

        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "confidence": self.confidence,
            "rows": [row.to_json() for row in self.rows],
            "columns": [
                {"id": c.id, "task": c.task, "metric": c.metric, "filter": c.filter,
                 "higher_is_better": self.higher_is_better.get(c.id)}
                for c in self.columns
            ],
            "values": per_row(lambda cell: cell.value),
            "intervals": per_row(lambda cell: list(cell.interval) if cell.interval else None),
            "interval_methods": per_row(lambda cell: cell.interval_method),
            "n_docs": per_row(lambda cell: cell.n_docs),
            "drops": per_row(lambda cell: cell.drop),
            "per_seed": per_row(lambda cell: cell.per_seed),
            "tests": [test.__dict__ for test in self.tests],
            "conditions": self.conditions,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "leaderboard") -> "Leaderboard":
        """Inverse of :meth:`to_json`; raises :class:`RHError` on anything malformed."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise RHError(f"{where} is not an rh-eval leaderboard (no \"format\": \"{FORMAT}\")")
        try:
            columns = [Column(c["task"], c["metric"], c["filter"]) for c in data["columns"]]
            rows = [Row(r["name"], r["kind"], int(r["k"]), list(r["conditions"]), list(r["seeds"]), r.get("share"),
                        r.get("kv_budget"), r.get("method"), r.get("ranking")) for r in data["rows"]]
            if any(row.kv_budget is not None and not is_number(row.kv_budget) for row in rows):
                raise RHError(f"{where}: a row's kv_budget is not a number")
            cells: dict[tuple[str, str], Cell] = {}
            for row in rows:
                for column_id, value in data["values"].get(row.name, {}).items():
                    if not is_number(value):
                        raise RHError(f"{where}: value of {row.name} {column_id} is not a number")
                    interval = data.get("intervals", {}).get(row.name, {}).get(column_id)
                    cells[(row.name, column_id)] = Cell(
                        float(value),
                        tuple(interval) if interval else None,
                        data.get("drops", {}).get(row.name, {}).get(column_id),
                        data.get("per_seed", {}).get(row.name, {}).get(column_id) or {},
                        (data.get("interval_methods") or {}).get(row.name, {}).get(column_id),
                        (data.get("n_docs") or {}).get(row.name, {}).get(column_id),
                    )
            higher = {c["id"]: c.get("higher_is_better") for c in data["columns"]}
            tests = [PairedTest(**test) for test in data.get("tests") or []]
            return cls(rows, columns, cells, higher, dict(data.get("conditions") or {}),
                       float(data.get("confidence", CONFIDENCE)), tests)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, RHError):
                raise
            raise RHError(f"{where} is a malformed rh-eval leaderboard ({type(exc).__name__}: {exc})") from None


def build_leaderboard(conditions: Iterable[ConditionResult], confidence: float = CONFIDENCE) -> Leaderboard:
    """Group conditions into rows (random@K over seeds); means, intervals over documents and seeds, changes vs
    full, and the paired tests (each row vs full, each retrieval row vs its random control, rankings vs each
    other)."""
    conditions = list(conditions)
    if not conditions:
        raise RHError("no conditions to build a leaderboard from")
    names = [c.name for c in conditions]
    if len(set(names)) != len(names):
        raise RHError(f"duplicate condition names: {sorted({n for n in names if names.count(n) > 1})}")

    groups: dict[str, list[ConditionResult]] = {}
    for condition in conditions:
        check_record(condition.record, f"condition {condition.name}")
        groups.setdefault(condition.row_name, []).append(condition)
    kind_order = {kind: i for i, kind in enumerate(KINDS)}

    method_order = {method: i for i, method in enumerate(METHODS)}

    def order(group: list[ConditionResult]) -> tuple:
        record = group[0].record
        is_kv = record["kind"] in KV_KINDS
        size = float(record.get("share") or 0) if is_kv else int(record["k"])
        method = method_order.get(record.get("method"), len(METHODS)) if record.get("method_in_name") else -1
        return is_kv, size, method, kind_order[record["kind"]]

    ordered = sorted(groups.values(), key=order)

    values = {c.name: metric_values(c.results) for c in conditions}
    columns = sorted({column for per in values.values() for column in per})
    higher: dict[str, bool | None] = {}
    for condition in conditions:
        for column in values[condition.name]:
            flag = higher_is_better(condition.higher_is_better, column)
            if flag is not None:
                higher.setdefault(column.id, flag)
    for column in columns:
        higher.setdefault(column.id, None)

    rows: list[Row] = []
    cells: dict[tuple[str, str], Cell] = {}
    for group in ordered:
        group.sort(key=lambda c: (c.record.get("seed") is None, c.record.get("seed") or 0, c.name))
        first = group[0].record
        budgets = [c.record.get("kv_budget") for c in group]
        row = Row(group[0].row_name, first["kind"], int(first["k"]), [c.name for c in group],
                  [c.record.get("seed") for c in group], first.get("share"),
                  sum(budgets) / len(budgets) if budgets and all(is_number(b) for b in budgets) else None,
                  first.get("method") if first.get("method_in_name") else None, first.get("ranking"))
        rows.append(row)
        for column in columns:
            per_seed = {
                str(c.record.get("seed")).lower(): values[c.name][column]
                for c in group
                if column in values[c.name]
            }
            if per_seed:
                mean = sum(per_seed.values()) / len(per_seed)
                found = _interval(group, column, confidence)
                cells[(row.name, column.id)] = Cell(
                    mean, found.bounds if found else None, None, per_seed,
                    found.method if found else None, found.n_docs if found else None)

    full = next((row for row in rows if row.kind == "full"), None)
    if full is not None:
        for (row_name, column_id), cell in cells.items():
            reference = cells.get((full.name, column_id))
            if reference is not None:
                cell.drop = reference.value - cell.value

    records = {
        c.name: {**c.record, "samples_dir": c.samples_dir} for c in conditions
    }
    tests = _paired_tests(rows, columns, {row.name: group for row, group in zip(rows, ordered)})
    return Leaderboard(rows, columns, cells, higher, records, confidence, tests)


def _doc_scores(group: list[ConditionResult], column: Column) -> list[DocScores] | None:
    """Each seed's per-document scores of a row on one column; None unless every condition logged them."""
    found = [c.docs.get(column.id) for c in group]
    return found if found and all(found) else None


def _interval(group: list[ConditionResult], column: Column, confidence: float) -> Interval | None:
    scores = _doc_scores(group, column)
    if scores is None:
        return None
    table, docs = seed_table(scores, f"{group[0].row_name} {column.id}")
    return score_interval(table, confidence) if docs else None


def random_counterpart(row: Row, rows: list[Row]) -> Row | None:
    """The random control of a retrieval row: random@K of the same K and method, random-kv@P% of the same share."""
    kind = {"retrieval": "random", "retrieval-kv": "random-kv"}.get(row.kind)
    return next((r for r in rows if r.kind == kind and r.k == row.k and r.share == row.share
                 and r.method == row.method), None) if kind else None


def ranking_pairs(rows: list[Row]) -> list[tuple[Row, Row]]:
    """Every two rankings' rows of the same kind, K (or share) and method, in board order (``copy@8`` vs
    ``attention@8``): the rankings compared with each other on the same documents. None without rankings."""
    ranked = [row for row in rows if row.kind in RANKED_KINDS and row.ranking is not None]
    return [(row, other) for i, row in enumerate(ranked) for other in ranked[i + 1:]
            if (other.kind, other.k, other.share, other.method) == (row.kind, row.k, row.share, row.method)]


def _paired_tests(rows: list[Row], columns: list[Column], groups: dict[str, list[ConditionResult]]) -> list[PairedTest]:
    full = next((row for row in rows if row.kind == "full"), None)
    pairs = [(row, full) for row in rows if full is not None and row is not full]
    pairs += [(row, other) for row in rows if (other := random_counterpart(row, rows)) is not None]
    pairs += ranking_pairs(rows)
    tests = []
    for row, against in pairs:
        for column in columns:
            mine, theirs = _doc_scores(groups[row.name], column), _doc_scores(groups[against.name], column)
            if mine is None or theirs is None:
                continue
            reference, scores = paired_documents(theirs, mine, f"{row.name} vs {against.name} {column.id}")
            if not len(scores):
                continue
            name, p_value = paired_test(reference, scores)
            tests.append(PairedTest(row.name, against.name, column.id, name, len(scores),
                                    float(np.mean(scores) - np.mean(reference)), p_value))
    return tests


# ------------------------------------------------------------------------------------------------ output


def headline_column(board: Leaderboard, task: str) -> Column | None:
    """A task's headline metric: its first higher-is-better column (unfiltered preferred)."""
    columns = [c for c in board.columns if c.task == task]
    columns.sort(key=lambda c: (board.higher_is_better.get(c.id) is not True, c.filter != "none", c.metric))
    return columns[0] if columns else None


def leaderboard_paths(out_dir: str | Path, stem: str = "leaderboard") -> dict[str, Path]:
    return {ext: Path(out_dir) / f"{stem}.{ext}" for ext in EXTENSIONS}


def write_leaderboard(
    board: Leaderboard, out_dir: str | Path, overwrite: bool = False, stem: str = "leaderboard"
) -> dict[str, Path]:
    """Write ``leaderboard.{md,csv,html,tex,json}`` atomically; refuse to replace files unless ``overwrite``."""
    paths = leaderboard_paths(out_dir, stem)
    existing = [p for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise RHError(f"{existing[0]} exists; refusing to overwrite it (pass overwrite=True to replace)")
    renderers = {
        "md": board.markdown,
        "csv": board.csv,
        "html": board.html,
        "tex": board.latex,
        "json": lambda: json.dumps(board.to_json(), indent=2, ensure_ascii=False) + "\n",
    }
    for ext, path in paths.items():
        write_text_atomic(path, renderers[ext]())
    return paths


TESTS_NOTE = ("Paired tests: change of the first row against the second and its two-sided p-value, on the documents "
              "both scored (a document's seeds averaged first): exact McNemar for 0/1 scores, a paired permutation "
              "test otherwise.")
BINOMIAL_MARK = "ᵇ"  # every document scored the same 0/1 value: the exact binomial interval
CONSTANT_MARK = "⁼"  # every document scored the same value: no interval


def interval_text(cell: Cell, digits: int = 2, ascii: bool = False) -> str:
    """``[low, high]`` of a cell (marked when all its documents scored the same); "" when it has none."""
    if cell.interval_method == CONSTANT:
        return "=" if ascii else CONSTANT_MARK
    if cell.interval is None:
        return ""
    mark = {BINOMIAL: "b" if ascii else BINOMIAL_MARK}.get(cell.interval_method, "")
    return f"[{cell.interval[0]:.{digits}f}, {cell.interval[1]:.{digits}f}]{mark}"


def value_text(cell: Cell, digits: int = 3, ascii: bool = False) -> str:
    """``0.900 [0.80, 0.95]``: a cell's value and its interval (:func:`interval_text`), as every table shows it."""
    spread = interval_text(cell, ascii=ascii)
    return f"{cell.value:.{digits}f}" + (f" {spread}" if spread else "")


def _cell_text(cell: Cell | None, is_full: bool, ascii: bool = False) -> str:
    if cell is None:
        return "–"
    text = value_text(cell, ascii=ascii)
    if cell.drop is not None and not is_full:
        text += f" ({0.0 - cell.drop:+.3f})".replace("-", "−")  # 0.0 - x: no "-0.000"
    return text


def _p_text(p_value: float) -> str:
    """``p=0.016`` or ``p<0.001``."""
    return "p<0.001" if p_value < 0.001 else f"p={p_value:.3f}"


def _with_arrow(label: str, higher_is_better: bool | None) -> str:
    return label + {True: " ↑", False: " ↓"}.get(higher_is_better, "")


def _flag_text(flag: bool | None) -> str:
    return "" if flag is None else str(flag).lower()

