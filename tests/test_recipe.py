import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kit.errors import KitError
from kit.data.template import load_template
from kit.recipe import load_recipe, reference_markdown

REPO = Path(__file__).resolve().parent.parent
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


def write(tmp_path, tree) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


MINIMAL = {"name": "x", "model": {"name": "bundled:smollm2-135m-instruct"}, "data": {"sources": [{"path": "a.csv"}]}}


def test_minimal_recipe_gets_defaults(tmp_path):
    recipe = load_recipe(write(tmp_path, MINIMAL))
    assert recipe.sft.method == "lora" and recipe.sft.lora.target_modules == "all-linear"
    assert recipe.chat.host == "127.0.0.1" and recipe.chat.share is False
    assert recipe.model.trust_remote_code is False
    assert recipe.run_dir == Path("runs/x")


def test_precedence_defaults_yaml_set(tmp_path):
    tree = {**MINIMAL, "sft": {"learning_rate": 1e-3, "batch_size": 4}}
    recipe = load_recipe(write(tmp_path, tree), ["sft.learning_rate=5e-5", "sft.lora.r=4", "data.sources=[{path: b.csv}]"])
    assert recipe.sft.learning_rate == 5e-5  # --set beats YAML
    assert recipe.sft.batch_size == 4  # YAML beats default
    assert recipe.sft.lora.r == 4 and recipe.sft.lora.alpha == 32  # untouched keys keep defaults
    assert recipe.data.sources[0].path == "b.csv"


def test_all_problems_reported_with_file_and_dotted_key(tmp_path):
    tree = {**MINIMAL, "sft": {"learning_rate": "abc", "nonsense": 1, "lora": {"r": 0}}, "extra": True}
    path = write(tmp_path, tree)
    with pytest.raises(KitError) as caught:
        load_recipe(path)
    lines = str(caught.value).splitlines()
    assert len(lines) == 4
    assert all(line.startswith(f"{path}: ") for line in lines)
    keys = {line.split(": ")[1] for line in lines}
    assert keys == {"sft.learning_rate", "sft.nonsense", "sft.lora.r", "extra"}


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.test_fraction=0.95", "data"),
        ("data.validation_fraction=-0.1", "data.validation_fraction"),
        ("sft.max_steps=-3", "sft.max_steps"),
        ("sft.method=magic", "sft.method"),
        ("name=../escape", "name"),
        ("chat.port=70000", "chat.port"),
        ("model.dtype=float8", "model.dtype"),
    ],
)
def test_bad_values_name_their_key(tmp_path, override, key):
    with pytest.raises(KitError, match=rf": {key}: "):
        load_recipe(write(tmp_path, MINIMAL), [override])


def test_malformed_set_and_yaml(tmp_path):
    with pytest.raises(KitError, match="dotted.key=value"):
        load_recipe(write(tmp_path, MINIMAL), ["sft.learning_rate"])
    with pytest.raises(KitError, match="is a value, not a section"):
        load_recipe(write(tmp_path, MINIMAL), ["name.x=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(KitError, match="not valid YAML"):
        load_recipe(bad)
    with pytest.raises(KitError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.yaml")


def run_cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_cli_bad_overrides_exit_2_without_traceback():
    result = run_cli("-m", "kit.sft", "recipes/quickstart.yaml", "--set", "sft.learning_rate=abc", "--set", "sft.nonsense=1")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "sft.learning_rate" in result.stderr and "sft.nonsense" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 2


def test_cli_missing_recipe_and_missing_model_exit_2(tmp_path):
    missing = run_cli("-m", "kit.sft", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().count("\n") == 0 and "recipe file not found" in missing.stderr
    no_model = run_cli("-m", "kit.sft", "recipes/quickstart.yaml", "--set", "model.name=/no/such/dir",
                       "--set", f"output_dir={tmp_path}")
    assert no_model.returncode == 2 and "Traceback" not in no_model.stderr
    assert no_model.stderr.strip().count("\n") == 0 and "model.name: /no/such/dir" in no_model.stderr


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_shipped_recipes_validate_and_say_how_to_run(path):
    recipe = load_recipe(path)
    assert path.read_text().startswith("# python -m kit."), "a shipped recipe starts with the command that runs it"
    for source in recipe.data.sources:
        assert (REPO / source.path).is_file(), source.path


def test_docs_reference_matches_schema():
    readme = (REPO / "docs" / "recipes.md").read_text()
    start, end = "<!-- recipe-reference:start -->\n", "<!-- recipe-reference:end -->"
    assert start in readme and end in readme
    embedded = readme.split(start, 1)[1].split(end, 1)[0]
    assert embedded.strip() == reference_markdown().strip(), "run `python -m kit.recipe reference` and paste it into docs/recipes.md"


def test_a_key_set_twice_is_refused_with_both_lines(tmp_path):
    recipe = tmp_path / "twice.yaml"
    recipe.write_text("name: twice\nseed: 42\nmodel:\n  name: bundled:smollm2-135m-instruct\n"
                      "sft:\n  epochs: 1\n  learning_rate: 1.0e-4\n  epochs: 3\nseed: 7\n")
    with pytest.raises(KitError) as error:
        load_recipe(recipe)
    assert str(error.value).splitlines() == [
        f"{recipe}: sft.epochs: set twice, on lines 6 and 8; keep one",
        f"{recipe}: seed: set twice, on lines 2 and 9; keep one",
    ]
    result = run_cli("-m", "kit.recipe", "check", str(recipe))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "seed: set twice, on lines 2 and 9" in result.stderr and "sft.epochs" in result.stderr


def test_keys_repeated_in_different_places_are_fine(tmp_path):
    recipe = tmp_path / "ok.yaml"
    recipe.write_text("name: ok\nmodel: {name: bundled:smollm2-135m-instruct}\ndata:\n  sources:\n    - {path: a.csv, template: qa_csv}\n"
                      "    - {path: b.csv, template: qa_csv}\n"
                      "sft:\n  lora: &lora {r: 8, alpha: 16}\ndistill:\n  student: {method: lora}\n")
    assert [s.path for s in load_recipe(recipe).data.sources] == ["a.csv", "b.csv"]


def test_a_template_key_set_twice_is_refused(tmp_path):
    template = tmp_path / "twice.yaml"
    template.write_text("description: x\nreader: csv\nshape: qa_pairs\nfields:\n  question: q\n  answer: a\n"
                        "  question: body\n")
    with pytest.raises(KitError, match=r"twice.yaml: fields.question: set twice, on lines 5 and 7; keep one"):
        load_template(str(template))


def test_yaml_syntax_errors_name_the_line(tmp_path):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("name: broken\nsft:\n  epochs: [1, 2\n")
    with pytest.raises(KitError, match=r"broken.yaml: line \d+: not valid YAML"):
        load_recipe(recipe)
