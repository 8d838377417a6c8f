"""A run's folder: atomic writes, package versions and the manifest that marks work complete."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from importlib import metadata
from pathlib import Path

from kit.errors import KitError

PACKAGES = ("kit", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "evaluate", "gradio", "gguf")


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def scratch_dir(target: Path) -> Path:
    """A new hidden folder beside `target` with the permissions of a plain mkdir (the user's umask).

    Not mkdtemp: its 0700 would stay on the folder once renamed into place, and other readers of a run
    (a teammate, a serving account) could not open it.
    """
    scratch = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:12]}"
    scratch.mkdir()
    return scratch


def write_json(path: Path, payload) -> None:
    """Write JSON via a temporary file and a rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, scratch = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(payload, stream, indent=2, ensure_ascii=False)
            stream.write("\n")
        os.chmod(scratch, 0o666 & ~umask())  # mkstemp makes it 0600; a plain open() would not
        os.replace(scratch, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(scratch)
        raise


@contextlib.contextmanager
def atomic_dir(target: Path):
    """Yield a scratch folder beside `target`; on success it replaces `target` whole."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = scratch_dir(target)
    except OSError as exc:
        raise KitError(f"output_dir: cannot write {target.parent} ({exc.strerror}); choose a writable folder") from None
    try:
        yield scratch
        if target.exists():
            shutil.rmtree(target)
        os.rename(scratch, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def tuned_adapter(recipe) -> Path | None:
    """The run's LoRA adapter, only when kit.sft's manifest (written last) says it is complete."""
    run_dir = recipe.run_dir
    if (run_dir / "manifest.json").is_file() and (run_dir / "adapter" / "adapter_config.json").is_file():
        return run_dir / "adapter"
    return None


def tuned_model_dir(recipe) -> Path | None:
    """The run's whole tuned model (`full` / `freeze` methods), only when its manifest is written."""
    run_dir = recipe.run_dir
    if (run_dir / "manifest.json").is_file() and (run_dir / "model" / "config.json").is_file():
        return run_dir / "model"
    return None


def student_dir(recipe) -> Path | None:
    """The run's distilled student (a plain transformers folder), only when its manifest.json is written."""
    folder = recipe.run_dir / "student"
    if (folder / "manifest.json").is_file() and (folder / "config.json").is_file():
        return folder
    return None


def preferred_adapter(recipe) -> Path | None:
    """The run's preference-tuned adapter (`kit.prefer`), only when its manifest (written last, inside it) is there."""
    folder = recipe.run_dir / "preferred"
    if (folder / "manifest.json").is_file() and (folder / "adapter_config.json").is_file():
        return folder
    return None


def cross_validation_path(recipe) -> Path:
    """Where `kit.crossval` writes its summary, and `kit.eval` reads it."""
    return recipe.run_dir / "cv" / "summary.json"


def cross_validation(recipe) -> dict | None:
    """The run's cross-validation summary, only when `kit.crossval` wrote it for this very recipe."""
    path = cross_validation_path(recipe)
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    if summary.get("recipe") != recipe.model_dump(mode="json"):
        return None
    return {key: summary[key] for key in ("folds", "conversations", "models")}
