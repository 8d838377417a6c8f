import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from kit import distill, models, sft
from kit.errors import KitError
from kit.recipe import ModelSection, load_recipe
from kit.runs import student_dir, tuned_adapter

from .conftest import build_tiny_model

# Fixed tensors for the hand computation: 2 trained positions, a 3-token vocabulary.
STUDENT = [[1.0, 2.0, 0.0], [0.0, 0.5, 1.5]]
TEACHER = [[2.0, 1.0, -1.0], [0.0, 1.0, 3.0]]
TARGETS = [1, 2]


def softmax(row, t=1.0):
    exps = [math.exp(x / t) for x in row]
    return [e / sum(exps) for e in exps]


def hand_kd(student, teacher, targets, alpha, t):
    """The issue's formula written out: mean over positions of alpha*CE + (1-alpha)*T^2*KL(p_teacher || p_student)."""
    total = 0.0
    for s, te, y in zip(student, teacher, targets):
        ce = -math.log(softmax(s)[y])
        ps, pt = softmax(s, t), softmax(te, t)
        kl = sum(q * math.log(q / p) for q, p in zip(pt, ps))
        total += alpha * ce + (1 - alpha) * t * t * kl
    return total / len(targets)


def kd(alpha, t, student=STUDENT, teacher=TEACHER, **kwargs):
    return distill.kd_loss(torch.tensor(student), torch.tensor(TARGETS), alpha, t, teacher_logits=torch.tensor(teacher), **kwargs)


def test_kd_loss_equals_hand_computation():
    loss, ce, kl = kd(0.3, 2.0)
    assert loss.item() == pytest.approx(hand_kd(STUDENT, TEACHER, TARGETS, 0.3, 2.0), rel=1e-6)
    assert loss.item() == pytest.approx(0.367903, abs=1e-5)  # golden value of the same formula
    assert ce.item() == pytest.approx(hand_kd(STUDENT, TEACHER, TARGETS, 1.0, 2.0), rel=1e-6)
    # alpha = 1 is plain cross-entropy: the teacher does not matter.
    assert kd(1.0, 2.0)[0].item() == pytest.approx(kd(1.0, 2.0, teacher=[[9.0, 0.0, 0.0]] * 2)[0].item())
    # Normalised by the Trainer's token count over the whole accumulation batch when it gives one.
    assert kd(0.3, 2.0, num_items=8)[0].item() == pytest.approx(loss.item() * 2 / 8, rel=1e-6)


def test_temperature_scaling():
    # Scaling both models' logits by c at temperature c gives the T=1 divergence times c^2 (the T^2 factor).
    for c in (2.0, 4.0):
        scaled_s = [[c * x for x in row] for row in STUDENT]
        scaled_t = [[c * x for x in row] for row in TEACHER]
        assert kd(0.0, c, scaled_s, scaled_t)[0].item() == pytest.approx(c * c * kd(0.0, 1.0)[0].item(), rel=1e-5)
    # Each temperature matches the hand formula, and softening changes the divergence term.
    values = {t: kd(0.0, t)[0].item() for t in (1.0, 2.0, 4.0)}
    for t, value in values.items():
        assert value == pytest.approx(hand_kd(STUDENT, TEACHER, TARGETS, 0.0, t), rel=1e-6)
    assert len({round(v, 6) for v in values.values()}) == 3
    assert kd(0.0, 3.0, teacher=STUDENT)[0].item() == pytest.approx(0.0, abs=1e-7)


def test_top_k_teacher_targets():
    teacher = torch.tensor(TEACHER)
    log_probs = torch.log_softmax(teacher, dim=-1)
    # All k = V tokens: the cached form gives exactly the full-vocabulary loss, at any temperature.
    full_top = log_probs.topk(3, dim=-1)
    for t in (1.0, 2.0):
        cached = distill.kd_loss(torch.tensor(STUDENT), torch.tensor(TARGETS), 0.4, t, teacher_top_k=(full_top.indices, full_top.values))
        assert cached[0].item() == pytest.approx(kd(0.4, t)[0].item(), rel=1e-6)
    # k = 2: the teacher's tempered distribution is renormalised over its 2 best tokens.
    top = log_probs.topk(2, dim=-1)
    loss = distill.kd_loss(torch.tensor(STUDENT), torch.tensor(TARGETS), 0.0, 2.0, teacher_top_k=(top.indices, top.values))[0]
    expected = 0.0
    for s, ids, lp in zip(STUDENT, top.indices.tolist(), top.values.tolist()):
        pt, ps = softmax(lp, 2.0), softmax(s, 2.0)
        expected += 4.0 * sum(q * math.log(q / ps[i]) for q, i in zip(pt, ids))
    assert loss.item() == pytest.approx(expected / 2, rel=1e-6)


