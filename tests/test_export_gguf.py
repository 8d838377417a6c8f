"""GGUF export: written with the `gguf` package, read back with transformers' GGUF loader (and llama.cpp when present)."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from kit import export
from tests.conftest import CORPUS, QA_ROWS

TEXTS = CORPUS + [f"{q} -> {a}" for q, a in QA_ROWS] + ["Order #4411, 2026-01-01, $12.50 ok?", "  two  spaces\nand a newline"]


def llama(tokenizer, tied: bool, seed: int = 0) -> LlamaForCausalLM:
    """A random llama wide enough for q8_0 blocks (rows of 64), with grouped-query attention."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rope_theta=10000.0,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
        tie_word_embeddings=tied,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # norms away from 1, so a norm written wrongly shows in the logits
        for name, parameter in model.named_parameters():
            if parameter.ndim == 1:
                parameter.uniform_(0.5, 1.5)
    return model


def reload(path: Path):
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def batch(tokenizer):
    return [torch.tensor([tokenizer(text)["input_ids"]]) for text in TEXTS]


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_f16_gguf_reloads_in_transformers_with_the_same_predictions(tiny_model_dir, tmp_path, tied):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = llama(tokenizer, tied)
    path = export.write_gguf(model, tokenizer, tmp_path / "tiny-f16.gguf", "f16", name="tiny")
    loaded, loaded_tokenizer = reload(path)
    assert loaded.config.tie_word_embeddings is tied
    assert loaded_tokenizer.chat_template == tokenizer.chat_template
    assert loaded_tokenizer.eos_token == tokenizer.eos_token == "<|im_end|>"
    for text in TEXTS:
        assert loaded_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"], text
    worst, positions, agree = 0.0, 0, 0
    with torch.no_grad():
        for ids in batch(tokenizer):
            a, b = model(ids).logits, loaded(ids).logits
            worst = max(worst, (a - b).abs().max().item())
            agree += (a.argmax(-1) == b.argmax(-1)).sum().item()
            positions += ids.shape[1]
    # seed 0; f16 keeps ~3 significant digits of weights of size ~0.02-1.5
    assert worst < 5e-3, worst
    assert agree == positions


def test_q8_0_gguf_quantizes_matrices_and_keeps_predictions(tiny_model_dir, tmp_path):
    import gguf

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = llama(tokenizer, tied=False)
    path = export.write_gguf(model, tokenizer, tmp_path / "tiny-q8_0.gguf", "q8_0", name="tiny")
    reader = gguf.GGUFReader(path)
    types = {tensor.name: tensor.tensor_type.name for tensor in reader.tensors}
    assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == types["output.weight"] == "Q8_0"
    assert types["blk.1.ffn_up.weight"] == types["blk.1.attn_output.weight"] == "Q8_0"
    # the value and down projections stay f16 (export.Q8_0_KEEP_F16), in every block
    assert {types[f"blk.{i}.{kind}.weight"] for i in (0, 1) for kind in ("attn_v", "ffn_down")} == {"F16"}
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == "F32"
    assert len(types) == 2 + 1 + 2 * 9  # embeddings, output norm, output, 9 per block
    fields = {name: field.contents() for name, field in reader.fields.items()}
    assert fields["general.architecture"] == "llama" and fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0
    assert fields["llama.attention.head_count_kv"] == 2 and fields["llama.rope.dimension_count"] == 16
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id
    assert fields["tokenizer.ggml.add_bos_token"] is False
    assert "tokenizer.ggml.bos_token_id" not in fields  # the tiny tokenizer has none
    loaded, _ = reload(path)
    worst, positions, agree = 0.0, 0, 0
    with torch.no_grad():
        for ids in batch(tokenizer):
            a, b = model(ids).logits, loaded(ids).logits
            worst = max(worst, (a - b).abs().max().item())
            agree += (a.argmax(-1) == b.argmax(-1)).sum().item()
            positions += ids.shape[1]
    assert 1e-4 < worst < 5e-2, worst  # quantized (not f16 in disguise), and close; seed 0
    assert agree / positions >= 0.98, (agree, positions)
    assert os.path.getsize(path) < 0.7 * os.path.getsize(  # 0.63: ffn_down is a large share of this tiny model
        export.write_gguf(model, tokenizer, tmp_path / "tiny-f16.gguf", "f16", name="tiny")
    )


