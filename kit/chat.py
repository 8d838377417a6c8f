"""Comparison arena: one customer message goes to base, tuned, preferred and student, the answers stream in side by side.

    python -m kit.chat recipes/quickstart.yaml [--blind] [--host 127.0.0.1] [--port 7860] [--auth user:pass]
    python -m kit.chat recipes/quickstart.yaml --cli      # the same comparison in the terminal
    python -m kit.chat recipes/quickstart.yaml --cli --model promoted   # one model: the one kit.serve would serve

Every model that exists for the run is shown: `base` always, `tuned` once kit.sft has finished, `preferred`
once kit.prefer has, `student` once kit.distill has. Each is loaded once and shared by every browser session.
Votes on the preferred model's answers are written like the others, so the next `kit.prefer` run learns from them. In blind mode the answers
are labelled A/B/C in a random order per conversation; a vote (best answer, or all bad) is appended to
`<run>/feedback/`: pairs to `preferences.jsonl` in TRL's preference format (prompt, chosen, rejected) so
they can train DPO, all-bad votes to `all_bad.jsonl` in TRL's unpaired format (prompt, completion, label).
Private data in the votes (a tester's pasted customer message) is redacted with the recipe's `data.pii`
settings before it is written. The store itself (writing and reading votes) is `kit.feedback`; this
module is the arena (models, streaming, the web and terminal UIs).

The app binds 127.0.0.1 with Gradio sharing off unless told otherwise. Besides the UI it exposes
`/compare` for scripts: `Client(url).predict("my order is late", api_name="/compare")` returns every
model's full answer as `{"base": ..., "tuned": ...}`.
"""

from __future__ import annotations

import argparse
import queue
import random
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TextIO

from kit import models
from kit.cli import ArgumentParser, add_recipe_arguments, run_cli
from kit.errors import KitError
from kit.feedback import Feedback, feedback_dir, load_feedback, record_vote
from kit.masking import ensure_chat_template, render
from kit.recipe import ModelSection, Recipe, load_recipe
from kit.runs import choose_model, student_dir

LABELS = "ABCDEFGH"
MAX_NEW_TOKENS_LIMIT = 1024  # the UI slider's top; a longer answer is not a support answer
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


# ---------------------------------------------------------------------------------------------- models


@dataclass
class ChatModel:
    """One contestant: a model and the tokenizer (and chat template) it was trained with."""

    name: str
    model: object
    tokenizer: object
    lock: threading.Lock = field(default_factory=threading.Lock)  # fast tokenizers are not re-entrant


# The stage that writes each model, for the error when `--model` asks for one the run lacks.
WRITTEN_BY = {"tuned": "kit.sft", "preferred": "kit.prefer", "student": "kit.distill"}


def load_models(recipe: Recipe, only: str | None = None) -> dict[str, ChatModel]:
    """{"base", "tuned" (when trained), "preferred" (when preference-tuned), "student" (when distilled)}, each loaded
    once; `only`: that one model, or a KitError naming the command that writes it."""
    def wanted(name: str) -> bool:
        return only is None or only == name

    loaded: dict[str, ChatModel] = {}
    if only != "student":
        model_path = models.resolve(recipe.model.name)
        tokenizer = models.load_tokenizer(recipe.model, model_path)
        ensure_chat_template(tokenizer)
        shared = threading.Lock()  # base, tuned and preferred share one tokenizer, hence one lock
    if wanted("base"):
        loaded["base"] = ChatModel("base", models.load_model(recipe.model, path=model_path).eval(), tokenizer, shared)
    # An adapter is merged once at start: generation then runs at base speed, and each model is loaded once.
    tuned = models.load_tuned(recipe) if wanted("tuned") else None
    if tuned is not None:
        loaded["tuned"] = ChatModel("tuned", tuned.eval(), tokenizer, shared)
    preferred = models.load_preferred(recipe) if wanted("preferred") else None  # saved with the tuned model's tokenizer
    if preferred is not None:
        loaded["preferred"] = ChatModel("preferred", preferred.eval(), tokenizer, shared)
    student = student_dir(recipe) if wanted("student") else None
    if student is not None:
        section = ModelSection(name=str(student))
        student_tokenizer = models.load_tokenizer(section)
        ensure_chat_template(student_tokenizer)
        loaded["student"] = ChatModel("student", models.load_model(section).eval(), student_tokenizer)
    if only is not None and only not in loaded:
        raise KitError(f"--model: {only}: no {only} model in {recipe.run_dir}; run `python -m {WRITTEN_BY[only]} "
                       "<recipe>` first")
    missing = [name for name in ("tuned", "student") if name not in loaded]
    if missing and only is None:
        print(f"kit.chat: {' and '.join(missing)} not in {recipe.run_dir} yet; showing {', '.join(loaded)}", flush=True)
    return loaded


