"""Distillation on the quickstart: KD vs plain SFT of the same pruned student, then student vs teacher speed.

    KIT_CACHE=/tmp/kitcache python bench/distill_quickstart.py [--steps 30] [--set distill.temperature=2 ...]

Needs a finished quickstart run (`python -m kit.sft recipes/quickstart.yaml`); it is copied, never
modified. Both students are cut from the tuned teacher the same way (recipe default `drop_middle`:
15 of its 30 blocks) and train for the same steps with the same seed, data order and learning rate
through `kit.distill.run`; only the loss differs: `distill.alpha=1` is plain SFT (cross-entropy on the
answer tokens), the recipe's `distill.alpha` (0.5) adds the teacher's soft targets. Printed: held-out
(test split) loss on the assistant tokens of each, and greedy generation tokens/s of the distilled
student and the teacher on the same test prompts (same number of new tokens each, batch 1, interleaved
so that load on a shared machine hits both alike).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def tokens_per_second(models: dict, tokenizer, prompts, new_tokens: int, rounds: int) -> dict:
    """Greedy generation speed per model: each prompt goes to every model in turn, `rounds` times."""
    import torch

    from kit.masking import render

    seconds = {name: [] for name in models}
    for _ in range(rounds):
        for prompt in prompts:
            ids = tokenizer(render(tokenizer, prompt, add_generation_prompt=True), return_tensors="pt", add_special_tokens=False)
            for name, model in models.items():
                started = time.perf_counter()
                with torch.no_grad():
                    out = model.generate(
                        **ids,
                        do_sample=False,
                        max_new_tokens=new_tokens,
                        min_new_tokens=new_tokens,  # same work for both: no early stop at the end-of-turn token
                        pad_token_id=tokenizer.pad_token_id,
                    )
                seconds[name].append(time.perf_counter() - started)
                assert out.shape[1] - ids["input_ids"].shape[1] == new_tokens
    per_prompt = {name: [new_tokens / s for s in values] for name, values in seconds.items()}
    return {
        name: {
            "tokens_per_s": round(new_tokens * len(values) / sum(seconds[name]), 2),
            "median_tokens_per_s": round(statistics.median(values), 2),
        }
        for name, values in per_prompt.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=str(REPO / "runs" / "quickstart"), help="a finished quickstart run (read only)")
    parser.add_argument("--work", default="/tmp/kit-bench-distill", help="scratch folder (replaced)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="recipe override for both students, e.g. --set distill.temperature=2 (defaults: the recipe's)",
    )
    parser.add_argument("--alpha", type=float, default=None, help="the KD student's distill.alpha (default: the recipe's)")
    parser.add_argument("--speed-prompts", type=int, default=6)
    parser.add_argument("--speed-tokens", type=int, default=48)
    parser.add_argument("--speed-rounds", type=int, default=2)
    args = parser.parse_args()

    import torch

    from kit import data, distill, models
    from kit.scoring import assistant_loss
    from kit.recipe import ModelSection, load_recipe

    torch.set_num_threads(2)
    source = Path(args.runs)
    if not (source / "manifest.json").is_file():
        sys.exit(f"{source}: no finished quickstart run; run `python -m kit.sft recipes/quickstart.yaml` first")
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    run_dir = work / "quickstart"
    run_dir.mkdir(parents=True)
    for name in ("adapter", "dataset"):
        shutil.copytree(source / name, run_dir / name)
    shutil.copy(source / "manifest.json", run_dir / "manifest.json")

    common = [f"output_dir={work}", f"distill.max_steps={args.steps}", *args.overrides]
    kd_alpha = args.alpha if args.alpha is not None else load_recipe(REPO / "recipes" / "quickstart.yaml", common).distill.alpha
    results: dict[str, dict] = {}
    for label, alpha in (("sft", 1.0), ("kd", kd_alpha)):
        recipe = load_recipe(REPO / "recipes" / "quickstart.yaml", [*common, f"distill.alpha={alpha}"])
        started = time.time()
        folder = distill.run(recipe)
        results[label] = {"alpha": alpha, "train_seconds": round(time.time() - started, 1)}
        folder.rename(run_dir / f"student-{label}")

    recipe = load_recipe(REPO / "recipes" / "quickstart.yaml", common)
    test = data.load_split(recipe, "test")
    tokenizer = models.load_tokenizer(recipe.model)
    students = {}
    for label in results:
        folder = run_dir / f"student-{label}"
        model = models.load_model(ModelSection(name=str(folder))).eval()
        scores = assistant_loss(model, tokenizer, test, recipe.eval.batch_size, recipe.sft.max_length)
        manifest = json.loads((folder / "manifest.json").read_text())
        results[label].update(
            test_eval_loss=round(scores["eval_loss"], 4),
            assistant_tokens=scores["assistant_tokens"],
            parameters=manifest["student"]["parameters"],
            layers=manifest["student"]["layers"],
            size_mb=manifest["student"]["size_mb"],
        )
        students[label] = model
        print(f"bench: {label}: {json.dumps(results[label])}", flush=True)

    tok, path, adapter = distill.teacher_tokenizer(recipe)
    teacher = distill.load_teacher(recipe, tok, path, adapter)
    teacher_loss = assistant_loss(teacher.model, tokenizer, test, recipe.eval.batch_size, recipe.sft.max_length)["eval_loss"]
    prompts = [c["messages"][:-1] for c in test[: args.speed_prompts]]
    speed = tokens_per_second(
        {"teacher": teacher.model, "student": students["kd"]}, tokenizer, prompts, args.speed_tokens, args.speed_rounds
    )
    report = {
        "steps": args.steps,
        "distill": recipe.distill.model_dump(mode="json", exclude={"alpha", "max_steps"}),
        "seed": recipe.seed,
        "test_conversations": len(test),
        "student_sft": results["sft"],
        "student_kd": results["kd"],
        "kd_beats_sft": results["kd"]["test_eval_loss"] < results["sft"]["test_eval_loss"],
        "teacher": {**teacher.description, "test_eval_loss": round(teacher_loss, 4), **speed["teacher"]},
        "student_speed": speed["student"],
        "speedup": round(speed["student"]["tokens_per_s"] / speed["teacher"]["tokens_per_s"], 2),
        "speedup_median": round(speed["student"]["median_tokens_per_s"] / speed["teacher"]["median_tokens_per_s"], 2),
    }
    print("bench: " + json.dumps(report, indent=2), flush=True)
    (work / "report.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
