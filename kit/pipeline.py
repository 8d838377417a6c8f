"""The user's whole path: one recipe through data -> sft -> prefer -> crossval -> eval -> distill.

    python -m kit.sft recipes/quickstart.yaml        # the command that runs this (flags: `--help`)

Each stage is a function that does its own work and returns (`kit.<stage>.run(recipe)`), and each has
its own command that runs it alone. This module only chains them, in order, skipping what the recipe
turns off: the stages hand over through the files they write in the run folder, never by calling
each other. To add a stage: write `kit/<stage>.py` with `run(recipe) -> Path` and a `main()`, then one
line here.
"""

from __future__ import annotations

from pathlib import Path

from kit import crossval, distill, eval as kit_eval, prefer, sft
from kit.cli import run_cli
from kit.recipe import Recipe, load_recipe


def run(recipe: Recipe, resume: bool = False) -> Path:
    """Run every stage the recipe enables; returns the run folder."""
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    # kit.sft.run builds the dataset first (kit.data.build, a no-op while it is up to date), after checking the
    # model reference, so that a bad model fails before any work; every process trains (torchrun: data-parallel).
    run_dir = sft.run(recipe, resume=resume)
    if not state.is_main_process:
        return run_dir
    if recipe.prefer.enabled:  # before eval, so that its gate judges the preferred model
        prefer.run(recipe)
    if recipe.eval.enabled and recipe.eval.cross_validation.folds:
        crossval.run(recipe)
    if recipe.eval.enabled:
        kit_eval.run(recipe)
    if recipe.distill.enabled:
        distill.run(recipe)
    return run_dir


def main(argv: list[str] | None = None) -> None:
    """`python -m kit.sft`: the whole path, or kit.sft alone with --train-only, --preflight or --sweep."""
    parser = sft.make_parser()
    parser.add_argument("--train-only", action="store_true",
                        help="run kit.sft alone: train and write the adapter; skip the eval and distill the recipe enables")
    args = parser.parse_args(argv)

    def work():
        if args.train_only or args.preflight or args.sweep:
            return sft.work(args)
        return run(load_recipe(args.recipe, args.overrides), resume=args.resume)

    run_cli(work)


if __name__ == "__main__":
    main()
