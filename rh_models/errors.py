"""One exception type for bad user input, printed as a single line instead of a traceback.

Why: users drive us through CLIs (``rh`` and the stock ``lm_eval``). A wrong head spec or a score file for
another model deserves one clear sentence, not forty lines of stack. ``rh`` catches :class:`RHError` itself;
for the stock ``lm_eval`` CLI, :mod:`rh_eval._autoload` wraps the CLI's entry so it prints
``rh-eval: error: ...`` and exits with status 1. Library code only raises; it never touches ``sys.excepthook``.
"""

from __future__ import annotations


class RHError(ValueError):
    """A problem with what the user asked for (spec, file, model, length), explained in one line."""
