"""Per-sample file names, lm-eval's and ours, written and read in one place.

Usage::

    samples_name("rh_niah_paper")                          # "samples_rh_niah_paper.jsonl" (rh compare's)
    parse_samples_name("samples_rh_niah_paper_2025-01-01T00-00-00.123.jsonl")  # ("rh_niah_paper", "2025-...")
    samples_by_task(folder)                                # {"rh_niah_paper": [(date, path), ...]}

lm-eval's ``--log_samples`` writes ``samples_<task>_<date>.jsonl`` beside ``results_<date>.json``; ``rh compare``
writes one ``samples_<task>.jsonl`` per condition folder. The gate, the plots and the comparison all read both.
"""

from __future__ import annotations

import re
from pathlib import Path

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
