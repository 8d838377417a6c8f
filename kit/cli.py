"""The thin shell every `python -m kit.<stage>` shares: argument parsing and the exit-2 contract."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from kit.errors import KitError


def recipe_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_recipe_arguments(parser)
    return parser


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="path of the recipe YAML, e.g. recipes/quickstart.yaml")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key, e.g. --set sft.learning_rate=1e-4 (repeatable; beats the YAML)",
    )


def run_cli(work: Callable[[], object]) -> None:
    """Run a stage; a KitError becomes its message on stderr and exit code 2, never a traceback."""
    try:
        work()
    except KitError as exc:
        for line in str(exc).splitlines() or ["error"]:
            print(f"error: {line}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
