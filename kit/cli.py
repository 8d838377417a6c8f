"""The thin shell every kit command shares: argument parsing, the exit-2 contract, and `kit <stage>`.

    kit sft recipes/quickstart.yaml          # the same as python -m kit.sft recipes/quickstart.yaml
    kit data build recipes/quickstart.yaml
    kit --help                               # the stages
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from collections.abc import Callable

from kit.errors import KitError

# `kit <stage>` runs `python -m kit.<stage>`: each is a module with main(argv). `python -m kit.sft` is the
# user's whole path (kit.pipeline's main; `--train-only` for the stage alone), and so is `kit sft`.
ENTRY_MODULES = {"sft": "kit.pipeline"}
STAGES = {
    "data": "convert a support export into a chat dataset (templates | preview | build)",
    "sft": "fine-tune on the dataset, then evaluate (the whole path of a recipe)",
    "eval": "compare base, tuned and student on the test split",
    "prefer": "preference-tune the tuned model on arena votes and its own mistakes (DPO)",
    "distill": "distill the tuned model into a smaller student",
    "crossval": "k-fold cross-validation of the training recipe (eval reports its summary)",
    "chat": "the models side by side in the browser, with blind votes",
    "export": "adapter, merged weights, GGUF and an Ollama Modelfile",
    "serve": "the exported model behind an OpenAI-compatible API on 127.0.0.1",
    "recipe": "check a recipe and print it resolved, or print the recipe reference",
}


class ArgumentParser(argparse.ArgumentParser):
    """argparse with kit's error contract: one line on stderr, exit 2 (argparse prints usage too).

    Every kit command takes `--verbose`: library notices and warnings reach the terminal (kit.console).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if os.path.basename(sys.argv[0]) == "kit":  # run as `kit sft ...`: say so in usage and errors
            self.prog = self.prog.replace("python -m kit.", "kit ")
        self.add_argument("--verbose", action="store_true",
                          help="also show the notices and warnings of the libraries kit uses (or KIT_VERBOSE=1)")

    def error(self, message: str):
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def recipe_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=prog, description=description)
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


def main(argv: list[str] | None = None) -> None:
    """`kit <stage> ...`: the console script; hands the rest of the line to the stage's own main."""
    argv = sys.argv[1:] if argv is None else argv
    stage = next((arg for arg in argv if arg != "--verbose"), None)
    if stage in (None, "-h", "--help"):
        width = max(map(len, STAGES))
        lines = [f"  {name:<{width}}  {text}" for name, text in STAGES.items()]
        print("usage: kit <stage> [recipe.yaml] [options]   (kit <stage> --help for a stage's options)\n\nstages:\n"
              + "\n".join(lines))
        sys.exit(0 if stage else 2)
    if stage not in STAGES:
        print(f"error: kit: no stage {stage!r}; use one of {', '.join(STAGES)}", file=sys.stderr)
        sys.exit(2)
    rest = list(argv)
    rest.remove(stage)
    importlib.import_module(ENTRY_MODULES.get(stage, f"kit.{stage}")).main(rest)
