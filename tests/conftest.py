"""Shared fixtures: a tiny random chat model built in-process (seconds on CPU), and tiny recipes.

Tests never touch a model hub. The real bundled model is only used by tests marked `slow`
(run with `--runslow`).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

REPO = Path(__file__).resolve().parent.parent

CORPUS = [
    "Hi there, thanks for reaching out! Your order ships in 3-5 business days.",
    "How do I reset my password? Use Forgot password on the sign-in page.",
    "My thermostat is offline after I changed my router. Restart both for 30 seconds.",
    "Returns are free within 30 days; refunds reach the original payment method in 5-7 days.",
    "Plus costs $6.99 per month and includes express shipping and a 3-year warranty.",
]

QA_ROWS = [
    ("where is my order", "Hi there, standard shipping takes 3-5 business days."),
    ("how do i reset my password", "Hi there, use Forgot password on the sign-in page."),
    ("can i return a lamp", "Hi there, returns are free within 30 days of delivery."),
    ("what does plus cost", "Hi there, Plus costs $6.99 per month."),
    ("my plug is offline", "Hi there, restart the plug and your router for 30 seconds."),
    ("when do i get my refund", "Hi there, refunds arrive within 5-7 business days."),
    ("do you ship express", "Hi there, express shipping takes 1-2 days for $12."),
    ("is there a warranty", "Hi there, every device has a 1-year warranty."),
    ("how do i cancel plus", "Hi there, cancel Plus under Account > Membership."),
    ("app will not pair", "Hi there, allow Bluetooth and use 2.4 GHz Wi-Fi while pairing."),
    ("order arrived damaged", "Hi there, send a photo in the app chat and we will replace it."),
    ("change my address", "Hi there, edit the address under Account > Orders before it ships."),
]


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests that use the real bundled model")


def pytest_collection_modifyitems(config, items):
    import torch

    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(pytest.mark.skip(reason="uses the real bundled model: run with --runslow"))
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


def build_tiny_model(folder: Path, seed: int = 0, num_layers: int = 2, hidden_size: int = 16) -> Path:
    """A random Llama-shaped chat model with a small byte-level BPE tokenizer and a ChatML template.

    bitsandbytes' CPU 4-bit kernels pack weights in blocks of 32 rows: the 4-bit tests use hidden_size=64.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from kit.masking import CHATML_TEMPLATE

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    texts = CORPUS + [q for q, _ in QA_ROWS] + [a for _, a in QA_ROWS] + ["system user assistant"]
    bpe.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def write_qa_csv(path: Path, rows=QA_ROWS, extra_lines: list[str] | None = None) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ticket_id", "created_at", "category", "customer_question", "agent_answer"])
        for i, (question, answer) in enumerate(rows):
            writer.writerow([f"T-{i + 1}", "2026-01-01T00:00:00", "general", question, answer])
    if extra_lines:
        with path.open("a", encoding="utf-8") as handle:
            handle.write("\n".join(extra_lines) + "\n")
    return path


@pytest.fixture
def tiny_recipe(tmp_path, tiny_model_dir):
    """Write a recipe for the tiny model and a small CSV; returns (recipe path, tree) and a writer for variants."""

    def make(**sections) -> Path:
        csv_path = write_qa_csv(tmp_path / "qa.csv")
        tree = {
            "name": "tiny",
            "output_dir": str(tmp_path / "runs"),
            "seed": 0,
            "model": {"name": str(tiny_model_dir)},
            "data": {
                "sources": [{"path": str(csv_path), "template": "qa_csv"}],
                "system_prompt": "You are a support assistant.",
                "validation_fraction": 0.2,
                "test_fraction": 0.2,
            },
            "sft": {"max_steps": 3, "batch_size": 4, "learning_rate": 1e-2, "logging_steps": 1, "max_length": 128},
            "eval": {"enabled": False, "max_new_tokens": 8, "batch_size": 4},
            "chat": {"max_new_tokens": 8, "port": 0},
        }
        for key, value in sections.items():
            tree[key] = {**tree.get(key, {}), **value} if isinstance(value, dict) else value
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(tree, sort_keys=False))
        return path

    return make
