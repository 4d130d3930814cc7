"""One exception type for bad user input, printed as a single line instead of a traceback.

Why: users drive us through CLIs (``rh`` and the stock ``lm_eval``). A wrong head spec or a score file for
another model deserves one clear sentence, not forty lines of stack. ``rh`` catches :class:`RHError`
itself; for the stock ``lm_eval`` CLI, :func:`install_excepthook` prints it the same way.
"""

from __future__ import annotations

import sys


class RHError(ValueError):
    """A problem with what the user asked for (spec, file, model, length), explained in one line."""


def install_excepthook() -> None:
    """Print uncaught :class:`RHError` as ``rh-eval: error: ...`` (exit status 1), anything else as usual."""
    previous = sys.excepthook
    if getattr(previous, "_rh_hook", False):
        return

    def hook(exc_type, exc, tb):
        if isinstance(exc, RHError):
            print(f"rh-eval: error: {exc}", file=sys.stderr)
            return
        previous(exc_type, exc, tb)

    hook._rh_hook = True  # type: ignore[attr-defined]
    sys.excepthook = hook
