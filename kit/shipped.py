"""The files kit ships beside its code: `data_templates/` (log formats and their samples) and `recipes/`.

In a source checkout they sit at the repository root; an installed wheel carries them inside the
package (`kit/data_templates`, `kit/recipes`). A relative path that does not exist under the working
directory is looked up among them, so `kit sft recipes/quickstart.yaml` and the quickstart's sample
export work from any folder; a file of the user's own with the same relative path always wins.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def shipped_dir(name: str) -> Path:
    """`data_templates` or `recipes`: inside the installed package, else beside it (a source checkout)."""
    inside = _PACKAGE / name
    return inside if inside.is_dir() else _PACKAGE.parent / name


def resolve(path: str | Path) -> Path:
    """`path` itself when it exists (or is absolute); else the shipped file at that relative path, if any."""
    path = Path(path)
    if path.exists() or path.is_absolute() or not path.parts:
        return path
    top, *rest = path.parts
    if top in ("data_templates", "recipes") and rest:
        candidate = shipped_dir(top).joinpath(*rest)
        if candidate.exists():
            return candidate
    return path
