import csv
import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kit import eval as kit_eval
from kit import generate, scoring
from kit import sft
from kit.errors import KitError
from kit.masking import tokenize_conversation
from kit.recipe import load_recipe
from tests.conftest import QA_ROWS, build_tiny_model

CONVERSATIONS = [
    {"messages": [{"role": "user", "content": "where is my order"}, {"role": "assistant", "content": "Hi there, it ships soon."}]},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "refund?"},
                  {"role": "assistant", "content": "Hi there, refunds take 5-7 business days."}]},
    {"messages": [{"role": "user", "content": "plus"}, {"role": "assistant", "content": "Plus costs $6.99."}]},
]
CATEGORIES = ["shipping", "account", "returns", "plus", "devices", "returns", "shipping", "devices", "plus", "devices",
              "returns", "account"]
# Metrics that describe the machine rather than the model.
TIMING = {"latency_s", "tokens_per_s", "seconds"}


def test_assistant_loss_matches_per_token_hand_computation(tiny_model_dir):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    scores = scoring.assistant_loss(model, tokenizer, CONVERSATIONS, batch_size=2, max_length=256)
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


def test_batched_generation_matches_one_at_a_time(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = [c["messages"][:-1] for c in CONVERSATIONS]
    batched = generate.generate_answers(model, tokenizer, prompts, max_new_tokens=6, batch_size=3, seed=0)
    single = [generate.generate_answers(model, tokenizer, [p], max_new_tokens=6, batch_size=1, seed=0) for p in prompts]
    # Left padding and the attention mask make a batch answer what each prompt alone gets (greedy).
    assert batched.answers == [s.answers[0] for s in single]
    assert batched.tokens == [s.tokens[0] for s in single] and all(1 <= t <= 6 for t in batched.tokens)


def _labelled_csv(path):
    """The tiny Q&A log with a category per row and required phrases on two rows."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ticket_id", "category", "required_phrases", "customer_question", "agent_answer"])
        for i, ((question, answer), category) in enumerate(zip(QA_ROWS, CATEGORIES)):
            phrases = "Hi there; business days" if i % 2 else ""
            writer.writerow([f"T-{i + 1}", category, phrases, question, answer])
    template = path.parent / "labelled.yaml"
    template.write_text(
        "description: tiny labelled Q&A\nreader: csv\nshape: qa_pairs\n"
        "fields: {id: ticket_id, question: customer_question, answer: agent_answer, metadata: [category, required_phrases]}\n"
    )
    return {"sources": [{"path": str(path), "template": str(template)}]}


def _student(recipe):
    """A distilled student as kit.distill leaves it: a plain model folder, manifest.json written last."""
    folder = build_tiny_model(recipe.run_dir / "student", seed=3, num_layers=1)
    (folder / "manifest.json").write_text("{}")
    return folder


def test_eval_compares_every_model_with_every_metric(tiny_recipe, tmp_path):
    other = build_tiny_model(tmp_path / "other-model", seed=1)
    path = tiny_recipe(data=_labelled_csv(tmp_path / "labelled.csv"),
                       eval={"models": [{"label": "other", "name": str(other)}]})
    recipe = load_recipe(path, ["sft.max_steps=2"])
    base_only = json.loads((kit_eval.run(recipe) / "metrics.json").read_text())["models"]
    assert list(base_only) == ["base", "other"]  # before training: base and the extra model alone
    sft.run(recipe)
    _student(recipe)
    folder = kit_eval.run(recipe)

    metrics = json.loads((folder / "metrics.json").read_text())
    assert list(metrics["models"]) == ["base", "tuned", "student", "other"]
    assert metrics["intent"]["field"] == "category" and metrics["required_phrases"]["items"] >= 1
    for label, row in metrics["models"].items():
        for key in ("eval_loss", "perplexity", "rouge_l", "bleu", "chrf", "similarity", "intent_accuracy", "intent_macro_f1",
                    "required_phrase_recall", "answer_words", "answer_tokens", "latency_s", "tokens_per_s", "size_mb",
                    "train_loss", "validation_loss", "overfit_gap"):
            assert isinstance(row[key], float) and math.isfinite(row[key]), (label, key, row[key])
        assert 0.0 <= row["rouge_l"] <= 1.0 and 0.0 <= row["bleu"] <= 100.0 and -1.0 <= row["similarity"] <= 1.0
        assert row["leaks"] == len(row["leak_list"]) and row["parameters"] > 0 and row["samples"] >= 1
    rows = metrics["models"]
    # Greedy and seeded: the rerun scores the base model exactly as before (timings aside).
    assert {k: v for k, v in rows["base"].items() if k not in TIMING} == {k: v for k, v in base_only["base"].items() if k not in TIMING}
    assert rows["base"]["eval_loss"] != rows["tuned"]["eval_loss"]
    assert rows["student"]["parameters"] < rows["base"]["parameters"]  # one block instead of two
    assert rows["tuned"]["size_mb"] > rows["base"]["size_mb"]  # the base weights plus the adapter
    assert rows["tuned"]["adapter"] and rows["student"]["reference"].endswith("student")

    report = (folder / "report.md").read_text()
    for label in ("base", "tuned", "student", "other"):
        assert f"| {label} |" in report
    assert "## Best" in report and "## Worst" in report and "## Intent" in report and "## Overfitting" in report
    # Facts (kit.facts) in every row, and the gate's decision on the student against tuned.
    for row in rows.values():
        assert row["invented_facts"] == len(row["invented_list"]) and row["invented_contacts"] <= row["invented_facts"]
        assert row["fact_recall"] is None or 0.0 <= row["fact_recall"] <= 1.0
    decision = metrics["gate"]["student"]
    assert decision["candidate"] == "student" and decision["chosen"] in ("student", "tuned")
    assert decision["promoted"] == (decision["chosen"] == "student") and decision["promoted"] == (not decision["reasons"])
    assert "## Facts" in report and "### Gate: student vs tuned" in report
    generations = [json.loads(line) for line in (folder / "generations.jsonl").read_text().splitlines()]
    assert len(generations) == rows["base"]["samples"]
    assert {"base", "tuned", "student", "other", "reference", "question", "scores"} <= set(generations[0])
    assert isinstance(generations[0]["tuned"], str) and "similarity" in generations[0]["scores"]["tuned"]
    assert {"facts", "recalled", "invented"} <= set(generations[0]["scores"]["tuned"]["facts"])
    for image in ("comparison.png", "confusion_matrix.png"):
        assert (folder / image).read_bytes()[:4] == b"\x89PNG"


def test_whole_model_tuning_is_the_tuned_row(tiny_recipe):
    recipe = load_recipe(tiny_recipe(), ["sft.method=full", "sft.max_steps=1"])
    sft.run(recipe)
    metrics = json.loads((kit_eval.run(recipe) / "metrics.json").read_text())
    assert metrics["models"]["tuned"]["reference"].endswith("model") and metrics["models"]["tuned"]["adapter"] is None


def test_cross_validation_three_folds(tiny_recipe):
    from kit import crossval, data

    recipe_path = tiny_recipe()
    recipe = load_recipe(recipe_path, ["eval.cross_validation.folds=3", "sft.max_steps=2"])
    summary_path = crossval.run(recipe)
    folder = kit_eval.run(recipe)  # the report takes kit.crossval's summary; eval itself trains nothing
    cv = json.loads((folder / "metrics.json").read_text())["cross_validation"]
    assert cv["folds"] == 3 and set(cv["models"]) == {"base", "tuned"}
    for label, row in cv["models"].items():
        for key in ("eval_loss", "rouge_l", "bleu", "chrf", "similarity", "answer_words"):
            values = row[key]["values"]
            assert len(values) == 3
            assert row[key]["mean"] == pytest.approx(sum(values) / 3)
            mean = sum(values) / 3
            assert row[key]["std"] == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in values) / 2))
    assert cv["models"]["base"]["eval_loss"]["values"] != cv["models"]["tuned"]["eval_loss"]["values"]
    assert "| tuned | " in (folder / "report.md").read_text().split("## Cross-validation")[1]

    # Each fold trained on its own conversations (given to kit.sft.train, no dataset folder written for it):
    # the test parts cover train + validation of the run exactly once, and each manifest names its data.
    summary = json.loads(summary_path.read_text())
    pool = sorted(c["id"] for name in ("train", "validation") for c in data.load_split(recipe, name))
    tested = []
    for k, fold_run in enumerate(summary["fold_runs"], start=1):
        fold_dir = recipe.run_dir / "cv" / f"fold-{k}"
        assert fold_run["run"] == str(fold_dir) and not (fold_dir / "dataset").exists()
        manifest = json.loads((fold_dir / "manifest.json").read_text())
        assert manifest["dataset"]["sha256"] == fold_run["sha256"]
        assert manifest["dataset"]["stats"]["splits"]["test"] == len(fold_run["test_ids"])
        tested += fold_run["test_ids"]
    assert sorted(tested) == pool

    # A rerun reuses a trained fold while its recipe and data are unchanged, and retrains it otherwise.
    for k, fold_run in enumerate(summary["fold_runs"], start=1):
        assert crossval.fold_trained(crossval.fold_recipe(recipe, k - 1), fold_run["sha256"])
        assert not crossval.fold_trained(crossval.fold_recipe(recipe, k - 1), "0" * 64)
    changed = load_recipe(recipe_path, ["eval.cross_validation.folds=3", "sft.max_steps=3"])
    assert not crossval.fold_trained(crossval.fold_recipe(changed, 0), summary["fold_runs"][0]["sha256"])
    # The summary belongs to its recipe: an eval of the changed recipe leaves it out.
    assert kit_eval.run(changed) and "cross_validation" not in json.loads((folder / "metrics.json").read_text())


def test_bad_extra_model_is_a_one_line_error(tiny_recipe, tmp_path, capsys):
    path = tiny_recipe(eval={"models": [{"label": "other", "name": str(tmp_path / "missing")}]})
    with pytest.raises(KitError, match=r"^eval\.models\[0\]\.name: "):
        kit_eval.run(load_recipe(path))
    with pytest.raises(SystemExit) as exit_info:
        kit_eval.main([str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: eval.models[0].name:")


@pytest.mark.slow
def test_bundled_model_on_the_quickstart_data(tmp_path, monkeypatch):
    from tests.conftest import REPO

    monkeypatch.chdir(REPO)  # the recipe's data paths are relative to the repository
    recipe = load_recipe(REPO / "recipes" / "quickstart.yaml",
                         [f"output_dir={tmp_path}", "eval.max_samples=2", "eval.max_new_tokens=8", "eval.batch_size=2"])
    metrics = json.loads((kit_eval.run(recipe) / "metrics.json").read_text())
    base = metrics["models"]["base"]
    assert list(metrics["models"]) == ["base"] and base["samples"] == 2
    assert metrics["intent"]["field"] == "category" and 0.0 <= base["intent_accuracy"] <= 1.0
    assert 1 <= base["answer_tokens"] <= 8 and base["tokens_per_s"] > 0 and base["parameters"] > 100_000_000
    assert math.isfinite(base["eval_loss"]) and base["similarity"] > 0.0
    generations = [json.loads(line) for line in (tmp_path / "quickstart" / "eval" / "generations.jsonl").read_text().splitlines()]
    assert all(row["base"].strip() for row in generations)  # real answers, special tokens stripped
    assert not any("<|im_end|>" in row["base"] for row in generations)
