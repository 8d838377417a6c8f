"""llama.cpp's own GGUF converter and quantizer, as kit.export uses them.

    python -m kit.gguf            # where the converter is, fetching it once if needed

llama.cpp converts Hugging Face folders with `convert_hf_to_gguf.py` (plus its `conversion/` package and the
`gguf-py` it is released with) and quantizes with `llama_model_quantize`. Neither is on PyPI as a library
of its own, but the `llama-cpp-python` source distribution vendors both at the llama.cpp commit its compiled
library was built from. So kit takes the quantizer from the installed `llama_cpp` package and the converter
from that same version's source distribution, fetched once with pip into `$KIT_CACHE/llama.cpp/<version>/`
(or from a llama.cpp checkout named by `KIT_LLAMA_CPP`): the converter and the runtime then always agree on
which architectures and tensor layouts exist.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

from kit.errors import KitError

# Largest first: the Modelfile points at the last one written.
TYPES = ("f16", "q8_0", "Q6_K", "Q5_K_M", "Q4_K_M")
# llama.cpp's `enum llama_ftype` (include/llama.h); the quantizer reads these numbers.
FTYPES = {"f16": 1, "q8_0": 7, "Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18}
INSTALL = (
    "pip install 'llama-cpp-python[server]==0.3.36' (compiles llama.cpp, about 8-25 minutes on 2 cores; on CPUs "
    "without AVX-512 set CMAKE_ARGS=\"-DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF -DGGML_OPENMP=OFF\")"
)
# Rows that are not a multiple of 256 values wide do not fit k-quant blocks, and llama.cpp stores such tensors in
# a legacy 32-value type instead: Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0 (`tensor_type_fallback` in its
# src/llama-quant.cpp). That is most of a small model: SmolLM2-135M is 576 wide, so all its attention and MLP
# gate/up matrices. Q5_1 (a scale and a minimum per block) rounded that way did worse than Q5_0 (a scale): on the
# quickstart model, Q5_K_M's test perplexity 21.66 with Q5_1 and 18.47 with Q5_0, in a file 4% smaller, with the
# same next-token agreement (36/50; docs/export.md, "Measured"). So Q5_K_M's narrow q, k, attention output, gate
# and up matrices take Q5_0; the value projections stay llama.cpp's choice (it keeps some at Q6_K, hence Q8_0).
NARROW_FALLBACK = {"Q5_K_M": {role: "Q5_0" for role in ("attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up")}}
# What the converter needs from the source distribution (MIT, llama.cpp's LICENSE comes along).
_VENDOR = "vendor/llama.cpp/"
_KEEP = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/gguf/", "LICENSE")


def llama_cpp_version() -> str | None:
    """The installed llama-cpp-python's version, or None when it is not installed."""
    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        return None


def require_llama_cpp(why: str) -> str:
    version = llama_cpp_version()
    if version is None:
        raise KitError(f"{why} needs llama.cpp: {INSTALL}")
    return version


def _cache() -> Path:
    from kit import models

    return models.cache_root() / "llama.cpp"


def converter(fetch: bool = True) -> Path:
    """The folder holding llama.cpp's convert_hf_to_gguf.py (and its conversion/ and gguf-py/)."""
    own = os.environ.get("KIT_LLAMA_CPP")
    if own:
        folder = Path(own).expanduser()
        if not (folder / "convert_hf_to_gguf.py").is_file():
            raise KitError(f"KIT_LLAMA_CPP={own}: no convert_hf_to_gguf.py there; point it at a llama.cpp checkout")
        return folder
    version = require_llama_cpp("GGUF export")
    folder = _cache() / version
    if (folder / "convert_hf_to_gguf.py").is_file():
        return folder
    if not fetch:
        raise KitError(f"llama.cpp's converter is not in {folder}: run `python -m kit.gguf`")
    return fetch_converter(version, folder)


def fetch_converter(version: str, folder: Path) -> Path:
    """Unpack convert_hf_to_gguf.py and its gguf-py from llama-cpp-python==`version`'s sdist (pip, once)."""
    print(f"kit.gguf: fetching llama.cpp's converter from llama-cpp-python=={version}'s source (once) into {folder}", flush=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as scratch:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
             f"llama-cpp-python=={version}", "-d", scratch],
            capture_output=True, text=True,
        )
        archives = list(Path(scratch).glob("llama_cpp_python-*.tar.gz"))
        if done.returncode != 0 or not archives:
            last = (done.stderr.strip().splitlines() or ["no archive"])[-1]
            raise KitError(f"could not fetch llama-cpp-python=={version}'s source with pip ({last}); "
                           f"or set KIT_LLAMA_CPP to a llama.cpp checkout")
        unpacked = Path(scratch) / "converter"
        with tarfile.open(archives[0]) as archive:
            for member in archive.getmembers():
                _, _, inside = member.name.partition("/")
                if not inside.startswith(_VENDOR) or not (member.isfile() or member.isdir()):
                    continue
                relative = inside[len(_VENDOR):]
                if any(relative == keep or relative.startswith(keep) for keep in _KEEP):
                    member.name = relative
                    archive.extract(member, unpacked, filter="data")
        if not (unpacked / "convert_hf_to_gguf.py").is_file():
            raise KitError(f"llama-cpp-python=={version}'s source has no vendor/llama.cpp/convert_hf_to_gguf.py")
        try:
            unpacked.rename(folder)
        except OSError:  # another process unpacked it first
            if not (folder / "convert_hf_to_gguf.py").is_file():
                raise
    return folder