def ggml_q8_0(values: np.ndarray) -> np.ndarray:
    """ggml's own q8_0 encoder (quantize_row_q8_0_ref, as llama-quantize uses it) from llama-cpp-python's library."""
    import ctypes

    llama_cpp = pytest.importorskip("llama_cpp")
    library = Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"
    if not library.is_file():
        pytest.skip(f"no {library}")
    ggml = ctypes.CDLL(str(library))
    ggml.quantize_row_q8_0_ref.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    blocks = np.zeros(flat.size // 32 * 34, dtype=np.uint8)  # per 32 values: f16 scale + 32 int8
    ggml.quantize_row_q8_0_ref(flat.ctypes.data, blocks.ctypes.data, flat.size)
    return blocks


def test_q8_0_blocks_are_the_bytes_ggml_writes(tiny_model_dir, tmp_path):
    """kit's q8_0 is llama.cpp's, byte for byte (scale amax/127, ties rounded away from zero), so q8_0 files
    from kit and from llama-quantize agree; a different encoder would add its own error."""
    import gguf

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = llama(tokenizer, tied=False)
    with torch.no_grad():  # one block of exact halves after scaling: round-half-even would differ here
        block = torch.tensor([127.0] + [k + 0.5 for k in range(-16, 15)]) * 2.0**-10
        model.model.layers[0].mlp.up_proj.weight[0, :32] = block
    path = export.write_gguf(model, tokenizer, tmp_path / "tiny-q8_0.gguf", "q8_0", name="tiny")
    stored = {t.name: np.asarray(t.data).reshape(-1) for t in gguf.GGUFReader(path).tensors}
    state = {key: value.detach().numpy() for key, value in model.state_dict().items()}
    sources = {
        "blk.0.ffn_up.weight": state["model.layers.0.mlp.up_proj.weight"],
        "blk.1.attn_k.weight": export._permute_qk(state["model.layers.1.self_attn.k_proj.weight"], 2),
        "token_embd.weight": state["model.embed_tokens.weight"],
        "output.weight": state["lm_head.weight"],
    }
    for name, source in sources.items():
        expected = ggml_q8_0(source)
        assert stored[name].dtype == np.uint8 and stored[name].size == expected.size, name
        assert np.array_equal(stored[name], expected), name
    first = stored["blk.0.ffn_up.weight"][:34]
    assert first[2:].view(np.int8).tolist() == [127] + [k + 1 if k >= 0 else k for k in range(-16, 15)]
    # the matrices kept in f16 are the source rounded to f16, not q8_0 values widened
    down = state["model.layers.0.mlp.down_proj.weight"]
    assert np.array_equal(stored["blk.0.ffn_down.weight"], down.astype(np.float16).reshape(-1))


def llama_cpp_agreement(llama_cpp, path, model, tokenizer) -> tuple[int, int]:
    """(positions where llama.cpp's next token is the model's, positions) over the test batch."""
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, n_threads=1, logits_all=True, verbose=False)
    agree = positions = 0
    for ids in batch(tokenizer):
        llm.reset()
        llm.eval(ids[0].tolist())
        with torch.no_grad():
            expected = model(ids).logits[0].argmax(-1).numpy()
        agree += int((np.asarray(llm.scores[: llm.n_tokens]).argmax(-1) == expected).sum())
        positions += len(expected)
    llm.close()
    return agree, positions


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_llama_cpp_loads_the_mixed_q8_0_file(tiny_model_dir, tmp_path, tied):
    """llama.cpp reads a q8_0 file whose value and down projections are f16, with the model's predictions."""
    import gguf

    llama_cpp = pytest.importorskip("llama_cpp")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = llama(tokenizer, tied)
    path = export.write_gguf(model, tokenizer, tmp_path / "tiny-q8_0.gguf", "q8_0", name="tiny")
    assert {t.tensor_type.name for t in gguf.GGUFReader(path).tensors} == {"F32", "F16", "Q8_0"}
    agree, positions = llama_cpp_agreement(llama_cpp, path, model, tokenizer)
    # seed 0: 0.976 untied (llama.cpp also rounds activations to 8 bits); a misread tensor gives ~1/400
    assert agree / positions >= 0.95, (agree, positions)


def test_q5_k_m_stores_rows_too_narrow_for_k_blocks_as_q5_0(tiny_model_dir, tmp_path):
    """Rows 64 wide do not fit 256-value k-blocks: llama.cpp would store Q5_K_M's as Q5_1; kit hands it Q5_0
    for the q, k, attention output, gate and up matrices (kit.gguf.NARROW_FALLBACK), and the file still
    predicts what the model does."""
    import gguf

    llama_cpp = pytest.importorskip("llama_cpp")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = llama(tokenizer, tied=True)
    [_, path] = export.write_gguf_files(model, tokenizer, tmp_path, "tiny", ["f16", "Q5_K_M"], writer="kit")
    stored = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    for role in ("attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"):
        assert {stored[f"blk.{i}.{role}.weight"] for i in (0, 1)} == {"Q5_0"}, (role, stored)
    # the value projections stay llama.cpp's: Q5_K's fallback Q5_1, and Q6_K's (Q8_0) in the layer it keeps higher
    assert [stored[f"blk.{i}.attn_v.weight"] for i in (0, 1)] == ["Q5_1", "Q8_0"], stored
    agree, positions = llama_cpp_agreement(llama_cpp, path, model, tokenizer)
    assert agree / positions >= 0.9, (agree, positions)  # seed 0: 614/614; a misread tensor gives ~1/400


