import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kit import eval as kit_eval
from kit import sft
from kit.masking import tokenize_conversation
from kit.recipe import load_recipe

CONVERSATIONS = [
    {"messages": [{"role": "user", "content": "where is my order"}, {"role": "assistant", "content": "Hi there, it ships soon."}]},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "refund?"},
                  {"role": "assistant", "content": "Hi there, refunds take 5-7 business days."}]},
    {"messages": [{"role": "user", "content": "plus"}, {"role": "assistant", "content": "Plus costs $6.99."}]},
]


def test_rouge_l_matches_hand_computation():
    metric = kit_eval.load_metric("rouge_l")
    # LCS("the cat is on the mat", "the cat sat on the mat") = 5 of 6 words: P = R = F = 5/6.
    # LCS("hello world", "hello") = 1: P = 1, R = 1/2, F = 2/3. Mean = (5/6 + 2/3) / 2 = 0.75.
    score = metric.compute(predictions=["the cat sat on the mat", "hello"], references=["the cat is on the mat", "hello world"])
    assert score["rougeL"] == pytest.approx(0.75, abs=1e-9)
    assert metric.compute(predictions=["a b"], references=["c d"])["rougeL"] == 0.0


def test_assistant_loss_matches_per_token_hand_computation(tiny_model_dir):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    scores = kit_eval.assistant_loss(model, tokenizer, CONVERSATIONS, batch_size=2, max_length=256)
    # By hand: one conversation at a time, no padding, -log p(token) summed over assistant tokens.
    total, count = 0.0, 0
    for conversation in CONVERSATIONS:
        encoded = tokenize_conversation(tokenizer, conversation["messages"])
        ids = torch.tensor([encoded["input_ids"]])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(input_ids=ids).logits[0], dim=-1)
        for position in range(1, len(encoded["input_ids"])):
            if encoded["completion_mask"][position]:
                total -= log_probs[position - 1, encoded["input_ids"][position]].item()
                count += 1
    assert scores["assistant_tokens"] == count
    assert scores["eval_loss"] == pytest.approx(total / count, rel=1e-5)
    assert scores["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)


def test_eval_compares_base_and_tuned(tiny_recipe):
    recipe = load_recipe(tiny_recipe(), ["sft.max_steps=2"])
    base_only = kit_eval.run(recipe)  # before training: base alone
    assert list(json.loads((base_only / "metrics.json").read_text())["models"]) == ["base"]
    sft.run(recipe)
    folder = kit_eval.run(recipe)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics["models"]) == {"base", "tuned"}
    for row in metrics["models"].values():
        assert math.isfinite(row["eval_loss"]) and 0.0 <= row["rouge_l"] <= 1.0 and row["samples"] >= 1
    assert metrics["models"]["base"]["eval_loss"] != metrics["models"]["tuned"]["eval_loss"]
    report = (folder / "report.md").read_text()
    assert "| base |" in report and "| tuned |" in report
    generations = [json.loads(line) for line in (folder / "generations.jsonl").read_text().splitlines()]
    assert len(generations) == metrics["models"]["base"]["samples"] and {"base", "tuned", "reference"} <= set(generations[0])
    assert (folder / "comparison.png").read_bytes()[:4] == b"\x89PNG"
