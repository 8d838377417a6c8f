"""kit.runs: which of the run's models is promoted, decided from kit.eval's gate in one place."""

import json
import os

from kit import gate
from kit.recipe import load_recipe
from kit.runs import choose_model, promoted_model

TUNED = {"eval_loss": 2.22, "similarity": 0.585, "intent_accuracy": 0.74, "fact_recall": 0.40,
         "invented_facts": 12, "invented_contacts": 3}


def fake_preferred(recipe):
    """kit.prefer's folder as promoted_model sees it: an adapter config and the manifest written last."""
    folder = recipe.run_dir / "preferred"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "manifest.json").write_text("{}")
    return folder


def write_gate(recipe, preferred_row: dict) -> None:
    """eval/metrics.json as kit.eval writes it: the rows and the gate's decision on preferred vs tuned."""
    decision = gate.decide(preferred_row, TUNED, "preferred", "tuned")
    path = recipe.run_dir / "eval" / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"models": {"tuned": TUNED, "preferred": preferred_row},
                                "gate": {"preferred": decision.as_dict()}}))


def test_tuned_without_a_preferred_model_and_without_a_word(tiny_recipe):
    recipe = load_recipe(tiny_recipe())
    assert promoted_model(recipe).model == "tuned" and promoted_model(recipe).note is None


def test_preferred_only_when_the_gate_promoted_it(tiny_recipe):
    recipe = load_recipe(tiny_recipe())
    folder = fake_preferred(recipe)
    choice = promoted_model(recipe)
    assert choice.model == "tuned" and "no kit.eval has judged the preferred model yet" in choice.note

    write_gate(recipe, {**TUNED, "invented_contacts": 4})
    choice = promoted_model(recipe)
    assert choice.model == "tuned"
    assert choice.note == ("using tuned: kit.eval's gate refused preferred (invented contacts rose: 4 > 3 "
                           "(allowed <= 3))")

    write_gate(recipe, {**TUNED, "fact_recall": 0.45, "invented_contacts": 0})
    assert promoted_model(recipe).model == "preferred"
    assert promoted_model(recipe).note == "using preferred: kit.eval's gate promoted it over tuned"

    # kit.prefer trained a new preferred model after that eval: the decision was about the old one.
    later = os.stat(recipe.run_dir / "eval" / "metrics.json").st_mtime_ns + 1_000_000_000
    os.utime(folder / "manifest.json", ns=(later, later))
    choice = promoted_model(recipe)
    assert choice.model == "tuned" and "kit.prefer wrote the preferred model after the last kit.eval" in choice.note

    # An explicit choice is taken as it is, whatever the gate said.
    assert choose_model(recipe, "preferred").model == "preferred" and choose_model(recipe, "preferred").note is None
    assert choose_model(recipe, "student").model == "student"
    assert choose_model(recipe, "promoted") == promoted_model(recipe)


def test_a_damaged_metrics_file_is_no_decision(tiny_recipe):
    recipe = load_recipe(tiny_recipe())
    fake_preferred(recipe)
    path = recipe.run_dir / "eval" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"models": {"tuned": {}}')  # cut short
    assert promoted_model(recipe).model == "tuned"
    path.write_text('{"models": {}, "gate": {"student": {"promoted": true}}}')  # no preferred row when it ran
    assert promoted_model(recipe).model == "tuned"
