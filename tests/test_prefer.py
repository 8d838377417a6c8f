"""kit.prefer on a tiny random model: DPO moves the preference, votes are read whole, mistakes become pairs."""

import csv
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from kit import eval as kit_eval
from kit import data, models, prefer, sft
from kit.facts import FactBook
from kit.recipe import ModelSection, load_recipe
from tests.conftest import write_qa_csv

REPO = Path(__file__).resolve().parent.parent
SYSTEM = {"role": "system", "content": "You are a support assistant."}
MULTI_TURN = [SYSTEM, {"role": "user", "content": "my plug is offline"},
              {"role": "assistant", "content": "Hi there, restart the plug and your router for 30 seconds."},
              {"role": "user", "content": "still offline"}]


def _recipe_file(folder: Path, model_dir: Path) -> Path:
    tree = {
        "name": "tiny", "output_dir": str(folder / "runs"), "seed": 0, "model": {"name": str(model_dir)},
        "data": {"sources": [{"path": str(write_qa_csv(folder / "qa.csv")), "template": "qa_csv"}],
                 "system_prompt": SYSTEM["content"], "validation_fraction": 0.2, "test_fraction": 0.2},
        "sft": {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-2, "logging_steps": 1, "max_length": 128,
                "report_to": "none"},
        "eval": {"enabled": False, "max_new_tokens": 8, "batch_size": 4},
        "prefer": {"max_new_tokens": 8, "max_steps": 1, "batch_size": 2, "learning_rate": 1e-2},
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory, tiny_model_dir) -> Path:
    """A tiny SFT run (LoRA adapter + manifest), trained once for the module."""
    folder = tmp_path_factory.mktemp("prefer-sft")
    sft.run(load_recipe(_recipe_file(folder, tiny_model_dir)))
    return folder


@pytest.fixture
def fresh(tuned_run, tmp_path):
    """A private copy of the tuned run, so each test writes its own feedback and preferred adapter."""

    def make(*overrides):
        shutil.copytree(tuned_run / "runs", tmp_path / "runs")
        return load_recipe(tuned_run / "recipe.yaml", [f"output_dir={tmp_path / 'runs'}", *overrides])

    return make


