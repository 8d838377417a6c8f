"""kit's SFT path vs plain TRL SFTTrainer defaults, same model, data, LoRA and budget, in one run (CPU).

    python bench/sft_cpu.py [--steps 30] [--out runs/bench-sft-cpu]

Both train the bundled SmolLM2-135M-Instruct on the quickstart's training split for the same number of
steps, batch size, learning rate and LoRA config. What differs is what each decides by itself:
- plain TRL defaults: conversational `messages` dataset, gradient checkpointing on, bf16 autocast on, batches
  in random order, loss on every token (`use_cpu=True` is the one setting added: the defaults refuse a CPU);
- kit: its own assistant-token mask, no gradient checkpointing on CPU, bf16 autocast where the CPU has native
  bf16 (as TRL) with the frozen base held in bf16 under LoRA, length-grouped batches, LoRA dropout masks drawn
  four per random number (kit/dropout.py), and glibc's malloc told to keep freed memory for reuse
  (`speed.keep_freed_memory`; process-wide, so TRL runs first here and does not get it).
Then kit again with `sft.method=qlora` (the same LoRA on a 4-bit NF4 base; bitsandbytes runs it on a CPU,
slowly). Prints non-padding tokens/s of each, kit's ratio to TRL's, peak RSS (the process's, so cumulative:
it only grows) and the held-out (test split) eval loss on assistant tokens of each tuned model, computed by
the same function. Time is the `train()` call, less kit's validation
passes (TRL's defaults get no validation set); kit's checkpoint saving stays in.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (ru_maxrss is in KiB on Linux): it only grows, so each run's
    figure is the peak up to its end."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", default="runs/bench-sft-cpu")
    parser.add_argument("--methods", nargs="+", default=["kit", "kit_qlora"], choices=["kit", "kit_qlora"],
                        help="which kit runs follow TRL's (qlora: the 4-bit base, slow on a CPU)")
    args = parser.parse_args()

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    class TrainTimer(TrainerCallback):
        """Training time only, through the callback API: TRL's defaults have no validation set, kit validates."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.began = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            self.validation_seconds = sum(e["eval_runtime"] for e in state.log_history if "eval_runtime" in e)
            self.seconds = time.perf_counter() - self.began - self.validation_seconds
            self.tokens = [e["num_tokens"] for e in state.log_history if "num_tokens" in e][-1]

    from kit import data, models, sft
    from kit.scoring import assistant_loss
    from kit.recipe import load_recipe

    out = Path(args.out)
    recipe = load_recipe("recipes/quickstart.yaml", [f"output_dir={out}", "name=kit", f"sft.max_steps={args.steps}",
                                                      "eval.enabled=false", "sft.report_to=none"])
    data.build(recipe)
    train_rows = data.load_split(recipe, "train")
    test_rows = data.load_split(recipe, "test")
    model_path = models.resolve(recipe.model.name)
    tokenizer = models.load_tokenizer(recipe.model, model_path)
    lora = recipe.sft.lora
    results = {}

    # --- plain TRL defaults (only the budget and the LoRA config are set, like kit's)
    torch.manual_seed(recipe.seed)
    trl_args = SFTConfig(
        output_dir=str(out / "trl"),
        max_steps=args.steps,
        per_device_train_batch_size=recipe.sft.batch_size,
        learning_rate=recipe.sft.learning_rate,
        lr_scheduler_type=recipe.sft.lr_scheduler,
        warmup_steps=recipe.sft.warmup_steps,
        max_length=recipe.sft.max_length,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=recipe.seed,
        use_cpu=True,  # the one setting TRL's defaults need on a machine without a GPU (bf16 stays at its default)
    )
    trainer = SFTTrainer(
        model=model_path,
        args=trl_args,
        train_dataset=Dataset.from_list([{"messages": r["messages"]} for r in train_rows]),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                               target_modules=lora.target_modules, task_type="CAUSAL_LM"),
    )
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    tokens = [e["num_tokens"] for e in trainer.state.log_history if "num_tokens" in e][-1]
    model = trainer.model.merge_and_unload().float().eval()
    loss = assistant_loss(model, tokenizer, test_rows, 8, recipe.sft.max_length)["eval_loss"]
    results["trl_defaults"] = {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds, "test_loss": loss,
                               "gradient_checkpointing": trl_args.gradient_checkpointing, "bf16": trl_args.bf16,
                               "peak_rss_mib": peak_rss_mib()}
    del trainer, model

    # --- kit, through the code path users run (observed with a TrainerCallback), with LoRA and with QLoRA
    for name, method in (("kit", "lora"), ("kit_qlora", "qlora")):
        if name not in args.methods:
            continue
        variant = load_recipe("recipes/quickstart.yaml", [f"output_dir={out}", f"name={name}", f"sft.max_steps={args.steps}",
                                                           "eval.enabled=false", "sft.report_to=none", f"sft.method={method}"])
        timer = TrainTimer()
        sft.run(variant, callbacks=[timer])
        model = models.load_model(variant.model, adapter=variant.run_dir / "adapter", path=model_path).merge_and_unload().eval()
        loss = assistant_loss(model, tokenizer, test_rows, 8, variant.sft.max_length)["eval_loss"]
        results[name] = {"seconds": timer.seconds, "validation_seconds": timer.validation_seconds, "tokens": timer.tokens,
                         "tokens_per_s": timer.tokens / timer.seconds, "test_loss": loss, "peak_rss_mib": peak_rss_mib()}
        del model

    ratio = results["kit"]["tokens_per_s"] / results["trl_defaults"]["tokens_per_s"] if "kit" in results else None
    print(f"\n{args.steps} steps x batch {recipe.sft.batch_size}, torch threads {torch.get_num_threads()}")
    print(f"{'':14} {'train s':>8} {'tokens':>8} {'tokens/s':>9} {'test loss (assistant)':>22} {'peak RSS MiB':>13}")
    for name, row in results.items():
        print(f"{name:14} {row['seconds']:8.1f} {row['tokens']:8.0f} {row['tokens_per_s']:9.1f} {row['test_loss']:22.4f} "
              f"{row['peak_rss_mib']:13.0f}")
    if ratio is not None:
        print(f"kit / TRL defaults tokens/s: {ratio:.2f}x")
    (out / "results.json").write_text(json.dumps({**results, "ratio": ratio, "steps": args.steps}, indent=2))


if __name__ == "__main__":
    main()
