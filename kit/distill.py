"""Distillation: a smaller, faster student learns what the tuned teacher learned.

    python -m kit.distill recipes/quickstart.yaml [--set distill.max_steps=30 ...]

`kit.pipeline` (`python -m kit.sft`) runs this after training when `distill.enabled`; this command runs
it on its own (after `kit.sft`, since the default teacher is the tuned model).

- Teacher: the tuned model (base + this run's adapter, merged in memory), or `distill.teacher`.
- Student: `distill.student.name` (a smaller model of the teacher's tokenizer family), or cut from the
  teacher by keeping `distill.student.keep_layers` of its blocks, initialised with the teacher's weights.
  The vocabularies are compared before any model is loaded.
- `offline` mode: loss = alpha * CE(answer) + (1 - alpha) * T^2 * KL(teacher_T || student_T) on the
  assistant tokens only (mask from `kit.masking`), through `kit.trainer.KDTrainer` (TRL's SFTTrainer
  with `compute_loss` overridden). The teacher runs at every step, or its top-k log-probs are cached in
  `<run>/distill_cache/` once (`distill.cache_top_k`) and reused.
- `on_policy` mode: TRL's DistillationTrainer (the student samples answers, generalised JSD, `beta`).

Writes `<run>/student/`: a plain transformers folder (safetensors, tokenizer, chat template) whose
`manifest.json` is written last; `kit.runs.student_dir(recipe)` finds it once complete.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from kit import data, models, speed
from kit.cli import recipe_parser, run_cli
from kit.errors import KitError
from kit.masking import ensure_chat_template, tokenize_conversation
from kit.recipe import ModelSection, Recipe, load_recipe
from kit.runs import atomic_dir, tuned_adapter, umask

# ---------------------------------------------------------------------------------------------- the loss


def kd_loss(
    student_logits,
    targets,
    alpha: float,
    temperature: float,
    teacher_logits=None,
    teacher_top_k=None,
    num_items=None,
):
    """alpha * CE(targets) + (1 - alpha) * T^2 * KL(teacher_T || student_T), over N trained positions.

    `student_logits` is (N, V), `targets` (N,). The teacher is either its logits (N, V) (exact KL over the
    vocabulary) or `(ids, log_probs)` of its top-k tokens, each (N, k), log-probs at temperature 1: the
    teacher's tempered distribution is then renormalised over those k tokens. Sums are divided by
    `num_items` when given (the Trainer's count over the whole gradient-accumulation batch), else by N.
    Returns (loss, mean CE, mean KL); the two means are detached, for logging.
    """
    import torch
    import torch.nn.functional as F

    count = student_logits.size(0)
    denominator = num_items if num_items is not None else max(count, 1)
    student_logits = student_logits.float()
    ce_sum = F.cross_entropy(student_logits, targets, reduction="sum")
    kl_sum = torch.zeros((), device=student_logits.device)
    if alpha < 1.0:
        student_log_probs = F.log_softmax(student_logits / temperature, dim=-1)
        if teacher_logits is not None:
            teacher_log_probs = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
        elif teacher_top_k is not None:
            ids, log_probs = teacher_top_k
            teacher_log_probs = F.log_softmax(log_probs.float() / temperature, dim=-1)
            student_log_probs = student_log_probs.gather(-1, ids.long())
        else:
            raise ValueError("kd_loss needs teacher_logits or teacher_top_k when alpha < 1")
        # A token the teacher rules out (log-prob -inf) adds 0 * (-inf) = nan unless clamped to a finite floor.
        teacher_log_probs = teacher_log_probs.clamp(min=torch.finfo(teacher_log_probs.dtype).min)
        kl_sum = (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum()
    loss = (alpha * ce_sum + (1.0 - alpha) * temperature**2 * kl_sum) / denominator
    return loss, (ce_sum / max(count, 1)).detach(), (kl_sum / max(count, 1)).detach()


def trained_positions(labels):
    """(B, L-1) mask of the positions whose next token is trained: logits[:, :-1][mask] predict labels[:, 1:][mask]."""
    return labels[:, 1:] != -100


def batch_kd_loss(student_logits, labels, alpha, temperature, teacher_logits=None, teacher_top_k=None, num_items=None):
    """`kd_loss` on (B, L, V) logits and (B, L) labels (-100 = not trained), with the causal shift.

    Only positions whose next token is trained (the assistant's answers, from `kit.masking`) reach the
    loss. `teacher_top_k` is already one (ids, log-probs) row per trained position, in batch order.
    """
    mask = trained_positions(labels)
    return kd_loss(
        student_logits[:, :-1][mask],
        labels[:, 1:][mask],
        alpha,
        temperature,
        teacher_logits=None if teacher_logits is None else teacher_logits[:, :-1][mask],
        teacher_top_k=teacher_top_k,
        num_items=num_items,
    )


# ------------------------------------------------------------------------------------- teacher and student


def _model_section(recipe: Recipe, reference: str) -> ModelSection:
    return ModelSection(name=reference, dtype=recipe.model.dtype, trust_remote_code=recipe.model.trust_remote_code,
                        allow_pickle=recipe.model.allow_pickle)


def _resolve(reference: str, key: str) -> str:
    """models.resolve, with the error naming the distill key the user wrote instead of model.name."""
    try:
        return models.resolve(reference)
    except KitError as exc:
        raise KitError(re.sub(r"^model\.name:", f"{key}:", str(exc))) from None


@dataclass
class Teacher:
    model: object
    tokenizer: object
    description: dict


def teacher_tokenizer(recipe: Recipe):
    """The teacher's tokenizer and where its weights are, without loading the weights."""
    if recipe.distill.teacher is None:
        adapter = tuned_adapter(recipe)
        if adapter is None:
            raise KitError(
                f"distill.teacher: no tuned model in {recipe.run_dir} yet; run `python -m kit.sft` on this recipe "
                "first, or set distill.teacher to a model reference"
            )
        path = models.resolve(recipe.model.name)
        return models.load_tokenizer(recipe.model, path), path, adapter
    path = _resolve(recipe.distill.teacher, "distill.teacher")
    return models.load_tokenizer(_model_section(recipe, recipe.distill.teacher), path), path, None


def check_vocabularies(teacher_tok, student_tok, student_name: str) -> None:
    """Distillation compares next-token distributions id by id: both tokenizers must map text to the same ids."""
    teacher_vocab, student_vocab = teacher_tok.get_vocab(), student_tok.get_vocab()
    if teacher_vocab == student_vocab:
        return
    differing = sorted(set(teacher_vocab.items()) ^ set(student_vocab.items()), key=lambda item: item[1])
    example = differing[0][0] if differing else "?"
    raise KitError(
        f"distill.student.name: {student_name} has another vocabulary than the teacher ({len(student_vocab)} vs "
        f"{len(teacher_vocab)} tokens, e.g. {example!r} differs); pick a student of the teacher's tokenizer family "
        "or cut one from the teacher with distill.student.keep_layers"
    )


def load_teacher(recipe: Recipe, tokenizer, path: str, adapter: Path | None) -> Teacher:
    if adapter is not None:
        model = models.load_model(recipe.model, adapter=adapter, path=path).merge_and_unload()
        description = {"reference": recipe.model.name, "adapter": str(adapter)}
    else:
        model = models.load_model(_model_section(recipe, recipe.distill.teacher), path=path)
        description = {"reference": recipe.distill.teacher}
    model.eval()
    model.requires_grad_(False)
    description["parameters"] = sum(p.numel() for p in model.parameters())
    description["layers"] = getattr(model.config.get_text_config(), "num_hidden_layers", None)
    return Teacher(model, tokenizer, description)


def _blocks_name(model, count: int) -> str:
    """The dotted name of the ModuleList that holds the model's transformer blocks."""
    import torch

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count and name.split(".")[-1] in ("layers", "h", "blocks", "layer"):
            return name
    raise KitError(
        f"distill.student.keep_layers: cannot find the {count} blocks of {type(model).__name__}; "
        "give a ready student with distill.student.name"
    )


def kept_blocks(keep_layers, count: int) -> list[int]:
    """Block indices for `distill.student.keep_layers` on a teacher with `count` blocks."""
    if keep_layers == "drop_middle":
        # The first blocks build the representation and the last ones map it to tokens; the middle ones are the
        # most alike, so dropping them hurts least (on the quickstart, initial test loss 8 instead of 13).
        half = (count + 1) // 2
        head = (half + 1) // 2
        keep = list(range(head)) + list(range(count - (half - head), count))
    elif keep_layers == "every_second":
        keep = list(range(0, count, 2))
    else:
        keep = list(keep_layers)
    out_of_range = [i for i in keep if i >= count]
    if out_of_range:
        raise KitError(
            f"distill.student.keep_layers: the teacher has {count} blocks (0-{count - 1}); "
            f"{out_of_range} do not exist"
        )
    return keep


def cut_student(teacher_model, keep: list[int]):
    """A copy of the teacher with only blocks `keep` (in that order), its embeddings, final norm and head."""
    import copy

    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(teacher_model.config)
    text_config = config.get_text_config()
    count = text_config.num_hidden_layers
    blocks = _blocks_name(teacher_model, count)
    text_config.num_hidden_layers = len(keep)
    if isinstance(getattr(text_config, "layer_types", None), list):  # per-block attention kinds follow the blocks
        text_config.layer_types = [text_config.layer_types[i] for i in keep]
    student = AutoModelForCausalLM.from_config(config, dtype=teacher_model.dtype)
    source = teacher_model.state_dict()
    pattern = re.compile(rf"^{re.escape(blocks)}\.(\d+)\.")
    weights = {}
    for key in student.state_dict():
        match = pattern.match(key)
        weights[key] = source[f"{blocks}.{keep[int(match.group(1))]}.{key[match.end():]}" if match else key]
    student.load_state_dict(weights, strict=True)
    student.generation_config = copy.deepcopy(teacher_model.generation_config)
    return student.to(next(teacher_model.parameters()).device)


def build_student(recipe: Recipe, teacher: Teacher, student_path: str | None):
    section = recipe.distill.student
    if section.name is not None:
        model = models.load_model(_model_section(recipe, section.name), path=student_path)
        return model, {"reference": section.name}
    count = teacher.model.config.get_text_config().num_hidden_layers
    keep = kept_blocks(section.keep_layers, count)
    return cut_student(teacher.model, keep), {"from_teacher": True, "keep_layers": keep}


# -------------------------------------------------------------------------------------------------- data


def tokenize_rows(tokenizer, conversations: list[dict], max_length: int, name: str, first_row: int = 0) -> list[dict]:
    """`input_ids`, `completion_mask` and a `row` number (it keys the teacher cache) per usable conversation."""
    rows, truncated, dropped = [], 0, 0
    for conversation in conversations:
        encoded = tokenize_conversation(tokenizer, conversation["messages"], max_length)
        truncated += encoded["truncated"]
        # Position 0 is never predicted, so a trained token there alone leaves nothing to learn.
        if sum(encoded["completion_mask"][1:]) == 0:
            dropped += 1
            continue
        rows.append({"input_ids": encoded["input_ids"], "completion_mask": encoded["completion_mask"], "row": first_row + len(rows)})
    trained = sum(sum(r["completion_mask"][1:]) for r in rows)
    print(
        f"kit.distill: {name}: {len(rows)} conversations, {trained} trained (assistant) tokens, {truncated} truncated "
        f"at sft.max_length={max_length}, {dropped} dropped with no assistant token left",
        flush=True,
    )
    return rows


@dataclass
class TeacherCache:
    """The teacher's top-k token ids and log-probs at every trained position, rows concatenated."""

    ids: object  # (positions, k) int32
    log_probs: object  # (positions, k) float32
    offsets: object  # (rows + 1,) int64: row r's positions are offsets[r]:offsets[r + 1]

    def take(self, rows: list[int], device):
        import torch

        pieces = [slice(int(self.offsets[r]), int(self.offsets[r + 1])) for r in rows]
        ids = torch.cat([self.ids[p] for p in pieces]).to(device)
        log_probs = torch.cat([self.log_probs[p] for p in pieces]).to(device)
        return ids, log_probs


def _teacher_identity(recipe: Recipe, adapter: Path | None, path: str) -> dict:
    """What makes two teachers the same for the cache: base + adapter bytes, or the reference and its weight files."""
    if adapter is not None:
        digest = hashlib.sha256((adapter / "adapter_model.safetensors").read_bytes()).hexdigest()
        return {"base": recipe.model.name, "revision": recipe.model.revision, "adapter_sha256": digest}
    identity = {"reference": recipe.distill.teacher}
    folder = Path(path)
    if folder.is_dir():
        identity["files"] = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.glob("*.safetensors"))
    return identity


def teacher_cache(recipe: Recipe, teacher: Teacher, rows: list[dict], identity: dict, vocab_size: int) -> TeacherCache:
    """Load the teacher's top-k log-probs for `rows` from `<run>/distill_cache/`, computing them once."""
    import torch
    from safetensors.torch import load_file, save_file

    k = min(recipe.distill.cache_top_k, vocab_size)
    digest = hashlib.sha256(json.dumps({"teacher": identity, "k": k, "vocab": vocab_size}, sort_keys=True).encode())
    for row in rows:
        digest.update(json.dumps([row["input_ids"], row["completion_mask"]]).encode())
    folder = recipe.run_dir / "distill_cache"
    path = folder / f"teacher-top{k}-{digest.hexdigest()[:16]}.safetensors"
    if path.is_file():
        print(f"kit.distill: teacher top-{k} log-probs reused from {path}", flush=True)
        tensors = load_file(path)
        return TeacherCache(tensors["ids"], tensors["log_probs"], tensors["offsets"])

    started = time.time()
    model, device = teacher.model, next(teacher.model.parameters()).device
    pad = teacher.tokenizer.pad_token_id
    all_ids, all_log_probs, offsets = [], [], [0]
    batch_size = recipe.sft.batch_size
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        width = max(len(r["input_ids"]) for r in batch)
        ids = torch.tensor([r["input_ids"] + [pad] * (width - len(r["input_ids"])) for r in batch], device=device)
        attention = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in batch], device=device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=attention, use_cache=False).logits[..., :vocab_size]
        for i, row in enumerate(batch):
            positions = [p for p in range(len(row["input_ids"]) - 1) if row["completion_mask"][p + 1]]
            log_probs = torch.log_softmax(logits[i, positions].float(), dim=-1)
            top = log_probs.topk(k, dim=-1)
            all_ids.append(top.indices.to(torch.int32).cpu())
            all_log_probs.append(top.values.cpu())
            offsets.append(offsets[-1] + len(positions))
    cache = TeacherCache(torch.cat(all_ids), torch.cat(all_log_probs), torch.tensor(offsets, dtype=torch.int64))
    folder.mkdir(parents=True, exist_ok=True)
    handle, scratch = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    os.close(handle)
    try:
        save_file({"ids": cache.ids, "log_probs": cache.log_probs, "offsets": cache.offsets}, scratch)
        os.chmod(scratch, 0o666 & ~umask())
        os.replace(scratch, path)
    finally:
        if os.path.exists(scratch):
            os.unlink(scratch)
    print(
        f"kit.distill: teacher top-{k} log-probs of {offsets[-1]} tokens cached in {path} ({time.time() - started:.0f}s)",
        flush=True,
    )
    return cache


