"""What ``rh check`` reads: a leaderboard or an lm-eval results file, as metric values plus their samples.

Usage::

    scores = load_scores("out/leaderboard.json")          # or an lm-eval results_<date>.json, or a folder
    scores.values[("full", "rh_niah/score,none")]         # one metric of one row
    scores.samples["full"][0].path("rh_niah")             # that row's per-sample file of a task, or None
    row_doc_means(scores, "random@8", Column.parse("rh_niah/score,none"))   # {doc_id: DocScore} (seeds averaged)

Both sides of a check come through here: our ``leaderboard.json`` (one row per condition, each condition with a
folder of ``samples_<task>.jsonl``) and a plain ``lm_eval --output_path`` results file (one row, ``lm-eval``,
whose samples lie beside it with its date). A baseline written by ``rh check --update-baseline`` keeps its
samples in ``<baseline stem>.samples/`` (:func:`sidecar_dir`). Which file is whose is decided by
:mod:`rh_eval.run_files`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from rh_eval.doc_scores import DocScore, DocScores, doc_means, sample_scores
from rh_eval.leaderboard import FORMAT, Column, Leaderboard, higher_is_better, metric_values, random_counterpart
from rh_eval.run_files import RESULTS_NAME, read_jsonl, results_files, run_samples
from rh_models.errors import RHError
from rh_models.files import read_json, require_file

PLAIN_ROW = "lm-eval"  # the single row of a plain lm-eval results file; it matches a leaderboard's "full"


@dataclass
class SampleSource:
    """Where one condition's per-sample files are: ``folder/samples_<task>.jsonl`` or lm-eval's naming."""

    tag: str  # pairs conditions across runs: the random seed, or "" for unseeded conditions
    folder: Path | None  # None: this condition has no per-sample files
    date_id: str | None = None  # lm-eval's ``samples_<task>_<date_id>.jsonl``; None for ours, "" when unknown

    def path(self, task: str) -> Path | None:
        return None if self.folder is None else run_samples(self.folder, task, self.date_id)


@dataclass
class RunScores:
    """One side of a check: metric values per (row, column id) and where its per-sample files are."""

    path: Path
    kind: str  # "leaderboard" or "lm-eval"
    values: dict[tuple[str, str], float]
    higher_is_better: dict[str, bool | None]
    samples: dict[str, list[SampleSource]] = field(default_factory=dict)  # row -> its conditions' sources
    raw: dict[str, Any] = field(default_factory=dict)
    full_row: str | None = None  # the unmasked row: "full" of a leaderboard, the only row of an lm-eval file
    counterparts: dict[str, str] = field(default_factory=dict)  # retrieval row -> its random control's row

    @property
    def rows(self) -> list[str]:
        return list(dict.fromkeys(row for row, _ in self.values))


def resolve_input(path: str | Path, what: str) -> Path:
    """A JSON file as given, or inside a folder: its ``leaderboard.json``, else the newest lm-eval results file."""
    path = Path(path)
    if path.is_dir():
        if (path / "leaderboard.json").is_file():
            return path / "leaderboard.json"
        found = results_files(path)
        if not found:
            raise RHError(f"{what} folder {path} has no leaderboard.json and no lm-eval results_*.json")
        if len(found) > 1:
            print(f"rh check: {what}: {len(found)} results files under {path}; using the newest, {found[-1]}",
                  file=sys.stderr)
        return found[-1]
    return require_file(path, what)


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
        full = next((row.name for row in board.rows if row.kind == "full"), None)
        counterparts = {row.name: other.name for row in board.rows
                        if (other := random_counterpart(row, board.rows)) is not None}
        scores = RunScores(path, "leaderboard", values, dict(board.higher_is_better), samples, data, full, counterparts)
    elif isinstance(data, dict) and isinstance(data.get("results"), dict):
        values = {(PLAIN_ROW, column.id): value for column, value in metric_values(data["results"]).items()}
        flags = data.get("higher_is_better")
        higher = {column_id: higher_is_better(flags, Column.parse(column_id)) for _, column_id in values}
        scores = RunScores(path, "lm-eval", values, higher, {PLAIN_ROW: [_plain_source(path)]}, data, PLAIN_ROW)
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
    """Where a baseline keeps its compact per-sample files: ``<baseline stem>.samples/`` beside it."""
    return baseline.with_name(f"{baseline.stem}.samples")


@lru_cache(maxsize=256)
def _task_scores(path: Path, task: str, modified: float) -> dict[str, DocScores]:
    """One samples file's per-document scores (cached: a check reads each file once per metric it compares)."""
    return sample_scores(read_jsonl(path), task)


def row_doc_means(scores: RunScores, row: str, column: Column) -> dict[int, DocScore] | None:
    """A row's per-document scores of one metric, a document's seeds averaged; None without per-sample files."""
    per_seed: list[DocScores] = []
    for source in scores.samples.get(row, []):
        path = source.path(column.task)
        if path is None:
            return None
        try:
            found = _task_scores(path, column.task, path.stat().st_mtime).get(column.id)
        except RHError:
            return None
        if not found:
            return None
        per_seed.append(found)
    if not per_seed:
        return None
    try:
        return doc_means(per_seed, f"{row} {column.id}")
    except RHError:
        return None
