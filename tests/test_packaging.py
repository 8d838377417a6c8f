"""An installed kit is whole: a wheel built from this tree, installed into a venv without the source tree,
lists the shipped templates and builds the quickstart's sample dataset from an empty folder."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_every_kit_package_is_in_the_wheel_list():
    packages = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(REPO).parts) for init in (REPO / "kit").rglob("__init__.py")}
    assert found <= packages, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(found - packages)}"


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # Without PYTHONPATH (which may name the source tree) and offline.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(map(str, command))}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result


def test_the_wheel_carries_templates_samples_and_recipes(tmp_path):
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(REPO)],
        cwd=tmp_path)
    wheel = next(wheels.glob("kit-*.whl"))
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)], cwd=tmp_path)
    # kit's dependencies come from this test's environment; a plain path line in a .pth file adds the
    # folder without running the .pth files in it, so the source tree's editable install stays out.
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path).stdout.strip())
    (site / "kit_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    empty = tmp_path / "empty"
    empty.mkdir()
    where = run([str(python), "-c", "import kit; print(kit.__file__)"], cwd=empty).stdout.strip()
    assert Path(where).is_relative_to(venv) and not Path(where).is_relative_to(REPO)

    kit = str(venv / "bin" / "kit")
    listing = run([kit, "data", "templates"], cwd=empty).stdout
    shipped = {path.stem for path in (REPO / "data_templates").glob("*.yaml")}
    assert shipped and shipped <= {line.split()[0] for line in listing.splitlines() if line.strip()}

    run([kit, "data", "build", "recipes/quickstart.yaml"], cwd=empty)
    dataset = empty / "runs" / "quickstart" / "dataset"
    assert sum(1 for _ in (dataset / "train.jsonl").open()) > 100
    assert not (empty / "recipes").exists() and not (empty / "data_templates").exists()

    # A template of the user's own, in ./data_templates, wins over the shipped one of the same name.
    (empty / "data_templates").mkdir()
    (empty / "data_templates" / "qa_csv.yaml").write_text(
        (REPO / "data_templates" / "qa_csv.yaml").read_text().replace("description:", "description: MINE", 1))
    assert "MINE" in run([kit, "data", "templates"], cwd=empty).stdout
