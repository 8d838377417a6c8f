"""GGUF through llama.cpp's own converter and quantizer, for each architecture support teams fine-tune.

A tiny random model of each architecture is built in-process (2 blocks, 256 wide so that k-quant blocks of
256 values fit), exported with `kit.export.write_gguf_files` in every type, loaded in llama.cpp
(llama-cpp-python), and held to transformers' next token on 50 prompts: f16 all, q8_0 >= 98%, Q4_K_M (and
Q5_K_M, Q6_K) >= 90%. The tokenizer is the bundled SmolLM2's (llama.cpp's converter only accepts BPE tokenizers
whose pre-tokenizer it knows), or for Gemma 2, Phi-3 and Qwen2 a SentencePiece model trained here. Slow: about 30 s per architecture on one core.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kit import export
from tests.conftest import CORPUS, QA_ROWS

pytestmark = pytest.mark.slow

# llama-converted: a llama model through llama.cpp's converter, which kit's own writer otherwise replaces
ARCHITECTURES = ("llama", "llama-converted", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")
THRESHOLDS = {"f16": 1.0, "q8_0": 0.98, "Q6_K": 0.90, "Q5_K_M": 0.90, "Q4_K_M": 0.90}
SHAPE = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512)


def held_out_texts() -> list[str]:
    """50 prompts: each question followed by growing prefixes of its answer, and the corpus lines."""
    texts = []
    for question, answer in QA_ROWS:
        words = answer.split()
        for cut in (1, 3, 5, 7):
            texts.append(f"Customer: {question}\nAgent: " + " ".join(words[:cut]))
    return (texts + CORPUS)[:50]


@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def smollm_tokenizer():
    from kit import models
    from kit.recipe import ModelSection

    return models.load_tokenizer(ModelSection(name="bundled:smollm2-135m-instruct"))


def sentencepiece_tokenizer(folder: Path, family: str):
    """A SentencePiece tokenizer trained here, in Gemma's layout (pad 0, eos 1, bos 2, unk 3) or Llama's
    (unk 0, bos 1, eos 2, as Phi-3's), with that family's turn markers as single tokens."""
    spm = pytest.importorskip("sentencepiece")
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    lines = CORPUS + [q for q, _ in QA_ROWS] + [a for _, a in QA_ROWS] + ["Customer: Agent:"]
    if family == "gemma":
        ids = dict(pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>")
        markers = ["<start_of_turn>", "<end_of_turn>"]
    else:
        ids, markers = dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1), ["<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines * 4), model_prefix=str(folder / "tokenizer"), vocab_size=320,
        model_type="bpe", byte_fallback=True, user_defined_symbols=markers, minloglevel=2, **ids,
    )
    if family == "gemma":
        tokenizer = transformers.GemmaTokenizer.from_pretrained(folder)
        tokenizer.chat_template = (
            "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
            "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
        )
    else:
        tokenizer = transformers.LlamaTokenizer.from_pretrained(folder)
        tokenizer.chat_template = (
            "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
        )
    return tokenizer


def tiny(architecture: str, tokenizer, seed: int = 0, layer_std: float = 0.05):
    """A random model of `architecture` sized for `tokenizer`, built to decide its next token.

    Random weights at the usual scale give 49k near-equal logits, where any rounding flips the argmax; so the
    embeddings are large (RMS 1 in the residual stream) and the output head reads them back, making the
    predicted token a clear winner, while the blocks (`layer_std`) still move every logit by about as much
    as the embedding does, so a misread block tensor shows in f16's logits. Norms lie away from 1.
    """
    import transformers

    common = dict(SHAPE, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                  bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)
    configs = {
        "llama": lambda: transformers.LlamaConfig(**common, tie_word_embeddings=False),
        "mistral": lambda: transformers.MistralConfig(**common, head_dim=64, sliding_window=None, tie_word_embeddings=False),
        "qwen2": lambda: transformers.Qwen2Config(**common, tie_word_embeddings=True),
        "qwen3": lambda: transformers.Qwen3Config(**common, head_dim=64, tie_word_embeddings=True),
        "gemma2": lambda: transformers.Gemma2Config(**common, head_dim=64, query_pre_attn_scalar=64, sliding_window=128),
        "gemma3": lambda: transformers.Gemma3TextConfig(**common, head_dim=64, query_pre_attn_scalar=64, sliding_window=128),
        "phi3": lambda: transformers.Phi3Config(**common, tie_word_embeddings=False),
    }
    config = configs[architecture]()
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    embeddings = model.get_input_embeddings().weight
    gemma = architecture.startswith("gemma")
    # Gemma multiplies embeddings by sqrt(hidden_size) on the way in, and its blocks end in norms of their own
    # (RMS ~1 each, whatever layer_std), so its embeddings are made larger to keep the next token decided.
    embedding_std = 3.0 / SHAPE["hidden_size"] ** 0.5 if gemma else 1.0
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 1:  # Gemma's norms scale by 1 + weight
                parameter.uniform_(-0.5, 0.5) if gemma else parameter.uniform_(0.5, 1.5)
            else:
                parameter.normal_(0.0, layer_std)
        embeddings.normal_(0.0, embedding_std)
        head = model.get_output_embeddings().weight
        if head is not embeddings:  # untied: a head that reads the embeddings back, in another order
            head.copy_(embeddings[torch.randperm(embeddings.shape[0])])
    return model


def model_and_tokenizer(architecture: str, smollm_tokenizer, tmp_path: Path):
    """(model, tokenizer, folder holding the base tokenizer files the converter reads)."""
    base = tmp_path / "base"
    base.mkdir()
    if architecture in ("gemma2", "phi3", "qwen2"):
        # Gemma 2's and Phi-3's converters read SentencePiece's tokenizer.model only; Qwen2's reads it first.
        # (For Qwen2 with SmolLM2's tokenizer.json, transformers would load Qwen2's own pre-tokenizer instead.)
        tokenizer = sentencepiece_tokenizer(base, "gemma" if architecture == "gemma2" else "llama")
    else:
        tokenizer = smollm_tokenizer
    return tiny(architecture, tokenizer), tokenizer, base


def llama_cpp_logits(llama_cpp, path: Path, prompts: list[list[int]]) -> np.ndarray:
    """llama.cpp's next-token logits after each prompt, one row per prompt."""
    # One thread: llama.cpp's worker threads spin while they wait, which on a shared 2-core machine is slower.
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=1, logits_all=True, verbose=False)
    rows = []
    for ids in prompts:
        llm.reset()
        llm.eval(ids)
        rows.append(np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32))
    llm.close()
    return np.stack(rows)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_type_loads_in_llama_cpp_and_agrees_with_transformers(architecture, llama_cpp, smollm_tokenizer, tmp_path):
    import gguf

    writer = "llama.cpp" if architecture == "llama-converted" else None
    architecture = architecture.replace("-converted", "")
    model, tokenizer, base = model_and_tokenizer(architecture, smollm_tokenizer, tmp_path)
    prompts = [tokenizer(text)["input_ids"] for text in held_out_texts()]
    with torch.no_grad():
        reference = torch.stack([model(torch.tensor([ids])).logits[0, -1] for ids in prompts]).numpy()
    expected = reference.argmax(-1)
    out = tmp_path / "gguf"
    out.mkdir()
    paths = export.write_gguf_files(model, tokenizer, out, "tiny", export.GGUF_TYPES, base_folder=base, writer=writer)
    assert [p.name for p in paths] == [f"tiny-{kind}.gguf" for kind in export.GGUF_TYPES]

    sizes = {kind: path.stat().st_size for kind, path in zip(export.GGUF_TYPES, paths)}
    assert sizes["f16"] > sizes["q8_0"] > sizes["Q6_K"] > sizes["Q5_K_M"] > sizes["Q4_K_M"], sizes
    agreement = {}
    for kind, path in zip(export.GGUF_TYPES, paths):
        reader = gguf.GGUFReader(path)
        fields = {name: field.contents() for name, field in reader.fields.items()}
        assert fields["tokenizer.chat_template"] == export.chat_template_text(tokenizer), kind
        assert fields["general.architecture"] == {"mistral": "llama"}.get(architecture, architecture)
        stored = {tensor.tensor_type.name for tensor in reader.tensors}
        if kind.startswith("Q4_K"):
            assert "Q4_K" in stored, stored  # k-quants, not a fallback for every tensor
        logits = llama_cpp_logits(llama_cpp, path, prompts)
        agreement[kind] = float((logits.argmax(-1) == expected).mean())
        if kind == "f16":  # every logit, not only the winner: a misread block tensor moves them all
            error = np.abs(logits - reference).max() / reference.std()
            assert error < 0.05, (architecture, error)  # f16 rounding: 0.02 for Gemma 3, seed 0
    print(architecture, writer or "auto", agreement, sizes)
    for kind, share in agreement.items():
        assert share >= THRESHOLDS[kind], (architecture, kind, agreement)