def convert(model_folder: Path, target: Path, name: str, outtype: str = "f16") -> Path:
    """A Hugging Face folder (safetensors, config, tokenizer) -> one GGUF file, by llama.cpp's converter.

    It runs in its own process: the converter imports the gguf-py it was released with, which may be newer
    than the installed `gguf` package.
    """
    script = converter() / "convert_hf_to_gguf.py"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("NO_LOCAL_GGUF", None)  # that would make it import the installed gguf instead
    done = subprocess.run(
        [sys.executable, str(script), str(model_folder), "--outfile", str(target), "--outtype", outtype,
         "--model-name", name],
        capture_output=True, text=True, env=env,
    )
    if done.returncode != 0 or not target.is_file():
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        reason = next((line for line in reversed(lines) if "Error" in line or "error" in line), lines[-1] if lines else "")
        raise KitError(f"export.formats: gguf: llama.cpp's convert_hf_to_gguf.py failed on {model_folder}: {reason.strip()}")
    return target


def narrow_fallbacks(source: Path, kind: str) -> dict[str, str]:
    """{tensor name: ggml type} for the block matrices of `source` whose rows do not fit k-quant blocks and
    whose legacy fallback kit chooses instead of llama.cpp (see NARROW_FALLBACK)."""
    import gguf

    roles = NARROW_FALLBACK.get(kind, {})
    chosen = {}
    for tensor in gguf.GGUFReader(source).tensors:
        parts = tensor.name.split(".")  # blk.<n>.<role>.weight
        if len(parts) == 4 and parts[0] == "blk" and len(tensor.shape) >= 2 and tensor.shape[0] % 256 != 0:
            if parts[2] in roles:
                chosen[tensor.name] = roles[parts[2]]
    return chosen


def quantize(source: Path, target: Path, kind: str, threads: int | None = None) -> Path:
    """`source` (an f16 GGUF) -> `target` of type `kind` (q8_0, Q4_K_M, ...) with llama.cpp's quantizer.

    llama.cpp picks per tensor, as `llama-quantize` does: the _M types keep some attention value and FFN
    down projections one step higher, and rows too short for 256-value k-blocks fall back to a legacy type,
    except where NARROW_FALLBACK names a better one (handed over as `llama-quantize --tensor-type` would).
    """
    require_llama_cpp(f"GGUF type {kind}")
    import gguf
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[kind]
    params.nthread = threads or min(4, os.cpu_count() or 1)
    chosen = narrow_fallbacks(source, kind)
    if chosen:
        # one exact pattern per tensor; llama.cpp copies them during the call, `patterns` keeps them alive till then
        patterns = [f"^{re.escape(name)}$".encode() for name in chosen]
        overrides = (llama_cpp.llama_model_tensor_override * (len(chosen) + 1))()  # a null pattern ends the list
        for override, pattern, kind_name in zip(overrides, patterns, chosen.values()):
            override.pattern, override.type = pattern, gguf.GGMLQuantizationType[kind_name].value
        params.tt_overrides = overrides
    log = logging.getLogger("llama-cpp-python")  # llama-cpp-python's bridge for llama.cpp's own log
    level = log.level
    # not a line per tensor: llama-cpp-python maps ggml's INFO to WARNING (its enum predates ggml's DEBUG level)
    log.setLevel(logging.ERROR)
    try:
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    finally:
        log.setLevel(level)
    if status != 0 or not target.is_file():
        raise KitError(f"export.formats: gguf: llama.cpp could not quantize {source.name} to {kind} (status {status})")
    return target


def copy_sentencepiece(base_folder: str | Path | None, model_folder: Path) -> None:
    """Bring the base model's tokenizer.model along: llama.cpp reads SentencePiece vocabularies (Gemma, Phi-3,
    Mistral v0.1) from it, and transformers 5's save_pretrained writes tokenizer.json only."""
    if base_folder is None:
        return
    source = Path(base_folder) / "tokenizer.model"
    if source.is_file() and not (model_folder / "tokenizer.model").exists():
        shutil.copy2(source, model_folder / "tokenizer.model")


def main() -> None:
    from kit.cli import run_cli

    run_cli(lambda: print(f"kit.gguf: llama.cpp converter in {converter()}"))


if __name__ == "__main__":
    main()
