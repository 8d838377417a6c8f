"""Side-by-side chat: one customer message goes to base and tuned, both answers stream in.

    python -m kit.chat recipes/quickstart.yaml [--port 7860]

Binds 127.0.0.1 with sharing off unless the recipe's `chat` section says otherwise. Each model is
loaded once. Besides the UI, the app exposes `/compare` (gradio_client: `Client(url).predict(
"my order is late", api_name="/compare")`) that returns every model's full answer.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

from kit import models
from kit.cli import recipe_parser, run_cli
from kit.errors import KitError
from kit.masking import ensure_chat_template, render
from kit.recipe import Recipe, load_recipe
from kit.runs import tuned_adapter


def load_models(recipe: Recipe) -> tuple[dict, object]:
    """{"base": model, "tuned": model (when trained)} and the shared tokenizer, loaded once."""
    model_path = models.resolve(recipe.model.name)
    tokenizer = models.load_tokenizer(recipe.model, model_path)
    ensure_chat_template(tokenizer)
    loaded = {"base": models.load_model(recipe.model, path=model_path).eval()}
    adapter = tuned_adapter(recipe)
    if adapter is not None:
        loaded["tuned"] = models.load_model(recipe.model, adapter=adapter, path=model_path).merge_and_unload().eval()
    else:
        print(f"kit.chat: no tuned model in {recipe.run_dir} yet; showing base only", flush=True)
    return loaded, tokenizer


def _generate_into(name, model, tokenizer, prompt: str, max_new_tokens: int, temperature: float, sink: queue.Queue):
    """Stream one model's answer into `sink` as (name, text so far, stats or None)."""
    import torch
    from transformers import TextIteratorStreamer

    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(next(model.parameters()).device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    options = {"max_new_tokens": max_new_tokens, "pad_token_id": tokenizer.pad_token_id, "streamer": streamer}
    options.update({"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False})
    result: dict = {}

    def work():
        try:
            with torch.no_grad():
                result["output"] = model.generate(**inputs, **options)
        except Exception as exc:  # surfaced to the user below instead of a stuck stream
            result["error"] = exc
            streamer.end()

    started = time.time()
    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    text = ""
    for piece in streamer:
        text += piece
        sink.put((name, text, None))
    worker.join()
    seconds = time.time() - started
    if "error" in result:
        sink.put((name, f"[generation failed: {result['error']}]", {"seconds": seconds, "tokens": 0}))
        return
    tokens = int(result["output"].shape[1] - inputs["input_ids"].shape[1])
    sink.put((name, text.strip(), {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / max(seconds, 1e-9)}))


def stream_answers(loaded: dict, tokenizer, conversation: list[dict], max_new_tokens: int, temperature: float) -> Iterator[dict]:
    """Yield {name: (text, stats or None)} as tokens arrive from every model at once."""
    prompt = render(tokenizer, conversation, add_generation_prompt=True)
    sink: queue.Queue = queue.Queue()
    workers = [
        threading.Thread(target=_generate_into, args=(n, m, tokenizer, prompt, max_new_tokens, temperature, sink), daemon=True)
        for n, m in loaded.items()
    ]
    for worker in workers:
        worker.start()
    state = {name: ("", None) for name in loaded}
    while any(stats is None for _, stats in state.values()):
        name, text, stats = sink.get()
        state[name] = (text, stats)
        yield dict(state)


def _stats_line(stats) -> str:
    if not stats:
        return "generating..."
    return f"{stats['seconds']:.1f} s, {stats['tokens']} tokens, {stats.get('tokens_per_s', 0):.1f} tokens/s"


def _conversation(system: str, history: list[dict], message: str) -> list[dict]:
    turns = [{"role": "system", "content": system}] if system.strip() else []
    turns += [{"role": m["role"], "content": _text(m["content"])} for m in history]
    return turns + [{"role": "user", "content": message}]


def _text(content) -> str:
    """Gradio 6 hands chat contents back as a list of typed parts; the model wants plain text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    if isinstance(content, dict):
        return str(content.get("text", ""))
    return str(content)


def build_app(recipe: Recipe, loaded: dict | None = None, tokenizer=None):
    """The Gradio Blocks app (not launched)."""
    import gradio as gr

    if loaded is None:
        loaded, tokenizer = load_models(recipe)
    names = list(loaded)
    settings = recipe.chat

    def check(message: str) -> str:
        message = (message or "").strip()
        if not message:
            raise gr.Error("Type a message first.")
        if len(message) > settings.max_input_chars:
            raise gr.Error(f"Message too long: {len(message)} characters, the limit is {settings.max_input_chars}.")
        return message

    def respond(message, system, temperature, max_new_tokens, *histories):
        message = check(message)
        histories = [list(h or []) for h in histories]
        for history in histories:
            history.append({"role": "user", "content": message})
            history.append({"role": "assistant", "content": ""})
        # Each model sees its own past answers, as it would in production.
        conversations = {n: _conversation(system, h[:-2], message) for n, h in zip(names, histories)}
        streams = {n: stream_answers({n: loaded[n]}, tokenizer, conversations[n], int(max_new_tokens), float(temperature)) for n in names}
        lines = {n: "generating..." for n in names}
        live = dict(streams)
        while live:
            for name in list(live):
                try:
                    update = next(live[name])
                except StopIteration:
                    del live[name]
                    continue
                text, stats = update[name]
                histories[names.index(name)][-1]["content"] = text
                lines[name] = _stats_line(stats)
            yield ("", *histories, *(lines[n] for n in names))

    def compare(message: str) -> dict[str, str]:
        """Every model's full answer to one customer message (greedy, recipe settings)."""
        message = check(message)
        final: dict = {}
        for state in stream_answers(loaded, tokenizer, _conversation(recipe.data.system_prompt or "", [], message),
                                    settings.max_new_tokens, settings.temperature):
            final = state
        return {name: text for name, (text, _) in final.items()}

    with gr.Blocks(title=f"kit chat: {recipe.name}") as app:
        gr.Markdown(f"## kit chat: {recipe.name}\nOne message goes to every model: {', '.join(names)}.")
        chatbots, stats = [], []
        with gr.Row():
            for name in names:
                with gr.Column():
                    chatbots.append(gr.Chatbot(label=name, height=420))
                    stats.append(gr.Markdown("", elem_id=f"stats-{name}"))
        message = gr.Textbox(label="Customer message", placeholder="Ask as a customer would...",
                             max_length=settings.max_input_chars, elem_id="message")
        with gr.Row():
            send = gr.Button("Send", variant="primary", elem_id="send")
            clear = gr.Button("Clear")
        with gr.Accordion("Settings", open=False):
            system = gr.Textbox(label="System prompt", value=recipe.data.system_prompt or "")
            temperature = gr.Slider(0.0, 1.5, value=settings.temperature, step=0.05, label="Temperature (0 = greedy)")
            max_tokens = gr.Slider(16, 1024, value=settings.max_new_tokens, step=16, label="Max new tokens")
        inputs = [message, system, temperature, max_tokens, *chatbots]
        outputs = [message, *chatbots, *stats]
        message.submit(respond, inputs, outputs, api_visibility="private")
        send.click(respond, inputs, outputs, api_visibility="private")
        clear.click(lambda: ([[] for _ in names] + ["" for _ in names]), None, [*chatbots, *stats], api_visibility="private")
        gr.api(compare, api_name="compare")
    app.queue(default_concurrency_limit=2, max_size=64)
    return app


def run(recipe: Recipe, block: bool = True):
    """Launch the app with the recipe's `chat` settings; returns the app (and its URL) when not blocking."""
    settings = recipe.chat
    if settings.share:
        print("kit.chat: chat.share is on: a public link will expose the models to anyone who has it", flush=True)
    app = build_app(recipe)
    try:
        app.launch(
            server_name=settings.host,
            server_port=settings.port or None,
            share=settings.share,
            prevent_thread_lock=not block,
            footer_links=["api"],
        )
    except OSError as exc:
        raise KitError(f"chat.port: cannot listen on {settings.host}:{settings.port} ({exc}); pick another with --set chat.port=N") from None
    return app


def main(argv: list[str] | None = None) -> None:
    parser = recipe_parser("python -m kit.chat", "Chat with base and tuned side by side.")
    args = parser.parse_args(argv)
    run_cli(lambda: run(load_recipe(args.recipe, args.overrides)))


if __name__ == "__main__":
    main()
