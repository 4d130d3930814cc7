"""A quiet console for long workflows: our own stage bars and results on the terminal, everything else in a log.

Usage::

    with quiet_console(out_dir / "demo.log") as terminal:
        detect(..., progress=terminal)        # one bar per stage, drawn on the real terminal
        print("...")                          # goes to the log
    print(table)                              # the terminal again

Why: an evaluation through lm-eval prints a warning per task, a nested progress bar per request type and a
full results table per condition; for a demo of five conditions that buries the one table that matters. The
chatter is kept, whole, in the log file (lm-eval's and transformers' log records, progress bars, warnings).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO


@contextlib.contextmanager
def quiet_console(log_path: str | Path) -> Iterator[TextIO]:
    """Send stdout, stderr, warnings and log records to ``log_path`` (appended); yield the real stderr."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    terminal = sys.stderr
    root = logging.getLogger()
    with log_path.open("a", encoding="utf-8") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        handler = logging.StreamHandler(log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        saved_level = root.level
        root.addHandler(handler)
        root.setLevel(min(saved_level, logging.INFO) if saved_level else logging.INFO)
        moved = _library_handlers_to(log)
        try:
            yield terminal
        finally:
            for handler_, stream in moved:
                handler_.setStream(stream)
            root.removeHandler(handler)
            root.setLevel(saved_level)
            _reopen_handlers_left_on(log, log_path)


def _library_handlers_to(log: TextIO) -> list[tuple[logging.StreamHandler, TextIO]]:
    """Point the console handlers that libraries installed (transformers has its own) at the log for a while."""
    moved = []
    for logger in [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)]:
        for handler in getattr(logger, "handlers", []):
            if type(handler) is logging.StreamHandler and handler.stream in (sys.__stderr__, sys.__stdout__):
                moved.append((handler, handler.setStream(log)))
    return moved


def _reopen_handlers_left_on(log: TextIO, log_path: Path) -> None:
    """Handlers a library created inside the context (vLLM's logger binds ``sys.stdout`` when first used) would
    write to the closed log later, e.g. from an engine's shutdown at exit ("I/O operation on closed file"):
    point them at the same log, reopened, so their last records land where the rest went."""
    reopened: TextIO | None = None
    for logger in [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)] + [logging.getLogger()]:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, logging.StreamHandler) and vars(handler).get("stream") is log:  # not lastResort
                reopened = reopened or log_path.open("a", encoding="utf-8")
                handler.setStream(reopened)
