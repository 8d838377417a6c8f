"""What reaches the terminal: kit's own lines, not the notices of the libraries under it.

The libraries kit drives print things a kit user cannot act on: `kernels` announces on every offline
import that it skips a publisher check, transformers and peft print deprecation `FutureWarning`s about
their own internals, and every model load draws a "Loading weights" bar. On a terminal they bury kit's
progress lines, and they turn kit's one-line errors into several lines. So by default kit hides them:

- library loggers that have no handler of their own (kernels, bitsandbytes, accelerate, ...) no longer
  fall through to Python's last-resort stderr handler; transformers and datasets log errors only;
- warnings raised from library code, and every `DeprecationWarning` / `FutureWarning`, are ignored;
- datasets' bars (TRL's passes over the training rows) are off; transformers' own bars (weight loading,
  and hub downloads with them) are off while kit loads a model
  (`hide_library_bars`); `--verbose` brings them back.

kit's own output is untouched: its errors, warnings (such as `trust_remote_code` being on), progress
lines and the training bar. `--verbose` on any kit command, or `KIT_VERBOSE=1`, shows everything the
libraries print. This runs when the `kit` package is imported, before any library is, because some
notices are printed at import time.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

VERBOSE_ENV = "KIT_VERBOSE"
# Packages whose warnings a kit user cannot act on (they are about the libraries' own internals).
LIBRARIES = ("accelerate", "bitsandbytes", "datasets", "evaluate", "gradio", "gradio_client", "huggingface_hub",
             "kernels", "peft", "sentence_transformers", "torch", "transformers", "trl")


def verbose_requested(argv: list[str] | None = None) -> bool:
    """True when `--verbose` is on the command line or KIT_VERBOSE is set to something other than 0."""
    argv = sys.argv if argv is None else argv
    return "--verbose" in argv or os.environ.get(VERBOSE_ENV, "").strip() not in ("", "0")


def quiet_libraries() -> None:
    """Keep library notices off the terminal (see the module docstring). Idempotent."""
    # Read by transformers and datasets when they configure their loggers at import.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DATASETS_VERBOSITY", "error")
    # datasets draws a bar for every pass TRL makes over kit's few thousand rows ("Truncating train dataset")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    root = logging.getLogger()
    if not any(isinstance(handler, logging.NullHandler) for handler in root.handlers):
        # A record of a logger with no handler goes to logging.lastResort (stderr, WARNING and up) only
        # while the root has no handler either.
        root.addHandler(logging.NullHandler())
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", module=rf"({'|'.join(LIBRARIES)})(\.|$)")


def setup(argv: list[str] | None = None) -> None:
    """What `import kit` does: quiet the libraries unless verbose output was asked for."""
    if verbose_requested(argv):
        os.environ[VERBOSE_ENV] = "1"  # so that worker processes (data assembly, torchrun) agree
    else:
        quiet_libraries()


def hide_library_bars() -> None:
    """Turn off transformers' own progress bars (weights loading) unless verbose output was asked for.

    Training and kit's bars are plain tqdm and stay. Called by the model loader, so that importing kit
    does not import transformers.
    """
    if verbose_requested():
        return
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
