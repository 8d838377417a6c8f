"""Export for deployment: the promoted model (and the student) as an adapter, merged weights, GGUF and Ollama.

    python -m kit.export recipes/quickstart.yaml [--format adapter|merged|gguf|ollama|all] [--model tuned|preferred|student]

Which model (`export.model`, `--model`): by default the preferred one (`kit.prefer`'s) when `kit.eval`'s gate
promoted it over tuned, else the tuned one, with a line saying why; the preferred model goes under
`export/preferred/` (merged, gguf, ollama; its adapter is `<run>/preferred/` itself).

Writes under `<run>/export/` (each folder appears whole or not at all):
- `adapter/`: the PEFT adapter plus a model card (README.md: base model, data stats, metrics, recipe);
- `merged/`: base + adapter as safetensors + tokenizer + chat template + generation config, which
  `AutoModelForCausalLM.from_pretrained` loads with no PEFT installed;
- `gguf/`: `<name>-<type>.gguf` for each of `export.gguf_types` (f16, q8_0, Q6_K, Q5_K_M, Q4_K_M) for
  llama.cpp, Ollama and LM Studio, tokenizer and chat template embedded. With llama.cpp installed
  (`llama-cpp-python`) they come from llama.cpp's own converter and quantizer (`kit.gguf`), for every
  architecture it converts (llama, Mistral, Qwen2/2.5/3, Gemma 2/3, Phi-3, ...); without it, kit's own
  writer still writes f16 and q8_0 for llama-architecture models;
- `gguf/Modelfile` (format `ollama`): TEMPLATE and stop parameters generated from the chat template used
  in training, so `ollama create NAME -f Modelfile` prompts the model exactly as kit trained it.
A complete distilled student (`<run>/student/`) gets the same formats under `export/student/`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from kit import gguf as llama_cpp_gguf
from kit import models
from kit.cli import recipe_parser, run_cli
from kit.errors import KitError
from kit.masking import ensure_chat_template
from kit.recipe import ModelSection, Recipe, RunModel, load_recipe
from kit.runs import atomic_dir, choose_model, package_versions, preferred_adapter, student_dir, tuned_adapter, umask

FORMATS = ("adapter", "merged", "gguf", "ollama")
GGUF_TYPES = llama_cpp_gguf.TYPES  # largest first: the Modelfile points at the last one written
KIT_WRITER_TYPES = ("f16", "q8_0")  # what kit's own writer (write_gguf) writes


# ---------------------------------------------------------------------------------------------- GGUF

# The tokenizers pre-tokenizer shapes llama.cpp reproduces, by the name llama.cpp gives them
# (`tokenizer.ggml.pre`). A GGUF with the wrong name still loads, but splits text differently from
# training, so an unknown shape is an error rather than a guess.
_LLAMA3_SPLIT = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+"
    "|\\s+(?!\\S)|\\s+"
)


def _byte_level(step: dict, use_regex: bool) -> bool:
    return (
        step.get("type") == "ByteLevel"
        and not step.get("add_prefix_space", False)
        and bool(step.get("use_regex", True)) == use_regex
    )


def gguf_pre_tokenizer(tokenizer) -> str | None:
    """llama.cpp's name for this byte-level BPE tokenizer's way of splitting text, or None if it has none."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec.get("normalizer") is not None:
        return None
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if len(steps) == 1 and _byte_level(steps[0], use_regex=True):
        return "gpt-2"
    if len(steps) == 2 and steps[0].get("type") == "Digits" and steps[0].get("individual_digits") and _byte_level(
        steps[1], use_regex=True
    ):
        return "smollm"
    if (
        len(steps) == 2
        and steps[0].get("type") == "Split"
        and steps[0].get("pattern", {}).get("Regex") == _LLAMA3_SPLIT
        and _byte_level(steps[1], use_regex=False)
    ):
        return "llama-bpe"
    return None


def gguf_problems(config, tokenizer) -> list[str]:
    """Why this model cannot be written as a llama-architecture GGUF (empty when it can)."""
    problems = []
    if config.model_type != "llama":
        problems.append(
            f"architecture `{config.model_type}`: kit's own GGUF writer supports llama-architecture models only; "
            f"other architectures go through llama.cpp's converter: {llama_cpp_gguf.INSTALL}"
        )
        return problems
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") != "default":
        problems.append(f"rope scaling `{rope['rope_type']}` is not written by kit's GGUF writer; llama.cpp's converter writes it: {llama_cpp_gguf.INSTALL}")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        problems.append(f"attention or MLP biases are not written by kit's GGUF writer; llama.cpp's converter writes them: {llama_cpp_gguf.INSTALL}")
    if getattr(config, "hidden_act", "silu") != "silu":
        problems.append(f"activation `{config.hidden_act}` is not llama's silu; llama.cpp's converter handles it: {llama_cpp_gguf.INSTALL}")
    spec = json.loads(tokenizer.backend_tokenizer.to_str()) if getattr(tokenizer, "is_fast", False) else {}
    if spec.get("model", {}).get("type") != "BPE" or gguf_pre_tokenizer(tokenizer) is None:
        problems.append(
            "tokenizer: kit's GGUF writer handles byte-level BPE tokenizers that split text like GPT-2, SmolLM "
            f"or Llama 3; llama.cpp's converter knows more: {llama_cpp_gguf.INSTALL}"
        )
    elif len(tokenizer) > config.vocab_size:
        problems.append(f"tokenizer has {len(tokenizer)} tokens but the model only {config.vocab_size} embeddings")
    return problems


