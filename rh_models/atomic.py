"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never half of one.

Usage::

    write_text_atomic("out/leaderboard.md", text)
    write_json_atomic("out/scores.json", {"0-0": [0.1]})
    with atomic_path("out/plot.png") as tmp:      # for writers that want a file name (matplotlib)
        figure.savefig(tmp)

Why one module: every output of rh-eval (score files, results, leaderboards, plots, resume records) is written
this way, and long runs are interrupted; one implementation keeps the temporary-file and clean-up rules the same.

Why the two ``fsync`` calls: a rename is atomic for a *running* system, but after a power cut the file system may
have committed the rename before the data (an empty or truncated file under the final name), or neither. Syncing
the temporary file before the rename makes its contents durable first; syncing the directory after it makes the
rename itself durable. Only then does "resume after a crash" find the old file or the whole new one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix); moved onto ``path`` if the block succeeds, else removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix or ".tmp", dir=path.parent)
    os.close(handle)
    try:
        yield Path(tmp)
        _fsync(tmp)  # the data reaches the disk before the name points at it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync(path.parent, directory=True)  # the rename itself survives a power cut


def _fsync(path: str | Path, directory: bool = False) -> None:
    """Flush ``path`` (a file written by anyone, or a directory's entries) to the disk."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | Path, payload: object, indent: int = 1) -> Path:
    return write_text_atomic(path, json.dumps(payload, indent=indent) + "\n")
