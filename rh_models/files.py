"""Reading the files users hand us: a missing or malformed file is one line naming it, never a traceback.

Usage::

    require_file("scores.json", "head-score file")      # the Path; "head-score file scores.json does not exist"
    read_json("out/run.json", "resume record")           # the parsed value; "... is not valid JSON (...)"
    value, data = read_json_bytes("means.json", "head-means file")   # also the bytes read (to hash them)

Why one module: score files, head-means files, resume records, leaderboards and lm-eval's results are all read
before minutes of work, and each once had its own wording of "does not exist" and "is not valid JSON". The
writing side is :mod:`rh_models.atomic`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rh_models.errors import RHError


def require_file(path: str | Path, what: str) -> Path:
    """``path`` as a :class:`Path` if it is a file; else ``"<what> <path> does not exist"``."""
    path = Path(path)
    if not path.is_file():
        raise RHError(f"{what} {path} does not exist")
    return path


def read_json_bytes(path: str | Path, what: str = "file") -> tuple[Any, bytes]:
    """The parsed JSON (UTF-8) of a file and the bytes it was parsed from, read once."""
    data = require_file(path, what).read_bytes()
    try:
        return json.loads(data.decode("utf-8")), data
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RHError(f"{what} {path} is not valid JSON ({exc})") from None


def read_json(path: str | Path, what: str = "file") -> Any:
    """The parsed JSON of a file, or one :class:`RHError` line when it is missing or malformed."""
    return read_json_bytes(path, what)[0]
