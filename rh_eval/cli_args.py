"""The ``rh`` options every workflow parses the same way: lists, K values, percentages, limits, JSON, model args.

Usage::

    parse_list("rh_niah, rh_vartrack", "--tasks")   # ["rh_niah", "rh_vartrack"]; empty or repeated: one line
    parse_ks("12,6")                                 # [6, 12]
    parse_kv_budgets("10%,25%")                      # (10.0, 25.0); "10" is refused: a percentage takes its %
    parse_limit("0.5"); parse_metadata('{"samples": 2}'); parse_batch_size("auto")
    parse_model_args("dtype=float32")                # {"dtype": "float32"}; mask args are refused (rh sets them)

Why one module: ``rh compare``, ``rh demo`` and ``rh means`` take the same options, and a workflow importing
another workflow for its parsers tied them together. Values typed anywhere (model args too) are parsed by
:mod:`rh_models.arguments`; this module adds what only the ``rh`` command line says.
"""

from __future__ import annotations

import json
from typing import Any

from rh_models.arguments import parse_int_list, parse_percent
from rh_models.errors import RHError


def parse_list(text: str, what: str) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]``: comma-separated names, none empty or repeated (``--tasks``, ``--methods``)."""
    items = [part.strip() for part in str(text).split(",") if part.strip()]
    if not items:
        raise RHError(f"{what} is empty")
    if len(set(items)) != len(items):
        raise RHError(f"{what} lists something twice: {text}")
    return items


def parse_ks(text: str) -> list[int]:
    """``--k``: distinct positive integers, sorted."""
    ks = parse_int_list("--k", text, minimum=1, distinct=True)
    if not ks:
        raise RHError("--k is empty")
    return sorted(ks)


def parse_kv_budgets(text: str | None) -> tuple[float, ...]:
    """``--kv-budgets 5%,10%,25%`` -> ``(5.0, 10.0, 25.0)``, sorted; None/empty -> (). Each item is a percentage
    written with ``%``, as in ``top:P%`` (:func:`rh_models.arguments.parse_percent`): a bare ``10`` is refused."""
    if text in (None, ""):
        return ()
    return tuple(sorted(parse_percent("--kv-budgets", item) for item in parse_list(text, "--kv-budgets")))


def parse_ints(text: str | None, what: str) -> tuple[int, ...] | None:
    """``"500,1000"`` -> ``(500, 1000)``; None/empty -> None (the callee's default)."""
    if text in (None, ""):
        return None
    return tuple(parse_int_list(what, text, minimum=0))


def parse_limit(text: str | None) -> int | float | None:
    """``--limit``: documents per task, or a fraction of them when below 1; None/empty -> None (every document)."""
    if text in (None, ""):
        return None
    try:
        value = float(text)
    except ValueError:
        raise RHError(f"--limit must be a number, got {text!r}") from None
    if value <= 0:
        raise RHError("--limit must be positive")
    return value if value < 1 else int(value)


def parse_metadata(text: str | None) -> dict[str, Any]:
    """``--metadata``: a JSON object handed to the tasks; None/empty -> {}."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RHError(f"--metadata is not valid JSON ({exc.msg}): {text}") from None
    if not isinstance(value, dict):
        raise RHError("--metadata must be a JSON object, e.g. '{\"max_seq_lengths\": [1024]}'")
    return value


def parse_model_args(text: str | None) -> dict[str, Any]:
    """``k=v,k=v`` as lm-eval's ``--model_args`` parses it; the mask is ours to set, so mask args are refused."""
    from lm_eval.utils import simple_parse_args_string

    from rh_models.kv_budget import KV_ARGS
    from rh_models.mask_args import MASK_ARGS

    args = simple_parse_args_string(text) if text else {}
    ours = sorted(set(args) & {"pretrained", "batch_size", *MASK_ARGS, *KV_ARGS})
    if ours:
        raise RHError(f"--model-args may not set {', '.join(ours)}: rh sets them itself (per condition, or from "
                      "its own options)")
    return args


def parse_batch_size(text: str | int) -> int | str:
    """lm-eval's ``--batch_size``: a positive integer, ``auto`` or ``auto:N``."""
    if str(text).isdigit() and int(text) > 0:
        return int(text)
    if str(text).startswith("auto"):
        return str(text)
    raise RHError(f"--batch-size takes a positive integer or auto, got {text!r}")