# ------------------------------------------------------------------------------------------------ training


def _peft_config(recipe: Recipe):
    if recipe.distill.student.method != "lora":
        return None
    from kit.trainer import lora_config

    return lora_config(recipe)


def train_offline(recipe: Recipe, student, teacher: Teacher, train_rows, validation_rows, cache, vocab_size: int,
                  output_dir: Path, plan=None):
    import torch
    from datasets import Dataset
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from kit.trainer import KDTrainer, training_arguments

    tokenizer = teacher.tokenizer
    pad_collator = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)

    def collate(examples):
        batch = pad_collator(examples)
        batch["row"] = torch.tensor([example["row"] for example in examples])
        return batch

    args = training_arguments(recipe, "distill", output_dir, plan, has_validation=bool(validation_rows))
    trainer = KDTrainer(
        model=student,
        args=args,
        data_collator=collate,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(validation_rows) if validation_rows else None,
        processing_class=tokenizer,
        peft_config=_peft_config(recipe),
        teacher=teacher.model,
        teacher_cache=cache,
        alpha=recipe.distill.alpha,
        temperature=recipe.distill.temperature,
        vocab_size=vocab_size,
        kd_loss=batch_kd_loss,
    )
    return trainer


def train_on_policy(recipe: Recipe, student, teacher: Teacher, conversations: list[dict], output_dir: Path, plan=None):
    from datasets import Dataset
    from trl import DistillationConfig, DistillationTrainer

    from kit.trainer import training_arguments

    prompts = []
    for conversation in conversations:
        messages = conversation["messages"]
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=0)
        if last > 0:
            prompts.append({"prompt": messages[:last]})
    if not prompts:
        raise KitError("data: no training conversation ends in an assistant answer; on_policy needs prompts to answer")
    tokenizer = teacher.tokenizer
    tokenizer.padding_side = "left"  # the student generates from the prompts
    args = training_arguments(recipe, "distill", output_dir, plan, has_validation=False, config_class=DistillationConfig,
                              temperature=recipe.distill.temperature, beta=recipe.distill.beta,
                              max_completion_length=recipe.distill.max_new_tokens)
    return DistillationTrainer(
        model=student,
        teacher_model=teacher.model,
        args=args,
        train_dataset=Dataset.from_list(prompts),
        processing_class=tokenizer,
        peft_config=_peft_config(recipe),
    )