def test_only_assistant_tokens_contribute():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 6, 5), torch.randn(2, 6, 5)
    labels = torch.tensor([[-100, -100, 3, 1, -100, -100], [-100, 2, 2, 4, 0, -100]])
    base = distill.batch_kd_loss(student, labels, 0.5, 2.0, teacher_logits=teacher)[0]
    trained = distill.trained_positions(labels)  # position p predicts token p + 1
    untrained = [(b, p) for b in range(2) for p in range(5) if not trained[b, p]] + [(0, 5), (1, 5)]
    noisy_s, noisy_t = student.clone(), teacher.clone()
    for b, p in untrained:
        noisy_s[b, p] += 10 * torch.randn(5)
        noisy_t[b, p] += 10 * torch.randn(5)
    assert distill.batch_kd_loss(noisy_s, labels, 0.5, 2.0, teacher_logits=noisy_t)[0].item() == pytest.approx(base.item())
    noisy_t[0, 2] += 10 * torch.randn(5)  # predicts labels[0, 3], an answer token
    assert distill.batch_kd_loss(noisy_s, labels, 0.5, 2.0, teacher_logits=noisy_t)[0].item() != pytest.approx(base.item())


def test_training_rows_train_the_answers_only(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = [
        {"role": "system", "content": "You are a support assistant."},
        {"role": "user", "content": "where is my order"},
        {"role": "assistant", "content": "Hi there, it ships in 3-5 business days."},
    ]
    (row,) = distill.tokenize_rows(tokenizer, [{"messages": messages}], 128, "train", first_row=7)
    assert row["row"] == 7
    trained = [t for t, m in zip(row["input_ids"], row["completion_mask"]) if m]
    assert tokenizer.decode(trained) == "Hi there, it ships in 3-5 business days.<|im_end|>"


def test_cut_student_copies_the_kept_blocks(tmp_path):
    teacher = models.load_model(ModelSection(name=str(build_tiny_model(tmp_path / "t", seed=3, num_layers=4)))).eval()
    student = distill.cut_student(teacher, [0, 3])
    assert student.config.num_hidden_layers == 2 and teacher.config.num_hidden_layers == 4
    for name, weight in student.model.layers[1].state_dict().items():
        assert torch.equal(weight, teacher.model.layers[3].state_dict()[name]), name
    assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    assert torch.equal(student.lm_head.weight, teacher.lm_head.weight)
    ids = torch.tensor([[5, 9, 30, 2, 17]])
    whole = distill.cut_student(teacher, [0, 1, 2, 3])
    assert torch.allclose(whole(ids).logits, teacher(ids).logits, atol=1e-6)
    assert not torch.allclose(student(ids).logits, teacher(ids).logits, atol=1e-3)
    assert distill.kept_blocks("every_second", 5) == [0, 2, 4]
    assert distill.kept_blocks("drop_middle", 30) == [*range(8), *range(23, 30)]
    assert distill.kept_blocks("drop_middle", 4) == [0, 3]
    with pytest.raises(KitError, match=r"distill.student.keep_layers: the teacher has 4 blocks \(0-3\); \[4\]"):
        distill.kept_blocks([0, 4], 4)


def test_recipe_checks_the_distill_section(tiny_recipe):
    with pytest.raises(KitError, match="distill.student: .*either name .* or keep_layers"):
        load_recipe(tiny_recipe(), ["distill.student.name=x", "distill.student.keep_layers=[0]"])
    with pytest.raises(KitError, match="distill.student.keep_layers: .*increasing order"):
        load_recipe(tiny_recipe(), ["distill.student.keep_layers=[2, 1]"])
    with pytest.raises(KitError, match="distill: .*cache_top_k .*on_policy"):
        load_recipe(tiny_recipe(), ["distill.mode=on_policy", "distill.cache_top_k=8"])
    recipe = load_recipe(tiny_recipe(), ["distill.student.name=x"])
    assert recipe.distill.student.keep_layers == "drop_middle" and recipe.distill.enabled is False


def test_vocabulary_mismatch_exits_2_with_one_clear_line(tiny_recipe, tiny_model_dir, tmp_path, capsys):
    from transformers import AutoTokenizer

    other = tmp_path / "other-student"
    shutil.copytree(tiny_model_dir, other)
    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.add_tokens(["<|ticket|>"])
    tokenizer.save_pretrained(other)
    path = tiny_recipe(distill={"teacher": str(tiny_model_dir), "student": {"name": str(other)}})
    with pytest.raises(SystemExit) as exit_info:
        distill.main([str(path)])
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert errors[0].startswith(f"error: distill.student.name: {other} has another vocabulary than the teacher")
    assert "'<|ticket|>'" in errors[0] and "keep_layers" in errors[0]


def test_missing_tuned_teacher_is_a_clear_error(tiny_recipe):
    with pytest.raises(KitError, match=r"distill.teacher: no tuned model in .*; run `python -m kit.sft`"):
        distill.run(load_recipe(tiny_recipe()))


def test_offline_distills_the_tuned_model_into_a_loadable_student(tiny_recipe, tmp_path):
    teacher_dir = build_tiny_model(tmp_path / "teacher4", num_layers=4)
    recipe = load_recipe(
        tiny_recipe(model={"name": str(teacher_dir)}), ["distill.max_steps=3", "distill.learning_rate=1e-2"]
    )
    sft.run(recipe)
    assert student_dir(recipe) is None
    folder = distill.run(recipe)
    assert folder == student_dir(recipe) == recipe.run_dir / "student"
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["teacher"]["adapter"] and manifest["student"]["keep_layers"] == [0, 3]
    assert manifest["student"]["layers"] == 2 and manifest["train_metrics"]["global_step"] == 3
    assert math.isfinite(manifest["train_metrics"]["train_loss"]) and math.isfinite(manifest["train_metrics"]["eval_loss"])
    assert manifest["loss"] == {"alpha": 0.5, "temperature": 1.0, "cache_top_k": None}

    student = models.load_model(ModelSection(name=str(folder)))
    assert student.config.num_hidden_layers == 2
    tokenizer = models.load_tokenizer(ModelSection(name=str(folder)))
    assert tokenizer.chat_template and tokenizer.get_vocab() == models.load_tokenizer(recipe.model).get_vocab()
    # Initialised from the tuned teacher's block 3 (base + merged adapter), then trained: the weights moved.
    teacher = models.load_model(recipe.model, adapter=tuned_adapter(recipe)).merge_and_unload()
    start = teacher.model.layers[3].mlp.down_proj.weight
    base = load_file(teacher_dir / "model.safetensors")["model.layers.3.mlp.down_proj.weight"]
    assert not torch.allclose(start, base)  # the adapter is merged into the teacher
    trained = student.model.layers[1].mlp.down_proj.weight
    assert trained.shape == start.shape and not torch.allclose(trained, start), "Parameter has not changed"


def test_teacher_cache_is_written_once_and_reused_with_a_lora_student(tiny_recipe, tiny_model_dir, capsys):
    overrides = [f"distill.teacher={tiny_model_dir}", "distill.cache_top_k=5", "distill.max_steps=2", "distill.student.method=lora"]
    recipe = load_recipe(tiny_recipe(), overrides)
    distill.run(recipe)
    (cache,) = (recipe.run_dir / "distill_cache").glob("*.safetensors")
    tensors = load_file(cache)
    assert tensors["ids"].shape[1] == 5 and tensors["ids"].shape == tensors["log_probs"].shape
    assert int(tensors["offsets"][-1]) == tensors["ids"].shape[0] > 0
    assert torch.all(tensors["log_probs"] <= 0) and torch.all(tensors["log_probs"][:, :-1] >= tensors["log_probs"][:, 1:])
    assert "cached in" in capsys.readouterr().out

    folder = distill.run(recipe)
    assert "reused from" in capsys.readouterr().out
    assert list((recipe.run_dir / "distill_cache").glob("*.safetensors")) == [cache]
    assert not (folder / "adapter_config.json").exists()  # the LoRA adapter is merged into plain weights
    assert models.load_model(ModelSection(name=str(folder))).config.num_hidden_layers == 1


def test_on_policy_runs_one_step_on_cpu(tiny_recipe, tiny_model_dir):
    overrides = [
        f"distill.teacher={tiny_model_dir}",
        "distill.mode=on_policy",
        "distill.max_steps=1",
        "distill.max_new_tokens=4",
        "distill.beta=0.5",
    ]
    recipe = load_recipe(tiny_recipe(), overrides)
    folder = distill.run(recipe)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["mode"] == "on_policy" and manifest["train_metrics"]["global_step"] == 1
    assert manifest["loss"] == {"beta": 0.5, "temperature": 1.0}
    assert math.isfinite(manifest["train_metrics"]["train_loss"])
    assert models.load_tokenizer(ModelSection(name=str(folder))).padding_side == "right"


@pytest.mark.slow
def test_bundled_model_cut_keeps_the_teacher_when_every_block_is_kept():
    teacher = models.load_model(ModelSection(name="bundled:smollm2-135m-instruct")).eval()
    ids = torch.tensor([[1, 504, 3458, 314, 2]])
    with torch.no_grad():
        whole = distill.cut_student(teacher, list(range(30)))
        assert torch.allclose(whole(ids).logits, teacher(ids).logits, atol=1e-5)
        del whole
        half = distill.cut_student(teacher, distill.kept_blocks("every_second", 30))
    assert half.config.num_hidden_layers == 15 and half.config.tie_word_embeddings
    assert sum(p.numel() for p in half.parameters()) == 81_413_568
