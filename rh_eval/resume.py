"""The resume guard: a re-run continues earlier work only if it asks for exactly the same thing.

Usage::

    record = resume_record(out_dir / "run.json", settings, "rh compare")   # JSON record: compare, demo
    journal = Journal(output.with_suffix(".tests.jsonl"), settings, "rh detect")  # append-only: detect
    journal.rows            # finished work, torn last line dropped (and said so)
    journal.append([row])   # one complete line per row, flushed to disk
    clear_outputs(folder, ["run.json", "conditions"])  # --force: start over

Why: ``rh detect``, ``rh compare`` and ``rh demo`` skip work an earlier run finished. Mixing the work of two
settings into one score file or leaderboard would be a silently wrong result, so every resumable command
stores the settings that define its result next to its work, and a re-run whose settings differ is refused in
one line naming the first difference (``--force`` starts over). The settings are a flat mapping in a fixed order
(readable keys first, fingerprints last) so that "the first difference" is the most telling one.

Runs are killed at any moment (SIGKILL, out of memory, a closed laptop). Whole files are written atomically
(:mod:`rh_models.atomic`); the one append-only file, the journal, can end in a half-written line, which is
detected, cut off with a message and redone, so a killed run resumes to the result of an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

from rh_models.atomic import write_text_atomic, write_json_atomic
from rh_models.errors import RHError
from rh_models.files import read_json

_MISSING = object()


def first_difference(previous: Mapping[str, Any], settings: Mapping[str, Any]) -> str | None:
    """``"key: was X, now Y"`` for the first setting (in ``settings``' order) that differs; None when equal."""
    keys = [*settings, *(key for key in previous if key not in settings)]
    for key in keys:
        was, now = previous.get(key, _MISSING), settings.get(key, _MISSING)
        if was != now:
            show = lambda value: "(not set)" if value is _MISSING else repr(value)  # noqa: E731
            return f"{key}: was {show(was)}, now {show(now)}"
    return None


def check_same(previous: Mapping[str, Any] | None, settings: Mapping[str, Any], where: Path, command: str) -> None:
    """Refuse to resume ``where`` when it was made with other settings (or with none recorded)."""
    settings = json.loads(json.dumps(settings))  # as it will be stored: a tuple compares equal to its list
    if previous is None:
        raise RHError(f"{where} records no settings, so {command} cannot tell what made it; "
                      f"pass --force to start over")
    difference = first_difference(previous, settings)
    if difference:
        raise RHError(f"{where} was made by {command} with other settings ({difference}); "
                      f"pass --force to start over, or use another output")


def resume_record(path: Path, settings: dict[str, Any], command: str,
                  not_yet_known: tuple[str, ...] = ()) -> dict[str, Any]:
    """The JSON record at ``path`` if its ``settings`` equal these; ``{"settings": settings}`` when there is none.

    ``not_yet_known``: stored settings this run cannot compute yet (e.g. the hash of a score file a detection
    will write); they are left out of the comparison, every other setting still counts.
    """
    if not path.exists():
        return {"settings": settings}
    record = read_json(path, "resume record")
    previous = record.get("settings") if isinstance(record, dict) else None
    if isinstance(previous, dict):
        previous = {key: value for key, value in previous.items() if key not in not_yet_known}
    check_same(previous if isinstance(previous, dict) else None, settings, path, command)
    return record


def clear_outputs(folder: Path, names: Iterable[str]) -> None:
    """``--force``: remove what a command wrote into ``folder`` (named files and folders only, nothing else)."""
    for name in names:
        path = Path(folder) / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


class Journal:
    """An append-only JSONL file of finished work; its first line holds the settings that define the work.

    Opening it creates it (header written atomically), or reads it back after checking the settings. A last
    line without its newline, or one that does not parse, is what a kill during ``append`` leaves: it is cut
    off the file (so the next append starts on a line of its own) and reported; a bad line elsewhere is a
    refusal, since that is not something an interruption can produce.
    """

    def __init__(self, path: str | Path, settings: dict[str, Any], command: str) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []
        if self.path.exists():
            self._read(settings, command)
        else:
            write_text_atomic(self.path, json.dumps({"settings": settings}) + "\n")

    def _read(self, settings: dict[str, Any], command: str) -> None:
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        complete, tail = lines[:-1], lines[-1]  # tail: bytes after the last newline (empty if none)
        parsed: list[Any] = []
        for number, line in enumerate(complete, 1):
            try:
                parsed.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError):
                if number == len(complete) and not tail:
                    tail = line  # the last line is torn even though a newline follows it
                    complete = complete[:-1]
                    break
                raise RHError(f"{self.path} line {number} is malformed; pass --force to start over") from None
        header = parsed[0] if parsed else None
        check_same(header.get("settings") if isinstance(header, dict) else None, settings, self.path, command)
        if tail:
            keep = sum(len(line) + 1 for line in complete)
            print(f"{command}: {self.path.name} ends in a half-written line (an interrupted run); dropped it, "
                  f"that work is redone", file=sys.stderr)
            with self.path.open("r+b") as handle:
                handle.truncate(keep)
        self.rows = [row for row in parsed[1:] if isinstance(row, dict)]

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Append complete lines and push them to disk: a later kill cannot take them back."""
        data = "".join(json.dumps(row) + "\n" for row in rows)
        with self.path.open("a") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())


def settle(path: Path, key: str, value: Any, command: str) -> None:
    """A setting known only once the work starts (a loaded model's dtype, device, attention): recorded in the
    resume record at ``path`` the first time, refused when a later run finds it different."""
    record = read_json(path, "resume record")
    value = json.loads(json.dumps(value))
    settings = record.setdefault("settings", {})
    if key not in settings:
        settings[key] = value
        save_record(path, record)
        return
    difference = first_difference({key: settings[key]}, {key: value})
    if difference:
        raise RHError(f"{path} was made by {command} with other settings ({difference}); "
                      f"pass --force to start over, or use another output")


def save_record(path: Path, record: dict[str, Any]) -> None:
    """Write a resume record atomically (the counterpart of :func:`resume_record`)."""
    write_json_atomic(path, record, indent=2)
