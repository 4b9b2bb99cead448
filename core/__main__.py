"""`python -m core`: the command line.

Each module in COMMAND_MODULES exposes ``register(subparsers)``, which adds its sub-commands and
sets ``run=<function(args) -> int>`` as the parser default.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "core.cli.data",
    "core.cli.asif",
    "core.cli.invert",
    "core.cli.align",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="Rosetta command line.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
