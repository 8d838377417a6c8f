import json
import math

import torch
from safetensors.torch import load_file

from kit import sft
from kit.recipe import load_recipe


def test_lora_smoke_trains_adapter_and_writes_manifest(tiny_recipe):
    recipe = load_recipe(tiny_recipe(), ["sft.max_steps=4"])
    run_dir = sft.run(recipe)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert math.isfinite(manifest["train_metrics"]["train_loss"])
    assert math.isfinite(manifest["train_metrics"]["eval_loss"])
    assert manifest["train_metrics"]["global_step"] == 4
    assert manifest["dataset"]["sha256"] == json.loads((run_dir / "dataset" / "stats.json").read_text())["sha256"]
    assert manifest["recipe"]["sft"]["max_steps"] == 4 and manifest["versions"]["trl"]
    assert 0 < manifest["parameters"]["trainable"] < manifest["parameters"]["total"]
    weights = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    lora_b = {name: t for name, t in weights.items() if "lora_B" in name}
    assert lora_b, "the adapter has LoRA weights"
    # PEFT initialises lora_B to zeros: any non-zero entry means training changed it.
    unchanged = [name for name, t in lora_b.items() if torch.count_nonzero(t) == 0]
    assert not unchanged, f"Parameters {unchanged} have not changed"
    assert (run_dir / "recipe.yaml").is_file()


def test_only_assistant_tokens_reach_the_loss(tiny_recipe, tiny_model_dir):
    from transformers import AutoTokenizer

    from kit import data

    recipe = load_recipe(tiny_recipe())
    data.build(recipe)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    dataset = sft.tokenize_split(tokenizer, data.load_split(recipe, "train"), 128, "train")
    for row in dataset:
        trained = tokenizer.decode([t for t, m in zip(row["input_ids"], row["completion_mask"]) if m])
        assert trained.startswith("Hi there,") and trained.endswith("<|im_end|>")
        assert "support assistant" not in trained and "<|im_start|>" not in trained
