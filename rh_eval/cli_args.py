"""Argument types shared by the ``rh`` subcommands.

Kept in a module of its own, free of torch and lm-eval imports, so that building every subcommand's parser
(``rh --help``, a bad argument) stays instant.
"""

from __future__ import annotations

import argparse

from rh_models.arguments import parse_int_list
from rh_models.errors import RHError


def comma_ints(text: str) -> list[int]:
    """argparse type for ``500,1000,2000``: :func:`~rh_models.arguments.parse_int_list` as a usage error."""
    try:
        return parse_int_list("value", text)
    except RHError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