def write_votes(recipe, lines: list) -> Path:
    path = recipe.run_dir / "feedback" / "preferences.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def vote(prompt, chosen, rejected):
    return {"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], "metadata": {"chosen_model": "tuned"}}


def test_dpo_on_a_toy_pair_raises_the_chosen_answer_over_the_rejected_one(fresh):
    recipe = fresh("prefer.sources=[votes]", "prefer.max_steps=6", "prefer.batch_size=1", "prefer.learning_rate=3e-2")
    prompt = [SYSTEM, {"role": "user", "content": "is there a warranty"}]
    chosen, rejected = "Hi there, every device has a 1-year warranty.", "Hi there, call 1-800-223-7777 for a 90 days warranty."
    write_votes(recipe, [vote(prompt, chosen, rejected)])
    tokenizer = models.load_tokenizer(recipe.model)

    def margin(model) -> float:
        return prefer.completion_logprob(model, tokenizer, prompt, chosen) - prefer.completion_logprob(model, tokenizer, prompt, rejected)

    before = margin(models.load_tuned(recipe))
    target = prefer.run(recipe)
    after = margin(models.load_preferred(recipe))
    assert after > before + 0.5, (before, after)

    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["pairs"]["votes"] == 1 and manifest["base"]["sft_adapter"].endswith("adapter")
    assert manifest["train_metrics"]["global_step"] == 6
    trained, start = load_file(target / "adapter_model.safetensors"), load_file(recipe.run_dir / "adapter" / "adapter_model.safetensors")
    assert trained.keys() == start.keys(), "only the trained adapter is saved, not TRL's reference copy"
    unchanged = [name for name in trained if torch.equal(trained[name], start[name])]
    assert not unchanged, f"Parameters {unchanged} have not changed"
    assert not list(recipe.run_dir.glob(".preferred.tmp-*")), "the scratch folder is renamed into place"
    assert not (recipe.run_dir / "prefer_checkpoints").exists()

    # kit.eval scores the preferred model as its own row, and its gate decides against tuned.
    metrics = json.loads((kit_eval.run(recipe) / "metrics.json").read_text())
    assert list(metrics["models"])[:3] == ["base", "tuned", "preferred"]
    assert metrics["models"]["preferred"]["eval_loss"] != metrics["models"]["tuned"]["eval_loss"]
    assert metrics["gate"]["preferred"]["incumbent"] == "tuned"


def test_a_cpu_with_native_bf16_gets_kit_sft_speed_settings(fresh, capsys):
    """`sft.cpu_bf16` (detected on AVX512-BF16/AMX CPUs) gives DPO bf16 autocast over a bf16 frozen base, as in kit.sft;
    the adapter being trained stays float32."""
    from transformers import TrainerCallback

    recipe = fresh("prefer.sources=[votes]", "prefer.max_steps=2", "prefer.batch_size=1", "sft.cpu_bf16=true")
    write_votes(recipe, [vote([SYSTEM, {"role": "user", "content": "is there a warranty"}], "Yes, 1 year.", "No.")])
    seen = {}

    class Probe(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            seen["bf16"] = args.bf16
            # (trainable, an adapter's, dtype); TRL's frozen copy of the adapter ("ref") is an adapter's too
            seen["dtypes"] = {(p.requires_grad, "lora_" in name, p.dtype) for name, p in model.named_parameters()}

    prefer.run(recipe, callbacks=[Probe()])
    assert seen["bf16"] is True
    assert seen["dtypes"] == {(True, True, torch.float32), (False, True, torch.float32), (False, False, torch.bfloat16)}
    assert "speed settings: gradient checkpointing off, bf16 autocast, freed memory kept for reuse" in capsys.readouterr().out
    assert load_file(recipe.run_dir / "preferred" / "adapter_model.safetensors")  # a finished adapter


def test_multi_turn_votes_are_kept_whole_and_a_corrupt_line_is_reported_and_skipped(fresh, capsys):
    recipe = fresh("prefer.sources=[votes]")
    single = [SYSTEM, {"role": "user", "content": "where is my order"}]
    path = write_votes(recipe, [
        vote(MULTI_TURN, "Hi there, unplug it for 30 seconds, then add it again.", "Hi there, returns are free."),
        '{"prompt": [{"role": "user", "content": "cut short',
        {"prompt": single, "chosen": [{"role": "assistant", "content": "ok"}]},
        vote(single, "Hi there, standard shipping takes 3-5 business days.", "Hi there, it ships in 1 hour."),
    ])
    votes = prefer.load_votes(path)
    assert [p.prompt for p in votes.pairs] == [MULTI_TURN, single]
    assert votes.corrupt == ["preferences.jsonl:2: not JSON",
                             "preferences.jsonl:3: rejected missing or not a list of messages"]

    from transformers import TrainerCallback

    seen = []

    class Prompts(TrainerCallback):  # what TRL tokenized and trains on
        def on_train_begin(self, args, state, control, train_dataloader=None, processing_class=None, **kwargs):
            seen.extend(processing_class.decode(row["prompt_ids"]) for row in train_dataloader.dataset)

    target = prefer.run(recipe, callbacks=[Prompts()])
    multi = next(text for text in seen if "still offline" in text)
    assert all(m["content"] in multi for m in MULTI_TURN), multi  # system, both user turns and the earlier answer
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["pairs"]["votes"] == 2 and len(manifest["pairs"]["corrupt"]) == 2
    assert "skipped 2 corrupt line(s): preferences.jsonl:2: not JSON" in capsys.readouterr().out


def test_the_models_mistakes_become_pairs_and_reruns_reuse_its_answers(fresh):
    recipe = fresh("prefer.sources=[mistakes]", "prefer.max_prompts=3")
    prefer.run(recipe)
    cache = json.loads((recipe.run_dir / "prefer_cache" / "answers.json").read_text())
    manifest = json.loads((recipe.run_dir / "preferred" / "manifest.json").read_text())
    assert manifest["pairs"]["mistakes_checked"] == 3 and manifest["pairs"]["mistakes_cached"] is False
    assert len(cache["answers"]) == 3 and all(len(own) == 1 for own in cache["answers"])  # greedy only: samples 0
    assert 0 < manifest["pairs"]["mistakes"] <= 3  # a random tiny model answers badly
    tokenizer = models.load_tokenizer(recipe.model)
    mistakes = prefer.mistake_pairs(recipe, tokenizer, lambda: models.load_tuned(recipe))
    assert mistakes.cached and len(mistakes.pairs) == manifest["pairs"]["mistakes"]
    with open(recipe.data.sources[0].path, encoding="utf-8") as handle:
        answers = {row["agent_answer"] for row in csv.DictReader(handle)}
    for pair in mistakes.pairs:
        assert pair.prompt[0] == SYSTEM and pair.prompt[-1]["role"] == "user"
        assert pair.chosen[0]["content"] in answers and pair.reasons
        assert any(pair.rejected[0]["content"] == text for own in cache["answers"] for text, _ in own)

    prefer.run(recipe)
    again = json.loads((recipe.run_dir / "preferred" / "manifest.json").read_text())
    assert again["pairs"]["mistakes_cached"] is True and again["pairs"]["mistakes"] == manifest["pairs"]["mistakes"]
    recipe.prefer.min_rouge_l = 1.0  # how answers are judged: the same answers, judged again
    rejudged = prefer.mistake_pairs(recipe, tokenizer, lambda: pytest.fail("the cached answers must be reused"))
    assert rejudged.cached and len(rejudged.pairs) >= len(mistakes.pairs)
    recipe.prefer.max_prompts = 2  # what the answers depend on: the cache no longer applies
    assert prefer.mistake_pairs(recipe, tokenizer, lambda: models.load_tuned(recipe)).cached is False


def test_sampled_answers_make_on_policy_pairs(fresh, monkeypatch):
    """With prefer.samples, the model's own clean answer is `chosen` over its wrong one; without a clean one, the
    reference is. Real sampling runs on the tiny model first; then hand-made answers pin down the pairing."""
    recipe = fresh("prefer.sources=[mistakes]", "prefer.max_prompts=2", "prefer.samples=2")
    tokenizer = models.load_tokenizer(recipe.model)
    sampled = prefer.mistake_pairs(recipe, tokenizer, lambda: models.load_tuned(recipe))
    assert sampled.checked == 2 and not sampled.cached and all(p.chosen_from in ("reference", "sample") for p in sampled.pairs)

    train = [c for c in data.load_split(recipe, "train") if c["messages"][-1]["role"] == "assistant"]
    picked = random.Random(recipe.seed).sample(train, 2)  # the prompts mistake_pairs samples
    references = [c["messages"][-1]["content"] for c in picked]
    wrong = "Call us on +44 (02) 7833 233, refunds take 90 days."
    answers = {0: [(wrong, True), (wrong, True)], 2: [(references[0], True), (wrong, True), (references[1][:-1], True),
                                                    (wrong, True)]}

    def fake_generate(model, tokenizer, prompts, max_new_tokens, batch_size=8, samples=0, temperature=1.0):
        return answers[samples]

    monkeypatch.setattr(prefer, "generate", fake_generate)
    (recipe.run_dir / "prefer_cache" / "answers.json").unlink()
    mistakes = prefer.mistake_pairs(recipe, tokenizer, lambda: models.load_tuned(recipe))
    pairs = mistakes.pairs
    assert mistakes.wrong == 2 and [p.rejected[0]["content"] for p in pairs] == [wrong] * 3  # wrong every time
    # the model's own clean answer, and (prefer.reference_pairs) the reference unless that is the same text, each
    # against the wrong one
    assert [p.chosen[0]["content"] for p in pairs] == [references[0], references[1][:-1], references[1]]
    assert [p.chosen_from for p in pairs] == ["sample", "sample", "reference"]
    assert any(r.startswith("invented contact PHONE") for r in pairs[0].reasons)

    answers[2] = [(wrong, True)] * 4  # no clean answer sampled: the reference is chosen
    (recipe.run_dir / "prefer_cache" / "answers.json").unlink()
    pairs = prefer.mistake_pairs(recipe, tokenizer, lambda: models.load_tuned(recipe)).pairs
    assert [p.chosen[0]["content"] for p in pairs] == references and {p.chosen_from for p in pairs} == {"reference"}


def test_the_worst_wrong_answer_is_rejected_against_the_best_clean_one_and_the_reference():
    book = FactBook(["Every device has a 1-year warranty.", "Refunds take 5-7 business days."],
                    allowlist=["support@brightloop.example"])
    prompt = [SYSTEM, {"role": "user", "content": "Is there a warranty?"}]
    reference = "Every device has a 1-year warranty."
    off_topic = ("Please restart the app and try again.", True)  # wrong only by ROUGE-L
    invents = ("The warranty is 90 days and refunds take 2 weeks.", True)  # two invented facts
    calls = ("Every device has a 1-year warranty, call 1-800-223-7777.", True)  # an invented contact
    clean = ("Every device has a 1-year warranty from delivery.", True)
    cut = ("Every device has a 1-year warranty", False)  # clean, but cut off: never chosen

    def pairs(*own, reference_pair=True):
        return prefer.pair_for(book, prompt, reference, list(own), 0.2, reference_pair)

    assert pairs(clean, cut) == []
    worst = pairs(off_topic, invents, calls, clean)
    assert [p.rejected[0]["content"] for p in worst] == [calls[0], calls[0]]
    assert worst[0].reasons == ["invented contact PHONE: 1-800-223-7777"]
    assert [(p.chosen[0]["content"], p.chosen_from) for p in worst] == [(clean[0], "sample"), (reference, "reference")]
    assert [p.chosen_from for p in pairs(off_topic, invents, calls, clean, reference_pair=False)] == ["sample"]
    assert pairs(off_topic, invents, cut)[0].rejected[0]["content"] == invents[0]  # then the most facts invented
    greedy = pairs(off_topic, ("Just restart it, please.", True), cut)  # among equals, the greedy answer
    assert [(p.rejected[0]["content"], p.chosen[0]["content"]) for p in greedy] == [(off_topic[0], reference)]  # no clean one
    assert prefer.severity(worst[0].reasons) > prefer.severity(["invented DURATION: 90 days"] * 3) > prefer.severity(["ROUGE-L 0.0 < 0.2"])


def test_mistake_reasons_on_hand_made_answers():
    book = FactBook(["Hi there, every device has a 1-year warranty.", "Refunds take 5-7 business days."],
                    allowlist=["support@brightloop.example"])
    reference = "Hi there, every device has a 1-year warranty."
    assert prefer.mistake_reasons(book, reference, reference, "is there a warranty", 0.2) == []
    reasons = prefer.mistake_reasons(book, "Hi there, every device has a 1-year warranty, call +44 (02) 7833 233.",
                                     reference, "is there a warranty", 0.2)
    assert reasons == ["invented contact PHONE: +44 (02) 7833 233"]
    reasons = prefer.mistake_reasons(book, "The warranty period is 90 days from the order date.", reference, "warranty?", 0.2)
    assert reasons[:2] == ["invented DURATION: 90 days", "contradicts the reference DURATION: 90 days"]
    assert reasons[-1].startswith("ROUGE-L")
    long_answer = "Hi there, every device has a 1-year warranty from the delivery date and covers defects."
    cut = " ".join(long_answer.split()[:6])
    assert prefer.mistake_reasons(book, cut, long_answer, "warranty?", 0.9, finished=False) == []
    assert prefer.mistake_reasons(book, cut, long_answer, "warranty?", 0.9)[0].startswith("ROUGE-L")


def test_cli_without_a_tuned_model_is_one_clear_line(tmp_path, tiny_model_dir):
    result = subprocess.run([sys.executable, "-m", "kit.prefer", str(_recipe_file(tmp_path, tiny_model_dir))],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: prefer: no tuned model in {tmp_path / 'runs' / 'tiny'}; run `python -m kit.sft <recipe>` first"


def test_ctrl_c_saves_a_checkpoint_and_resume_ends_where_an_uninterrupted_run_does(fresh):
    import os
    import signal

    from transformers import TrainerCallback

    recipe = fresh("prefer.sources=[votes]", "prefer.max_steps=3", "prefer.batch_size=1")
    prompt = [SYSTEM, {"role": "user", "content": "is there a warranty"}]
    write_votes(recipe, [vote(prompt, "Hi there, every device has a 1-year warranty.", "Hi there, 90 days."),
                         vote(MULTI_TURN, "Hi there, unplug it for 30 seconds.", "Hi there, returns are free.")])
    checkpoints = recipe.run_dir / "prefer_checkpoints"
    with pytest.raises(prefer.KitError, match="--resume: no complete checkpoint in .*prefer_checkpoints"):
        prefer.run(recipe, resume=True)

    class CtrlC(TrainerCallback):  # the user presses Ctrl-C during step 1
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                os.kill(os.getpid(), signal.SIGINT)

    class Steps(TrainerCallback):
        def __init__(self):
            self.seen = []

        def on_step_end(self, args, state, control, **kwargs):
            self.seen.append(state.global_step)

    with pytest.raises(KeyboardInterrupt):
        prefer.run(recipe, callbacks=[CtrlC()])
    assert [p.name for p in checkpoints.glob("checkpoint-*")] == ["checkpoint-1"]
    assert not (recipe.run_dir / "preferred").exists()

    steps = Steps()
    target = prefer.run(recipe, callbacks=[steps], resume=True)
    assert steps.seen == [2, 3], "resumed after step 1, not from the start"
    assert json.loads((target / "manifest.json").read_text())["train_metrics"]["global_step"] == 3
    assert not checkpoints.exists(), "checkpoints are removed once the adapter is written"
    resumed = load_file(target / "adapter_model.safetensors")

    prefer.run(recipe)  # the same three steps without a break
    whole = load_file(target / "adapter_model.safetensors")
    start = load_file(recipe.run_dir / "adapter" / "adapter_model.safetensors")
    assert any(not torch.equal(whole[name], start[name]) for name in whole)
    for name in whole:
        assert torch.allclose(resumed[name], whole[name], atol=1e-5), name


def test_kto_on_single_answers_raises_the_desirable_answer_over_the_undesirable_one(fresh):
    recipe = fresh("prefer.method=kto", "prefer.sources=[votes]", "prefer.max_steps=6", "prefer.batch_size=2",
                   "prefer.learning_rate=3e-2")
    prompt = [SYSTEM, {"role": "user", "content": "is there a warranty"}]
    good, bad = "Hi there, every device has a 1-year warranty.", "Hi there, call 1-800-223-7777 for a 90 days warranty."
    write_votes(recipe, [vote(prompt, good, bad)])
    all_bad = recipe.run_dir / "feedback" / "all_bad.jsonl"  # as kit.chat writes an all-bad vote
    offline = [SYSTEM, {"role": "user", "content": "my plug is offline"}]
    all_bad.write_text(json.dumps({"prompt": offline, "completion": [{"role": "assistant", "content": "Returns are free."}],
                                   "label": False, "metadata": {"model": "tuned"}}) + "\n" + '{"prompt": "cut sh\n')
    tokenizer = models.load_tokenizer(recipe.model)

    def margin(model) -> float:
        return prefer.completion_logprob(model, tokenizer, prompt, good) - prefer.completion_logprob(model, tokenizer, prompt, bad)

    before = margin(models.load_tuned(recipe))
    target = prefer.run(recipe)
    after = margin(models.load_preferred(recipe))
    assert after > before + 0.5, (before, after)
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["method"] == "kto" and manifest["rows"] == 3  # the pair's two answers and the all-bad one
    assert manifest["pairs"]["all_bad"] == 1 and manifest["pairs"]["corrupt"] == ["all_bad.jsonl:2: not JSON"]
    assert manifest["train_metrics"]["global_step"] == 6

    rows = prefer.kto_rows(prefer.load_votes(recipe.run_dir / "feedback" / "preferences.jsonl").pairs,
                           prefer.load_all_bad(all_bad).rows, seed=0)
    assert sorted((row["completion"][0]["content"], row["label"]) for row in rows) == sorted(
        [(good, True), (bad, False), ("Returns are free.", False)])

    recipe.prefer.batch_size = 1
    with pytest.raises(prefer.KitError, match="prefer.batch_size: KTO needs at least 2 answers a step"):
        prefer.run(recipe)


def test_dpo_batches_group_similar_lengths_and_answering_batches_are_equal(tiny_model_dir, monkeypatch):
    """`length_grouped` reorders the pairs (seeded) so that a batch pads less than in the given order; `generate`
    splits prompts into equal batches (5 prompts at most 4 a batch: 3 + 2, not 4 + 1)."""
    tokenizer = models.load_tokenizer(ModelSection(name=str(tiny_model_dir)))
    rng = random.Random(0)
    rows = [{"prompt": [SYSTEM, {"role": "user", "content": "word " * rng.randrange(1, 60)}],
             "chosen": [{"role": "assistant", "content": "yes " * rng.randrange(1, 40)}],
             "rejected": [{"role": "assistant", "content": "no " * rng.randrange(1, 40)}]} for _ in range(64)]

    def padded(order):  # what a batch of 4 pads to: its longest prompt plus its longest answer, per row
        size = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
        total = 0
        for start in range(0, len(order), 4):
            batch = order[start:start + 4]
            longest = max(size(prefer.render(tokenizer, r["prompt"], add_generation_prompt=True)) for r in batch)
            longest += max(size(r[k][0]["content"]) for r in batch for k in ("chosen", "rejected"))
            total += 2 * len(batch) * longest
        return total

    grouped = prefer.length_grouped(rows, tokenizer, 4, seed=0)
    assert sorted(map(str, grouped)) == sorted(map(str, rows)) and grouped == prefer.length_grouped(rows, tokenizer, 4, 0)
    assert padded(grouped) < 0.95 * padded(rows)

    sizes = []

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.generation_config = type("Config", (), {"eos_token_id": tokenizer.eos_token_id})()

        def generate(self, input_ids, **kwargs):
            sizes.append(len(input_ids))
            return torch.cat([input_ids, torch.full((len(input_ids), 1), tokenizer.eos_token_id)], dim=1)

    answers = prefer.generate(Model(), tokenizer, [row["prompt"] for row in rows[:5]], 4, batch_size=4)
    assert sizes == [3, 2] and len(answers) == 5 and all(finished for _, finished in answers)
