"""Supervised fine-tuning: the support conversations teach the base model your answers.

    python -m kit.sft recipes/quickstart.yaml [--set sft.learning_rate=1e-4 ...]
    python -m kit.sft recipes/quickstart.yaml --preflight        # check the loss mask, train nothing
    python -m kit.sft recipes/quickstart.yaml --resume           # continue from the last checkpoint
    python -m kit.sft recipes/quickstart.yaml --sweep sft.method=freeze,lora,full
    python -m kit.sft recipes/quickstart.yaml --train-only       # this stage alone: no eval, no distill
    torchrun --nproc_per_node 2 -m kit.sft recipe.yaml           # data-parallel (accelerate launch works too)

The command runs the recipe's whole path through `kit.pipeline` (data -> sft -> eval -> distill, as the
recipe enables them). This stage, `run(recipe)`, builds the dataset when it is missing or stale and
trains with `kit.trainer.KitSFTTrainer` (TRL's SFTTrainer; loss on assistant tokens only, mask built
by `kit.masking`); `train(recipe, conversations)` is the same on conversations given directly (as
`kit.crossval` gives its folds). Writes `<run>/adapter/` (LoRA, DoRA, QLoRA) or `<run>/model/` (full,
freeze) and then `<run>/manifest.json`, written last: a run without it is not complete.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from kit import data, models, speed
from kit.cli import recipe_parser, run_cli
from kit.errors import KitError
from kit.masking import ensure_chat_template, tokenize_conversation
from kit.recipe import Recipe, load_recipe, parse_override
from kit.runs import atomic_dir, write_json

ADAPTER_METHODS = ("lora", "dora", "qlora")


# ---------------------------------------------------------------- data and the loss mask


@dataclass
class Preflight:
    """What tokenization did to one split: the numbers a user checks before paying for training."""

    name: str
    conversations: int = 0
    kept: int = 0
    truncated: int = 0
    dropped: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    unclosed_turns: int = 0
    problems: list[str] = field(default_factory=list)

    def line(self, max_length: int) -> str:
        return (
            f"kit.sft: {self.name}: {self.kept} of {self.conversations} conversations, {self.tokens} tokens, "
            f"{self.trained_tokens} trained (assistant) tokens, {self.truncated} truncated at sft.max_length={max_length}, "
            f"{self.dropped} dropped with no assistant token left, {self.unclosed_turns} assistant turns without a "
            f"trained end-of-turn token"
        )


def _closing_token_trained(tokenizer, encoded: dict) -> int:
    """How many trained spans do NOT end on a special (end-of-turn) token: each such turn never learns to stop."""
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    unclosed, mask, ids = 0, encoded["completion_mask"], encoded["input_ids"]
    for position, bit in enumerate(mask):
        span_ends = bit and (position + 1 == len(mask) or not mask[position + 1])
        if span_ends and ids[position] not in special and not (encoded["truncated"] and position + 1 == len(mask)):
            unclosed += 1
    return unclosed


def tokenize_split(tokenizer, conversations: list[dict], max_length: int, name: str):
    """(datasets.Dataset of `input_ids` + `completion_mask` or None, Preflight report)."""
    from datasets import Dataset

    report = Preflight(name=name, conversations=len(conversations))
    rows = []
    for conversation in conversations:
        encoded = tokenize_conversation(tokenizer, conversation["messages"], max_length)
        report.truncated += encoded["truncated"]
        if sum(encoded["completion_mask"]) == 0:
            report.dropped += 1  # nothing to learn from it (truncation, or no assistant turn)
            continue
        report.unclosed_turns += _closing_token_trained(tokenizer, encoded)
        report.trained_tokens += sum(encoded["completion_mask"])
        report.tokens += len(encoded["input_ids"])
        rows.append({"input_ids": encoded["input_ids"], "completion_mask": encoded["completion_mask"]})
    report.kept = len(rows)
    print(report.line(max_length), flush=True)
    return (Dataset.from_list(rows) if rows else None), report


def marked_example(tokenizer, example: dict) -> str:
    """One training example with the trained tokens in [[...]], so the mask can be checked by eye."""
    pieces, inside = [], False
    for token, bit in zip(example["input_ids"], example["completion_mask"]):
        if bit and not inside:
            pieces.append("[[")
        if not bit and inside:
            pieces.append("]]")
        inside = bool(bit)
        pieces.append(tokenizer.decode([token]))
    if inside:
        pieces.append("]]")
    return "".join(pieces)


def preflight(recipe: Recipe, tokenizer, conversations: "TrainingData") -> tuple:
    """Tokenize train and validation, print the mask on one example, and refuse data that cannot train."""
    train, train_report = tokenize_split(tokenizer, conversations.train, recipe.sft.max_length, "train")
    validation, _ = tokenize_split(tokenizer, conversations.validation, recipe.sft.max_length, "validation")
    if train is None:
        raise KitError(
            "data: no training conversation keeps an assistant token; check the template's answer field "
            "and raise sft.max_length"
        )
    print("kit.sft: first training example, trained tokens in [[...]]:\n" + marked_example(tokenizer, train[0]), flush=True)
    if train_report.unclosed_turns:
        raise KitError(
            f"model.name: {train_report.unclosed_turns} assistant turns end without a trained end-of-turn token, so "
            "the model would never learn to stop; use a chat template that closes turns with a special token"
        )
    return train, validation


# ---------------------------------------------------------------- models per method


def apply_freeze(model, settings) -> None:
    """Transfer learning: freeze everything, then unfreeze the top blocks, the final norm and the head."""
    from kit.trainer import transformer_blocks

    blocks = transformer_blocks(model)
    if settings.trainable_layers > len(blocks):
        raise KitError(f"sft.freeze.trainable_layers: the model has {len(blocks)} blocks; use at most that")
    for parameter in model.parameters():
        parameter.requires_grad = False
    for block in list(blocks)[len(blocks) - settings.trainable_layers :]:
        for parameter in block.parameters():
            parameter.requires_grad = True
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    final_norm = next((getattr(decoder, n) for n in ("norm", "final_layernorm", "ln_f") if hasattr(decoder, n)), None)
    if settings.trainable_layers and final_norm is not None:
        for parameter in final_norm.parameters():  # the final norm sits between the top block and the head
            parameter.requires_grad = True
    if settings.train_lm_head:
        for parameter in model.get_output_embeddings().parameters():
            parameter.requires_grad = True
    if not any(p.requires_grad for p in model.parameters()):
        raise KitError("sft.freeze: nothing would train; set trainable_layers above 0 or train_lm_head: true")


def build_model(recipe: Recipe, model_path: str, attention: str = "sdpa", cpu_bf16_autocast: bool = False):
    """(model, peft_config or None) for the recipe's method."""
    import torch

    method = recipe.sft.method
    frozen = speed.frozen_base_dtype(cpu_bf16_autocast, recipe.model.dtype) if method in ADAPTER_METHODS else None
    extra = {"attn_implementation": attention, "dtype": frozen}
    if method == "qlora":
        from transformers import BitsAndBytesConfig

        extra["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    model = models.load_model(recipe.model, path=model_path, **extra)
    if method in ADAPTER_METHODS:
        from kit.trainer import lora_config

        return model, lora_config(recipe, dora=method == "dora")
    if method == "freeze":
        apply_freeze(model, recipe.sft.freeze)
    return model, None


# ---------------------------------------------------------------- the trainer and its guards


def _packing(recipe: Recipe, model) -> bool:
    if recipe.sft.packing is not None:
        return recipe.sft.packing
    return getattr(model.config, "_attn_implementation", "") in ("flash_attention_2", "flash_attention_3")


def plot_losses(history: list[dict], path: Path) -> None:
    """Train and validation loss against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(e["step"], e["loss"]) for e in history if "loss" in e]
    validation = [(e["step"], e["eval_loss"]) for e in history if "eval_loss" in e]
    fig, axis = plt.subplots(figsize=(6, 3.5))
    for points, label, style in ((train, "train", "-"), (validation, "validation", "o-")):
        if points:
            axis.plot(*zip(*points), style, label=label)
    axis.set_xlabel("step")
    axis.set_ylabel("loss (assistant tokens)")
    axis.legend()
    axis.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- the stage


@dataclass
class TrainingData:
    """The conversations one training run learns from, and what identifies them in its manifest."""

    train: list[dict]
    validation: list[dict]
    sha256: str
    stats: dict = field(default_factory=dict)


def training_data(recipe: Recipe) -> TrainingData:
    """The train and validation splits of the recipe's built dataset (`kit.data.build` writes it)."""
    stats = json.loads((data.dataset_dir(recipe) / "stats.json").read_text())
    return TrainingData(
        train=data.load_split(recipe, "train"),
        validation=data.load_split(recipe, "validation"),
        sha256=stats["sha256"],
        stats={k: stats[k] for k in ("input", "kept", "rejected", "duplicates", "splits") if k in stats},
    )


def run(recipe: Recipe, resume: bool = False, preflight_only: bool = False, callbacks=()) -> Path:
    """Build the recipe's dataset when missing or stale, then fine-tune on it (`train`); returns the run folder.

    `callbacks` are extra `transformers.TrainerCallback`s: the way to observe training from outside.
    """
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # cpu=True: torchrun on CPUs runs MULTI_CPU (gloo)
    if state.is_main_process:
        print("kit.sft: resolved recipe\n" + recipe.to_yaml(), flush=True)
    models.resolve(recipe.model.name)  # a bad model reference fails before any work
    with state.main_process_first():  # one process builds the dataset, the others then read it
        data.build(recipe)
    return train(recipe, training_data(recipe), resume=resume, preflight_only=preflight_only, callbacks=callbacks)


def train(recipe: Recipe, conversations: TrainingData, resume: bool = False, preflight_only: bool = False,
          callbacks=()) -> Path:
    """Fine-tune the recipe's model on `conversations`; writes the adapter or model, then the manifest."""
    from kit.trainer import (Guard, GuardCallback, KitSFTTrainer, last_complete_checkpoint,  # first: it quiets a notice
                             stop_on_interrupt, training_arguments)

    import torch
    from accelerate import PartialState
    from transformers import EarlyStoppingCallback, set_seed

    started = time.time()
    run_dir = recipe.run_dir
    state = PartialState(cpu=not torch.cuda.is_available())
    main = state.is_main_process
    model_path = models.resolve(recipe.model.name)
    if recipe.sft.method == "qlora" and not torch.cuda.is_available() and main:
        print("kit.sft: qlora on a CPU: 4-bit weights are dequantized at every layer, so steps are slow; "
              "it saves memory, not time (sft.method=lora is faster here)", flush=True)

    set_seed(recipe.seed)
    tokenizer = models.load_tokenizer(recipe.model, model_path)
    ensure_chat_template(tokenizer)
    train_set, validation = preflight(recipe, tokenizer, conversations)
    if preflight_only:
        return run_dir

    if recipe.sft.report_to in ("wandb", "mlflow"):
        import importlib.util

        if importlib.util.find_spec(recipe.sft.report_to) is None:
            raise KitError(f"sft.report_to: {recipe.sft.report_to} is not installed; `pip install {recipe.sft.report_to}` "
                           "or use sft.report_to=tensorboard (or none)")
    checkpoints = run_dir / "checkpoints"
    resume_from = last_complete_checkpoint(checkpoints, main, "kit.sft") if resume else None
    if resume and resume_from is None:
        raise KitError(f"--resume: no complete checkpoint in {checkpoints}; run without --resume to start")
    plan = speed.plan_for(recipe, model_path)
    if main:
        print(f"kit.sft: speed settings: {plan.describe()}", flush=True)
    speed.apply_process_settings(plan)
    model, peft_config = build_model(recipe, model_path, plan.attn_implementation, plan.cpu_bf16_autocast)
    packing = _packing(recipe, model)
    guard = Guard()
    trainer_callbacks = [GuardCallback(guard), *callbacks]
    if recipe.sft.early_stopping_patience and validation is not None:
        trainer_callbacks.append(EarlyStoppingCallback(early_stopping_patience=recipe.sft.early_stopping_patience))
    try:
        trainer = KitSFTTrainer(
            model=model,
            args=training_arguments(recipe, "sft", checkpoints, plan, validation is not None, packing),
            train_dataset=train_set,
            eval_dataset=validation,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=trainer_callbacks,
            layer_lr_decay=recipe.sft.layer_lr_decay,
            guard=guard,
            record_examples=state.num_processes > 1,
            cpu_lora_dropout=plan.cpu_lora_dropout,
        )
    except ValueError as exc:
        if peft_config is not None and "target module" in str(exc).lower():
            names = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
            raise KitError(f"sft.lora.target_modules: {recipe.sft.lora.target_modules} not found in the model; use "
                           f"all-linear or some of {', '.join(names)}") from None
        raise
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.model.parameters())
    if main:
        print(f"kit.sft: {recipe.sft.method}: training {trainable:,} of {total:,} parameters; packing "
              f"{'on' if packing else 'off'}; {state.num_processes} process(es) on {state.device}", flush=True)

    with stop_on_interrupt(guard, "sft", enabled=state.num_processes == 1):
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    history = [entry for entry in trainer.state.log_history if "loss" in entry or "eval_loss" in entry]
    if guard.nonfinite_step is not None:
        kept = sorted(checkpoints.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
        where = f"; last good checkpoint {kept[-1]}" if kept else ""
        raise KitError(f"sft.learning_rate: the loss became NaN/inf at step {guard.nonfinite_step}{where}; "
                       "lower the learning rate (or check the data)")
    if guard.interrupted:
        print(f"kit.sft: interrupted at step {trainer.state.global_step}; checkpoint saved in {checkpoints}; "
              f"continue with: python -m kit.sft <recipe> --resume", flush=True)
        raise KeyboardInterrupt

    metrics = {**result.metrics, "global_step": trainer.state.global_step}
    if trainer.seen_examples is not None:  # which examples each rank trained on: proof of data parallelism
        import torch.distributed as dist

        gathered = [None] * state.num_processes
        dist.all_gather_object(gathered, sorted(set(trainer.seen_examples)))
        metrics["rank_examples"] = gathered
    if validation is not None:
        metrics.update(trainer.evaluate())
    if main:
        _write_artifacts(recipe, trainer, tokenizer, metrics, history, conversations, model_path, trainable, total,
                         state.num_processes, started)
    state.wait_for_everyone()
    if main:
        print(f"kit.sft: done in {time.time() - started:.0f}s; artifacts in {run_dir}/", flush=True)
    return run_dir


def _write_artifacts(recipe, trainer, tokenizer, metrics, history, conversations, model_path, trainable, total,
                     processes, started):
    from kit.trainer import write_manifest

    run_dir = recipe.run_dir
    if not all(math.isfinite(v) for k, v in metrics.items() if k.endswith("loss") and isinstance(v, float)):
        raise KitError("sft.learning_rate: training ended with a non-finite loss; lower the learning rate")
    target = run_dir / ("adapter" if recipe.sft.method in ADAPTER_METHODS else "model")
    stale = run_dir / ("model" if target.name == "adapter" else "adapter")
    # The old manifest goes first: a kill during the swap then leaves no run that looks complete, never
    # new weights described by the previous run's manifest.
    (run_dir / "manifest.json").unlink(missing_ok=True)
    with atomic_dir(target) as scratch:
        trainer.model.save_pretrained(scratch)  # safetensors; an adapter for PEFT methods, whole weights otherwise
        tokenizer.save_pretrained(scratch)
    (run_dir / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
    plot_losses(history, run_dir / "plots" / "loss.png")
    write_manifest(  # last: its presence means the weights are complete
        run_dir / "manifest.json", "sft", recipe, started,
        method=recipe.sft.method,
        artifact=target.name,
        model={"reference": recipe.model.name, "resolved": model_path},
        processes=processes,
        dataset={"sha256": conversations.sha256, "stats": conversations.stats},
        parameters={"trainable": trainable, "total": total},
        train_metrics=metrics,
        log_history=history,
    )
    if stale.exists():  # a previous run with the other kind of method: not this run's output
        import shutil

        shutil.rmtree(stale)
    print(f"kit.sft: {target.name} {target}; manifest {run_dir / 'manifest.json'}; loss plot {run_dir / 'plots' / 'loss.png'}", flush=True)


# ---------------------------------------------------------------- sweeps


def parse_sweep(items: list[str]) -> dict[str, list]:
    """`--sweep sft.method=freeze,lora,full --sweep sft.learning_rate=1e-4,3e-4` -> a grid."""
    grid = {}
    for item in items:
        key, value = parse_override(item)
        values = value if isinstance(value, list) else [v for v in str(item.partition("=")[2]).split(",") if v.strip()]
        if not values:
            raise KitError(f"--sweep {item}: give values separated by commas, e.g. --sweep sft.method=freeze,lora,full")
        grid[key] = [parse_override(f"{key}={v}")[1] if isinstance(v, str) else v for v in values]
    return grid


def score_on_validation(recipe: Recipe) -> dict:
    """What a support lead checks, on the validation split (the test split stays for kit.eval's final comparison):
    fact recall, invented facts and contacts, ROUGE-L and similarity of the run's tuned model's greedy answers."""
    from kit.generate import generate_answers
    from kit.scoring import answer_metrics, make_judge

    validation = [c for c in data.load_split(recipe, "validation") if c["messages"] and c["messages"][-1]["role"] == "assistant"]
    if not validation:
        return {}
    judge = make_judge(recipe, validation, data.load_split(recipe, "train"))
    tokenizer = models.load_tokenizer(recipe.model)
    ensure_chat_template(tokenizer)
    model = models.load_tuned(recipe).eval()
    answers = generate_answers(model, tokenizer, judge.prompts, recipe.eval.max_new_tokens, recipe.eval.batch_size, recipe.seed).answers
    scores, _ = answer_metrics(answers, judge)
    return {key: scores.get(key) for key in SWEEP_ANSWER_METRICS}


# The answer metrics of a sweep row (validation split), beside the losses.
SWEEP_ANSWER_METRICS = ("fact_recall", "invented_facts", "invented_contacts", "rouge_l", "similarity")


def sweep(recipe_path: str, overrides: list[str], grid: dict[str, list], score_answers: bool = True) -> Path:
    """Train every combination with the same budget and, with `score_answers`, score each one's answers on the
    validation split; write a table and a plot to `<run>/sweep/`."""
    base = load_recipe(recipe_path, overrides)
    target = base.run_dir / "sweep"
    keys = list(grid)
    rows = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        settings = [f"{k}={v}" for k, v in zip(keys, combo)]
        label = ",".join(settings)
        name = "-".join(f"{k.split('.')[-1]}_{v}" for k, v in zip(keys, combo))
        variant = load_recipe(recipe_path, [*overrides, *settings, f"name={name}", f"output_dir={target}", "eval.enabled=false", "distill.enabled=false"])
        print(f"kit.sft: sweep {label}", flush=True)
        started = time.time()
        run(variant)
        manifest = json.loads((variant.run_dir / "manifest.json").read_text())
        metrics = manifest["train_metrics"]
        row = {"variant": label, "eval_loss": metrics.get("eval_loss"), "train_loss": metrics.get("train_loss"),
               "trainable_parameters": manifest["parameters"]["trainable"], "wall_seconds": round(time.time() - started, 1)}
        if score_answers:
            print(f"kit.sft: sweep {label}: answering the validation split", flush=True)
            row.update(score_on_validation(variant))
        rows.append(row)
    write_json(target / "results.json", rows)
    answer_columns = [key for key in SWEEP_ANSWER_METRICS if any(row.get(key) is not None for row in rows)]
    header = ["variant", "validation loss", "train loss", *(key.replace("_", " ") for key in answer_columns),
              "trainable parameters", "training s"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        cells = [row["variant"], _cell(row["eval_loss"]), _cell(row["train_loss"]), *(_cell(row.get(k)) for k in answer_columns),
                 f"{row['trainable_parameters']:,}", str(row["wall_seconds"])]
        lines.append("| " + " | ".join(cells) + " |")
    (target / "table.md").write_text("\n".join(lines) + "\n")
    _plot_sweep(rows, target / "sweep.png")
    print("\n".join(lines) + f"\nkit.sft: sweep table {target / 'table.md'}, plot {target / 'sweep.png'}", flush=True)
    return target


def _cell(value) -> str:
    if value is None:
        return "n/a"
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def _plot_sweep(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["variant"] for r in rows]
    panels = [("eval_loss", "validation loss"), ("fact_recall", "fact recall (validation answers)"),
              ("invented_facts", "invented facts (validation answers)"), ("wall_seconds", "training time (s)")]
    panels = [(key, label) for key, label in panels if any(r.get(key) is not None for r in rows)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
    for axis, (key, label) in zip(axes[0], panels):
        values = [r[key] if r.get(key) is not None else float("nan") for r in rows]
        bars = axis.bar(range(len(names)), values, color="#2f80ed")
        axis.bar_label(bars, fmt="%.3g")
        axis.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
        axis.set_title(label)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def make_parser(prog: str = "python -m kit.sft"):
    parser = recipe_parser(prog, "Fine-tune a model on support conversations.")
    parser.add_argument("--preflight", action="store_true", help="check data and loss mask, print one example, train nothing")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in <run>/checkpoints")
    parser.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                        help="train one variant per value (repeat for a grid) and compare them")
    return parser


def work(args) -> Path:
    """What the parsed command asks of this stage alone: a sweep, a preflight or one training run."""
    if args.sweep:
        return sweep(args.recipe, args.overrides, parse_sweep(args.sweep))
    return run(load_recipe(args.recipe, args.overrides), resume=args.resume, preflight_only=args.preflight)


def main(argv: list[str] | None = None) -> None:
    """This stage alone: train and write the artifacts (the eval and distill the recipe enables do not run)."""
    args = make_parser().parse_args(argv)
    run_cli(lambda: work(args))


if __name__ == "__main__":
    # `python -m kit.sft recipe.yaml` is the user's whole path: kit.pipeline chains data -> sft -> eval -> distill
    # (`--train-only` stops after training). Run as a script, this file is the module `__main__`, so importing
    # kit.pipeline (which imports kit.sft) makes no import cycle.
    from kit.pipeline import main as pipeline_main

    pipeline_main()