def folder_megabytes(folder: Path) -> float:
    return round(sum(f.stat().st_size for f in folder.iterdir() if f.suffix == ".safetensors") / 1e6, 1)  # MB like eval's size_mb


def run(recipe: Recipe) -> Path:
    """Distill the recipe's teacher into a smaller student; returns the `<run>/student/` folder."""
    import torch
    from transformers import set_seed

    started = time.time()
    distill = recipe.distill
    print(f"kit.distill: settings {json.dumps(distill.model_dump(mode='json'))}", flush=True)
    dataset_dir = data.build(recipe)
    stats = json.loads((dataset_dir / "stats.json").read_text())

    # Vocabularies first: a wrong student fails in seconds, before any weights load.
    tokenizer, teacher_path, adapter = teacher_tokenizer(recipe)
    ensure_chat_template(tokenizer)
    padding_side = tokenizer.padding_side  # on_policy generates with left padding; the saved tokenizer keeps this
    student_path = None
    if distill.student.name is not None:
        student_path = _resolve(distill.student.name, "distill.student.name")
        check_vocabularies(tokenizer, models.load_tokenizer(_model_section(recipe, distill.student.name), student_path), distill.student.name)

    set_seed(recipe.seed)
    teacher = load_teacher(recipe, tokenizer, teacher_path, adapter)
    student, student_source = build_student(recipe, teacher, student_path)
    vocab_size = len(tokenizer)
    for role, model in (("distill.teacher", teacher.model), ("distill.student.name", student)):
        if model.get_output_embeddings().weight.shape[0] < vocab_size:
            raise KitError(f"{role}: the model scores fewer tokens than its tokenizer has ({vocab_size}); use a matching model")
    student_parameters = sum(p.numel() for p in student.parameters())
    print(
        f"kit.distill: teacher {teacher.description['parameters']:,} parameters, {teacher.description['layers']} blocks; "
        f"student {student_parameters:,} parameters, {student.config.get_text_config().num_hidden_layers} blocks "
        f"({json.dumps(student_source)})",
        flush=True,
    )

    # The same speed plan as kit.sft (bf16 autocast, checkpointing), for the student's shape and method.
    if student_path is not None:
        plan = speed.plan_for(recipe, student_path, distill.student.method, _model_section(recipe, distill.student.name),
                              "distill.student.name")
    elif adapter is None:  # a teacher given by reference: the student is cut from it
        plan = speed.plan_for(recipe, teacher_path, distill.student.method, _model_section(recipe, distill.teacher),
                              "distill.teacher")
    else:  # the tuned model (base + adapter) is the teacher
        plan = speed.plan_for(recipe, teacher_path, distill.student.method)
    print(f"kit.distill: speed settings: {plan.describe()}", flush=True)
    train_conversations = data.load_split(recipe, "train")
    output_dir = recipe.run_dir / "distill_checkpoints"
    if distill.mode == "offline":
        train_rows = tokenize_rows(tokenizer, train_conversations, recipe.sft.max_length, "train")
        if not train_rows:
            raise KitError("data: no training conversation has an assistant token; check the template and sft.max_length")
        validation_rows = tokenize_rows(
            tokenizer, data.load_split(recipe, "validation"), recipe.sft.max_length, "validation", first_row=len(train_rows)
        )
        cache = None
        if distill.cache_top_k is not None and distill.alpha < 1.0:
            identity = _teacher_identity(recipe, adapter, teacher_path)
            cache = teacher_cache(recipe, teacher, train_rows + validation_rows, identity, vocab_size)
        trainer = train_offline(recipe, student, teacher, train_rows, validation_rows, cache, vocab_size, output_dir, plan)
    else:
        if not torch.cuda.is_available():
            print("kit.distill: on_policy generates with the student at every step; on CPU this is slow", flush=True)
        trainer = train_on_policy(recipe, student, teacher, train_conversations, output_dir, plan)

    result = trainer.train()
    if not math.isfinite(result.training_loss):
        raise KitError("distill.learning_rate: the student's loss is not finite; lower the learning rate")
    metrics = {**result.metrics, "global_step": trainer.state.global_step}
    history = [entry for entry in trainer.state.log_history if "loss" in entry or "eval_loss" in entry]
    if distill.mode == "offline" and trainer.eval_dataset is not None:
        # The Trainer evaluates at each epoch's end and when it stops; evaluate only if it did not.
        evaluations = [entry for entry in history if "eval_loss" in entry]
        final = evaluations[-1] if evaluations and evaluations[-1].get("step") == trainer.state.global_step else None
        metrics.update(final or trainer.evaluate())

    from kit.trainer import write_manifest

    trained = trainer.model
    if distill.student.method == "lora":
        trained = trained.merge_and_unload()
    target = recipe.run_dir / "student"
    with atomic_dir(target) as scratch:
        trained.save_pretrained(scratch)  # safetensors
        tokenizer.padding_side = padding_side
        tokenizer.save_pretrained(scratch)  # with the chat template
        manifest = write_manifest(  # last: its presence means the student is complete
            scratch / "manifest.json", "distill", recipe, started,
            mode=distill.mode,
            teacher=teacher.description,
            student={
                **student_source,
                "parameters": student_parameters,
                "layers": trained.config.get_text_config().num_hidden_layers,
                "size_mb": folder_megabytes(scratch),
                "method": distill.student.method,
            },
            loss={"alpha": distill.alpha, "temperature": distill.temperature, "cache_top_k": distill.cache_top_k}
            if distill.mode == "offline"
            else {"beta": distill.beta, "temperature": distill.temperature},
            dataset={"sha256": stats["sha256"]},
            train_metrics=metrics,
            log_history=history,
        )
    print(
        f"kit.distill: student {target} ({student_parameters:,} parameters, {manifest['student']['size_mb']} MB) "
        f"in {time.time() - started:.0f}s",
        flush=True,
    )
    return target


def main(argv: list[str] | None = None) -> None:
    parser = recipe_parser("python -m kit.distill", "Distill the tuned model into a smaller, faster student.")
    args = parser.parse_args(argv)
    run_cli(lambda: run(load_recipe(args.recipe, args.overrides)))


if __name__ == "__main__":
    main()
