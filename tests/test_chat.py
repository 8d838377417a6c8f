import os
import socket

import pytest

from kit import chat, sft
from kit.recipe import load_recipe


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on `port`, read from the kernel (no traffic sent)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A = LISTEN
                if width == 8:
                    found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
                else:
                    found.add(address)
    return found


@pytest.fixture
def trained_recipe(tiny_recipe):
    recipe = load_recipe(tiny_recipe(), ["sft.max_steps=2"])
    sft.run(recipe)
    return recipe


def test_stream_answers_yields_partial_text_then_stats(trained_recipe):
    loaded, tokenizer = chat.load_models(trained_recipe)
    assert set(loaded) == {"base", "tuned"}
    states = list(chat.stream_answers(loaded, tokenizer, [{"role": "user", "content": "where is my order"}], 8, 0.0))
    final = states[-1]
    assert all(stats is not None and stats["tokens"] >= 1 for _, stats in final.values())
    assert len(states) > 2  # more than one update per model: streamed, not returned at once


def test_app_serves_on_loopback_and_answers_through_gradio_client(trained_recipe):
    from gradio_client import Client

    app = chat.run(trained_recipe, block=False)
    try:
        assert app.server_name == "127.0.0.1" and not app.share
        client = Client(app.local_url, verbose=False)
        answers = client.predict("where is my order", api_name="/compare")
        assert set(answers) == {"base", "tuned"}
        assert all(isinstance(text, str) and text.strip() for text in answers.values())
        with pytest.raises(Exception, match="too long"):
            client.predict("x" * (trained_recipe.chat.max_input_chars + 1), api_name="/compare")
        if os.path.exists("/proc/net/tcp"):  # Linux: read the bound address straight from the kernel
            assert listening_addresses(app.server_port) == {"127.0.0.1"}  # not 0.0.0.0: unreachable from outside
    finally:
        app.close()
