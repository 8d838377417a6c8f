"""The thin shell every `python -m kit.<stage>` shares: argument parsing and the exit-2 contract."""

from __future__ import annotations

import argparse
import errno
import os
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


_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR}
# How the writers kit uses report a full disk without an OSError: safetensors (Rust) and torch.save.
_DISK_FULL_TEXT = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")
_TORCH_WRITE_FAILED = ("PytorchStreamWriter failed writing", "inline_container.cc")


def write_failure(exc: BaseException) -> str | None:
    """One line for a failed write (disk full, folder not writable), or None for anything else.

    Stages write through temporary files and renames, so a failed write leaves earlier artifacts whole.
    """
    where = getattr(exc, "filename", None)
    where = f" {where}" if where else ""
    code = getattr(exc, "errno", None) if isinstance(exc, OSError) else None
    text = str(exc)
    if code in _DISK_FULL or any(marker in text for marker in _DISK_FULL_TEXT):
        return (f"output_dir: the disk is full: writing{where or ' a file'} failed; free some space or point "
                "output_dir at a disk with room (--set output_dir=...); finished artifacts are untouched")
    if code in _NOT_WRITABLE:
        if exc.filename and os.path.isfile(exc.filename) and not os.access(exc.filename, os.R_OK):
            return f"cannot read {exc.filename} ({exc.strerror}); fix its permissions"
        return (f"output_dir: cannot write{where} ({exc.strerror}); choose a folder you can write "
                "(--set output_dir=...) or fix its permissions; finished artifacts are untouched")
    if isinstance(exc, RuntimeError) and any(marker in text for marker in _TORCH_WRITE_FAILED):
        first = text.strip().splitlines()[0][:200]
        return (f"output_dir: writing a checkpoint failed ({first}); check the free space of output_dir and rerun "
                "(with --resume for kit.sft)")
    return None


def run_cli(work: Callable[[], object]) -> None:
    """Run a stage; a KitError becomes its message on stderr and exit code 2, never a traceback.

    So does a write that fails because the disk is full or the folder is not writable; any other
    exception is a bug in kit and keeps its traceback.
    """
    try:
        work()
    except KitError as exc:
        for line in str(exc).splitlines() or ["error"]:
            print(f"error: {line}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:
        line = write_failure(exc)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
