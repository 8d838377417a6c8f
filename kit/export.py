"""Export for deployment: the tuned model merged into plain transformers weights.

    python -m kit.export recipes/quickstart.yaml

Writes `<run>/export/merged/`: safetensors + tokenizer + chat template + generation config, which
`AutoModelForCausalLM.from_pretrained` loads with no PEFT installed. The folder appears whole or
not at all.
"""

from __future__ import annotations

import json
from pathlib import Path

from kit import models
from kit.cli import recipe_parser, run_cli
from kit.errors import KitError
from kit.masking import ensure_chat_template
from kit.recipe import Recipe, load_recipe
from kit.runs import atomic_dir, package_versions, tuned_adapter


def export_merged(recipe: Recipe, target: Path) -> Path:
    """Base + adapter merged in float32 (no rounding before the user picks a dtype), saved as safetensors."""
    import torch

    adapter = tuned_adapter(recipe)
    if adapter is None:
        raise KitError(f"{recipe.run_dir}: no complete tuned adapter; run `python -m kit.sft` with this recipe first")
    model_path = models.resolve(recipe.model.name)
    tokenizer = models.load_tokenizer(recipe.model, model_path)
    ensure_chat_template(tokenizer)
    model = models.load_model(recipe.model, adapter=adapter, path=model_path, dtype=torch.float32)
    merged = model.merge_and_unload().to("cpu")
    merged.config.name_or_path = f"kit/{recipe.name}"
    with atomic_dir(target) as scratch:
        merged.save_pretrained(scratch)  # safetensors by default
        tokenizer.save_pretrained(scratch)
        (scratch / "kit_export.json").write_text(
            json.dumps(
                {"base": recipe.model.name, "adapter": str(adapter), "recipe": recipe.name, "versions": package_versions()},
                indent=2,
            )
            + "\n"
        )
    return target


def run(recipe: Recipe) -> Path:
    """Write every format in `export.formats`; returns the export folder."""
    root = recipe.run_dir / "export"
    for name in recipe.export.formats:
        if name == "merged":
            path = export_merged(recipe, root / "merged")
            print(f"kit.export: merged model {path} (load with AutoModelForCausalLM.from_pretrained)", flush=True)
    return root


def main(argv: list[str] | None = None) -> None:
    parser = recipe_parser("python -m kit.export", "Export the tuned model for deployment.")
    args = parser.parse_args(argv)
    run_cli(lambda: run(load_recipe(args.recipe, args.overrides)))


if __name__ == "__main__":
    main()
