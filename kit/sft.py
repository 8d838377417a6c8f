"""Supervised fine-tuning: the support conversations teach the base model your answers.

    python -m kit.sft recipes/quickstart.yaml [--set sft.learning_rate=1e-4 ...]

Builds the dataset when it is missing or stale, trains a LoRA adapter with TRL's SFTTrainer (loss on
assistant tokens only, mask built by `kit.masking`), writes `<run>/adapter/` and then
`<run>/manifest.json` (written last: a run without it is not complete), and runs `kit.eval` when
`eval.enabled`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from kit import data, models
from kit.cli import recipe_parser, run_cli
from kit.errors import KitError
from kit.masking import ensure_chat_template, tokenize_conversation
from kit.recipe import Recipe, load_recipe
from kit.runs import atomic_dir, package_versions, write_json


def tokenize_split(tokenizer, conversations: list[dict], max_length: int, name: str):
    """A datasets.Dataset of `input_ids` + `completion_mask`; prints what truncation cost."""
    from datasets import Dataset

    rows, truncated, dropped, trained, total = [], 0, 0, 0, 0
    for conversation in conversations:
        encoded = tokenize_conversation(tokenizer, conversation["messages"], max_length)
        truncated += encoded["truncated"]
        if sum(encoded["completion_mask"]) == 0:
            dropped += 1  # truncation removed every assistant token: nothing to learn from it
            continue
        trained += sum(encoded["completion_mask"])
        total += len(encoded["input_ids"])
        rows.append({"input_ids": encoded["input_ids"], "completion_mask": encoded["completion_mask"]})
    print(
        f"kit.sft: {name}: {len(rows)} conversations, {total} tokens, {trained} trained (assistant) tokens, "
        f"{truncated} truncated at sft.max_length={max_length}, {dropped} dropped with no assistant token left",
        flush=True,
    )
    return Dataset.from_list(rows) if rows else None


def show_example(tokenizer, dataset) -> None:
    """Print one training example with the trained tokens in [[...]], so the mask can be checked by eye."""
    example = dataset[0]
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
    print("kit.sft: first training example, trained tokens in [[...]]:\n" + "".join(pieces), flush=True)


def _trainer_args(recipe: Recipe, output_dir: Path, has_validation: bool):
    import torch
    from trl import SFTConfig

    cuda = torch.cuda.is_available()
    sft = recipe.sft
    bf16 = cuda and models.resolve_dtype(recipe.model.dtype) == torch.bfloat16
    checkpointing = sft.gradient_checkpointing if sft.gradient_checkpointing is not None else cuda
    return SFTConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=sft.batch_size,
        per_device_eval_batch_size=sft.batch_size,
        gradient_accumulation_steps=sft.gradient_accumulation_steps,
        learning_rate=sft.learning_rate,
        lr_scheduler_type=sft.lr_scheduler,
        warmup_steps=sft.warmup_steps,
        weight_decay=sft.weight_decay,
        num_train_epochs=sft.epochs,
        max_steps=sft.max_steps or -1,
        logging_steps=sft.logging_steps,
        eval_strategy="epoch" if has_validation else "no",
        save_strategy="no",
        report_to="none",
        seed=recipe.seed,
        data_seed=recipe.seed,
        max_length=sft.max_length,
        packing=False,
        completion_only_loss=True,
        bf16=bf16,
        fp16=False,
        gradient_checkpointing=checkpointing,
        use_cpu=not cuda,
        dataloader_num_workers=0,
        # Batches of similar lengths waste less compute on padding (about a third on the quickstart).
        train_sampling_strategy="group_by_length",
    )


def run(recipe: Recipe) -> Path:
    """Fine-tune the recipe's model on its data; returns the run folder."""
    import torch
    from peft import LoraConfig
    from transformers import set_seed
    from trl import SFTTrainer

    started = time.time()
    run_dir = recipe.run_dir
    print("kit.sft: resolved recipe\n" + recipe.to_yaml(), flush=True)
    model_path = models.resolve(recipe.model.name)  # a bad model reference fails before any work
    dataset_dir = data.build(recipe)
    stats = json.loads((dataset_dir / "stats.json").read_text())

    set_seed(recipe.seed)
    tokenizer = models.load_tokenizer(recipe.model, model_path)
    ensure_chat_template(tokenizer)
    train = tokenize_split(tokenizer, data.load_split(recipe, "train"), recipe.sft.max_length, "train")
    if train is None:
        raise KitError("data: no training conversation has an assistant token; check the template and sft.max_length")
    validation = tokenize_split(tokenizer, data.load_split(recipe, "validation"), recipe.sft.max_length, "validation")
    show_example(tokenizer, train)

    model = models.load_model(recipe.model, path=model_path)
    lora = recipe.sft.lora
    peft_config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    trainer = SFTTrainer(
        model=model,
        args=_trainer_args(recipe, run_dir / "checkpoints", validation is not None),
        train_dataset=train,
        eval_dataset=validation,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.model.parameters())
    print(f"kit.sft: training {trainable:,} of {total:,} parameters ({recipe.sft.method})", flush=True)

    result = trainer.train()
    metrics = {**result.metrics, "global_step": trainer.state.global_step}
    if not math.isfinite(result.training_loss):
        raise KitError("sft.learning_rate: training loss is not finite; lower the learning rate")
    if validation is not None:
        metrics.update(trainer.evaluate())
    history = [entry for entry in trainer.state.log_history if "loss" in entry or "eval_loss" in entry]

    with atomic_dir(run_dir / "adapter") as scratch:
        trainer.model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
    (run_dir / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
    manifest = {
        "stage": "sft",
        "recipe": recipe.model_dump(mode="json"),
        "model": {"reference": recipe.model.name, "resolved": model_path},
        "versions": package_versions(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "dataset": {"sha256": stats["sha256"], "stats": {k: stats[k] for k in ("input", "kept", "rejected", "duplicates", "splits")}},
        "parameters": {"trainable": trainable, "total": total},
        "train_metrics": metrics,
        "log_history": history,
        "wall_seconds": round(time.time() - started, 1),
    }
    write_json(run_dir / "manifest.json", manifest)  # last: its presence means the adapter is complete
    print(f"kit.sft: adapter {run_dir / 'adapter'}; manifest {run_dir / 'manifest.json'}", flush=True)

    if recipe.eval.enabled:
        from kit import eval as kit_eval

        kit_eval.run(recipe)
    print(f"kit.sft: done in {time.time() - started:.0f}s; artifacts in {run_dir}/", flush=True)
    return run_dir


def main(argv: list[str] | None = None) -> None:
    parser = recipe_parser("python -m kit.sft", "Fine-tune a model on support conversations.")
    args = parser.parse_args(argv)
    run_cli(lambda: run(load_recipe(args.recipe, args.overrides)))


if __name__ == "__main__":
    main()
