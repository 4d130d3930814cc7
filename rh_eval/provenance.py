"""Where and how a run happened: its command line, start and wall time, and the machine, for the report's record.

Usage::

    started = time.time()
    ...                                          # the work
    entry = run_entry(started)                   # {"command": "rh compare ...", "started": "2026-12-07T19:14:03+00:00",
                                                 #  "seconds": 261.4, "machine": {"cpu": ..., "gpus": [...], ...}}
    record.setdefault("runs", []).append(entry)  # rh compare: run.json; rh demo: demo.json

Why: a number in a shared report is only as good as what can be said about the run behind it. The settings that
change results are the resume record's (:mod:`rh_eval.resume`, :mod:`rh_eval.fingerprint`); this module adds what
does not change them but explains them: which command was typed, when, how long it took, on how many threads of
which CPU or GPU. It is recorded beside the settings, never compared on resume (a re-run on another machine with
the same numerics is the same experiment).
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def command_line(argv: list[str] | None = None) -> str:
    """The process's command line, shell-quoted, the program by its name: ``rh compare ...`` (also when started as
    ``python -m rh_eval.cli``), ``pytest ...`` for a test."""
    argv = list(sys.argv if argv is None else argv) or ["?"]
    program = "rh" if Path(argv[0]).resolve() == Path(__file__).with_name("cli.py").resolve() else Path(argv[0]).name
    return shlex.join([program, *argv[1:]])


def iso_time(seconds: float) -> str:
    """A ``time.time()`` value as ISO 8601 in UTC, to the second."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what the platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """The machine a run used: OS, Python, CPU model and cores, torch's threads, ``OMP_NUM_THREADS``, GPUs."""
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "gpus": gpus,
    }


def run_entry(started: float, argv: list[str] | None = None) -> dict[str, Any]:
    """One run's record: command line, start (``time.time()`` at its start), wall seconds until now, machine."""
    return {"command": command_line(argv), "started": iso_time(started),
            "seconds": round(time.time() - started, 1), "machine": machine()}
