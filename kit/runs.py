"""A run's folder: atomic writes, package versions, the manifest that marks work complete, and which of its
models is promoted (`promoted_model`)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
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


def eval_metrics_path(recipe) -> Path:
    """Where `kit.eval` writes its metrics, the gate's decisions among them (`gate`)."""
    return recipe.run_dir / "eval" / "metrics.json"


@dataclass(frozen=True)
class Choice:
    """The model a one-model stage (kit.export, kit.serve) uses, and the line that says why."""

    model: str  # "tuned", "preferred" or "student"
    note: str | None = None  # for the terminal; None when there was nothing to decide


def promoted_model(recipe) -> Choice:
    """`preferred` when kit.eval's gate promoted it over tuned, else `tuned`: the one place this is decided.

    The note names the failed checks, or says that no eval has judged the preferred model yet (none ran, or
    kit.prefer wrote a new one since). Without a preferred model there is nothing to decide: tuned, no note.
    """
    preferred = preferred_adapter(recipe)
    if preferred is None:
        return Choice("tuned")
    path = eval_metrics_path(recipe)
    try:
        decision = json.loads(path.read_text(encoding="utf-8"))["gate"]["preferred"]
        judged = path.stat().st_mtime_ns >= (preferred / "manifest.json").stat().st_mtime_ns
    except (OSError, ValueError, KeyError, TypeError):  # no eval yet, a damaged file, or no preferred row in it
        decision, judged = None, False
    if not isinstance(decision, dict):
        return Choice("tuned", "using tuned: no kit.eval has judged the preferred model yet; run `python -m kit.eval "
                               "<recipe>` (or choose it with --model preferred)")
    if not judged:
        return Choice("tuned", "using tuned: kit.prefer wrote the preferred model after the last kit.eval, which has not "
                               "judged it yet; run `python -m kit.eval <recipe>` (or choose it with --model preferred)")
    if decision.get("promoted") is True:
        return Choice("preferred", "using preferred: kit.eval's gate promoted it over tuned")
    reasons = "; ".join(str(reason) for reason in decision.get("reasons") or []) or "it was refused"
    return Choice("tuned", f"using tuned: kit.eval's gate refused preferred ({reasons})")


def choose_model(recipe, choice: str) -> Choice:
    """`choice` as a recipe names it (`promoted`, `tuned`, `preferred`, `student`), resolved."""
    return promoted_model(recipe) if choice == "promoted" else Choice(choice)


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