def gguf_writer(config, tokenizer, types, writer: str | None = None) -> tuple[str, list[str]]:
    """Who writes the f16 (and q8_0) file, "kit" or "llama.cpp", and why the GGUF cannot be written (empty if it can).

    kit's own writer for llama-architecture models with a byte-level BPE tokenizer it reproduces, where it is
    measurably better: its q8_0 keeps the value and down projections in f16 (see Q8_0_KEEP_F16), it needs no
    compiler, and it takes tokenizers llama.cpp's converter refuses for an unlisted hash although they split
    text as a listed one does. llama.cpp's converter for everything else (Mistral, Qwen2/2.5/3, Gemma 2/3,
    Phi-3, ...); llama.cpp's quantizer writes the k-quants from the f16 file either way.
    """
    kit_problems = gguf_problems(config, tokenizer)
    if writer is None:
        writer = "llama.cpp" if kit_problems else "kit"
    needs_quantizer = [kind for kind in types if writer == "llama.cpp" or kind not in KIT_WRITER_TYPES]
    if writer == "kit" and kit_problems:
        return writer, kit_problems
    if llama_cpp_gguf.llama_cpp_version() is not None:
        return writer, []
    problems = kit_problems if writer == "llama.cpp" else []
    if writer == "kit" and needs_quantizer:
        problems.append(f"GGUF types {', '.join(needs_quantizer)} are written by llama.cpp's quantizer: {llama_cpp_gguf.INSTALL}")
    return writer, problems


