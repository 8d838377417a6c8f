"""The tuned model behind an OpenAI-compatible HTTP API, for applications to call.

    python -m kit.serve recipes/quickstart.yaml [--model tuned|preferred|student] [--set serve.port=8001]

Serves the run's exported GGUF (`python -m kit.export RECIPE --format gguf` writes it) with llama.cpp's
OpenAI-compatible server from `llama-cpp-python[server]`: `POST /v1/chat/completions` (streamed or not),
`POST /v1/completions`, `GET /v1/models`. By default (`serve.model: promoted`) it serves the preferred model
(`kit.prefer`'s) when `kit.eval`'s gate promoted it over tuned, else the tuned model, and says why in one line.
The model's name in the API is the recipe's name; chosen explicitly, the preferred model and the student are
`<name>-preferred` and `<name>-student`. It listens on 127.0.0.1 unless `serve.host` says otherwise; when the environment variable named
by `serve.api_key_env` (default `KIT_API_KEY`) is set, every request needs `Authorization: Bearer <key>`.
Prompts are built with the chat template embedded in the GGUF, the one used in training, and a request without
a system message gets the recipe's `data.system_prompt`, as every training conversation had.

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="KEY or anything")
    client.chat.completions.create(model="quickstart", messages=[{"role": "user", "content": "Where is my order?"}])
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from kit.cli import recipe_parser, run_cli
from kit.errors import KitError
from kit.recipe import Recipe, RunModel, load_recipe
from kit.runs import choose_model

INSTALL = "pip install 'llama-cpp-python[server]==0.3.36'"


@dataclass(frozen=True)
class Served:
    """What one `kit.serve` process serves."""

    name: str  # the model id clients send
    gguf: Path
    system_prompt: str | None
    model: str = "tuned"  # which of the run's models: tuned, preferred or student
    note: str | None = None  # why, when the gate chose it (`serve.model: promoted`)


# The model -> (its folder under <run>/export/, the suffix of its file names and API name)
EXPORTS = {"tuned": ("", ""), "preferred": ("preferred/", "-preferred"), "student": ("student/", "-student")}


def served_model(recipe: Recipe) -> Served:
    """The GGUF file to serve (`serve.model`, `promoted` resolved by the gate), or a KitError that says which
    command writes it."""
    choice = choose_model(recipe, recipe.serve.model)
    model = choice.model
    where, suffix = EXPORTS[model]
    folder = recipe.run_dir / "export" / f"{where}gguf"
    stem = recipe.name + suffix  # the export's file names
    # The promoted model keeps the recipe's name, so clients need no change when the gate promotes another one.
    name = recipe.name if recipe.serve.model == "promoted" else stem
    info = folder / "kit_export.json"
    written = json.loads(info.read_text()).get("gguf_types", []) if info.is_file() else []
    command = f"python -m kit.export RECIPE --format gguf --model {model}"
    if not written:
        raise KitError(f"serve.model: {model}: no GGUF export in {folder}; run `{command}` first")
    kind = recipe.serve.gguf_type or written[-1]  # the smallest written
    if kind not in written:
        raise KitError(
            f"serve.gguf_type: {kind} was not exported (have {', '.join(written)}); add it to export.gguf_types "
            f"and run `{command}`"
        )
    return Served(name=name, gguf=folder / f"{stem}-{kind}.gguf", system_prompt=recipe.data.system_prompt,
                  model=model, note=choice.note)


class DefaultSystemPrompt:
    """ASGI middleware: a chat request without a system message gets `system_prompt` first, as in training."""

    def __init__(self, app, system_prompt: str):
        self.app, self.system_prompt = app, system_prompt

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith("/chat/completions"):
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([message]), send)
            body += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            request = json.loads(body)
            messages = request["messages"]
            if isinstance(messages, list) and (not messages or messages[0].get("role") != "system"):
                request["messages"] = [{"role": "system", "content": self.system_prompt}, *messages]
                body = json.dumps(request).encode()
        except (ValueError, KeyError, TypeError, AttributeError):
            pass  # not for us to judge: the server answers a malformed request with its own error
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        scope = {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
        return await self.app(scope, _replay([{"type": "http.request", "body": body, "more_body": False}], receive), send)


def _replay(messages, then=None):
    pending = list(messages)

    async def receive():
        if pending:
            return pending.pop(0)
        return await then() if then else {"type": "http.disconnect"}

    return receive


def create_app(recipe: Recipe, api_key: str | None = None, served: Served | None = None):
    """The ASGI app: llama-cpp-python's OpenAI-compatible server on the run's GGUF (`served`, else `served_model`)."""
    served = served or served_model(recipe)
    try:
        from llama_cpp.server.app import create_app as llama_cpp_app
        from llama_cpp.server.settings import ModelSettings, ServerSettings
    except ImportError:
        raise KitError(f"kit.serve needs llama.cpp's server: {INSTALL}") from None
    section = recipe.serve
    model = ModelSettings(
        model=str(served.gguf),
        model_alias=served.name,
        # the training template, as embedded by kit.export (llama-cpp-python would otherwise guess a format)
        chat_format="chat_template.default",
        n_ctx=section.context_length,
        n_threads=section.threads or max(1, (os.cpu_count() or 2) // 2),
        n_threads_batch=section.threads or max(1, (os.cpu_count() or 2) // 2),
        verbose=False,
    )
    # interrupt_requests off: llama-cpp-python otherwise ends a stream (with [DONE]) as soon as another request
    # waits, so concurrent clients got empty streamed answers (bench/serve_load.py found it); they now queue.
    server = ServerSettings(host=section.host, port=section.port, api_key=api_key, interrupt_requests=False)
    app = llama_cpp_app(server_settings=server, model_settings=[model])
    if served.system_prompt:
        app.add_middleware(DefaultSystemPrompt, system_prompt=served.system_prompt)
    return app


def run(recipe: Recipe) -> None:
    """Serve until interrupted."""
    import uvicorn

    api_key = os.environ.get(recipe.serve.api_key_env) or None
    if recipe.serve.host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        raise KitError(
            f"serve.host: {recipe.serve.host} is reachable from other machines; set {recipe.serve.api_key_env} "
            f"to an API key first (or serve on 127.0.0.1)"
        )
    served = served_model(recipe)
    if served.note:
        print(f"kit.serve: {served.note}", flush=True)
    app = create_app(recipe, api_key, served)
    print(
        f"kit.serve: {served.name} ({served.gguf.name}) on http://{recipe.serve.host}:{recipe.serve.port}/v1"
        + (f", API key from ${recipe.serve.api_key_env}" if api_key else ", no API key"),
        flush=True,
    )
    uvicorn.run(app, host=recipe.serve.host, port=recipe.serve.port, log_level="warning")


def main(argv: list[str] | None = None) -> None:
    parser = recipe_parser("python -m kit.serve", "Serve the promoted model behind an OpenAI-compatible API.")
    parser.add_argument("--model", choices=get_args(RunModel),
                        help="which model to serve (same as --set serve.model=...); default: the promoted one")
    args = parser.parse_args(argv)
    overrides = [*args.overrides, *([f"serve.model={args.model}"] if args.model else [])]
    run_cli(lambda: run(load_recipe(args.recipe, overrides)))


if __name__ == "__main__":
    main()
