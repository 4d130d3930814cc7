"""Run an ``rh`` command and SIGKILL it at a chosen point: a kill at a known place, for the resume tests.

Usage::

    python tests/fault_driver.py POINT N rh-args...

    replace:GLOB   the N-th atomic write onto a file whose name matches GLOB: the temporary file is cut to half
                   its bytes, then the process is killed before the rename (a kill during a file write)
    append         the N-th journal append (``rh detect``'s finished tests): half its bytes reach the file, then kill
    after-append   right after the N-th journal append is on disk (a kill between two units of work)

Why SIGKILL of the process itself: nothing runs after it (no ``finally``, no atexit, no flush), which is what an
out-of-memory kill or a pulled plug leaves; patching only the point of death keeps every other line the real code.
"""

from __future__ import annotations

import fnmatch
import json
import os
import signal
import sys
from pathlib import Path

_calls = 0


def _nth(n: int) -> bool:
    global _calls
    _calls += 1
    return _calls == n


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str, n: int) -> None:
    if point.startswith("replace:"):
        pattern, real_replace = point.split(":", 1)[1], os.replace

        def replace(src, dst, *args, **kwargs):
            if fnmatch.fnmatch(Path(dst).name, pattern) and _nth(n):
                data = Path(src).read_bytes()
                Path(src).write_bytes(data[: len(data) // 2])
                _die()
            return real_replace(src, dst, *args, **kwargs)

        os.replace = replace
    elif point in ("append", "after-append"):
        from rh_eval.resume import Journal

        real_append = Journal.append

        def append(self, rows):
            if not _nth(n):
                return real_append(self, rows)
            if point == "after-append":
                real_append(self, rows)
            else:
                data = "".join(json.dumps(row) + "\n" for row in rows)
                with self.path.open("a") as handle:
                    handle.write(data[: len(data) // 2])
            _die()

        Journal.append = append
    else:
        raise SystemExit(f"unknown fault point {point!r}")


if __name__ == "__main__":
    arm(sys.argv[1], int(sys.argv[2]))
    from rh_eval.cli import main

    sys.exit(main(sys.argv[3:]))
