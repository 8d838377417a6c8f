from pathlib import Path

import pytest

from kit import speed

LLAMA_8B = speed.ModelShape(parameters=8_030_000_000, layers=32, hidden=4096, vocab=128_256, model_type="llama")
H200 = speed.Hardware(cuda=True, name="NVIDIA H200", memory_gib=139.8, compute_capability=(9, 0),
                      flash_attn_installed=True, liger_installed=True)
SMALL_GPU = speed.Hardware(cuda=True, name="NVIDIA L4", memory_gib=22.0, compute_capability=(8, 9))


def test_memory_model_matches_the_measured_anchor():
    # TRL on one H200, Llama-3.1-8B shape, seq 2048, batch 4, LoRA r16: 58.6 GiB without checkpointing.
    assert speed.estimate_peak_gib(LLAMA_8B, "lora", 4, 2048, checkpointing=False, fused_loss=False) == pytest.approx(58.6, rel=0.1)
    with_checkpointing = speed.estimate_peak_gib(LLAMA_8B, "lora", 4, 2048, checkpointing=True, fused_loss=False)
    assert 20.1 <= with_checkpointing < 40  # measured 20.1: the estimate errs on the safe side


def test_big_gpu_skips_checkpointing_and_uses_fast_kernels():
    plan = speed.plan(H200, LLAMA_8B, "lora", batch=4, seq=2048)
    assert plan.gradient_checkpointing is False
    assert plan.attn_implementation == "flash_attention_2" and plan.use_liger_kernel is True
    assert "fits" in plan.describe()


def test_small_gpu_turns_checkpointing_on_and_qlora_always_does():
    assert speed.plan(SMALL_GPU, LLAMA_8B, "lora", batch=4, seq=2048).gradient_checkpointing is True
    assert speed.plan(H200, LLAMA_8B, "qlora", batch=4, seq=2048).gradient_checkpointing is True
    assert speed.plan(SMALL_GPU, LLAMA_8B, "lora", 4, 2048).attn_implementation == "sdpa"  # no flash-attn installed


def test_cpu_path_is_unchanged_and_recipe_choices_win():
    cpu = speed.plan(speed.Hardware(cuda=False), LLAMA_8B, "lora", 8, 256)
    assert (cpu.gradient_checkpointing, cpu.attn_implementation, cpu.use_liger_kernel) == (False, "sdpa", False)
    forced = speed.plan(H200, LLAMA_8B, "lora", 4, 2048, checkpointing=True, attention="eager", liger=False)
    assert (forced.gradient_checkpointing, forced.attn_implementation, forced.use_liger_kernel) == (True, "eager", False)


def test_shape_from_config_estimates_parameters():
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128_256, tie_word_embeddings=False)
    shape = speed.shape_of(config)
    assert shape.parameters == pytest.approx(8.03e9, rel=0.01) and shape.model_type == "llama"


def test_cpu_with_native_bf16_autocasts_unless_the_recipe_says_no():
    bf16_cpu = speed.Hardware(cuda=False, cpu_bf16=True)
    assert speed.plan(bf16_cpu, LLAMA_8B, "lora", 8, 256).cpu_bf16_autocast is True
    assert "bf16 autocast" in speed.plan(bf16_cpu, LLAMA_8B, "lora", 8, 256).describe()
    assert speed.plan(speed.Hardware(cuda=False), LLAMA_8B, "lora", 8, 256).cpu_bf16_autocast is False
    assert speed.plan(bf16_cpu, LLAMA_8B, "lora", 8, 256, cpu_bf16=False).cpu_bf16_autocast is False
    assert speed.plan(H200, LLAMA_8B, "lora", 4, 2048).cpu_bf16_autocast is False  # GPUs follow model.dtype