def _permute_qk(weights, n_head: int):
    """HF's rotate-half rotary layout -> llama.cpp's interleaved one (as llama.cpp's convert_hf_to_gguf.py does)."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _gguf_vocab(tokenizer, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in by_id:  # embedding rows past the tokenizer (padded vocabularies)
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(added[index].content)
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.NORMAL)
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in spec["model"]["merges"]]
    return tokens, [int(kind) for kind in types], merges


def chat_template_text(tokenizer) -> str:
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()))
    return template



# What a q8_0 file keeps in f16. q8_0 on every matrix agreed with the quickstart tuned model's greedy next
# token on 46/50 held-out prompts, each miss a near tie (top-2 margin < 0.05) against q8_0's logit noise; the
# value and down projections carry most of that noise (llama.cpp's mixed types give them more bits too). In f16
# they cut the error on the top-2 margin 4x (0.061 -> 0.015): 50/50, and 148/150 (was 145) on training prompts
# not used to choose, for a file 20% larger (still 64% of f16). The embedding/output head gained nothing in f16.
Q8_0_KEEP_F16 = ("attn_v", "ffn_down")


def write_gguf(model, tokenizer, path: Path, weight_type: str, name: str) -> Path:
    """Write a llama-architecture model as one GGUF file (`weight_type` f16, or q8_0 with the matrices in
    `Q8_0_KEEP_F16` in f16; norms stay f32)."""
    import gguf
    import numpy as np
    import torch

    config = model.config
    problems = gguf_problems(config, tokenizer)
    if problems:
        raise KitError("\n".join(f"export.formats: gguf: {problem}" for problem in problems))
    quant = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[weight_type]
    file_type = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[weight_type]
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    rope = getattr(config, "rope_parameters", None) or {}
    rope_theta = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name(name)
    writer.add_type("model")
    writer.add_file_type(int(file_type))
    if weight_type != "f16":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope_theta))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)

    tokens, types, merges = _gguf_vocab(tokenizer, config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(gguf_pre_tokenizer(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for token, add in (
        (tokenizer.bos_token_id, writer.add_bos_token_id),
        (tokenizer.eos_token_id, writer.add_eos_token_id),
        (tokenizer.unk_token_id, writer.add_unk_token_id),
        (tokenizer.pad_token_id, writer.add_pad_token_id),
    ):
        if token is not None:
            add(token)
    # State what the tokenizer does, so llama.cpp neither adds a BOS the model never saw nor drops one.
    probe = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id])
    writer.add_add_eos_token(tokenizer.eos_token_id is not None and probe[-1:] == [tokenizer.eos_token_id])
    if tokenizer.chat_template:
        writer.add_chat_template(chat_template_text(tokenizer))

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for key, tensor in model.state_dict().items():
        if tied and key == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when there is no output tensor
        target = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise KitError(f"export.formats: gguf: no GGUF name for tensor {key}; export `merged` instead")
        data = tensor.detach().to("cpu", torch.float32).numpy()
        if key.endswith("q_proj.weight"):
            data = _permute_qk(data, n_head)
        elif key.endswith("k_proj.weight"):
            data = _permute_qk(data, n_kv)
        if data.ndim == 1:  # norms: tiny, and precision-sensitive
            writer.add_tensor(target, np.ascontiguousarray(data, dtype=np.float32))
        elif (
            quant == gguf.GGMLQuantizationType.Q8_0
            and target.split(".")[-2] not in Q8_0_KEEP_F16
            and data.shape[-1] % gguf.GGML_QUANT_SIZES[quant][0] == 0
        ):
            writer.add_tensor(target, gguf.quantize(data, quant), raw_dtype=quant)
        else:  # f16, and rows too short for q8_0 blocks (as llama.cpp falls back)
            writer.add_tensor(target, np.ascontiguousarray(data, dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# -------------------------------------------------------------------------------------------- Ollama

# Probe contents: plain words, so templates that strip or escape content leave them whole.
_PROBE = {
    "system": "kitprobesystem",
    "user": ["kitprobeuserone", "kitprobeusertwo", "kitprobeuserthree"],
    "assistant": ["kitprobeassistantone", "kitprobeassistanttwo"],
}


@dataclass(frozen=True)
class ChatLayout:
    """A chat template reduced to the fixed text between message contents, for prompts that end with a user
    turn and ask for an answer (what Ollama renders): what a Go TEMPLATE can express.

    The system message either opens the prompt (`system: "first"`: ChatML, Llama 3, Phi-3, and Gemma 3, whose
    template folds it into the first user turn: then `system_user` is the separator inside that turn), goes
    just before the last user message (`"last"`: Mistral v0.3), or is rejected by the template (`None`:
    Gemma 2, which has no system role).
    """

    head: str  # before the first user content when there is no system message (a default system turn, BOS, ...)
    user_assistant: str  # between a user content and the assistant content after it
    assistant_user: str  # between an assistant content and the user content after it
    tail: str  # after the last user content: its end of turn and the generation prompt
    system: str | None  # "first", "last" or None
    system_head: str = ""  # "first": before the system content
    system_user: str = ""  # between the system content and the user content that follows it

    def render(self, messages: list[dict]) -> str:
        """The prompt, exactly as the Go template from `ollama_template` writes it."""
        pieces = []
        for i, message in enumerate(messages):
            last = i == len(messages) - 1
            if message["role"] == "system":
                if self.system == "first":
                    pieces += [self.system_head, message["content"], self.system_user]
                else:
                    pieces.append(self.head)
                continue
            if i == 0:
                pieces.append(self.head)
            if self.system == "last" and last and message["role"] == "user" and messages[0]["role"] == "system":
                pieces += [messages[0]["content"], self.system_user]
            pieces.append(message["content"])
            if last:
                pieces.append(self.tail if message["role"] == "user" else "")
            else:
                pieces.append(self.user_assistant if message["role"] == "user" else self.assistant_user)
        return "".join(pieces)


def _render(tokenizer, messages, add_generation_prompt=True) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _split(text: str, contents: list[str], refuse: KitError) -> list[str]:
    """The text between `contents`, which must each appear exactly once and in order: len(contents) + 1 pieces."""
    pieces, position = [], 0
    for content in contents:
        if text.count(content) != 1 or text.index(content) < position:
            raise refuse
        start = text.index(content)
        pieces.append(text[position:start])
        position = start + len(content)
    return pieces + [text[position:]]


def chat_layout(tokenizer) -> ChatLayout:
    """Reduce the training chat template to a ChatLayout; raises KitError when it does more than place fixed text."""
    refuse = KitError(
        "export.formats: ollama: the chat template does more than place fixed text around each message, so kit "
        "cannot write it as an Ollama TEMPLATE; export `gguf` and write the Modelfile's TEMPLATE by hand"
    )
    system, (u1, u2, u3), (a1, a2) = _PROBE["system"], _PROBE["user"], _PROBE["assistant"]
    turns = [{"role": "user", "content": u1}, {"role": "assistant", "content": a1}, {"role": "user", "content": u2},
             {"role": "assistant", "content": a2}, {"role": "user", "content": u3}]
    with_system = [{"role": "system", "content": system}, *turns]
    try:
        plain = _render(tokenizer, turns)
    except Exception:  # a template that rejects a probe conversation
        raise refuse from None
    head, user_assistant, assistant_user, user_assistant_2, assistant_user_2, tail = _split(plain, [u1, a1, u2, a2, u3], refuse)
    if (user_assistant, assistant_user) != (user_assistant_2, assistant_user_2):
        raise refuse
    fields = dict(head=head, user_assistant=user_assistant, assistant_user=assistant_user, tail=tail)
    try:
        prompted = _render(tokenizer, with_system)
    except Exception:  # no system role (Gemma 2)
        layout = ChatLayout(**fields, system=None)
    else:
        if prompted.count(system) != 1 or prompted.count(u1) != 1 or prompted.count(u3) != 1:
            raise refuse
        if prompted.index(system) < prompted.index(u1):
            before, after = _split(prompted, [system, u1], refuse)[:2]
            layout = ChatLayout(**fields, system="first", system_head=before, system_user=after)
        else:
            after = _split(prompted, [system, u3], refuse)[1]
            layout = ChatLayout(**fields, system="last", system_user=after)
    checks = [turns[:1], turns[:3], turns]
    if layout.system is not None:
        checks += [with_system[:2], with_system[:4], with_system]
    for messages in checks:
        if layout.render(messages) != _render(tokenizer, messages):
            raise refuse
    return layout


def _go_text(text: str) -> str:
    """Literal text for a Go template: verbatim unless it holds an action delimiter."""
    if "{{" not in text and "}}" not in text:
        return text
    return "{{ " + json.dumps(text, ensure_ascii=False) + " }}"  # a Go string literal: JSON escapes are Go escapes


def ollama_template(layout: ChatLayout) -> str:
    """The layout as a Go template over Ollama's `.Messages` (no trim markers: every character is literal).

    Separators are written after each content, so no message needs to know the one before it; `$last` is
    Ollama's own idiom (`len (slice $.Messages $i)`), and `$.System` the system text Ollama collects.
    """
    last = "(eq (len (slice $.Messages $i)) 1)"
    if layout.system == "first":
        system = f"{_go_text(layout.system_head)}{{{{ $m.Content }}}}{_go_text(layout.system_user)}"
    else:  # written where it goes (`last`), or nowhere; either way the prompt's head comes first
        system = _go_text(layout.head)
    insert = ""
    if layout.system == "last":
        insert = (f'{{{{ if and (eq $m.Role "user") {last} (eq (index $.Messages 0).Role "system") }}}}'
                  f"{{{{ $.System }}}}{_go_text(layout.system_user)}{{{{ end }}}}")
    return (
        "{{ range $i, $m := .Messages }}"
        f'{{{{ if eq $m.Role "system" }}}}{system}'
        f"{{{{ else }}}}{{{{ if eq $i 0 }}}}{_go_text(layout.head)}{{{{ end }}}}{insert}{{{{ $m.Content }}}}"
        f'{{{{ if {last} }}}}{{{{ if eq $m.Role "user" }}}}{_go_text(layout.tail)}{{{{ end }}}}'
        f'{{{{ else if eq $m.Role "user" }}}}{_go_text(layout.user_assistant)}'
        f"{{{{ else }}}}{_go_text(layout.assistant_user)}{{{{ end }}}}"
        "{{ end }}{{ end }}"
    )


def stop_sequences(layout: ChatLayout, tokenizer) -> list[str]:
    """Where an answer ends: the first piece of the text between an answer and the next user turn, and EOS."""
    closing = layout.assistant_user.split()
    stops = [closing[0] if closing else "", tokenizer.eos_token or ""]
    return list(dict.fromkeys(stop for stop in stops if stop))


def _modelfile_string(text: str) -> str:
    if '"""' in text:
        raise KitError('export.formats: ollama: the chat template or system prompt contains """, which a Modelfile cannot quote')
    return f'"""{text}"""'


