import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kit import data, sft, trainer
from kit.errors import KitError
from kit.recipe import load_recipe

REPO = Path(__file__).resolve().parent.parent


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
    assert (run_dir / "plots" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert list((run_dir / "checkpoints" / "runs").rglob("events.out.tfevents*")), "TensorBoard logs"


def test_only_assistant_tokens_reach_the_loss(tiny_recipe, tiny_model_dir):
    from transformers import AutoTokenizer

    recipe = load_recipe(tiny_recipe())
    data.build(recipe)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    dataset, report = sft.tokenize_split(tokenizer, data.load_split(recipe, "train"), 128, "train")
    assert report.kept == len(dataset) > 0 and report.dropped == 0 and report.unclosed_turns == 0
    for row in dataset:
        trained = tokenizer.decode([t for t, m in zip(row["input_ids"], row["completion_mask"]) if m])
        assert trained.startswith("Hi there,") and trained.endswith("<|im_end|>")
        assert "support assistant" not in trained and "<|im_start|>" not in trained


@pytest.mark.parametrize("method", ["dora", "full", "freeze"])
def test_each_method_trains(tiny_recipe, tiny_model_dir, method):
    from transformers import AutoModelForCausalLM

    recipe = load_recipe(tiny_recipe(), [f"sft.method={method}", "sft.max_steps=2", "sft.freeze.trainable_layers=1"])
    run_dir = sft.run(recipe)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert math.isfinite(manifest["train_metrics"]["train_loss"]) and manifest["method"] == method
    if method == "dora":
        weights = load_file(run_dir / "adapter" / "adapter_model.safetensors")
        assert any("lora_magnitude_vector" in name for name in weights)
        return
    assert not (run_dir / "adapter").exists()
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(run_dir / "model").state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    if method == "full":
        assert "model.layers.0.self_attn.q_proj.weight" in changed and "model.embed_tokens.weight" in changed
    else:  # freeze: only the top block, the final norm and the head may move
        assert changed and all(n.startswith(("model.layers.1.", "model.norm.", "lm_head.")) for n in changed), changed
        assert "model.layers.1.mlp.up_proj.weight" in changed and "lm_head.weight" in changed


def test_qlora_trains_a_4bit_base_and_the_adapter_merges_and_exports(tiny_recipe, tmp_path, capsys):
    """The real 4-bit path (bitsandbytes NF4, double quantization) on whatever device runs the tests, CPU included."""
    pytest.importorskip("bitsandbytes")
    from bitsandbytes.nn import Linear4bit
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, TrainerCallback

    from kit import export, models

    from .conftest import build_tiny_model

    base = build_tiny_model(tmp_path / "tiny-64", hidden_size=64)  # 4-bit CPU kernels need rows in blocks of 32
    recipe = load_recipe(tiny_recipe(model={"name": str(base)}),
                         ["sft.method=qlora", "sft.max_steps=2", "export.formats=[merged]"])
    seen = {}

    class Observe(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            seen["4bit"] = sum(isinstance(m, Linear4bit) for m in model.modules())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if "loss" in logs:
                seen.setdefault("losses", []).append(logs["loss"])

    run_dir = sft.run(recipe, callbacks=[Observe()])
    assert seen["4bit"] > 0, "the base was loaded in 4 bits"
    assert seen["losses"] and all(math.isfinite(loss) for loss in seen["losses"])
    if not torch.cuda.is_available():
        assert "qlora on a CPU" in capsys.readouterr().out  # said once that it is slow there
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["method"] == "qlora" and manifest["train_metrics"]["global_step"] == 2
    lora_b = {n: t for n, t in load_file(run_dir / "adapter" / "adapter_model.safetensors").items() if "lora_B" in n}
    assert lora_b and all(torch.count_nonzero(t) for t in lora_b.values()), "every LoRA B matrix trained"

    # Merged into the 4-bit base it trained on: still 4-bit, and it answers.
    quantized = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16)
    merged = models.load_model(recipe.model, adapter=run_dir / "adapter", quantization_config=quantized).merge_and_unload()
    assert any(isinstance(m, Linear4bit) for m in merged.modules())
    ids = torch.tensor([[1, 2, 3, 4]], device=next(merged.parameters()).device)
    assert bool(merged(input_ids=ids).logits.isfinite().all())

    # Exported (merged into full-precision base weights) and loadable without PEFT.
    root = export.run(recipe)
    exported = AutoModelForCausalLM.from_pretrained(root / "merged")
    assert bool(exported(input_ids=torch.tensor([[1, 2, 3, 4]])).logits.isfinite().all())


def test_layer_lr_decay_sets_one_rate_per_depth(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)  # 2 blocks
    groups = trainer.layer_lr_groups(model, base_lr=1.0, decay=0.5, weight_decay=0.1)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert lr_of[id(named["model.layers.1.self_attn.q_proj.weight"])] == 1.0  # top block
    assert lr_of[id(named["model.layers.0.self_attn.q_proj.weight"])] == 0.5
    assert lr_of[id(named["model.embed_tokens.weight"])] == 0.25
    assert lr_of[id(named["lm_head.weight"])] == 1.0
    assert sum(len(g["params"]) for g in groups) == len(named)
    assert all(g["weight_decay"] == 0.0 for g in groups if any(p.ndim < 2 for p in g["params"]))


def test_trainer_uses_layer_lr_groups(tiny_recipe):
    from transformers import TrainerCallback

    recipe = load_recipe(tiny_recipe(), ["sft.method=full", "sft.max_steps=1", "sft.layer_lr_decay=0.5", "sft.lr_scheduler=constant"])
    captured = {}

    class Observe(TrainerCallback):
        def on_step_end(self, args, state, control, optimizer=None, **kwargs):
            captured["lrs"] = sorted({g["lr"] for g in optimizer.param_groups})

    sft.run(recipe, callbacks=[Observe()])
    base = recipe.sft.learning_rate
    assert captured["lrs"] == pytest.approx([base * 0.25, base * 0.5, base])


def test_preflight_prints_mask_and_trains_nothing(tiny_recipe, capsys):
    recipe = load_recipe(tiny_recipe())
    sft.run(recipe, preflight_only=True)
    out = capsys.readouterr().out
    assert "trained tokens in [[...]]" in out and "[[Hi there," in out and "<|im_end|>]]" in out
    assert "0 assistant turns without a trained end-of-turn token" in out
    assert not (recipe.run_dir / "manifest.json").exists() and not (recipe.run_dir / "adapter").exists()


def test_preflight_refuses_turns_that_never_learn_to_stop(tiny_recipe, tmp_path):
    # A template that closes assistant turns with plain text: the model could never learn to stop.
    template = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
                "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    from transformers import AutoTokenizer

    recipe = load_recipe(tiny_recipe())
    data.build(recipe)
    tokenizer = AutoTokenizer.from_pretrained(recipe.model.name)
    tokenizer.chat_template = template
    with pytest.raises(KitError, match="never learn to stop"):
        sft.preflight(recipe, tokenizer, sft.training_data(recipe))


def test_nan_loss_stops_with_clear_message_and_keeps_good_checkpoint(tiny_recipe):
    recipe = load_recipe(tiny_recipe(), ["sft.method=full", "sft.learning_rate=1e30", "sft.max_steps=6",
                                         "sft.eval_steps=1", "sft.lr_scheduler=constant"])
    with pytest.raises(KitError, match=r"NaN/inf at step \d+"):
        sft.run(recipe)
    assert not (recipe.run_dir / "manifest.json").exists()
    for checkpoint in (recipe.run_dir / "checkpoints").glob("checkpoint-*"):
        weights = load_file(checkpoint / "model.safetensors")
        assert all(bool(t.isfinite().all()) for t in weights.values()), checkpoint


def _train_command(recipe_path, *extra):
    return [sys.executable, "-m", "kit.sft", str(recipe_path), *extra]


def test_sigkill_then_resume_matches_uninterrupted_run(tiny_recipe, tmp_path):
    settings = ["--set", "sft.max_steps=10", "--set", "sft.eval_steps=1", "--set", "sft.save_total_limit=40",
                "--set", "sft.learning_rate=3e-3", "--set", "sft.logging_steps=1", "--set", "sft.report_to=none"]
    recipe_path = tiny_recipe()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    reference_dir = tmp_path / "reference"
    subprocess.run(_train_command(recipe_path, *settings, "--set", f"output_dir={reference_dir}"), check=True,
                   cwd=REPO, env=env, capture_output=True, timeout=600)
    killed_dir = tmp_path / "killed"
    kill_after = random.Random().randint(3, 8)
    process = subprocess.Popen(_train_command(recipe_path, *settings, "--set", f"output_dir={killed_dir}"),
                               cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = killed_dir / "tiny" / "checkpoints"
    deadline = time.time() + 300
    while not (checkpoints / f"checkpoint-{kill_after}").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed_dir / "tiny" / "manifest.json").exists(), "killed before the end: no complete run"
    resumed = subprocess.run(_train_command(recipe_path, *settings, "--set", f"output_dir={killed_dir}", "--resume"),
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    def final(run_dir):
        manifest = json.loads((run_dir / "tiny" / "manifest.json").read_text())
        last_train = [e["loss"] for e in manifest["log_history"] if "loss" in e][-1]
        return manifest["train_metrics"]["eval_loss"], last_train, manifest["train_metrics"]["global_step"]

    reference, continued = final(reference_dir), final(killed_dir)
    assert continued[2] == reference[2] == 10
    assert continued[0] == pytest.approx(reference[0], abs=1e-3)
    assert continued[1] == pytest.approx(reference[1], abs=1e-3)


def test_resume_without_checkpoint_is_a_clear_error(tiny_recipe):
    with pytest.raises(KitError, match="no complete checkpoint"):
        sft.run(load_recipe(tiny_recipe()), resume=True)


def test_sweep_writes_table_and_plot(tiny_recipe):
    recipe_path = tiny_recipe()
    target = sft.sweep(str(recipe_path), ["sft.max_steps=2"], sft.parse_sweep(["sft.method=freeze,lora,full"]))
    rows = json.loads((target / "results.json").read_text())
    assert [r["variant"] for r in rows] == ["sft.method=freeze", "sft.method=lora", "sft.method=full"]
    assert all(math.isfinite(r["eval_loss"]) and r["wall_seconds"] > 0 for r in rows)
    assert rows[2]["trainable_parameters"] > rows[1]["trainable_parameters"]  # full trains more than LoRA
    # Each variant's answers on the validation split are scored as kit.eval scores them.
    assert all(0.0 <= r["fact_recall"] <= 1.0 and r["invented_contacts"] >= 0 and 0.0 <= r["rouge_l"] <= 1.0 for r in rows)
    table = (target / "table.md").read_text()
    assert table.count("\n") == 5 and "| fact recall |" in table
    assert (target / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_two_cpu_processes_train_data_parallel(tiny_recipe, tmp_path):
    recipe_path = tiny_recipe()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(random.randint(20000, 40000)),
         "-m", "kit.sft", str(recipe_path), "--set", "sft.max_steps=1", "--set", "sft.report_to=none"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = load_recipe(recipe_path).run_dir
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["processes"] == 2
    # One step, one batch of 4 per rank, 8 training conversations: the ranks saw different halves.
    shards = manifest["train_metrics"]["rank_examples"]
    assert len(shards) == 2 and len(shards[0]) == len(shards[1]) == 4 and not set(shards[0]) & set(shards[1])
    assert result.stdout.count("kit.sft: adapter") == 1  # only rank 0 writes artifacts


@pytest.mark.parametrize("name", ["support-qwen2.5-1.5b-qlora.yaml", "support-llama3.1-8b-lora.yaml"])
def test_gpu_recipes_fail_offline_with_one_clear_line(name, tmp_path):
    result = subprocess.run([sys.executable, "-m", "kit.sft", f"recipes/{name}", "--set", f"output_dir={tmp_path}"],
                            capture_output=True, text=True, cwd=REPO, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if torch.cuda.is_available():
        pytest.skip("with CUDA the qlora recipe would go on to the hub")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and ("model.name" in result.stderr or "sft.method" in result.stderr)


def test_accelerate_configs_parse():
    import yaml

    kinds = {yaml.safe_load(p.read_text())["distributed_type"] for p in (REPO / "recipes" / "accelerate").glob("*.yaml")}
    assert kinds == {"MULTI_GPU", "FSDP", "DEEPSPEED"}
