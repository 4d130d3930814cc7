"""Parsing of the values users type: booleans and integer lists, from model args, metadata or the ``rh`` CLI.

Usage::

    parse_bool("record_overwrite", "true")        # True; "ture" is an RHError, not a silent False
    parse_int_list("--detect-lengths", "500,1000")  # [500, 1000]; also accepts [500, 1000] from JSON metadata
    parse_int("metadata samples", "3", minimum=1)   # 3; "0" is "must be a positive integer"
    optional_int("random_exclude", "")              # None
    parse_percent("--kv-budgets", "10%")            # 10.0; "10" is refused: a percentage is written with %

Why one module: ``--model_args``, ``--metadata`` and ``rh`` options reach us as strings, JSON values or Python
values, and each of them once had its own parser with its own idea of what "yes" means. Free of torch and
lm-eval imports, so argument errors stay instant.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable
from typing import Any

from rh_models.errors import RHError

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def is_bool_word(value: Any) -> bool:
    """Is ``value`` one of the words :func:`parse_bool` reads (for options that take a bool or free text)?"""
    return isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE


def parse_bool(name: str, value: Any) -> bool:
    """``true/false/yes/no/on/off/1/0`` (any case) or a bool; anything else is one clear error."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise RHError(f"{name} must be true or false, got {value!r}")


def _whole_number(value: Any) -> int | None:
    """``3``, ``"3"``, ``3.0``, ``"3.0"`` -> 3; a bool, a fraction or text -> None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


def _bounds(minimum: int | None, maximum: int | None) -> str:
    if maximum is not None:
        return f"between {minimum} and {maximum}" if minimum is not None else f"<= {maximum}"
    return {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f">= {minimum}")  # type: ignore[arg-type]


def _in_bounds(number: int, minimum: int | None, maximum: int | None) -> bool:
    return (minimum is None or number >= minimum) and (maximum is None or number <= maximum)


def parse_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """One integer from a model arg, JSON metadata or a CLI string, within ``minimum..maximum`` when given."""
    number = _whole_number(value)
    if number is None:
        raise RHError(f"{name} must be an integer, got {value!r}")
    if not _in_bounds(number, minimum, maximum):
        raise RHError(f"{name} must be {_bounds(minimum, maximum)}, got {value!r}")
    return number


def optional_int(name: str, value: Any) -> int | None:
    """An integer, or ``None`` for an absent value (``None``, ``""``, ``none``)."""
    if value is None or str(value).strip().lower() in ("", "none"):
        return None
    return parse_int(name, value)


def parse_float(name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise RHError(f"{name} must be a number, got {value!r}") from None


def parse_percent(name: str, value: Any, example: str = "10%") -> float:
    """A percentage in (0, 100], written with ``%`` (``"12.5%"`` -> ``12.5``), wherever one is typed (``top:P%``,
    ``--kv-budgets``): a bare number is refused with a hint, never read as a count or a fraction."""
    text = str(value).strip()
    if not text.endswith("%"):
        raise RHError(f"{name}: {text!r} is not a percentage; write it with %, such as {example}")
    try:
        share = float(text[:-1].strip())
    except ValueError:
        share = math.nan
    if not math.isfinite(share) or not 0 < share <= 100:
        raise RHError(f"{name}: {text!r} is not a percentage in (0, 100], such as {example}")
    return share


def parse_int_list(name: str, value: Any, minimum: int | None = None, maximum: int | None = None,
                   distinct: bool = False) -> list[int]:
    """``"500,1000"`` (``;`` works too), ``[500, 1000]`` or ``500`` -> ``[500, 1000]``, in the order given.

    Whole floats from JSON (``500.0``) are accepted; an empty value gives ``[]`` (callers decide if that is fine).
    Every item must lie in ``minimum..maximum``; ``distinct`` refuses a repeated item.
    """
    if isinstance(value, str):
        value = [part for part in value.replace(";", ",").split(",") if part.strip()]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, Iterable):
        raise RHError(f"{name} must be a list of integers, got {value!r}")
    numbers: list[int] = []
    for item in value:
        number = _whole_number(item)
        if number is None:
            raise RHError(f"{name} must be integers separated by commas, got {item!r}")
        if not _in_bounds(number, minimum, maximum):
            raise RHError(f"{name} takes integers that are each {_bounds(minimum, maximum)}, got {number}")
        if distinct and number in numbers:
            raise RHError(f"{name} lists {number} twice")
        numbers.append(number)
    return numbers


def comma_ints(text: str) -> list[int]:
    """argparse ``type=`` for ``500,1000,2000``: :func:`parse_int_list`, its refusal as argparse's usage error."""
    try:
        return parse_int_list("value", text)
    except RHError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
