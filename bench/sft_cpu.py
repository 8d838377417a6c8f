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
Prints non-padding tokens/s of each and their ratio, and the held-out (test split) eval loss on assistant
tokens of each tuned model, computed by the same function. Time is the `train()` call, less kit's validation
passes (TRL's defaults get no validation set); kit's checkpoint saving stays in.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", default="runs/bench-sft-cpu")
    args = parser.parse_args()

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from kit import data, models, sft
    from kit.eval import assistant_loss
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
                               "gradient_checkpointing": trl_args.gradient_checkpointing, "bf16": trl_args.bf16}
    del trainer, model

    # --- kit, through the code path users run
    captured = {}
    original = sft._trainer_class

    def timed():
        trainer_cls, callback = original()

        class Timed(trainer_cls):
            def train(self, *a, **k):
                begin = time.perf_counter()
                output = super().train(*a, **k)
                # Training time only: TRL's defaults have no validation set, kit validates at the end.
                validation = sum(e["eval_runtime"] for e in self.state.log_history if "eval_runtime" in e)
                captured["seconds"] = time.perf_counter() - begin - validation
                captured["validation_seconds"] = validation
                captured["tokens"] = [e["num_tokens"] for e in self.state.log_history if "num_tokens" in e][-1]
                return output

        return Timed, callback

    sft._trainer_class = timed
    try:
        sft.run(recipe)
    finally:
        sft._trainer_class = original
    model = models.load_model(recipe.model, adapter=recipe.run_dir / "adapter", path=model_path).merge_and_unload().eval()
    loss = assistant_loss(model, tokenizer, test_rows, 8, recipe.sft.max_length)["eval_loss"]
    results["kit"] = {"seconds": captured["seconds"], "validation_seconds": captured["validation_seconds"],
                      "tokens": captured["tokens"],
                      "tokens_per_s": captured["tokens"] / captured["seconds"], "test_loss": loss}

    ratio = results["kit"]["tokens_per_s"] / results["trl_defaults"]["tokens_per_s"]
    print(f"\n{args.steps} steps x batch {recipe.sft.batch_size}, torch threads {torch.get_num_threads()}")
    print(f"{'':14} {'train s':>8} {'tokens':>8} {'tokens/s':>9} {'test loss (assistant)':>22}")
    for name, row in results.items():
        print(f"{name:14} {row['seconds']:8.1f} {row['tokens']:8.0f} {row['tokens_per_s']:9.1f} {row['test_loss']:22.4f}")
    print(f"kit / TRL defaults tokens/s: {ratio:.2f}x")
    (out / "results.json").write_text(json.dumps({**results, "ratio": ratio, "steps": args.steps}, indent=2))


if __name__ == "__main__":
    main()
