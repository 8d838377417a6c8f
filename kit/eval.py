"""Evaluation: base vs tuned on the held-out test conversations, one table.

    python -m kit.eval recipes/quickstart.yaml

For each model: loss and perplexity on the assistant tokens (teacher forcing), and ROUGE-L of greedy
answers against the reference answers. Writes `<run>/eval/metrics.json`
(`{"models": {"base": {...}, "tuned": {...}}}`), `report.md`, `generations.jsonl` and `comparison.png`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from kit import data, models
from kit.cli import recipe_parser, run_cli
from kit.errors import KitError
from kit.masking import ensure_chat_template, render, tokenize_conversation
from kit.recipe import Recipe, load_recipe
from kit.runs import atomic_dir, tuned_adapter

METRICS_DIR = Path(__file__).resolve().parent / "metrics"


def load_metric(name: str):
    """One of kit's local `evaluate` modules (kit/metrics/<name>/), loadable offline."""
    import evaluate

    return evaluate.load(str(METRICS_DIR / name))


def assistant_loss(model, tokenizer, conversations: list[dict], batch_size: int, max_length: int) -> dict:
    """Mean cross-entropy over assistant tokens (the tokens a tuned model is trained on) and its perplexity."""
    import torch

    encoded = [tokenize_conversation(tokenizer, c["messages"], max_length) for c in conversations]
    encoded = [e for e in encoded if sum(e["completion_mask"]) > 0]
    total_loss, total_tokens = 0.0, 0
    device = next(model.parameters()).device
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start : start + batch_size]
        width = max(len(e["input_ids"]) for e in batch)
        pad = tokenizer.pad_token_id
        ids = torch.tensor([e["input_ids"] + [pad] * (width - len(e["input_ids"])) for e in batch], device=device)
        attention = torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in batch], device=device)
        labels = torch.tensor(
            [[t if m else -100 for t, m in zip(e["input_ids"], e["completion_mask"])] + [-100] * (width - len(e["input_ids"])) for e in batch],
            device=device,
        )
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=attention).logits.float()
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
        )
        total_loss += loss.item()
        total_tokens += int((labels[:, 1:] != -100).sum())
    mean = total_loss / max(total_tokens, 1)
    return {"eval_loss": mean, "perplexity": math.exp(min(mean, 50.0)), "assistant_tokens": total_tokens}


def generate_answers(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, batch_size: int, seed: int) -> list[str]:
    """Greedy answers to each conversation prefix, batched with left padding."""
    import torch
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    device = next(model.parameters()).device
    answers: list[str] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in tqdm(range(0, len(prompts), batch_size), desc="generating", unit="batch"):
            texts = [render(tokenizer, p, add_generation_prompt=True) for p in prompts[start : start + batch_size]]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.no_grad():
                output = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            new_tokens = output[:, batch["input_ids"].shape[1] :]
            answers += [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
    return answers


def evaluate_model(model, tokenizer, conversations: list[dict], recipe: Recipe) -> tuple[dict, list[str]]:
    started = time.time()
    scores = assistant_loss(model, tokenizer, conversations, recipe.eval.batch_size, recipe.sft.max_length)
    prompts = [c["messages"][:-1] for c in conversations]
    references = [c["messages"][-1]["content"] for c in conversations]
    answers = generate_answers(model, tokenizer, prompts, recipe.eval.max_new_tokens, recipe.eval.batch_size, recipe.seed)
    scores["rouge_l"] = load_metric("rouge_l").compute(predictions=answers, references=references)["rougeL"]
    scores["samples"] = len(conversations)
    scores["seconds"] = round(time.time() - started, 1)
    return scores, answers


def _plot(results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for axis, (key, label) in zip(axes, (("eval_loss", "eval loss (lower is better)"), ("rouge_l", "ROUGE-L (higher is better)"))):
        values = [results[name][key] for name in names]
        bars = axis.bar(names, values, color=["#9aa5b1", "#2f80ed", "#27ae60"][: len(names)])
        axis.bar_label(bars, fmt="%.3f")
        axis.set_title(label)
        axis.margins(y=0.2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _report(recipe: Recipe, results: dict[str, dict], conversations: list[dict], answers: dict[str, list[str]]) -> str:
    names = list(results)
    lines = [f"# Evaluation: {recipe.name}", "", f"{len(conversations)} held-out test conversations; greedy answers, "
             f"at most {recipe.eval.max_new_tokens} new tokens.", "", "| model | eval loss | perplexity | ROUGE-L |",
             "| --- | --- | --- | --- |"]
    for name in names:
        r = results[name]
        lines.append(f"| {name} | {r['eval_loss']:.4f} | {r['perplexity']:.2f} | {r['rouge_l']:.4f} |")
    lines += ["", "![comparison](comparison.png)", "", "## Answers side by side (first 5)", ""]
    for i, conversation in enumerate(conversations[:5]):
        lines.append(f"**Customer:** {conversation['messages'][-2]['content']}")
        lines.append(f"- reference: {conversation['messages'][-1]['content']}")
        lines += [f"- {name}: {answers[name][i]}" for name in names]
        lines.append("")
    return "\n".join(lines)


def run(recipe: Recipe) -> Path:
    """Evaluate base (and tuned, when trained) on the test split; returns the eval folder."""
    from kit.runs import write_json

    data.build(recipe)
    conversations = [c for c in data.load_split(recipe, "test") if c["messages"][-1]["role"] == "assistant"]
    if recipe.eval.max_samples:
        conversations = conversations[: recipe.eval.max_samples]
    if not conversations:
        raise KitError("data.test_fraction: the test split is empty; raise it so there is something to evaluate")
    model_path = models.resolve(recipe.model.name)
    tokenizer = models.load_tokenizer(recipe.model, model_path)
    ensure_chat_template(tokenizer)
    candidates = {"base": None, "tuned": tuned_adapter(recipe)}
    results, answers = {}, {}
    for name, adapter in candidates.items():
        if name != "base" and adapter is None:
            print(f"kit.eval: no complete {name} model in {recipe.run_dir}; run kit.sft first", flush=True)
            continue
        print(f"kit.eval: evaluating {name} on {len(conversations)} test conversations", flush=True)
        model = models.load_model(recipe.model, adapter=adapter, path=model_path)
        if adapter is not None:
            model = model.merge_and_unload()  # same outputs, faster generation
        model.eval()
        results[name], answers[name] = evaluate_model(model, tokenizer, conversations, recipe)
        print(f"kit.eval: {name}: " + ", ".join(f"{k}={v:.4g}" for k, v in results[name].items()), flush=True)
        del model

    target = recipe.run_dir / "eval"
    with atomic_dir(target) as scratch:
        with (scratch / "generations.jsonl").open("w", encoding="utf-8") as handle:
            for i, conversation in enumerate(conversations):
                row = {"id": conversation["id"], "reference": conversation["messages"][-1]["content"]}
                row.update({name: answers[name][i] for name in answers})
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        _plot(results, scratch / "comparison.png")
        (scratch / "report.md").write_text(_report(recipe, results, conversations, answers), encoding="utf-8")
        write_json(scratch / "metrics.json", {"run": recipe.name, "split": "test", "models": results})
    print(f"kit.eval: {target / 'metrics.json'}", flush=True)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = recipe_parser("python -m kit.eval", "Compare base and tuned models on the test split.")
    args = parser.parse_args(argv)
    run_cli(lambda: run(load_recipe(args.recipe, args.overrides)))


if __name__ == "__main__":
    main()
