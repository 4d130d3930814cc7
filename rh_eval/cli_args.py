"""Argument types shared by the ``rh`` subcommands.

Kept in a module of its own, free of torch and lm-eval imports, so that building every subcommand's parser
(``rh --help``, a bad argument) stays instant.
"""

from __future__ import annotations

import argparse


def comma_ints(text: str) -> list[int]:
    """argparse type for ``500,1000,2000``: a list of integers (empty text -> []), or one clear usage error."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
