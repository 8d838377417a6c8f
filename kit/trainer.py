"""Training machinery every training stage shares: kit's trainers, their arguments, LoRA and the manifest.

`kit.sft` and `kit.distill` build their models and data, then come here for:
- `training_arguments(recipe, stage, ...)`: one builder of the TRL config for every stage, from the recipe
  and `kit.speed`'s plan (so distillation gets the same bf16 and checkpointing choices as SFT);
- `lora_config(recipe)`: the one LoRA/DoRA config;
- `KitSFTTrainer` (SFT) and `KDTrainer` (offline distillation): TRL's `SFTTrainer` with public hooks
  overridden, as TRL's own trainers do (`create_optimizer`, `training_step`, `compute_loss`, `log`);
- `Guard` + `GuardCallback` + `stop_on_interrupt`: the stop on a non-finite loss and on Ctrl-C, through the
  callback API (also `kit.prefer`'s), and `last_complete_checkpoint`, where `--resume` continues from (kit.sft, kit.prefer);
- `write_manifest`: the manifest every stage writes last, so that its presence means the work is complete.

Library internals and process-wide settings kit still touches during training, each because no public path
exists (all of them made from this module, except the malloc setting, which `kit.sft.train` applies):
- `_get_train_sampler` (transformers `Trainer`) is overridden to construct kit's seeded length-grouped sampler
  (order from (seed, epoch) only, so --resume replays it; the stock one draws from the global RNG that
  dropout also consumes). transformers has no public sampler hook; TRL's own trainers (GRPO, KTO,
  Distillation) override the same method.
- peft's `lora_dropout` ModuleDict entries are replaced by `kit.dropout.BitsDropout` on CPU
  (`replace_lora_dropout`): peft takes only a probability, and the stock dropout was 17% of a CPU step.
- `kit.speed.keep_freed_memory` sets glibc's malloc options for the whole process (CPU only; `mallopt`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from transformers.trainer_pt_utils import LengthGroupedSampler  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402

from kit import models  # noqa: E402
from kit.errors import KitError  # noqa: E402
from kit.recipe import Recipe  # noqa: E402
from kit.runs import package_versions, write_json  # noqa: E402


# ---------------------------------------------------------------- configuration


def lora_config(recipe: Recipe, dora: bool = False):
    """The LoRA (or DoRA) adapter config of `sft.lora`, used by SFT and by a LoRA student alike."""
    from peft import LoraConfig

    lora = recipe.sft.lora
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
                      use_dora=dora, task_type="CAUSAL_LM")


def training_arguments(recipe: Recipe, stage: str, output_dir: Path, plan, has_validation: bool,
                       packing: bool = False, config_class=SFTConfig, **extra):
    """The TRL config (`config_class`, SFTConfig unless given) of `stage` ("sft" or "distill").

    Shared: batch, schedule, seed, device and the speed plan's bf16 / checkpointing choices. SFT adds its
    evaluation and checkpoint schedule; distillation takes its own rate and budget and saves no checkpoints.
    `extra` are the stage's own keys (e.g. DistillationConfig's `beta`).
    """
    cuda = torch.cuda.is_available()
    sft = recipe.sft
    bf16 = (cuda and models.resolve_dtype(recipe.model.dtype) == torch.bfloat16) or bool(plan and plan.cpu_bf16_autocast)
    checkpointing = plan.gradient_checkpointing if plan is not None else bool(sft.gradient_checkpointing)
    common = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=sft.batch_size,
        per_device_eval_batch_size=sft.batch_size,
        gradient_accumulation_steps=sft.gradient_accumulation_steps,
        lr_scheduler_type=sft.lr_scheduler,
        warmup_steps=sft.warmup_steps,
        weight_decay=sft.weight_decay,
        logging_steps=sft.logging_steps,
        seed=recipe.seed,
        data_seed=recipe.seed,
        bf16=bf16,
        fp16=False,
        gradient_checkpointing=checkpointing,
        use_cpu=not cuda,
        dataloader_num_workers=0,
    )
    if stage == "sft":
        schedule = {"strategy": "steps", "steps": sft.eval_steps} if sft.eval_steps else {"strategy": "epoch", "steps": None}
        common.update(
            learning_rate=sft.learning_rate,
            num_train_epochs=sft.epochs,
            max_steps=sft.max_steps or -1,
            eval_strategy=schedule["strategy"] if has_validation else "no",
            eval_steps=schedule["steps"],
            save_strategy=schedule["strategy"],
            save_steps=schedule["steps"],
            save_total_limit=sft.save_total_limit,
            load_best_model_at_end=has_validation,
            metric_for_best_model="eval_loss" if has_validation else None,
            greater_is_better=False if has_validation else None,
            report_to=[] if sft.report_to == "none" else [sft.report_to],
            max_length=sft.max_length,
            packing=packing,
            completion_only_loss=True,
            use_liger_kernel=bool(plan and plan.use_liger_kernel),
            # Batches of similar lengths waste less compute on padding (about a third on the quickstart).
            train_sampling_strategy="random" if packing else "group_by_length",
        )
    elif stage == "distill":
        distill = recipe.distill
        common.update(
            learning_rate=distill.learning_rate,
            num_train_epochs=distill.epochs,
            max_steps=distill.max_steps or -1,
            save_strategy="no",
            report_to="none",
        )
        if config_class is SFTConfig:  # offline: kit's loss through SFTTrainer
            common.update(
                eval_strategy="epoch" if has_validation else "no",
                max_length=sft.max_length,
                packing=False,
                completion_only_loss=True,
                remove_unused_columns=False,  # keeps `row`, which keys the teacher cache
                train_sampling_strategy="group_by_length",
            )
    else:
        raise ValueError(f"unknown training stage {stage!r}")
    return config_class(**common, **extra)


def write_manifest(path: Path, stage: str, recipe: Recipe, started: float, **fields) -> dict:
    """`<folder>/manifest.json` of a training stage: what ran, on what, with which versions; written last."""
    manifest = {
        "stage": stage,
        **fields,
        "recipe": recipe.model_dump(mode="json"),
        "versions": package_versions(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "wall_seconds": round(time.time() - started, 1),
    }
    write_json(path, manifest)
    return manifest


def last_complete_checkpoint(folder: Path, remove_incomplete: bool, stage: str) -> Path | None:
    """The newest checkpoint whose trainer_state.json (the Trainer writes it last) is whole (kit.sft, kit.prefer).

    A run killed while saving leaves a newer, partial folder: it is removed (rank 0) rather than resumed from.
    """
    complete = None
    for checkpoint in sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.rsplit("-", 1)[-1])):
        try:
            json.loads((checkpoint / "trainer_state.json").read_text())
            complete = checkpoint
        except (OSError, ValueError):
            if remove_incomplete:
                print(f"{stage}: removing {checkpoint}: incomplete (the run was killed while saving it)", flush=True)
                shutil.rmtree(checkpoint, ignore_errors=True)
    return complete


# ---------------------------------------------------------------- guards


@dataclass
class Guard:
    """Shared between kit's trainer and callback: why training stopped early, if it did."""

    interrupted: bool = False
    nonfinite_step: int | None = None


