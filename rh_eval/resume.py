"""The resume guard: a re-run continues an output folder only if it asks for the same thing.

Usage::

    record = resume_record(out_dir / "run.json", settings, "a run with other settings")
    ...  # record == {"settings": settings} for a new folder, else what the earlier run saved

Why: ``rh compare`` and ``rh demo`` skip what a folder already holds. Mixing conditions of two settings into
one leaderboard would be a silently wrong table, so any difference is refused, naming each changed setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rh_eval.leaderboard import read_json
from rh_models.errors import RHError


def resume_record(path: Path, settings: dict[str, Any], holds: str) -> dict[str, Any]:
    """The JSON record at ``path`` if its ``settings`` equal these; ``{"settings": settings}`` when there is none."""
    if not path.exists():
        return {"settings": settings}
    record = read_json(path, "resume record")
    previous = record.get("settings", {}) if isinstance(record, dict) else {}
    differ = sorted(key for key in set(settings) | set(previous) if settings.get(key) != previous.get(key))
    if differ:
        details = "; ".join(f"{key}: was {previous.get(key)!r}, now {settings.get(key)!r}" for key in differ)
        raise RHError(f"{path.parent} holds {holds} ({details}); use another --output-dir")
    return record
