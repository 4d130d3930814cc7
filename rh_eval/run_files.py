"""lm-eval's output files and ours (results JSON, samples JSONL): named, found and read in one place.

Usage::

    samples_name("rh_niah_paper")                          # "samples_rh_niah_paper.jsonl" (rh compare's)
    parse_samples_name("samples_rh_niah_paper_2025-01-01T00-00-00.123.jsonl")  # ("rh_niah_paper", "2025-...")
    samples_by_task(folder)                                # {"rh_niah_paper": [(date, path), ...]}
    results_files(folder)                                  # every results_<date>.json under folder, oldest first
    newest_results(folder)                                 # the newest results_<date>.json under folder, or None
    pick_samples(samples_by_task(folder), "rh_niah_paper", folder)   # the newest run's file of that task
    run_samples(folder, "rh_niah_paper", date)             # that task's file from the run of results_<date>.json
    read_jsonl(path, "samples file")                       # one clear line when unreadable (JSON: rh_models.files)

lm-eval's ``--log_samples`` writes ``samples_<task>_<date>.jsonl`` beside ``results_<date>.json``; ``rh compare``
writes one ``samples_<task>.jsonl`` per condition folder. The gate, the plots and the comparison all read both,
through this module, with one rule for "the newest run": the latest date in the file names (lm-eval's dates sort
as text); undated files are ours, one per condition, and several of them are never chosen between silently. The
samples of one run are those carrying its results file's date; a results file renamed without its date pairs with
the only lm-eval run beside it, or with none when there are several.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rh_models.errors import RHError

RUN_FILE = "run.json"  # rh compare's resume record: the settings, and the runs that did work (rh_eval.provenance)
DEMO_FILE = "demo.json"  # rh demo's: its detection settings, timings, runs and shape checks
DETECTED_SCORES = "head_scores.json"  # where rh compare / rh demo put the detection they ran themselves
DATE_ID = r"\d{4}-\d{2}-\d{2}T[0-9.\-:]+"
_NAME = re.compile(rf"^samples_(?P<task>.+?)(?:_(?P<date>{DATE_ID}))?\.jsonl$")
RESULTS_NAME = re.compile(rf"^results_(?P<date>{DATE_ID})\.json$")


def samples_name(task: str, date: str | None = None) -> str:
    return f"samples_{task}_{date}.jsonl" if date else f"samples_{task}.jsonl"


def parse_samples_name(name: str) -> tuple[str, str | None] | None:
    """``(task, date)`` of a samples file name (``date`` None for ours), or None for any other name."""
    match = _NAME.match(name)
    return (match["task"], match["date"]) if match else None


def samples_by_task(folder: Path, recursive: bool = False) -> dict[str, list[tuple[str, Path]]]:
    """Task -> its samples files as ``(date or "", path)``, oldest first."""
    found: dict[str, list[tuple[str, Path]]] = {}
    for path in sorted(folder.rglob("samples_*.jsonl") if recursive else folder.glob("samples_*.jsonl")):
        parsed = parse_samples_name(path.name)
        if parsed:
            found.setdefault(parsed[0], []).append((parsed[1] or "", path))
    return {task: sorted(files) for task, files in found.items()}


def results_files(folder: Path) -> list[Path]:
    """Every lm-eval ``results_<date>.json`` anywhere under ``folder``, oldest run first."""
    found = [(match["date"], path) for path in Path(folder).rglob("results_*.json")
             if (match := RESULTS_NAME.match(path.name))]
    return [path for _, path in sorted(found)]


def newest_results(folder: Path) -> Path | None:
    """The newest lm-eval ``results_<date>.json`` anywhere under ``folder`` (None when there is none)."""
    found = results_files(folder)
    return found[-1] if found else None


def pick_samples(by_task: Mapping[str, list[tuple[str, Path]]], task: str | None, where: Path,
                 prefix: str = "rh_niah") -> Path:
    """The samples file of ``task`` (or of the only task starting with ``prefix``) in ``by_task``: the newest run's.

    lm-eval's files carry their run's date: the newest run wins. ``rh compare`` / ``rh demo`` write one undated
    ``samples_<task>.jsonl`` per condition folder: several of those are different conditions, never a choice
    to make silently.
    """
    if task is not None:
        if task not in by_task:
            raise RHError(f"no samples of task {task!r} in {where} (found: {', '.join(sorted(by_task)) or 'none'})")
        runs = by_task[task]
    else:
        matching = {name: runs for name, runs in by_task.items() if name.startswith(prefix)} or dict(by_task)
        if len(matching) != 1:
            found = ", ".join(sorted(matching)) or "no samples_*.jsonl files"
            raise RHError(f"{where} holds {found}; choose one with --task (run lm-eval with --log_samples for samples)")
        [(task, runs)] = matching.items()
    if len(runs) > 1 and not all(date for date, _ in runs):
        folders = ", ".join(str(path.parent.relative_to(where)) for _, path in runs)
        raise RHError(f"{where} holds {len(runs)} samples files of {task} (in {folders}); "
                      f"give one condition's folder or file")
    return max(runs)[1]


def run_samples(folder: Path, task: str, date: str | None) -> Path | None:
    """The samples file of ``task`` that one run left in ``folder``, or None when none can be told for sure.

    ``date`` names the run: lm-eval's ``results_<date>.json`` pairs with ``samples_<task>_<date>.jsonl``; None
    stands for ours (``samples_<task>.jsonl``); "" for a results file renamed without its date, which pairs with
    the folder's lm-eval run of ``task`` only when there is one (of several, which one wrote it is unknown).
    """
    if date is None or date:
        path = Path(folder) / samples_name(task, date)
        return path if path.is_file() else None
    dated = [path for run_date, path in samples_by_task(Path(folder)).get(task, []) if run_date]
    return dated[0] if len(dated) == 1 else None


def read_jsonl(path: str | Path, what: str = "samples file") -> list[dict[str, Any]]:
    """Every line of a JSONL file (blank lines skipped), or one :class:`RHError` line naming the file."""
    try:
        return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RHError(f"cannot read {what} {path}: {exc}") from None