@contextmanager
def stop_on_interrupt(guard: Guard, stage: str, enabled: bool = True):
    """While training: the first Ctrl-C sets `guard.interrupted` (GuardCallback then saves a checkpoint and stops
    at the step's end); a second one aborts at once. `enabled` False (a multi-process launch) leaves SIGINT alone."""
    if not enabled:
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def on_interrupt(signum, frame):
        if guard.interrupted:  # a second Ctrl-C stops at once
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        guard.interrupted = True
        print(f"\nkit.{stage}: stopping after this step and saving a checkpoint (Ctrl-C again to abort)", flush=True)

    signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class GuardCallback(TrainerCallback):
    """Stops at the step end, and never checkpoints weights a non-finite loss may have broken."""

    def __init__(self, guard: Guard):
        self.guard = guard

    def on_step_end(self, args, state, control, **kwargs):
        if self.guard.nonfinite_step is not None:
            control.should_save = False
            control.should_evaluate = False
            control.should_training_stop = True
        elif self.guard.interrupted:
            control.should_save = True
            control.should_training_stop = True
        return control


# ---------------------------------------------------------------- SFT


class SeededLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped batches whose order depends only on (seed, epoch), so --resume replays the same order."""

    def __init__(self, *args, seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator = torch.Generator().manual_seed(self.seed + epoch)


def transformer_blocks(model):
    """The model's list of transformer blocks (decoder layers), whatever the architecture calls it."""
    candidates = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    if not candidates:
        raise KitError("sft.method: cannot find the transformer blocks of this model; use sft.method=lora")
    return max(candidates, key=len)


