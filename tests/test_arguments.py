"""The one parser of typed-in integers: CLI strings, model args and JSON metadata follow the same rules."""

from __future__ import annotations

import argparse

import pytest

from rh_eval.cli_args import parse_ints, parse_kv_budgets, parse_ks
from rh_models.arguments import comma_ints, optional_int, parse_int, parse_int_list, parse_percent
from rh_models.heads import parse_head_spec
from rh_models.errors import RHError


@pytest.mark.parametrize("value", [3, "3", " 3 ", 3.0, "3.0"])
def test_whole_numbers_in_any_form(value):
    assert parse_int("n", value) == 3


@pytest.mark.parametrize("value, minimum, maximum, message", [
    (True, None, None, "n must be an integer, got True"),
    (1.5, None, None, "n must be an integer, got 1.5"),
    ("many", None, None, "n must be an integer, got 'many'"),
    (0, 1, None, "n must be a positive integer, got 0"),
    (-1, 0, None, "n must be a non-negative integer, got -1"),
    (7, 1, 5, "n must be between 1 and 5, got 7"),
])
def test_refusals_are_one_line_with_the_bounds(value, minimum, maximum, message):
    with pytest.raises(RHError, match=f"^{message}$".replace("(", r"\(")):
        parse_int("n", value, minimum, maximum)


def test_lists_from_strings_json_and_numbers():
    assert parse_int_list("x", "500, 1000;2000") == [500, 1000, 2000]
    assert parse_int_list("x", [500.0, 1000]) == [500, 1000] and parse_int_list("x", 7) == [7]
    assert parse_int_list("x", "") == [] and optional_int("x", "none") is None
    with pytest.raises(RHError, match="x must be integers separated by commas, got 'a'"):
        parse_int_list("x", "1,a")
    with pytest.raises(RHError, match="each a non-negative integer, got -5"):
        parse_int_list("x", "1,-5", minimum=0)
    with pytest.raises(RHError, match="x lists 2 twice"):
        parse_int_list("x", "2,3,2", distinct=True)


def test_the_cli_forms_use_the_same_rules():
    assert parse_ks("8,2") == [2, 8] and parse_ints("0,50,100", "--depths") == (0, 50, 100)
    assert parse_ints("", "--depths") is None and comma_ints("1000,2000") == [1000, 2000]
    for bad in ("0", "2,2", ""):
        with pytest.raises(RHError):
            parse_ks(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="got 'x'"):
        comma_ints("1,x")


def test_one_rule_for_percentages_top_share_and_kv_budgets():
    """A percentage is written with %, wherever it is typed: ``top:P%`` and ``--kv-budgets`` read it alike."""
    assert parse_percent("x", " 12.5% ") == 12.5 and parse_head_spec("top:12.5%").share == 12.5
    assert parse_kv_budgets("12.5%") == (12.5,)
    for bad, message in (("12.5", "is not a percentage; write it with %, such as 10%"),
                         ("0%", r"is not a percentage in \(0, 100\], such as 10%"), ("101%", "in"), ("nan%", "in"),
                         ("x%", "in")):
        with pytest.raises(RHError, match=message):
            parse_percent("x", bad)
        with pytest.raises(RHError, match="--kv-budgets"):
            parse_kv_budgets(bad)
    with pytest.raises(RHError, match=r"^bad head spec 'top:0%': '0%' is not a percentage in \(0, 100\]"):
        parse_head_spec("top:0%")
    assert parse_head_spec("top:12").count == 12  # without % a count, as it always was
