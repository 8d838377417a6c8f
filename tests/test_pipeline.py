"""kit.pipeline chains the stages; each stage alone does only its own work."""

import json

from kit import pipeline, sft
from kit.recipe import load_recipe


def test_sft_alone_trains_and_the_pipeline_goes_on_to_eval(tiny_recipe):
    path = tiny_recipe(eval={"enabled": True, "max_samples": 2})
    recipe = load_recipe(path, ["sft.max_steps=1"])

    sft.run(recipe)  # the stage: adapter and manifest, no evaluation even though the recipe enables it
    assert (recipe.run_dir / "manifest.json").is_file() and not (recipe.run_dir / "eval").exists()

    pipeline.main([str(path), "--set", "sft.max_steps=1", "--train-only"])  # the command, told to stop after sft
    assert not (recipe.run_dir / "eval").exists()

    assert pipeline.run(recipe) == recipe.run_dir  # the whole path: sft, then eval of base and tuned
    metrics = json.loads((recipe.run_dir / "eval" / "metrics.json").read_text())
    assert set(metrics["models"]) == {"base", "tuned"} and "cross_validation" not in metrics
