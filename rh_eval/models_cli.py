"""``rh models``: list the embedded aliases; ``rh models path ALIAS`` prints the converted local folder."""

from __future__ import annotations

import argparse

from rh_models.errors import RHError
from rh_models.zoo import ALIASES, conversion_state, resolve_pretrained


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=["list", "path"], default="list")
    parser.add_argument("alias", nargs="?", help="model alias (for `path`)")


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        for alias, model in ALIASES.items():
            print(f"{alias}\t{model.description}; licence: {model.licence}\t[{conversion_state(alias)}]")
        return 0
    if not args.alias:
        raise RHError("`rh models path` needs an alias, e.g. `rh models path smollm2-135m`")
    if args.alias not in ALIASES:
        raise RHError(f"unknown model alias {args.alias!r}; known: {', '.join(ALIASES)}")
    print(resolve_pretrained(args.alias))
    return 0
