"""LoRA and QLoRA speed on one GPU: kit's SFT code path vs plain TRL defaults, in one run.

    python bench/gpu_sft.py                 # random-weight Llama-3.1-8B shape, seq 2048, batch 4, 20 steps
    python bench/gpu_sft.py --tiny          # the same code path on a tiny model (CPU smoke test)

Builds the random-weight model once (saved as bf16 safetensors, so kit loads it the way users' models load),
then trains 20 steps each of: plain TRL SFTTrainer defaults (LoRA r16 all-linear, gradient checkpointing on),
`kit.sft.run` with `sft.method=lora`, and `kit.sft.run` with `sft.method=qlora`. Prints tokens/s, peak GiB,
MFU (4N FLOPs per token for LoRA: forward 2N + activation-gradient backward 2N, over 989 TFLOP/s bf16 dense)
and the loss at each logged step. Needs no network: the tokenizer is the bundled SmolLM2 one (token ids
fit any vocabulary) and the data are synthetic support conversations long enough to fill the sequence.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

H200_BF16_FLOPS = 989e12


def synthetic_conversations(n: int, turns: int) -> list[dict]:
    topics = ["a late order", "a refund", "a thermostat that is offline", "a Plus subscription", "a cracked lamp"]
    rows = []
    for i in range(n):
        messages = [{"role": "system", "content": "You are a support assistant."}]
        for t in range(turns):
            topic = topics[(i + t) % len(topics)]
            messages.append({"role": "user", "content": f"Hi, ticket {i}-{t}: I need help with {topic}. " * 6})
            messages.append({"role": "assistant", "content": f"Thanks for reaching out about {topic}. Here is what to do next, step by step. " * 8})
        rows.append({"messages": messages})
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    """The kit side reads the same conversations through a template: flattened to one Q&A row per turn pair."""
    import csv

    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["customer_question", "agent_answer"])
        for row in rows:
            pairs = zip(row["messages"][1::2], row["messages"][2::2])
            question = "\n".join(p[0]["content"] for p in pairs)
            writer.writerow([question, " ".join(m["content"] for m in row["messages"][2::2])])


def build_model(folder: Path, tiny: bool) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from kit import models

    if (folder / "config.json").is_file():
        return
    from kit.recipe import ModelSection

    tokenizer = models.load_tokenizer(ModelSection(name="bundled:smollm2-135m-instruct"))
    if tiny:
        config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, vocab_size=len(tokenizer))
    else:  # Llama-3.1-8B shape
        config = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                             num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
                             tie_word_embeddings=False)
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16 if device == "cuda" else torch.float32)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model


def measure(label: str, train, tokens_per_step: int, parameters: int, steps: int) -> dict:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    losses, seconds = train()  # seconds inside trainer.train(): model loading and data prep are not counted
    peak = torch.cuda.max_memory_allocated() / 1024**3 if torch.cuda.is_available() else float("nan")
    tokens_per_s = tokens_per_step * steps / seconds
    return {"setting": label, "tokens_per_s": tokens_per_s, "peak_gib": peak,
            "mfu": tokens_per_s * 4 * parameters / H200_BF16_FLOPS, "seconds": seconds, "losses": losses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model: a CPU smoke test of this script")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default="runs/bench-gpu-sft")
    parser.add_argument("--skip", default="", help="comma list of settings to skip: trl,lora,qlora")
    args = parser.parse_args()

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from kit import sft
    from kit.recipe import load_recipe

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    seq, batch = (256, 2) if args.tiny else (2048, 4)
    model_dir = out / ("tiny-model" if args.tiny else "llama-8b-random")
    build_model(model_dir, args.tiny)
    from transformers import AutoConfig

    from kit import speed

    shape = speed.shape_of(AutoConfig.from_pretrained(model_dir))
    parameters = shape.parameters
    rows = synthetic_conversations(batch * args.steps * 2, turns=2 if args.tiny else 8)
    csv_path = out / "conversations.csv"
    write_csv(rows, csv_path)
    tokens_per_step = batch * seq  # rows are longer than seq: every row is full after truncation / packing
    skip = set(filter(None, args.skip.split(",")))
    results = []

    if "trl" not in skip:
        from transformers import AutoTokenizer

        def plain_trl():
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
            trainer = SFTTrainer(
                model=str(model_dir),
                args=SFTConfig(output_dir=str(out / "trl"), max_steps=args.steps, per_device_train_batch_size=batch,
                               max_length=seq, logging_steps=1, save_strategy="no", report_to=[],
                               use_cpu=not torch.cuda.is_available(), bf16=torch.cuda.is_available(),
                               model_init_kwargs={"dtype": torch.bfloat16 if torch.cuda.is_available() else torch.float32}),
                train_dataset=Dataset.from_list(rows),
                processing_class=tokenizer,
                peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
            )
            output = trainer.train()
            return [e["loss"] for e in trainer.state.log_history if "loss" in e], output.metrics["train_runtime"]

        results.append(measure("TRL defaults (LoRA)", plain_trl, tokens_per_step, parameters, args.steps))

    for method in ("lora", "qlora"):
        if method in skip or (method == "qlora" and not torch.cuda.is_available()):
            continue
        recipe = load_recipe("recipes/quickstart.yaml", [
            f"name=bench-{method}", f"output_dir={out}", f"model.name={model_dir}", "model.dtype=auto",
            f"data.sources=[{{path: {csv_path}, template: qa_csv}}]", "data.system_prompt=You are a support assistant.",
            "data.validation_fraction=0", "data.test_fraction=0", f"sft.method={method}", f"sft.max_steps={args.steps}",
            f"sft.batch_size={batch}", f"sft.max_length={seq}", "sft.logging_steps=1", "sft.report_to=none",
            "sft.warmup_steps=0", "eval.enabled=false",
        ])

        def kit_run(recipe=recipe):
            run_dir = sft.run(recipe)
            manifest = json.loads((run_dir / "manifest.json").read_text())
            return [e["loss"] for e in manifest["log_history"] if "loss" in e], manifest["train_metrics"]["train_runtime"]

        results.append(measure(f"kit {method}", kit_run, tokens_per_step, parameters, args.steps))

    print(f"\nmodel {shape.parameters / 1e9:.2f}B parameters, seq {seq}, batch {batch}, {args.steps} steps, "
          f"device {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}")
    print(f"{'setting':22} {'tokens/s':>10} {'peak GiB':>9} {'MFU':>6}  loss first -> last")
    for row in results:
        print(f"{row['setting']:22} {row['tokens_per_s']:10.0f} {row['peak_gib']:9.1f} {row['mfu']:6.1%}  "
              f"{row['losses'][0]:.3f} -> {row['losses'][-1]:.3f}")
    if results and results[0]["setting"].startswith("TRL"):
        for row in results[1:]:
            print(f"{row['setting']} / TRL defaults: {row['tokens_per_s'] / results[0]['tokens_per_s']:.2f}x")
    (out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
