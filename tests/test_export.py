import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kit import export, models, sft
from kit.recipe import load_recipe


def test_merged_export_reloads_with_equal_logits(tiny_recipe):
    recipe = load_recipe(tiny_recipe(), ["sft.max_steps=3"])
    sft.run(recipe)
    folder = export.run(recipe) / "merged"
    assert list(folder.glob("*.safetensors")) and not list(folder.glob("*.bin"))
    assert json.loads((folder / "kit_export.json").read_text())["recipe"] == "tiny"
    merged = AutoModelForCausalLM.from_pretrained(folder).eval()  # plain transformers, no PEFT
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template
    reference = models.load_model(recipe.model, adapter=recipe.run_dir / "adapter").eval()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "where is my order"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        difference = (merged(**prompt).logits - reference(**prompt).logits).abs().max().item()
    assert difference < 1e-4
    base = models.load_model(recipe.model).eval()
    with torch.no_grad():
        assert (base(**prompt).logits - merged(**prompt).logits).abs().max().item() > 1e-4  # the adapter is in


def test_export_without_training_is_a_clear_error(tiny_recipe):
    import pytest

    from kit.errors import KitError

    with pytest.raises(KitError, match="run `python -m kit.sft`"):
        export.run(load_recipe(tiny_recipe()))