class _SinkStreamer:
    """A `generate()` streamer (transformers' BaseStreamer hook) that decodes every new token at once.

    TextStreamer waits for whole words; this one shows each token as it arrives, holding back only a
    partial UTF-8 character. Updates go to a queue shared by every model answering the same message.
    """

    def __init__(self, chat_model: ChatModel, sink: queue.Queue):
        self.name, self.tokenizer, self.lock, self.sink = chat_model.name, chat_model.tokenizer, chat_model.lock, sink
        self.ids: list[int] = []
        self.text = ""
        self.first_token_at: float | None = None
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate() hands the prompt over first
            self._prompt_seen = True
            return
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.ids.extend(value.reshape(-1).tolist())
        with self.lock:
            text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if not text.endswith("\ufffd") and text != self.text:
            self.text = text
            self.sink.put((self.name, text, None))

    def end(self) -> None:
        with self.lock:
            self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)


def stop_when(event: threading.Event):
    from transformers import StoppingCriteria

    class StopWhenSet(StoppingCriteria):
        """Ends generation when the browser that asked has gone (cancelled or closed)."""

        def __call__(self, input_ids, scores, **kwargs):
            import torch

            return torch.full((input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device)

    return StopWhenSet()


def fit_prompt(chat_model: ChatModel, conversation: list[dict], max_new_tokens: int) -> tuple[str, int]:
    """The rendered prompt, dropping the oldest exchanges while prompt + answer would overflow the model."""
    limit = getattr(chat_model.model.config, "max_position_embeddings", None)
    turns, dropped = list(conversation), 0
    while True:
        prompt = render(chat_model.tokenizer, turns, add_generation_prompt=True)
        if limit is None:
            return prompt, dropped
        with chat_model.lock:
            length = len(chat_model.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        first = 1 if turns and turns[0]["role"] == "system" else 0
        if length + max_new_tokens <= limit or len(turns) - first <= 1:
            return prompt, dropped
        del turns[first : first + 2]  # one user message and its answer
        dropped += 1


def _generate_into(chat_model: ChatModel, conversation: list[dict], max_new_tokens: int, temperature: float,
                   sink: queue.Queue, stop: threading.Event) -> None:
    """Generate one answer, streaming (name, text so far, None) and finally (name, text, stats) into `sink`."""
    import torch
    from transformers import StoppingCriteriaList

    started = time.perf_counter()
    streamer = _SinkStreamer(chat_model, sink)
    try:
        prompt, dropped = fit_prompt(chat_model, conversation, max_new_tokens)
        with chat_model.lock:
            inputs = chat_model.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        inputs = inputs.to(next(chat_model.model.parameters()).device)
        options = {
            "max_new_tokens": max_new_tokens,
            "pad_token_id": chat_model.tokenizer.pad_token_id,
            "streamer": streamer,
            "stopping_criteria": StoppingCriteriaList([stop_when(stop)]),
        }
        options.update({"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False})
        with torch.no_grad():
            chat_model.model.generate(**inputs, **options)
    except Exception as exc:  # one failing model must not take the other answers down with it
        sink.put((chat_model.name, f"[generation failed: {type(exc).__name__}: {exc}]",
                  {"seconds": time.perf_counter() - started, "tokens": 0, "failed": True}))
        return
    seconds = time.perf_counter() - started
    stats = {
        "seconds": seconds,
        "first_token_s": (streamer.first_token_at or time.perf_counter()) - started,
        "tokens": len(streamer.ids),
        "tokens_per_s": len(streamer.ids) / max(seconds, 1e-9),
        "dropped_turns": dropped,
    }
    sink.put((chat_model.name, streamer.text.strip(), stats))


def stream_answers(jobs: dict[str, tuple[ChatModel, list[dict]]], max_new_tokens: int,
                   temperature: float) -> Iterator[dict[str, tuple[str, dict | None]]]:
    """Every model answers its conversation at once; yields {name: (text so far, stats once done)}.

    Closing the iterator early (a cancelled request) stops the generations still running.
    """
    sink: queue.Queue = queue.Queue()
    stop = threading.Event()
    for chat_model, conversation in jobs.values():
        threading.Thread(
            target=_generate_into, args=(chat_model, conversation, max_new_tokens, temperature, sink, stop), daemon=True
        ).start()
    state: dict[str, tuple[str, dict | None]] = {name: ("", None) for name in jobs}
    try:
        while any(stats is None for _, stats in state.values()):
            update = sink.get()
            while True:  # take whatever else has arrived too: one UI update per batch, not per token
                name, text, stats = update
                if state[name][1] is None:
                    state[name] = (text, stats)
                try:
                    update = sink.get_nowait()
                except queue.Empty:
                    break
            yield dict(state)
    finally:
        stop.set()


def stats_line(stats: dict | None) -> str:
    if not stats:
        return "generating..."
    if stats.get("failed"):
        return f"failed after {stats['seconds']:.1f} s"
    line = (f"first token {stats['first_token_s']:.2f} s · {stats['seconds']:.1f} s · {stats['tokens']} tokens · "
            f"{stats['tokens_per_s']:.1f} tokens/s")
    if stats.get("dropped_turns"):
        line += f" · {stats['dropped_turns']} oldest exchange(s) left out to fit the context"
    return line


def conversation(system: str, history: list[dict], message: str) -> list[dict]:
    turns = [{"role": "system", "content": system}] if (system or "").strip() else []
    turns += [{"role": m["role"], "content": _text(m["content"])} for m in history if m["role"] in ("user", "assistant")]
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


def check_message(message: str | None, max_chars: int) -> str:
    """The message stripped; raises ValueError (shown to the user) when empty or too long."""
    message = (message or "").strip()
    if not message:
        raise ValueError("Type a message first.")
    if len(message) > max_chars:
        raise ValueError(f"Message too long: {len(message)} characters, the limit is {max_chars}.")
    return message


# -------------------------------------------------------------------------------------------- feedback


def _startup_tally(recipe: Recipe, names: list[str]) -> str:
    feedback = load_feedback(recipe)
    if feedback.corrupt:
        print(f"kit.chat: {feedback_dir(recipe)}: skipped {len(feedback.corrupt)} corrupt line(s): "
              f"{', '.join(feedback.corrupt[:5])}", flush=True)
    return feedback.summary(names)


# ------------------------------------------------------------------------------------------------ web


def _order(names: list[str], blind: bool) -> list[str]:
    """Blind mode shuffles the columns per conversation, so position says nothing about the model."""
    return random.SystemRandom().sample(names, len(names)) if blind else list(names)


def _bind(handler, position):
    def on_click(session):
        return handler(position, session)

    return on_click


def build_app(recipe: Recipe, loaded: dict[str, ChatModel] | None = None):
    """The Gradio Blocks app (not launched)."""
    import gradio as gr

    if loaded is None:
        loaded = load_models(recipe)
    names = list(loaded)
    settings = recipe.chat
    n = len(names)

    def fail(exc: ValueError):
        return gr.Error(str(exc))

    def fresh(blind: bool) -> dict:
        return {"order": _order(names, blind), "blind": bool(blind), "turn": None}

    def labels(session: dict) -> list[str]:
        return [LABELS[i] if session["blind"] else name for i, name in enumerate(session["order"])]

    def vote_buttons(session: dict, interactive: bool) -> list:
        updates = [gr.update(value=f"{label} is best", interactive=interactive and n > 1) for label in labels(session)]
        return updates + [gr.update(interactive=interactive)]

    def respond(message, system, temperature, max_new_tokens, session, *histories):
        try:
            message = check_message(message, settings.max_input_chars)
        except ValueError as exc:
            raise fail(exc) from None
        max_new_tokens = max(1, min(int(max_new_tokens), MAX_NEW_TOKENS_LIMIT))
        session = session or fresh(settings.blind)  # a message sent before the page finished loading
        order = session["order"]
        histories = [list(h or []) for h in histories]
        # Each model sees its own past answers, as it would in production.
        conversations = {name: conversation(system, histories[i], message) for i, name in enumerate(order)}
        for history in histories:
            history += [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        lines = ["generating..."] * n
        session = {**session, "turn": None}
        jobs = {name: (loaded[name], conversations[name]) for name in order}
        yield ("", *histories, *lines, *vote_buttons(session, False), session)
        final: dict = {}
        for state in stream_answers(jobs, max_new_tokens, float(temperature)):
            for i, name in enumerate(order):
                text, stats = state[name]
                histories[i][-1] = {"role": "assistant", "content": text}
                lines[i] = stats_line(stats)
            final = state
            yield (gr.skip(), *histories, *lines, *([gr.skip()] * (n + 1)), gr.skip())
        session["turn"] = {"conversations": conversations, "answers": {name: final[name][0] for name in order}}
        yield (gr.skip(), *([gr.skip()] * (2 * n)), *vote_buttons(session, True), session)

    def vote(position: int | None, session: dict):
        turn = session.get("turn")
        if not turn:
            return (gr.skip(), gr.skip(), *([gr.skip()] * (n + 1)), session)
        best = None if position is None else session["order"][position]
        saved = record_vote(recipe, turn, best, blind=session["blind"], source="web")
        what = "All answers marked bad" if best is None else f"{labels(session)[position]} chosen as best"
        note = f"{what}: {saved['rows']} row(s) added to {saved['file']}."
        if saved["identical"]:
            note += f" {saved['identical']} identical answer(s) left out (nothing to learn from a tie)."
        if session["blind"]:
            note += " Names are revealed when you start a new conversation."
        session = {**session, "turn": None}
        # In blind mode the per-model counts would give away who answered as what: shown after the reveal.
        tally = load_feedback(recipe).summary(names, per_model=not session["blind"])
        return (note, tally, *vote_buttons(session, False), session)

    def new_conversation(blind: bool, session: dict | None):
        reveal = ""
        if session and session.get("blind"):
            pairs = ", ".join(f"{LABELS[i]} = {name}" for i, name in enumerate(session["order"]))
            reveal = f"Last conversation: {pairs}."
        session = fresh(blind)
        chats = [gr.update(value=[], label=label) for label in labels(session)]
        return (*chats, *([""] * n), *vote_buttons(session, False), reveal, load_feedback(recipe).summary(names), session)

    title = f"kit chat: {recipe.name}"
    initial = labels(fresh(settings.blind))  # the page loads with these; each session then gets its own order
    with gr.Blocks(title=title) as app:
        gr.Markdown(f"## {title}\nOne message goes to every model ({', '.join(names)}); each answer streams in its own column.")
        session_state = gr.State(None)
        blind = gr.Checkbox(value=settings.blind, label="Blind mode: label answers A/B/C in random order",
                            elem_id="blind")
        chatbots, stats = [], []
        with gr.Row():
            for i in range(n):
                with gr.Column():
                    # No "share" button: it would post support conversations to Hugging Face.
                    chatbots.append(gr.Chatbot(label=initial[i], height=420, elem_id=f"answer-{i}",
                                               buttons=["copy", "copy_all"]))
                    stats.append(gr.Markdown("", elem_id=f"stats-{i}"))
        message = gr.Textbox(label="Customer message", placeholder="Ask as a customer would...",
                             max_length=settings.max_input_chars, elem_id="message")
        with gr.Row():
            send = gr.Button("Send", variant="primary", elem_id="send")
            restart = gr.Button("New conversation", elem_id="new")
        gr.Markdown("**Which answer is best?** Votes become training data for DPO.")
        with gr.Row():
            best_buttons = [gr.Button(f"{label} is best", interactive=False, elem_id=f"vote-{i}")
                            for i, label in enumerate(initial)]
            all_bad = gr.Button("All bad", variant="stop", interactive=False, elem_id="vote-all-bad")
        vote_status = gr.Markdown("", elem_id="vote-status")
        tally = gr.Markdown(_startup_tally(recipe, names), elem_id="tally")
        with gr.Accordion("Settings", open=False):
            system = gr.Textbox(label="System prompt", value=recipe.data.system_prompt or "")
            temperature = gr.Slider(0.0, 1.5, value=settings.temperature, step=0.05, label="Temperature (0 = greedy)")
            max_tokens = gr.Slider(1, MAX_NEW_TOKENS_LIMIT, value=min(settings.max_new_tokens, MAX_NEW_TOKENS_LIMIT),
                                   step=1, label="Max new tokens")

        buttons = [*best_buttons, all_bad]
        inputs = [message, system, temperature, max_tokens, session_state, *chatbots]
        outputs = [message, *chatbots, *stats, *buttons, session_state]
        shared = {"concurrency_id": "models", "concurrency_limit": settings.concurrency_limit, "api_visibility": "private"}
        generating = [
            message.submit(respond, inputs, outputs, **shared),
            send.click(respond, inputs, outputs, **shared),
        ]
        reset_outputs = [*chatbots, *stats, *buttons, vote_status, tally, session_state]
        app.load(new_conversation, [blind, session_state], reset_outputs, api_visibility="private")
        restart.click(new_conversation, [blind, session_state], reset_outputs, cancels=generating, api_visibility="private")
        blind.change(new_conversation, [blind, session_state], reset_outputs, cancels=generating, api_visibility="private")
        vote_outputs = [vote_status, tally, *buttons, session_state]
        for position, button in enumerate([*best_buttons, all_bad]):
            best = position if position < n else None
            button.click(_bind(vote, best), [session_state], vote_outputs, api_visibility="private")

        def compare(message: str) -> dict[str, str]:
            """Every model's full answer to one customer message (recipe settings, no history)."""
            try:
                message = check_message(message, settings.max_input_chars)
            except ValueError as exc:
                raise fail(exc) from None
            turns = conversation(recipe.data.system_prompt or "", [], message)
            final: dict = {}
            for state in stream_answers({name: (loaded[name], turns) for name in names},
                                        settings.max_new_tokens, settings.temperature):
                final = state
            return {name: text for name, (text, _) in final.items()}

        gr.api(compare, api_name="compare", concurrency_id="models", concurrency_limit=settings.concurrency_limit)
    app.queue(max_size=settings.queue_size)
    return app


def parse_auth(text: str | None) -> tuple[str, str] | None:
    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise KitError("--auth: write it as user:password (both parts non-empty)")
    return user, password


def run(recipe: Recipe, block: bool = True, auth: tuple[str, str] | None = None, loaded: dict | None = None):
    """Launch the app with the recipe's `chat` settings; returns the app (with `.local_url`) when not blocking."""
    settings = recipe.chat
    if settings.share:
        print("kit.chat: chat.share is on: a public link will expose the models to anyone who has it", flush=True)
    if settings.host not in LOOPBACK and auth is None:
        print(f"kit.chat: listening on {settings.host} without a password: anyone who can reach this machine "
              "can use the models; add --auth user:password", flush=True)
    app = build_app(recipe, loaded)
    try:
        app.launch(
            server_name=settings.host,
            server_port=settings.port or None,
            share=settings.share,
            auth=auth,
            prevent_thread_lock=not block,
            footer_links=["api"],
            quiet=not block,
        )
    except OSError as exc:
        raise KitError(f"chat.port: cannot listen on {settings.host}:{settings.port} ({exc}); "
                       "pick another with --port N (0 = any free port)") from None
    return app


# ------------------------------------------------------------------------------------------- terminal


def run_terminal(recipe: Recipe, stdin: TextIO | None = None, stdout: TextIO | None = None,
                 loaded: dict[str, ChatModel] | None = None) -> Feedback:
    """The comparison in a terminal: each answer streams in turn, then an optional vote. Returns the tally."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    loaded = loaded if loaded is not None else load_models(recipe)
    names = list(loaded)
    settings = recipe.chat
    system = recipe.data.system_prompt or ""
    interactive = stdin.isatty()

    def say(text: str = "", end: str = "\n") -> None:
        stdout.write(text + end)
        stdout.flush()

    def ask(prompt: str) -> str | None:
        if interactive:
            stdout.write(prompt)
            stdout.flush()
        line = stdin.readline()
        return None if line == "" else line.rstrip("\n")

    mode = "blind, answers labelled A/B/C in random order" if settings.blind else "names shown"
    say(f"kit chat: {recipe.name}: {', '.join(names)} ({mode}). /new starts over, /quit ends.")
    say(_startup_tally(recipe, names))
    order = _order(names, settings.blind)
    histories: dict[str, list[dict]] = {name: [] for name in names}
    pending: str | None = None
    while True:
        line = pending if pending is not None else ask("\nyou> ")
        pending = None
        if line is None or line.strip() == "/quit":
            break
        if line.strip() == "/new":
            if settings.blind:
                say("Last conversation: " + ", ".join(f"{LABELS[i]} = {name}" for i, name in enumerate(order)))
            order, histories = _order(names, settings.blind), {name: [] for name in names}
            continue
        try:
            message = check_message(line, settings.max_input_chars)
        except ValueError as exc:
            say(str(exc))
            continue
        turn = {"conversations": {}, "answers": {}}
        for i, name in enumerate(order):
            turns = conversation(system, histories[name], message)
            say(f"[{LABELS[i] if settings.blind else name}] ", end="")
            shown = ""
            for state in stream_answers({name: (loaded[name], turns)}, settings.max_new_tokens, settings.temperature):
                text, stats = state[name]
                if text.startswith(shown):  # print only what is new (the final text is the same, stripped)
                    say(text[len(shown):], end="")
                    shown = text
            if shown.strip() != text:  # the decoder revised earlier text: print the final answer whole
                say("\n" + text, end="")
            say(f"\n    ({stats_line(stats)})")
            turn["conversations"][name], turn["answers"][name] = turns, text
            histories[name] += [{"role": "user", "content": message}, {"role": "assistant", "content": text}]
        labels = [LABELS[i] if settings.blind else name for i, name in enumerate(order)]
        choice = ask(f"best? {'/'.join(labels)}, x = all bad, Enter = skip> ")
        if choice is None:
            break
        picked = choice.strip()
        by_label = {label.lower(): name for label, name in zip(labels, order)}
        if picked.lower() in by_label or picked.lower() == "x":
            best = None if picked.lower() == "x" else by_label[picked.lower()]
            if best is not None and len(names) < 2:
                say("Only one model: nothing to compare it with; use x to mark it bad.")
                continue
            saved = record_vote(recipe, turn, best, blind=settings.blind, source="cli")
            say(f"saved {saved['rows']} row(s) to {saved['file']}")
        elif picked:
            pending = choice  # not a vote: the next message
    say(load_feedback(recipe).summary(names))
    return load_feedback(recipe)


# ------------------------------------------------------------------------------------------------ cli


def make_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m kit.chat", description=__doc__.splitlines()[0])
    add_recipe_arguments(parser)
    parser.add_argument("--host", help="address to bind (default: chat.host, 127.0.0.1); 0.0.0.0 opens it to the network")
    parser.add_argument("--port", type=int, help="port to bind (default: chat.port); 0 picks a free one")
    parser.add_argument("--auth", metavar="USER:PASSWORD", help="require this login in the browser and for gradio_client")
    parser.add_argument("--blind", action="store_true", help="start in blind mode (same as --set chat.blind=true)")
    parser.add_argument("--cli", action="store_true", help="compare in the terminal instead of the browser")
    parser.add_argument("--model", choices=["promoted", "base", "tuned", "preferred", "student"],
                        help="chat with this one model instead of comparing them all; promoted: preferred when "
                             "kit.eval's gate promoted it, else tuned")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)

    def work():
        overrides = list(args.overrides)
        overrides += [f"chat.port={args.port}"] if args.port is not None else []
        overrides += ["chat.blind=true"] if args.blind else []
        recipe = load_recipe(args.recipe, overrides)
        if args.host is not None:
            if not args.host.strip():
                raise KitError("--host: give an address such as 127.0.0.1 or 0.0.0.0")
            recipe.chat.host = args.host.strip()
        auth = parse_auth(args.auth)
        loaded = None
        if args.model:
            choice = choose_model(recipe, args.model)
            if choice.note:
                print(f"kit.chat: {choice.note}", flush=True)
            loaded = load_models(recipe, only=choice.model)
        if args.cli:
            return run_terminal(recipe, loaded=loaded)
        return run(recipe, auth=auth, loaded=loaded)

    run_cli(work)


if __name__ == "__main__":
    main()