def test_autocast_reaches_the_trainer_and_only_adapters_get_a_bf16_base(tiny_recipe, tiny_model_dir):
    import torch

    from kit import sft, trainer
    from kit.recipe import load_recipe

    plan = speed.plan(speed.Hardware(cuda=False, cpu_bf16=True), LLAMA_8B, "lora", 8, 256)
    recipe = load_recipe(tiny_recipe())
    no_bf16 = speed.plan(speed.Hardware(cuda=False), LLAMA_8B, "lora", 8, 256)
    assert trainer.training_arguments(recipe, "sft", recipe.run_dir, plan, False).bf16 is True
    assert trainer.training_arguments(recipe, "sft", recipe.run_dir, no_bf16, False).bf16 is False
    # Distillation follows the same plan (it used to ignore it).
    assert trainer.training_arguments(recipe, "distill", recipe.run_dir, plan, False).bf16 is True
    assert trainer.training_arguments(recipe, "distill", recipe.run_dir, no_bf16, False).bf16 is False
    model, peft_config = sft.build_model(recipe, str(tiny_model_dir), cpu_bf16_autocast=True)
    assert peft_config is not None and next(model.parameters()).dtype == torch.bfloat16
    full = load_recipe(tiny_recipe(), ["sft.method=full"])
    model, _ = sft.build_model(full, str(tiny_model_dir), cpu_bf16_autocast=True)
    assert next(model.parameters()).dtype == torch.float32  # trained weights keep float32 masters
    pinned = load_recipe(tiny_recipe(), ["model.dtype=float32"])
    model, _ = sft.build_model(pinned, str(tiny_model_dir), cpu_bf16_autocast=True)
    assert next(model.parameters()).dtype == torch.float32


FAULTS = """
import resource, sys
import torch
from kit import speed
if sys.argv[1] == "keep":
    assert speed.keep_freed_memory()
for _ in range(30):
    torch.ones(1 << 24)  # the heap grows to what the loop below needs (with the setting, once)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.ones(1 << 24)  # 64 MiB, written, then freed
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="tunes glibc's malloc")
def test_keep_freed_memory_stops_page_faults_on_reused_blocks():
    import subprocess
    import sys

    def faults(mode):
        done = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parent.parent)
        return int(done.stdout.strip())

    stock, kept = faults("stock"), faults("keep")
    assert stock > 20 * 16_000 * 0.8  # each 64 MiB block faulted in again: 16,384 pages of 4 KiB
    assert kept < stock / 10
    cpu = speed.plan(speed.Hardware(cuda=False, glibc=True), LLAMA_8B, "lora", 8, 256)
    assert cpu.cpu_keep_freed_memory and "freed memory kept" in cpu.describe()
    assert not speed.plan(H200, LLAMA_8B, "lora", 4, 2048).cpu_keep_freed_memory


def test_score_answer_tokens_only_projects_only_labelled_positions_on_cpu(monkeypatch):
    """TRL's fused LM head on a CPU: the same log-probabilities, from the labelled positions alone."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl.trainer import utils

    # TRL's own switch (a kit.sft run earlier in this process has patched it), restored after the test
    monkeypatch.setattr(utils, "_use_triton", getattr(utils._use_triton, "trl_original", utils._use_triton))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    model = LlamaForCausalLM(config).eval()
    utils.add_fused_lm_head(model)
    ids = torch.randint(0, 64, (2, 12))
    labels = ids.masked_fill(torch.arange(12) < 8, -100)  # a prompt of 8 tokens, 4 answer tokens
    projected = []
    apply = utils._ChunkedLogProbFunction.apply
    monkeypatch.setattr(utils._ChunkedLogProbFunction, "apply",
                        lambda hidden, *rest: projected.append(hidden.shape[0]) or apply(hidden, *rest))

    with torch.no_grad():
        every = model(input_ids=ids, labels=labels, fused_lm_head=True).log_probs
        assert speed.score_answer_tokens_only() and speed.score_answer_tokens_only()  # a second call changes nothing
        answers = model(input_ids=ids, labels=labels, fused_lm_head=True).log_probs
    assert projected == [2 * 11, 2 * 4]  # every shifted position, then only the labelled ones
    assert torch.allclose(every, answers, atol=1e-6)
    assert (answers[:, :7] == 0).all() and (answers[:, 7:] < 0).all()
    assert speed.plan(speed.Hardware(cuda=False), LLAMA_8B, "lora", 8, 256).cpu_answer_tokens_only
    assert not speed.plan(H200, LLAMA_8B, "lora", 4, 2048).cpu_answer_tokens_only
