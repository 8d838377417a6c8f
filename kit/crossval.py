"""Cross-validation: one adapter per fold, each trained without its fold and scored on it.

    python -m kit.crossval recipes/quickstart.yaml --set eval.cross_validation.folds=5

The train and validation conversations are cut into `eval.cross_validation.folds` folds
(`kit.data.folds`, stratified by `data.stratify_by`; the test split stays out: it is the final,
untouched comparison). Fold k trains through `kit.sft.train` on the other folds (split into train and
validation as `kit.data` splits, augmented when `data.augment` is on), in `<run>/cv/fold-<k>/`, and base
and tuned are scored on fold k with `kit.eval`'s functions. Writes `<run>/cv/summary.json` (each metric's
mean, std and values over the folds); `kit.eval` adds it to its report while the recipe is unchanged.
A fold whose run is complete for the same recipe and conversations is reused, not retrained.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from pathlib import Path

from kit import data, eval as kit_eval, scoring, sft
from kit.cli import recipe_parser, run_cli
from kit.data.augment import augment as augment_training
from kit.errors import KitError
from kit.recipe import Recipe, load_recipe
from kit.runs import cross_validation_path, write_json

# The per-model numbers that cross-validation averages (timings and sizes do not vary by fold).
CV_METRICS = (
    "eval_loss", "perplexity", "rouge_l", "bleu", "chrf", "similarity", "intent_accuracy", "intent_macro_precision",
    "intent_macro_recall", "intent_macro_f1", "required_phrase_recall", "required_phrase_pass", "leaks", "answer_words",
)


def fold_recipe(recipe: Recipe, fold: int) -> Recipe:
    """The recipe of fold `fold` (0-based): its run lives in `<run>/cv/fold-<fold+1>/`; no eval, no distillation."""
    copy = recipe.model_copy(deep=True)
    copy.output_dir = str(recipe.run_dir / "cv")
    copy.name = f"fold-{fold + 1}"
    copy.eval.enabled = False
    copy.eval.cross_validation.folds = 0
    copy.distill.enabled = False
    return copy


def fold_splits(recipe: Recipe, conversations: list[dict], folds: int) -> list[dict[str, list[dict]]]:
    """k disjoint test folds covering every conversation once, cut by `kit.data.folds` (the same folds as
    `data.folds` writes); the rest of each fold is split into train and validation as `kit.data` splits, and
    augmented when `data.augment` is on."""
    d = recipe.data
    parts = data.folds(conversations, folds, recipe.seed, d.stratify_by)
    result = []
    for k, test in enumerate(parts):
        rest = [c for j, part in enumerate(parts) if j != k for c in part]
        split = data.split(rest, d.validation_fraction, 0.0, recipe.seed, d.stratify_by)
        train = split["train"] + (augment_training(split["train"], d.augment, recipe.seed) if d.augment.enabled else [])
        result.append({"train": train, "validation": split["validation"], "test": test})
    return result


def fold_data(splits: dict[str, list[dict]]) -> sft.TrainingData:
    """A fold's training conversations, identified by the sha256 of their canonical JSON (train, then validation)."""
    digest = hashlib.sha256()
    for name in ("train", "validation"):
        for row in splits[name]:
            digest.update(json.dumps(row, ensure_ascii=False, sort_keys=True).encode("utf-8") + b"\n")
        digest.update(b"\0")
    stats = {"splits": {name: len(splits[name]) for name in ("train", "validation", "test")}}
    return sft.TrainingData(train=splits["train"], validation=splits["validation"], sha256=digest.hexdigest(), stats=stats)


def fold_trained(fold: Recipe, sha256: str) -> bool:
    """A previous run of this exact fold (same recipe, same conversations) is complete: reuse it instead of retraining."""
    manifest_path = fold.run_dir / "manifest.json"
    if not manifest_path.is_file() or kit_eval.tuned_weights(fold) == (None, None):
        return False
    manifest = json.loads(manifest_path.read_text())
    return manifest.get("recipe") == fold.model_dump(mode="json") and (manifest.get("dataset") or {}).get("sha256") == sha256


def aggregate_folds(per_fold: list[dict[str, dict]]) -> dict[str, dict]:
    """{model: {metric: {mean, std, values}}} over the folds; std is the sample standard deviation (n - 1)."""
    summary: dict[str, dict] = {}
    for label in per_fold[0]:
        rows = [fold[label] for fold in per_fold if label in fold]
        summary[label] = {}
        for key in CV_METRICS:
            values = [row.get(key) for row in rows]
            if len(values) == len(per_fold) and all(isinstance(v, (int, float)) for v in values):
                summary[label][key] = {
                    "mean": statistics.fmean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "values": values,
                }
    return summary


def run(recipe: Recipe) -> Path:
    """Train and score one adapter per fold; returns `<run>/cv/summary.json`."""
    folds = recipe.eval.cross_validation.folds
    if not folds:
        raise KitError("eval.cross_validation.folds: cross-validation is off (0); set it to 2 or more")
    data.build(recipe)
    pool = [c for name in ("train", "validation") for c in data.load_split(recipe, name)]
    pool = [c for c in pool if "augmented" not in (c.get("metadata") or {}) and c["messages"][-1]["role"] == "assistant"]
    if len(pool) < folds * 2:
        raise KitError(f"eval.cross_validation.folds: {folds} folds need at least {folds * 2} train + validation "
                       f"conversations (the data has {len(pool)}); use fewer folds")
    per_fold, runs = [], []
    for i, splits in enumerate(fold_splits(recipe, pool, folds)):
        fold = fold_recipe(recipe, i)
        conversations = fold_data(splits)
        if fold_trained(fold, conversations.sha256):
            print(f"kit.crossval: fold {i + 1}/{folds}: reusing {fold.run_dir}", flush=True)
        else:
            print(f"kit.crossval: fold {i + 1}/{folds}: training on {len(splits['train'])} conversations", flush=True)
            sft.train(fold, conversations)
        judge = scoring.make_judge(recipe, kit_eval.test_conversations(recipe, splits["test"]), splits["train"])
        rows = [c for c in kit_eval.candidates(fold) if c.label in ("base", "tuned")]
        results, _, _ = kit_eval.evaluate_all(fold, rows, judge, quiet=True)
        per_fold.append(results)
        runs.append({"run": str(fold.run_dir), "sha256": conversations.sha256, "test_ids": [c.get("id") for c in splits["test"]]})
        print(f"kit.crossval: fold {i + 1}: " + ", ".join(f"{label} eval_loss={r['eval_loss']:.4g}" for label, r in results.items()), flush=True)
    summary = {"folds": folds, "conversations": len(pool), "models": aggregate_folds(per_fold), "fold_runs": runs,
               "recipe": recipe.model_dump(mode="json")}
    path = cross_validation_path(recipe)
    write_json(path, summary)
    print(f"kit.crossval: {path}", flush=True)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = recipe_parser("python -m kit.crossval", "k-fold cross-validation: one adapter per fold, base vs tuned.")
    args = parser.parse_args(argv)
    run_cli(lambda: run(load_recipe(args.recipe, args.overrides)))


if __name__ == "__main__":
    main()
