"""The house rules a reader relies on, checked on the source: no import cycle among kit's modules, no `_private`
name used across modules (tests included), no `__class__` assignment, no `sys.modules` writes.

Imports inside functions count (a cycle hidden behind a function-local import is still a cycle); an import
under `if __name__ == "__main__":` does not: that block runs only when the file is the script `__main__`, a
module of its own (how `python -m kit.sft` hands over to `kit.pipeline`).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KIT = REPO / "kit"

# What other issues own and are changing (the data issue: kit/pii.py; the export issue: kit/export.py):
# tolerated here, exactly as listed, only until they land; delete each entry with its fix. Nothing of kit.sft,
# kit.trainer, kit.eval, kit.crossval, kit.distill, kit.chat or kit.pipeline is on this list, and a new case
# anywhere fails.
OTHER_ISSUES = {
    "cycles": set(),
    "sys_modules": set(),
    "private": {
        # kit/pii.py's test (the data issue)
        ("tests/test_pii.py", "kit.pii", "_KINDS_OF_MARKS"),
        # the export issue (kit/export.py)
        ("tests/test_export_gguf.py", "kit.export", "_permute_qk"),
        ("tests/test_hardening.py", "kit.export", "_write_info"),
    },
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def kit_modules() -> dict[str, Path]:
    return {module_name(p): p for p in KIT.rglob("*.py")}


def is_main_guard(node: ast.AST) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def walk_outside_main_guard(tree: ast.AST):
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(child for child in ast.iter_child_nodes(node) if not is_main_guard(child))


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The kit module an imported dotted name lands in (`kit.data.splits.folds` -> `kit.data.splits`)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(path: Path, modules: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """(kit module imported, names taken from it) for every import in the file (the __main__ block aside)."""
    found = []
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in walk_outside_main_guard(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = resolve(alias.name, modules)
                if target:
                    found.append((target, []))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                submodule = resolve(f"{base}.{alias.name}", modules)
                if submodule and submodule == f"{base}.{alias.name}":
                    found.append((submodule, []))  # `from kit import sft`: the module itself
                else:
                    target = resolve(base, modules)
                    if target:
                        found.append((target, [alias.name]))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = kit_modules()
    graph = {}
    for name, path in modules.items():
        graph[name] = {target for target, _ in imports_of(path, modules) if target != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, result, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            # A submodule importing its own package's __init__ is how packages work, not a cycle.
            if node.startswith(nxt + "."):
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                result.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return result


def source_files() -> list[Path]:
    return sorted([*KIT.rglob("*.py"), *(REPO / "tests").glob("*.py"), *(REPO / "bench").glob("*.py")])


def test_the_walker_finds_a_cycle_and_a_private_import():
    # The checks below must be able to fail: a made-up graph with a cycle, and a made-up file.
    assert cycles({"kit.a": {"kit.b"}, "kit.b": {"kit.a"}, "kit.c": {"kit.a"}}) == [{"kit.a", "kit.b"}]
    assert cycles({"kit.data.x": {"kit.data"}, "kit.data": {"kit.data.x"}}) == []
    modules = kit_modules()
    probe = KIT / "_probe_not_a_module.py"
    tree = ast.parse("from kit.sft import _hidden\nif __name__ == '__main__':\n    from kit.eval import main\n")
    names = [(t, n) for node in walk_outside_main_guard(tree) if isinstance(node, ast.ImportFrom)
             for t, n in [(resolve(node.module, modules), [a.name for a in node.names])]]
    assert names == [("kit.sft", ["_hidden"])] and not probe.exists()


def test_no_import_cycle_among_kit_modules():
    graph = import_graph()
    assert "kit.sft" in graph and "kit.eval" not in graph["kit.sft"] and "kit.sft" not in graph["kit.eval"]
    found = [c for c in cycles(graph) if frozenset(c) not in OTHER_ISSUES["cycles"]]
    assert not found, f"import cycles: {found}"


def test_stages_do_not_import_each_other():
    graph = import_graph()
    stages = {"kit.sft", "kit.eval", "kit.distill", "kit.chat", "kit.export"}
    for stage in stages:
        assert not graph[stage] & (stages - {stage}), f"{stage} imports {graph[stage] & stages}"
    assert {"kit.sft", "kit.eval", "kit.distill", "kit.crossval"} <= graph["kit.pipeline"]


def test_no_private_name_crosses_a_module():
    modules = kit_modules()
    problems = []
    for path in source_files():
        relative = str(path.relative_to(REPO))
        own = module_name(path) if path.is_relative_to(KIT) else None
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = {}  # local name -> kit module, for `module._name` attribute access
        for target, names in imports_of(path, modules):
            for name in names:
                if name.startswith("_") and not name.startswith("__") and target != own:
                    problems.append((relative, target, name))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    if full in modules:
                        aliases[alias.asname or alias.name] = full
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in modules and alias.asname:
                        aliases[alias.asname] = alias.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__") and aliases[node.value.id] != own):
                problems.append((relative, aliases[node.value.id], node.attr))
            # monkeypatch.setattr(module, "_name", ...) and helpers that take a private name as a string
            if isinstance(node, ast.Call) and len(node.args) >= 2 and isinstance(node.args[0], ast.Name) \
                    and node.args[0].id in aliases and isinstance(node.args[1], ast.Constant) \
                    and isinstance(node.args[1].value, str) and node.args[1].value.startswith("_") \
                    and not node.args[1].value.startswith("__"):
                problems.append((relative, aliases[node.args[0].id], node.args[1].value))
    problems = sorted(set(problems) - OTHER_ISSUES["private"])
    assert not problems, f"private names used across modules: {problems}"


def test_no_class_swaps_and_no_sys_modules_writes():
    problems = []
    for path in source_files():
        relative = str(path.relative_to(REPO))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets = [node.target]
            elif isinstance(node, ast.Delete):
                targets = node.targets
            for target in targets:
                if isinstance(target, ast.Attribute) and target.attr == "__class__":
                    problems.append((relative, node.lineno, "__class__ assignment"))
                if isinstance(target, ast.Subscript) and ast.unparse(target.value) == "sys.modules":
                    problems.append((relative, node.lineno, "sys.modules write"))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and ast.unparse(node.func.value) == "sys.modules" and node.func.attr in ("update", "pop", "setdefault", "__setitem__"):
                problems.append((relative, node.lineno, "sys.modules write"))
    problems = [p for p in problems if not (p[2] == "sys.modules write" and p[0] in OTHER_ISSUES["sys_modules"])]
    assert not problems, problems