def modelfile(tokenizer, gguf_name: str, system_prompt: str | None, temperature: float, title: str) -> str:
    """An Ollama Modelfile for `gguf_name` (next to it) that prompts the model as training did."""
    layout = chat_layout(tokenizer)
    lines = [
        f"# {title}: written by kit from the chat template used in training.",
        "#   ollama create NAME -f Modelfile && ollama run NAME",
        f"FROM ./{gguf_name}",
        f"TEMPLATE {_modelfile_string(ollama_template(layout))}",
    ]
    if system_prompt and layout.system is not None:
        # Ollama puts SYSTEM first whenever a chat does not start with its own system message,
        # as kit's training data always did (data.system_prompt).
        lines.append(f"SYSTEM {_modelfile_string(system_prompt)}")
    lines += [f"PARAMETER stop {json.dumps(stop)}" for stop in stop_sequences(layout, tokenizer)]
    lines.append(f"PARAMETER temperature {temperature:g}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- Folders


def _write_info(folder: Path, info: dict) -> None:
    """kit_export.json, written last into a scratch folder whose files then get ordinary permissions."""
    (folder / "kit_export.json").write_text(json.dumps({**info, "versions": package_versions()}, indent=2) + "\n")
    # The folder already follows the umask (`scratch_dir`), but some writers create files 0600 (mkstemp
    # inside); deployment artifacts are read by other users (an `ollama` or llama.cpp service account).
    mode = 0o666 & ~umask()
    for item in folder.iterdir():
        os.chmod(item, mode)


def save_merged(model, tokenizer, target: Path, info: dict, card: str | None = None,
                base_folder: str | Path | None = None) -> Path:
    """safetensors + tokenizer + chat template + generation config (+ model card), loadable by plain transformers."""
    with atomic_dir(target) as scratch:
        model.save_pretrained(scratch)  # safetensors, config.json and generation_config.json
        tokenizer.save_pretrained(scratch)
        llama_cpp_gguf.copy_sentencepiece(base_folder, scratch)
        if card:
            (scratch / "README.md").write_text(card)
        _write_info(scratch, info)
    return target


def write_gguf_files(
    model, tokenizer, folder: Path, stem: str, types, base_folder: str | Path | None = None, writer: str | None = None
) -> list[Path]:
    """`<stem>-<type>.gguf` in `folder` for each of `types` (see `gguf_writer` for who writes what).

    f16 comes from kit's writer or from llama.cpp's convert_hf_to_gguf.py (run on the model saved as a Hugging
    Face folder, with the base model's tokenizer.model when it has one); q8_0 from kit's writer, or like the
    k-quants from llama.cpp's quantizer run on the f16 file.
    """
    types = [kind for kind in GGUF_TYPES if kind in types]
    writer, problems = gguf_writer(model.config, tokenizer, types, writer)
    if problems:
        raise KitError("\n".join(f"export.formats: gguf: {problem}" for problem in problems))
    paths = {kind: folder / f"{stem}-{kind}.gguf" for kind in types}
    with tempfile.TemporaryDirectory(dir=folder, prefix=".gguf-") as temporary:
        f16 = paths.get("f16", Path(temporary) / f"{stem}-f16.gguf")
        if writer == "kit":
            print(f"kit.export: writing {f16.name} (kit's GGUF writer)", flush=True)
            write_gguf(model, tokenizer, f16, "f16", name=stem)
        else:
            source = Path(temporary) / "model"
            model.save_pretrained(source)
            tokenizer.save_pretrained(source)
            llama_cpp_gguf.copy_sentencepiece(base_folder, source)
            print(f"kit.export: converting with llama.cpp's convert_hf_to_gguf.py -> {f16.name}", flush=True)
            llama_cpp_gguf.convert(source, f16, name=stem)
            shutil.rmtree(source)
        for kind in types:
            if kind == "q8_0" and writer == "kit":
                print(f"kit.export: writing {paths[kind].name} (kit's GGUF writer)", flush=True)
                write_gguf(model, tokenizer, paths[kind], kind, name=stem)
            elif kind != "f16":
                print(f"kit.export: quantizing with llama.cpp -> {paths[kind].name}", flush=True)
                llama_cpp_gguf.quantize(f16, paths[kind], kind)
    return list(paths.values())


_ROUND_TRIP = "## Round trip"


def gguf_card(recipe: Recipe, stem: str, types, writer: str) -> str:
    """README.md for the GGUF folder: front matter, the files and who wrote them, how to run them, and a place
    for bench/export_roundtrip.py's agreement and perplexity per type."""
    metrics = _read_json(recipe.run_dir / "eval" / "metrics.json")
    by = {"kit": "kit's own GGUF writer (f16, q8_0) and llama.cpp's quantizer (k-quants)",
          "llama.cpp": "llama.cpp's convert_hf_to_gguf.py (f16) and quantizer (the other types)"}[writer]
    narrow = []
    if "Q5_K_M" in types:
        narrow = ["Q5_K_M: matrices whose rows are not a multiple of 256 wide (too narrow for k-quant blocks) are "
                  "stored as Q5_0 rather than llama.cpp's own fallback, Q5_1, which kept less of the model "
                  "(`NARROW_FALLBACK` in kit's kit/gguf.py; measured in its docs/export.md).", ""]
    lines = [card_front_matter(recipe, None, metrics), "", f"# {recipe.name}: GGUF files for llama.cpp, Ollama and LM Studio", "",
             f"Written by {by}, tokenizer and training chat template embedded.", "", *narrow, "| file | type |", "| --- | --- |"]
    lines += [f"| {stem}-{kind}.gguf | {kind} |" for kind in types]
    lines += ["", "## Run", "", "```bash", f"llama-server -m {stem}-{types[-1]}.gguf --jinja",
              f"ollama create {stem} -f Modelfile   # when exported with the `ollama` format",
              "python -m kit.serve RECIPE          # OpenAI-compatible API on 127.0.0.1", "```", "",
              _ROUND_TRIP, "", "Not measured yet: `python bench/export_roundtrip.py RECIPE --reuse` measures each type in llama.cpp.", ""]
    return "\n".join(lines)


def gguf_card_with_results(card: str, results: dict) -> str:
    """The GGUF card with its round-trip section replaced by bench/export_roundtrip.py's results."""
    head = card.split(_ROUND_TRIP)[0].rstrip()
    lines = [head, "", _ROUND_TRIP, "",
             f"Loaded in llama.cpp and compared with the tuned model in transformers (fp32): greedy next token on "
             f"{results['prompts']} held-out prompts, and perplexity on the test split ({results['test_tokens']} tokens; "
             f"the tuned model's own: {results['reference_perplexity']:.3f}).", "",
             "| file | MiB | next-token agreement | every position | test perplexity |", "| --- | --- | --- | --- | --- |"]
    for label, row in results["files"].items():
        lines.append(f"| {label} | {row['mib']:.1f} | {100 * row['agreement']:.0f}% | {100 * row['every_position']:.1f}% | "
                     f"{row['perplexity']:.3f} |")
    return "\n".join(lines) + "\n"


def save_gguf(
    model, tokenizer, target: Path, recipe: Recipe, stem: str, info: dict, with_modelfile: bool,
    base_folder: str | Path | None = None,
) -> list[Path]:
    """`<stem>-<type>.gguf` for each of `export.gguf_types`, plus the Modelfile for the smallest."""
    types = [kind for kind in GGUF_TYPES if kind in recipe.export.gguf_types]
    writer, _ = gguf_writer(model.config, tokenizer, types)
    with atomic_dir(target) as scratch:
        write_gguf_files(model, tokenizer, scratch, stem, types, base_folder)
        if with_modelfile:
            text = modelfile(tokenizer, f"{stem}-{types[-1]}.gguf", recipe.data.system_prompt, recipe.chat.temperature, stem)
            (scratch / "Modelfile").write_text(text)
        (scratch / "README.md").write_text(gguf_card(recipe, stem, types, writer))
        extra = {"gguf_writer": writer, "llama_cpp_python": llama_cpp_gguf.llama_cpp_version()}
        _write_info(scratch, {**info, "gguf_types": types, **extra})
    return [target / f"{stem}-{kind}.gguf" for kind in types]


def _upstream(reference: str) -> str | None:
    """The hub id a base model reference stands for, for the model card's `base_model` (None for local folders)."""
    if reference.startswith(models.BUNDLED_PREFIX):
        spec = models.BUNDLED.get(reference[len(models.BUNDLED_PREFIX):])
        return spec.upstream if spec else None
    return None if Path(reference).expanduser().exists() else reference


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


# Licenses of the bundled models' upstreams, for the model card when the recipe names none.
_KNOWN_LICENSES = {"HuggingFaceTB/SmolLM2-135M-Instruct": "apache-2.0"}


def base_license(recipe: Recipe) -> str:
    """`export.license`, else the base model's own card's `license`, else "other"."""
    if recipe.export.license:
        return recipe.export.license
    upstream = _upstream(recipe.model.name)
    if upstream in _KNOWN_LICENSES:
        return _KNOWN_LICENSES[upstream]
    folder = Path(recipe.model.name).expanduser()
    card = folder / "README.md" if folder.is_dir() else None
    if card is not None and card.is_file():
        import yaml

        text = card.read_text(errors="replace")
        if text.startswith("---"):
            try:
                front = yaml.safe_load(text.split("---", 2)[1]) or {}
            except yaml.YAMLError:
                front = {}
            if isinstance(front, dict) and isinstance(front.get("license"), str):
                return front["license"]
    return "other"


def card_front_matter(recipe: Recipe, library: str | None, metrics: dict | None) -> str:
    """The YAML front matter the hub and vLLM read: library, base model, license, datasets, tags and the
    tuned model's held-out metrics as `model-index`."""
    import yaml

    front = {"library_name": library} if library else {}
    front.update({"pipeline_tag": "text-generation", "license": base_license(recipe)})
    upstream = _upstream(recipe.model.name)
    if upstream:
        front["base_model"] = upstream
    if recipe.export.datasets:
        front["datasets"] = list(recipe.export.datasets)
    front["tags"] = ["kit", "sft", "trl", "customer-support"] + (["lora"] if library == "peft" else []) + (
        ["gguf"] if library is None else [])
    tuned = ((metrics or {}).get("models") or {}).get("tuned") or {}
    values = [{"type": key, "name": key, "value": round(float(value), 4)} for key, value in tuned.items()
              if key != "samples" and isinstance(value, (int, float)) and not isinstance(value, bool)]
    if values:
        split = (metrics or {}).get("split", "test")
        front["model-index"] = [{
            "name": recipe.name,
            "results": [{
                "task": {"type": "text-generation", "name": "Text Generation"},
                "dataset": {"name": f"{recipe.name} support conversations ({split} split)", "type": recipe.name, "split": split},
                "metrics": values,
            }],
        }]
    return "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True, width=120) + "---"


def model_card(recipe: Recipe, kind: str = "adapter") -> str:
    """README.md for the adapter (`kind` "adapter") or the merged model ("merged"): front matter for the hub and
    vLLM, base model, data stats, metrics and the recipe that made it."""
    run = recipe.run_dir
    upstream = _upstream(recipe.model.name)
    stats = _read_json(run / "dataset" / "stats.json")
    metrics = _read_json(run / "eval" / "metrics.json")
    manifest = _read_json(run / "manifest.json") or {}
    title = "a LoRA adapter trained by kit" if kind == "adapter" else "fine-tuned by kit (base + adapter merged)"
    lines = [card_front_matter(recipe, "peft" if kind == "adapter" else "transformers", metrics), "",
             f"# {recipe.name}: {title}", ""]
    lines += [
        "## Base model",
        "",
        f"`{recipe.model.name}`" + (f" ({upstream})" if upstream and upstream != recipe.model.name else "") + ".",
        "",
        "## Data",
        "",
    ]
    if stats:
        splits = stats.get("splits", {})
        lines.append(
            f"{stats.get('input', '?')} input records: {stats.get('kept', '?')} kept, {stats.get('rejected', '?')} "
            f"rejected, {stats.get('duplicates', '?')} duplicates. Conversations per split: "
            + ", ".join(f"{name} {count}" for name, count in splits.items())
            + "."
        )
        if stats.get("sha256"):
            lines.append(f"Dataset sha256: `{stats['sha256']}`.")
    else:
        lines.append("No dataset statistics were found in the run folder.")
    lines += ["", "## Metrics", ""]
    rows = (metrics or {}).get("models", {})
    if rows:
        keys = [key for key in dict.fromkeys(k for row in rows.values() for k in row) if key != "samples"]
        lines.append(f"On the held-out {metrics.get('split', 'test')} split ({next(iter(rows.values())).get('samples', '?')} conversations):")
        lines += ["", "| model | " + " | ".join(keys) + " |", "| --- |" + " --- |" * len(keys)]
        for name, row in rows.items():
            cells = [f"{row[key]:.4g}" if isinstance(row.get(key), float) else str(row.get(key, "")) for key in keys]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    else:
        lines.append("Not evaluated yet: run `python -m kit.eval` with the recipe.")
    train = manifest.get("train_metrics") or {}
    if train:
        lines += ["", "Training: " + ", ".join(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
                                                for key, value in train.items() if key in ("train_loss", "eval_loss", "global_step", "epoch", "train_runtime")) + "."]
    if kind == "adapter":
        use = [
            "```python",
            "from peft import AutoPeftModelForCausalLM",
            "from transformers import AutoTokenizer",
            'model = AutoPeftModelForCausalLM.from_pretrained("path/to/this/folder")',
            'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
            "```",
            "",
            "`base_model_name_or_path` in adapter_config.json names the base model folder used in training; point it at",
            "your copy of the base model if that path does not exist on your machine. With vLLM, serve the base model",
            "with this folder as a LoRA module (see kit's docs/export.md):",
            "",
            "```bash",
            f"vllm serve BASE_MODEL --enable-lora --lora-modules {recipe.name}=path/to/this/folder --max-lora-rank {recipe.sft.lora.r}",
            "```",
        ]
    else:
        use = [
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")',
            'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
            "```",
            "",
            "Or `vllm serve path/to/this/folder`.",
        ]
    lines += ["", "## Use", "", *use, "", "## Recipe",
        "",
        "```yaml",
        recipe.to_yaml().rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def export_adapter(recipe: Recipe, adapter: Path, target: Path) -> Path:
    with atomic_dir(target) as scratch:
        for item in adapter.iterdir():
            if item.is_file():
                shutil.copy2(item, scratch / item.name)
        (scratch / "README.md").write_text(model_card(recipe))
        _write_info(scratch, {"base": recipe.model.name, "adapter": str(adapter), "recipe": recipe.name})
    return target


def tuned_weights(recipe: Recipe) -> tuple[str, Path] | None:
    """What kit.sft left: ("adapter", folder) for LoRA-type methods, ("model", folder) for full/freeze, or None."""
    adapter = tuned_adapter(recipe)
    if adapter is not None:
        return "adapter", adapter
    folder = recipe.run_dir / "model"  # kit.sft's `full` and `freeze` methods save whole weights here
    if (recipe.run_dir / "manifest.json").is_file() and (folder / "config.json").is_file():
        return "model", folder
    return None


def _load_tuned(recipe: Recipe, kind: str, folder: Path):
    """The tuned model in float32 on the CPU with the tokenizer it trained with; an adapter is merged into its base."""
    import torch

    if kind == "model":
        return _load_folder(folder)
    model_path = models.resolve(recipe.model.name)
    tokenizer = models.load_tokenizer(recipe.model, _tokenizer_source(folder, model_path))
    ensure_chat_template(tokenizer)
    # float32: no rounding before the user picks a dtype
    model = models.load_model(recipe.model, adapter=folder, path=model_path, dtype=torch.float32)
    merged = model.merge_and_unload().to("cpu").eval()
    merged.config.name_or_path = f"kit/{recipe.name}"
    return merged, tokenizer


def _load_preferred(recipe: Recipe, folder: Path):
    """kit.prefer's model in float32 on the CPU (its adapter merged), with the tokenizer it trained with."""
    import torch

    tokenizer = models.load_tokenizer(recipe.model, _tokenizer_source(folder, models.resolve(recipe.model.name)))
    ensure_chat_template(tokenizer)
    merged = models.load_preferred(recipe, dtype=torch.float32).to("cpu").eval()
    merged.config.name_or_path = f"kit/{recipe.name}-preferred"
    return merged, tokenizer


def _load_folder(folder: Path):
    import torch

    section = ModelSection(name=str(folder))
    tokenizer = models.load_tokenizer(section, str(folder))
    ensure_chat_template(tokenizer)
    return models.load_model(section, path=str(folder), dtype=torch.float32).to("cpu").eval(), tokenizer


def _tokenizer_source(adapter: Path, model_path: str) -> str:
    # kit.sft saves the tokenizer it trained with (chat template included) next to the adapter.
    return str(adapter) if (adapter / "tokenizer_config.json").is_file() else model_path


def _gguf_check(label: str, section: ModelSection, path: str, tokenizer_path: str, types) -> list[str]:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, revision=section.revision, trust_remote_code=section.trust_remote_code)
    tokenizer = models.load_tokenizer(section, tokenizer_path)
    _, problems = gguf_writer(config, tokenizer, types)
    return [f"export.formats: gguf{label}: {problem}" for problem in problems]


def run(recipe: Recipe) -> Path:
    """Write every format in `export.formats` for the model `export.model` names and, when complete, the student.

    `export.model: promoted` is the preferred model when kit.eval's gate promoted it over tuned, else the tuned
    model (`kit.runs.promoted_model`; one line says why). Every problem (nothing trained yet, a model the GGUF
    writer does not support) is reported at once, before anything is written. Returns `<run>/export/`.
    """
    formats = [name for name in FORMATS if name in recipe.export.formats]
    wants_gguf = "gguf" in formats or "ollama" in formats
    types = recipe.export.gguf_types
    root = recipe.run_dir / "export"
    choice = choose_model(recipe, recipe.export.model)
    if choice.note:
        print(f"kit.export: {choice.note}", flush=True)
    run_model = None if choice.model == "student" else choice.model  # tuned or preferred: the run's model
    tuned = tuned_weights(recipe) if run_model else None
    preferred = preferred_adapter(recipe) if run_model == "preferred" else None
    student = student_dir(recipe) if recipe.export.student or choice.model == "student" else None
    problems = []
    if run_model and tuned is None:
        problems.append(f"{recipe.run_dir}: no complete tuned model; run `python -m kit.sft` with this recipe first")
    if run_model == "preferred" and preferred is None:
        problems.append(f"export.model: preferred: no preferred model in {recipe.run_dir}; run `python -m kit.prefer` "
                        "with this recipe first")
    if choice.model == "student" and student is None:
        problems.append(f"export.model: student: no complete student in {recipe.run_dir}; run `python -m kit.distill` "
                        "with this recipe first")
    if run_model and wants_gguf and tuned is not None and tuned[0] == "model":
        problems += _gguf_check("", ModelSection(name=str(tuned[1])), str(tuned[1]), str(tuned[1]), types)
    elif run_model and wants_gguf:  # an adapter, or nothing trained yet: the base model decides
        base = models.resolve(recipe.model.name)
        problems += _gguf_check("", recipe.model, base, _tokenizer_source(tuned[1], base) if tuned else base, types)
    if student is not None and wants_gguf:
        problems += _gguf_check(" (student)", ModelSection(name=str(student)), str(student), str(student), types)
    if problems:
        raise KitError("\n".join(problems))

    kind, weights = tuned or (None, None)
    jobs = []
    if run_model == "tuned":
        jobs.append(("tuned", root, recipe.name, {"model": "tuned", "base": recipe.model.name, kind: str(weights)}))
    elif run_model == "preferred":
        jobs.append(("preferred", root / "preferred", f"{recipe.name}-preferred",
                     {"model": "preferred", "base": recipe.model.name, "adapter": str(preferred)}))
    if student is not None:
        jobs.append(("student", root / "student", f"{recipe.name}-student", {"model": "student", "source": str(student)}))
    for label, folder, stem, info in jobs:
        info["recipe"] = recipe.name
        if "adapter" in formats and label == "tuned":
            if kind == "adapter":
                path = export_adapter(recipe, weights, folder / "adapter")
                print(f"kit.export: adapter {path} (PEFT folder + model card README.md)", flush=True)
            else:
                print(f"kit.export: no adapter to export: sft.method {recipe.sft.method} trains whole weights", flush=True)
        elif "adapter" in formats and label == "preferred":
            print(f"kit.export: no adapter export for preferred: its PEFT folder is {preferred}; `merged` and `gguf` "
                  "write it for deployment", flush=True)
        if "merged" not in formats and not wants_gguf:
            continue
        if label == "tuned":
            model, tokenizer = _load_tuned(recipe, kind, weights)
        elif label == "preferred":
            model, tokenizer = _load_preferred(recipe, preferred)
        else:
            model, tokenizer = _load_folder(student)
        if label == "student":
            base_folder = student
        else:
            base_folder = weights if kind == "model" else models.resolve(recipe.model.name)
        if "merged" in formats:
            card = model_card(recipe, "merged") if label == "tuned" else None
            path = save_merged(model, tokenizer, folder / "merged", info, card, base_folder)
            print(f"kit.export: {label} merged model {path} (load with AutoModelForCausalLM.from_pretrained)", flush=True)
        if wants_gguf:
            files = save_gguf(
                model, tokenizer, folder / "gguf", recipe, stem, info, with_modelfile="ollama" in formats,
                base_folder=base_folder,
            )
            print(f"kit.export: {label} GGUF {', '.join(str(f) for f in files)}", flush=True)
            if "ollama" in formats:
                print(f"kit.export: {label} for Ollama: cd {folder / 'gguf'} && ollama create {stem} -f Modelfile", flush=True)
        del model
    return root


def main(argv: list[str] | None = None) -> None:
    parser = recipe_parser("python -m kit.export", "Export the promoted model (and the student) for deployment.")
    parser.add_argument(
        "--model",
        choices=get_args(RunModel),
        help="which model to write (same as --set export.model=...): default the promoted one; student: only the student",
    )
    parser.add_argument(
        "--format",
        dest="formats",
        action="append",
        choices=[*FORMATS, "all"],
        help="what to write (repeatable; beats export.formats): adapter, merged, gguf, ollama (GGUF + Modelfile) or all",
    )
    args = parser.parse_args(argv)

    def work() -> Path:
        recipe = load_recipe(args.recipe, [*args.overrides, *([f"export.model={args.model}"] if args.model else [])])
        if args.formats:
            recipe.export.formats = list(FORMATS) if "all" in args.formats else args.formats
        return run(recipe)

    run_cli(work)


if __name__ == "__main__":
    main()
