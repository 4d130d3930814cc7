"""``quiet_console``: chatter goes to the log, and handlers created inside it keep working after it."""

from __future__ import annotations

import logging
import sys

from rh_eval.console import quiet_console


def test_a_handler_created_inside_keeps_logging_to_the_log_after_the_context(tmp_path, capsys):
    log = tmp_path / "demo.log"
    logger = logging.getLogger("rh-test-engine")
    logger.propagate = False
    try:
        with quiet_console(log) as terminal:
            print("chatter")
            logger.addHandler(logging.StreamHandler(sys.stdout))  # as vLLM's logger binds stdout on first use
            logger.warning("engine started")
            print("bar", file=terminal)
        logger.warning("engine shut down at exit")  # was: "I/O operation on closed file" on stderr
    finally:
        for handler in logger.handlers:
            handler.close()
        logger.handlers.clear()
    captured = capsys.readouterr()
    assert "Logging error" not in captured.err and "chatter" not in captured.out
    assert log.read_text().splitlines() == ["chatter", "engine started", "engine shut down at exit"]
