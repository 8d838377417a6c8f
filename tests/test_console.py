"""kit's output is kit's: a bad argument to any stage gives one stderr line and exit 2, however noisy the
libraries under it are; `--verbose` lets their notices through."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kit.cli import main as kit_main

REPO = Path(__file__).resolve().parent.parent

# Loaded at interpreter start (sitecustomize): when yaml or transformers is imported (after kit's own
# set-up, as the libraries are), it makes the noise that library releases make at import time: a
# warning through a logger with no handler (the `kernels` offline notice), a FutureWarning and a
# UserWarning raised from library modules, and an INFO line through transformers' logger.
NOISY_LIBRARIES = '''
import importlib.abc, importlib.machinery, logging, sys, warnings

def noise(name):
    logging.getLogger("kernels._internals.hf_hub").warning(
        "Skipping publisher trust check for 'kernels-community/x' because Hugging Face Hub is in offline mode.")
    warnings.warn_explicit("`is_gradient_checkpointing` is deprecated", FutureWarning, "modeling_utils.py", 1,
                           module="transformers.modeling_utils")
    warnings.warn_explicit("lora_dropout has no effect here", UserWarning, "layer.py", 1, module="peft.tuners.lora")
    logging.getLogger("transformers.modeling_utils").warning("Some weights were not initialized")

class Noisy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name not in ("yaml", "transformers"):
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None:
            run = spec.loader.exec_module
            def exec_module(module, run=run, name=name):
                run(module)
                noise(name)
            spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, Noisy())
'''

RECIPE = "recipes/quickstart.yaml"
BAD_VALUE = ["--set", "sft.epochs=abc"]
CASES = {
    "sft": ["kit.sft", RECIPE, *BAD_VALUE],
    "sft-flag": ["kit.sft", RECIPE, "--no-such-flag"],
    "data": ["kit.data", "build", RECIPE, *BAD_VALUE],
    "data-command": ["kit.data", "convert"],
    "eval": ["kit.eval", RECIPE, *BAD_VALUE],
    "chat": ["kit.chat", RECIPE, "--port", "seven"],
    "export": ["kit.export", RECIPE, "--format", "pdf"],
    "distill": ["kit.distill", "no/such/recipe.yaml"],
    "prefer": ["kit.prefer", RECIPE, *BAD_VALUE],
    "serve": ["kit.serve", RECIPE, "--set", "serve.port=-3"],
}


def run_noisy(tmp_path: Path, *args: str, verbose: bool = False) -> subprocess.CompletedProcess:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(NOISY_LIBRARIES)
    env = {key: value for key, value in os.environ.items()
           if key not in ("TRANSFORMERS_VERBOSITY", "DATASETS_VERBOSITY", "KIT_VERBOSE", "PYTHONWARNINGS")}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join([str(site), str(REPO)]))
    command = [sys.executable, "-m", *args] + (["--verbose"] if verbose else [])
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_a_bad_argument_prints_one_line_whatever_the_libraries_print(tmp_path, case):
    result = run_noisy(tmp_path, *CASES[case])
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr


def test_verbose_lets_library_notices_through(tmp_path):
    result = run_noisy(tmp_path, *CASES["sft"], verbose=True)
    assert result.returncode == 2
    assert "Skipping publisher trust check" in result.stderr and "is_gradient_checkpointing" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")


def test_kit_command_dispatches_to_the_stages(capsys):
    with pytest.raises(SystemExit) as exit_info:
        kit_main(["--help"])
    assert exit_info.value.code == 0 and "sft" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        kit_main(["train", RECIPE])
    assert exit_info.value.code == 2 and "no stage 'train'" in capsys.readouterr().err
    kit_main(["recipe", "check", str(REPO / RECIPE)])
    assert "name: quickstart" in capsys.readouterr().out


def test_library_bars_are_off_unless_verbose():
    check = ("import kit, datasets.utils, kit.console, transformers.utils.logging as hf; "
             "kit.console.hide_library_bars(); "
             "print(datasets.utils.are_progress_bars_disabled(), hf.is_progress_bar_enabled())")
    env = {key: value for key, value in os.environ.items()
           if key not in ("HF_DATASETS_DISABLE_PROGRESS_BARS", "KIT_VERBOSE", "HF_HUB_DISABLE_PROGRESS_BARS")}
    quiet = subprocess.run([sys.executable, "-c", check], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert quiet.stdout.split() == ["True", "False"]
    loud = subprocess.run([sys.executable, "-c", check], cwd=REPO, env=env | {"KIT_VERBOSE": "1"},
                          capture_output=True, text=True, check=True)
    assert loud.stdout.split() == ["False", "True"]
