"""kit's CPU LoRA dropout: the statistics of nn.Dropout from a quarter of the random draws, and where kit uses it."""

import math

import pytest
import torch
from torch import nn

from kit import dropout as kd


def test_every_lane_of_a_draw_drops_with_probability_p():
    torch.manual_seed(0)
    n = 400_000
    keep = kd.keep_mask(torch.Size([n]), kd.BitsDropout(0.05).dropped)
    sigma = math.sqrt(0.05 * 0.95 / (n / 4))
    for lane in range(4):  # a lane fed by fewer random bits (e.g. a 63-bit draw's top lane) would miss by ~1.5%
        dropped = 1 - keep.view(-1, 4)[:, lane].float().mean().item()
        assert abs(dropped - 0.05) < 5 * sigma, (lane, dropped)
    pairs = keep.view(-1, 4)[:, :2]
    both = (~pairs[:, 0] & ~pairs[:, 1]).float().mean().item()
    assert abs(both - 0.05**2) < 5 * math.sqrt(0.0025 / (n / 4))  # lanes are independent


def test_kept_values_are_scaled_so_the_expectation_is_exact():
    torch.manual_seed(1)
    layer = kd.BitsDropout(0.1).train()
    x = torch.ones(300_000)
    y = layer(x)
    kept = y[y != 0]
    assert torch.all(kept == layer.scale) and layer.scale == pytest.approx(65536 / (65536 - round(0.1 * 65536)))
    assert y.mean().item() == pytest.approx(1.0, abs=5 * math.sqrt(0.1 / 0.9 / 300_000))


def test_gradient_flows_through_kept_elements_only():
    torch.manual_seed(2)
    layer = kd.BitsDropout(0.3).train()
    x = torch.randn(64, 33, requires_grad=True)  # an element count that is not a multiple of 4
    y = layer(x)
    y.sum().backward()
    assert torch.equal(x.grad, (y != 0).float() * layer.scale)


def test_eval_mode_and_zero_p_are_identity_and_seeds_reproduce():
    x = torch.randn(5, 7)
    assert kd.BitsDropout(0.5).eval()(x) is x and kd.BitsDropout(0.0).train()(x) is x
    layer = kd.BitsDropout(0.5).train()
    torch.manual_seed(3)
    first = layer(x)
    torch.manual_seed(3)
    assert torch.equal(first, layer(x)) and not torch.equal(first, layer(x))
    with pytest.raises(ValueError):
        kd.BitsDropout(1.0)


def test_replaces_peft_lora_dropouts_and_the_adapter_is_unchanged(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=8, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stock = sum(isinstance(m, nn.Dropout) for m in model.modules())
    replaced = kd.replace_lora_dropout(model)
    assert replaced > 0 and replaced == sum(isinstance(m, kd.BitsDropout) for m in model.modules())
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == stock - replaced
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    assert any(p.grad is not None for n, p in model.named_parameters() if "lora_A" in n)


def test_kit_plans_it_on_cpu_only_and_the_trainer_gets_it(tiny_recipe):
    from transformers import TrainerCallback

    from kit import sft, speed
    from kit.recipe import load_recipe

    shape = speed.ModelShape(parameters=10**8, layers=4, hidden=64, vocab=100, model_type="llama")
    assert speed.plan(speed.Hardware(cuda=False), shape, "lora", 8, 256).cpu_lora_dropout is True
    gpu = speed.Hardware(cuda=True, name="gpu", memory_gib=80.0, compute_capability=(9, 0))
    assert speed.plan(gpu, shape, "lora", 8, 256).cpu_lora_dropout is False

    recipe = load_recipe(tiny_recipe(), ["sft.max_steps=1"])
    captured = {}

    class Observe(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            captured["kinds"] = {type(m).__name__ for m in model.modules() if "Dropout" in type(m).__name__}

    sft.run(recipe, callbacks=[Observe()])
    assert "BitsDropout" in captured["kinds"] and "Dropout" not in captured["kinds"]
