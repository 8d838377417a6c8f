"""kit.serve: the exported GGUF behind llama-cpp-python's OpenAI-compatible server, called with the `openai` client.

The server runs in-process on 127.0.0.1 with a free port; the model is the tiny random llama written by kit's
own GGUF writer. Skipped without llama-cpp-python[server] or openai.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from kit import export, serve
from kit.errors import KitError
from kit.recipe import load_recipe

KEY = "test-key-123"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def exported(recipe, tiny_model_dir, types=("f16",), model_name="tuned"):
    """Write `<run>/export/gguf/` (`preferred/gguf/` for the preferred model) as kit.export does, with kit's own
    writer (no converter needed)."""
    folder = recipe.run_dir / "export" / ("gguf" if model_name == "tuned" else f"{model_name}/gguf")
    stem = recipe.name if model_name == "tuned" else f"{recipe.name}-{model_name}"
    folder.mkdir(parents=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for kind in types:
        export.write_gguf(model, tokenizer, folder / f"{stem}-{kind}.gguf", kind, name=stem)
    (folder / "kit_export.json").write_text(json.dumps({"gguf_types": list(types)}))
    return folder


@pytest.fixture
def server(tiny_recipe, tiny_model_dir, monkeypatch):
    pytest.importorskip("llama_cpp.server.app", exc_type=ImportError)
    uvicorn = pytest.importorskip("uvicorn")
    port = free_port()
    recipe = load_recipe(tiny_recipe(), [f"serve.port={port}", "serve.threads=1", "serve.context_length=256"])
    exported(recipe, tiny_model_dir)
    app = serve.create_app(recipe, api_key=KEY)
    config = uvicorn.Config(app, host=recipe.serve.host, port=port, log_level="warning")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not running.started:
        assert time.time() < deadline, "server did not start"
        time.sleep(0.05)
    yield recipe, f"http://127.0.0.1:{port}/v1"
    running.should_exit = True
    thread.join(10)


def test_openai_client_lists_chats_and_streams(server):
    openai = pytest.importorskip("openai")
    recipe, base_url = server
    client = openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=60)
    assert [model.id for model in client.models.list()] == ["tiny"]
    messages = [{"role": "user", "content": "where is my order"}]
    reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0)
    text = reply.choices[0].message.content
    assert reply.choices[0].message.role == "assistant" and isinstance(text, str)
    assert reply.usage.completion_tokens <= 8
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0, stream=True))
    assert len(chunks) > 1
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert streamed == text  # greedy: the same answer, delivered piece by piece

    # a request without a system message is prompted as training did: with data.system_prompt first
    explicit = [{"role": "system", "content": recipe.data.system_prompt}, *messages]
    with_system = client.chat.completions.create(model="tiny", messages=explicit, max_tokens=1, temperature=0)
    assert with_system.usage.prompt_tokens == reply.usage.prompt_tokens
    other = [{"role": "system", "content": "Be brief."}, *messages]
    shorter = client.chat.completions.create(model="tiny", messages=other, max_tokens=1, temperature=0)
    assert shorter.usage.prompt_tokens < reply.usage.prompt_tokens


def test_concurrent_streams_are_answered_whole(server):
    """Requests queue for the one model: a stream is not cut short when another client arrives."""
    from concurrent.futures import ThreadPoolExecutor

    openai = pytest.importorskip("openai")
    _, base_url = server
    client = openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=60)
    messages = [{"role": "user", "content": "can i return a lamp"}]
    expected = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0).choices[0].message.content
    assert expected

    def streamed(_):
        chunks = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0, stream=True)
        return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(streamed, range(4))) == [expected] * 4


def test_api_key_is_required(server):
    openai = pytest.importorskip("openai")
    _, base_url = server
    client = openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_serve_needs_an_export_and_refuses_an_open_host_without_a_key(tiny_recipe, tiny_model_dir, monkeypatch):
    recipe = load_recipe(tiny_recipe())
    with pytest.raises(KitError, match="no GGUF export .* run `python -m kit.export RECIPE --format gguf --model tuned`"):
        serve.served_model(recipe)
    exported(recipe, tiny_model_dir, types=("f16", "q8_0"))
    assert serve.served_model(recipe).gguf.name == "tiny-q8_0.gguf"  # the smallest by default
    recipe.serve.gguf_type = "Q4_K_M"
    with pytest.raises(KitError, match="serve.gguf_type: Q4_K_M was not exported"):
        serve.served_model(recipe)
    recipe.serve.gguf_type, recipe.serve.host = None, "0.0.0.0"
    monkeypatch.delenv("KIT_API_KEY", raising=False)
    with pytest.raises(KitError, match="serve.host: 0.0.0.0 is reachable from other machines; set KIT_API_KEY"):
        serve.run(recipe)


def test_cli_error_is_one_line(tiny_recipe, capsys):
    with pytest.raises(SystemExit) as exit_info:
        serve.main([str(tiny_recipe())])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: serve.model: tuned: no GGUF export") and "\n" not in error


def test_the_promoted_model_is_served_by_default_and_model_overrides_it(tiny_recipe, tiny_model_dir, capsys):
    from tests.test_runs import TUNED, fake_preferred, write_gate

    recipe = load_recipe(tiny_recipe())
    exported(recipe, tiny_model_dir)
    exported(recipe, tiny_model_dir, model_name="preferred")
    fake_preferred(recipe)
    write_gate(recipe, {**TUNED, "fact_recall": 0.45})  # no worse anywhere: promoted
    served = serve.served_model(recipe)
    # promoted, it keeps the recipe's name: clients need no change when the gate's decision does
    assert (served.model, served.name, served.gguf.name) == ("preferred", "tiny", "tiny-preferred-f16.gguf")
    assert served.gguf.is_file() and served.note == "using preferred: kit.eval's gate promoted it over tuned"

    write_gate(recipe, {**TUNED, "intent_accuracy": 0.31})  # refused: the tuned model, and the failed check named
    served = serve.served_model(recipe)
    assert (served.model, served.name, served.gguf.name) == ("tuned", "tiny", "tiny-f16.gguf")
    assert served.note == ("using tuned: kit.eval's gate refused preferred (intent accuracy dropped: 0.310 < 0.740 "
                           "(allowed >= 0.710))")

    recipe.serve.model = "preferred"  # an explicit choice beats the gate
    assert serve.served_model(recipe).name == "tiny-preferred" and serve.served_model(recipe).note is None
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        serve.main([str(tiny_recipe()), "--model", "student"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: serve.model: student: no GGUF export") and "--model student` first" in error


def test_without_llama_cpps_server_the_error_names_the_install(tiny_recipe, tiny_model_dir, monkeypatch):
    import sys

    recipe = load_recipe(tiny_recipe())
    exported(recipe, tiny_model_dir)
    monkeypatch.setitem(sys.modules, "llama_cpp.server.app", None)  # as if not installed: importing it fails
    with pytest.raises(KitError, match=r"kit.serve needs llama.cpp's server: pip install 'llama-cpp-python\[server\]"):
        serve.create_app(recipe)
