"""``rh check --update-baseline``: a run written as the new baseline, with a compact copy of its samples.

Usage::

    path, replaced = update_baseline("out/leaderboard.json", "ci/baseline.json")

The baseline JSON is the run's own file (a leaderboard or an lm-eval results file, lm-eval's inline samples
dropped), written atomically. Beside it, ``<baseline stem>.samples/`` keeps each condition's per-sample scores --
doc ids, hashes and metric values, no documents -- so that later checks can still run the paired test; it is
swapped in whole, and a run without samples removes an old one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from rh_eval.check_inputs import PLAIN_ROW, SampleSource, load_scores, sidecar_dir
from rh_eval.doc_scores import as_score, is_other_cells_placeholder
from rh_eval.run_files import read_jsonl, samples_by_task, samples_name
from rh_models.atomic import write_text_atomic
from rh_models.errors import RHError


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
    """Ids, hash and the document's own metric values (a NIAH doc's placeholders for other cells left out)."""
    keep = {key: sample[key] for key in ("doc_id", "filter", "doc_hash") if key in sample}
    own = [m for m in sample.get("metrics") or [] if not is_other_cells_placeholder(sample.get("doc"), m)]
    if "metrics" in sample:
        keep["metrics"] = own
    for metric in own:
        value = sample.get(metric)
        if as_score(value) is not None:
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
