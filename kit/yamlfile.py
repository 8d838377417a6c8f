"""Reading kit's YAML files (recipes, templates): line numbers in errors, and no key set twice.

PyYAML keeps the last of two equal keys without a word, so `seed: 42` near the top and `seed: 7`
further down would train with seed 7. kit refuses such a file, naming the dotted key and both lines.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import yaml

from kit.errors import KitError


def read_yaml(path: Path) -> object:
    """The file's YAML value. Raises KitError (one line per problem) for bad syntax or a repeated key."""
    return read_yaml_tree(path)[0]


def read_yaml_tree(path: Path) -> tuple[object, yaml.Node | None]:
    """The file's YAML value and its node tree (which knows every key's line), checked as `read_yaml`."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise KitError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        repeated = [f"{path}: {key}: set twice, on lines {first} and {second}; keep one"
                    for key, first, second in repeated_keys(node)]
        if repeated:
            raise KitError("\n".join(repeated))
        return (loader.construct_document(node) if node is not None else None), node
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = f" line {mark.line + 1}:" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise KitError(f"{path}:{line} not valid YAML: fix the syntax ({problem})") from None
    finally:
        loader.dispose()


def repeated_keys(node: yaml.Node | None, where: tuple[str, ...] = ()) -> Iterator[tuple[str, int, int]]:
    """(dotted key, first line, repeated line) for each mapping key set twice, at any depth."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key, line = key_node.value, key_node.start_mark.line + 1
                if key in seen:
                    yield ".".join((*where, key)), seen[key], line
                else:
                    seen[key] = line
                yield from repeated_keys(value_node, (*where, key))
            else:
                yield from repeated_keys(value_node, where)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from repeated_keys(item, (*where, str(index)))