def test_rotary_layout_is_llama_cpps(tiny_model_dir, tmp_path):
    """q/k rows are permuted as llama.cpp expects; written unpermuted, the reloaded model would disagree."""
    import gguf

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = llama(tokenizer, tied=True)
    path = export.write_gguf(model, tokenizer, tmp_path / "tiny-f16.gguf", "f16", name="tiny")
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    stored = np.array(tensors["blk.0.attn_k.weight"].data, dtype=np.float32)
    original = model.model.layers[0].self_attn.k_proj.weight.detach().numpy()
    assert not np.allclose(stored, original, atol=1e-2)
    assert np.allclose(stored, export._permute_qk(original, 2), atol=1e-3)


def test_unsupported_tokenizer_and_architecture_are_named(tiny_model_dir):
    from transformers import Qwen2Config

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = llama(tokenizer, tied=True).config
    assert export.gguf_problems(config, tokenizer) == []
    problems = export.gguf_problems(Qwen2Config(), tokenizer)
    assert len(problems) == 1 and "architecture `qwen2`" in problems[0]
    config.rope_parameters = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}
    assert any("rope scaling `yarn`" in p for p in export.gguf_problems(config, tokenizer))


# --------------------------------------------------------------------------------- the real model


def bundled_prompts(tokenizer, count):
    questions = ["Where is my order?", "How do I reset my password?", "Can I return a lamp after 40 days?",
                 "What does Plus cost per month?", "My plug 2 is offline since 10:30 today."]
    return [
        tokenizer.apply_chat_template([{"role": "system", "content": "You are a support assistant."},
                                       {"role": "user", "content": question}],
                                      add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
        for question in questions[:count]
    ]


@pytest.mark.slow
def test_bundled_model_gguf_round_trip(tmp_path):
    """SmolLM2-135M -> f16 GGUF -> transformers' GGUF loader: same next tokens and tokenizer (~40 s of CPU).

    Only f16 here: transformers' GGUF loader takes most of that time; q8_0 on the real model is measured by
    bench/export_roundtrip.py, and on a tiny model by the default tests.
    """
    from kit import models
    from kit.recipe import ModelSection

    section = ModelSection(name="bundled:smollm2-135m-instruct")
    model = models.load_model(section, dtype=torch.float32).to("cpu").eval()
    tokenizer = models.load_tokenizer(section)
    prompts = bundled_prompts(tokenizer, 5)
    with torch.no_grad():
        reference = [model(ids).logits[0, -1] for ids in prompts]
    for kind, tolerance in (("f16", 0.5),):
        path = export.write_gguf(model, tokenizer, tmp_path / f"smollm2-{kind}.gguf", kind, name="smollm2")
        loaded, loaded_tokenizer = reload(path)
        assert loaded_tokenizer.chat_template == tokenizer.chat_template
        assert loaded_tokenizer.apply_chat_template([{"role": "user", "content": "Order 4411, $12.50?"}]) == (
            tokenizer.apply_chat_template([{"role": "user", "content": "Order 4411, $12.50?"}])
        )
        with torch.no_grad():
            logits = [loaded(ids).logits[0, -1] for ids in prompts]
        assert [l.argmax().item() for l in logits] == [r.argmax().item() for r in reference], kind
        assert max((a - b).abs().max().item() for a, b in zip(logits, reference)) < tolerance, kind
        del loaded
        path.unlink()


@pytest.mark.slow
def test_llama_cpp_generates_what_transformers_generates(tmp_path):
    """The f16 GGUF in llama.cpp (llama-cpp-python) and the model in transformers: same greedy answers."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from kit import models
    from kit.recipe import ModelSection

    section = ModelSection(name="bundled:smollm2-135m-instruct")
    model = models.load_model(section, dtype=torch.float32).to("cpu").eval()
    tokenizer = models.load_tokenizer(section)
    path = export.write_gguf(model, tokenizer, tmp_path / "smollm2-f16.gguf", "f16", name="smollm2")
    # One thread: llama.cpp's worker threads spin while they wait, which on a shared 2-core machine is 20x slower.
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=1, verbose=False)
    for ids in bundled_prompts(tokenizer, 3):
        prompt = ids[0].tolist()
        text = tokenizer.decode(prompt)
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == prompt  # same tokenizer in llama.cpp
        with torch.no_grad():
            expected = model.generate(ids, max_new_tokens=12, do_sample=False)[0, len(prompt):].tolist()
        produced = []
        for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
            if token == llm.token_eos() or len(produced) == 12:
                break
            produced.append(token)
        expected = expected[: expected.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in expected else expected
        assert produced == expected[: len(produced)] and len(produced) == min(12, len(expected)), (produced, expected)
    llm.close()