def layer_lr_groups(model, base_lr: float, decay: float, weight_decay: float) -> list[dict]:
    """Optimizer groups: block i of L at base_lr * decay^(L-1-i); embeddings below the first block; rest at base_lr."""
    blocks = transformer_blocks(model)
    block_names = {}
    for index, block in enumerate(blocks):
        for name, module in model.named_modules():
            if module is block:
                block_names[name + "."] = index
    depth = len(blocks)
    groups: dict[tuple[float, float], list] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        index = next((i for prefix, i in block_names.items() if name.startswith(prefix)), None)
        if index is not None:
            lr = base_lr * decay ** (depth - 1 - index)
        elif "embed" in name:
            lr = base_lr * decay**depth
        else:
            lr = base_lr
        no_decay = parameter.ndim < 2 or "norm" in name or name.endswith(".bias")
        groups.setdefault((lr, 0.0 if no_decay else weight_decay), []).append(parameter)
    return [{"params": params, "lr": lr, "weight_decay": wd} for (lr, wd), params in sorted(groups.items())]


class KitSFTTrainer(SFTTrainer):
    """SFTTrainer plus: a seeded sampler, layer-wise LR groups, a stop on a non-finite loss, and (with several
    processes) fingerprints of the examples each one trained on."""

    def __init__(self, *args, layer_lr_decay: float | None = None, guard: Guard | None = None,
                 record_examples: bool = False, cpu_lora_dropout: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.layer_lr_decay = layer_lr_decay
        self.guard = guard
        self.seen_examples: list[str] | None = [] if record_examples else None
        if cpu_lora_dropout:
            from kit.dropout import replace_lora_dropout

            replace_lora_dropout(self.model)

    def _get_train_sampler(self, train_dataset=None):
        # The one override of a private method: see the module docstring.
        if self.args.train_sampling_strategy != "group_by_length":
            return super()._get_train_sampler(train_dataset)
        dataset = self.train_dataset if train_dataset is None else train_dataset
        return SeededLengthGroupedSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps,
            dataset=dataset,
            model_input_name=self.processing_class.model_input_names[0] if self.processing_class is not None else None,
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
        )

    def create_optimizer(self, model=None):
        if self.layer_lr_decay is None or self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        groups = layer_lr_groups(opt_model, self.args.learning_rate, self.layer_lr_decay, self.args.weight_decay)
        self.optimizer = optimizer_cls(groups, **kwargs)
        return self.optimizer

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.seen_examples is not None:
            mask = inputs.get("attention_mask")
            for i, row in enumerate(inputs["input_ids"]):
                tokens = row[mask[i].bool()] if mask is not None else row
                self.seen_examples.append(hashlib.sha1(tokens.cpu().numpy().tobytes()).hexdigest()[:12])
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.guard is not None and not bool(loss.isfinite().all()):
            self.guard.nonfinite_step = self.state.global_step + 1
        return loss


# ---------------------------------------------------------------- distillation


class KDTrainer(SFTTrainer):
    """TRL's SFTTrainer with the soft-target loss (`compute_loss`), its two parts logged through `log`."""

    def __init__(self, *args, kd_loss, teacher=None, teacher_cache=None, alpha=0.5, temperature=1.0, vocab_size=None,
                 **kwargs):
        self.kd_loss = kd_loss  # `kit.distill.batch_kd_loss`: the loss is distillation's, the trainer only runs it
        self.teacher, self.teacher_cache = teacher, teacher_cache
        self.kd_alpha, self.kd_temperature, self.vocab_size = alpha, temperature, vocab_size
        self.kd_parts: dict[str, dict[str, list[float]]] = {"train": {}, "eval": {}}
        super().__init__(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        rows = inputs.pop("row")
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
        # Logits beyond the tokenizer (padded embedding rows) are never a target: compare the shared vocabulary.
        teacher_logits = teacher_top_k = None
        if self.kd_alpha < 1.0:
            if self.teacher_cache is not None:
                teacher_top_k = self.teacher_cache.take(rows.tolist(), outputs.logits.device)
            else:
                with torch.no_grad():
                    teacher_logits = self.teacher(
                        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False
                    ).logits[..., : self.vocab_size]
        loss, ce, kl = self.kd_loss(
            outputs.logits[..., : self.vocab_size],
            inputs["labels"],
            self.kd_alpha,
            self.kd_temperature,
            teacher_logits=teacher_logits,
            teacher_top_k=teacher_top_k,
            num_items=num_items_in_batch,
        )
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        parts = self.kd_parts["train" if model.training else "eval"]
        parts.setdefault("kd_ce", []).append(ce.item())
        parts.setdefault("kd_kl", []).append(kl.item())
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        prefix = "eval_" if mode == "eval" else ""
        for key, values in self.kd_parts[mode].items():
            if values:
                logs[prefix + key] = sum(values) / len(values)
        self.kd_parts[mode] = {}
        super().log(logs, start_time)
