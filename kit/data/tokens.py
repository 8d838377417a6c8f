"""Tokens per conversation, for `data.rules.min_tokens` / `max_tokens` and the dataset card.

`count` is the reference: the model's tokenizer as kit.sft loads it (transformers), each message's tokens
plus the chat template's per-message overhead. `TokenCounter` gives the same counts from a helper process
that starts while the conversion runs and reads the model's `tokenizer.json` with the `tokenizers` library
and its chat template with jinja2 (no transformers import: seconds of CPU, torch included); where it cannot
(no `tokenizer.json`, model code, a template jinja2 alone does not render), the counts come from `count` in
the calling process. tests/test_data_rules.py holds the two to the same counts.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import threading
from datetime import datetime
from pathlib import Path

from kit.errors import KitError

HELPER_NICENESS = 10  # the tokenizer helper's priority below the conversion's
# The conversation whose chat-template rendering, less its two texts, gives the per-message overhead.
PROBE = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]


def count(tokenizer, conversations: list[list[str]], batch_size: int = 2048) -> list[int]:
    """Tokens per conversation (given as its messages' texts), with a transformers tokenizer."""
    def encode(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]

    try:
        rendered = tokenizer.apply_chat_template(PROBE, tokenize=False)
        overhead = _overhead(encode, rendered)
    except Exception:  # a tokenizer without a chat template: count the contents only
        overhead = 0
    return _count(encode, overhead, conversations, batch_size)


def _overhead(encode, rendered: str) -> int:
    """Tokens a chat template adds around one message (role markers, end-of-turn), from the rendered `PROBE`."""
    whole, x, y = map(len, encode([rendered, "x", "y"]))
    return max(0, round((whole - x - y) / 2))


def _count(encode, overhead: int, conversations: list[list[str]], batch_size: int) -> list[int]:
    lengths = [overhead * len(texts) for texts in conversations]
    texts: list[str] = []
    owners: list[int] = []

    def flush() -> None:
        for owner, ids in zip(owners, encode(texts)):
            lengths[owner] += len(ids)
        texts.clear()
        owners.clear()

    for index, contents in enumerate(conversations):
        texts.extend(contents)
        owners.extend([index] * len(contents))
        if len(texts) >= batch_size:
            flush()
    if texts:
        flush()
    return lengths


def _model_file(path: str, name: str, revision: str | None) -> Path | None:
    if Path(path).is_dir():
        return Path(path) / name if (Path(path) / name).is_file() else None
    from huggingface_hub import hf_hub_download  # a hub id: the file as transformers would find it (cache, offline)

    try:
        return Path(hf_hub_download(path, name, revision=revision))
    except Exception:
        return None


def _raise_template_error(message: str):
    import jinja2

    raise jinja2.exceptions.TemplateError(message)


def fast_encoder(section):
    """(encode, overhead) for `_count` from the model's files with `tokenizers` and jinja2; None where the result
    could differ from `count`'s (the caller then uses `count`)."""
    import jinja2
    import jinja2.ext  # not loaded by `import jinja2` alone (transformers loads it; the helper has no transformers)
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from tokenizers import Tokenizer

    from kit import models

    path = models.resolve(section.name)
    tokenizer_file = _model_file(path, "tokenizer.json", section.revision)
    config_file = _model_file(path, "tokenizer_config.json", section.revision)
    if section.trust_remote_code or tokenizer_file is None or config_file is None:
        return None
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.get("add_prefix_space") is not None:  # transformers rebuilds the pre-tokenizer for it
        return None
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.no_truncation()  # as transformers calls it (tokenizer.json may set either)
    tokenizer.no_padding()

    def encode(texts: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in tokenizer.encode_batch(texts, add_special_tokens=False)]

    template_file = _model_file(path, "chat_template.jinja", section.revision)
    template = template_file.read_text(encoding="utf-8") if template_file else config.get("chat_template")
    if template is None:
        return encode, 0  # as `count` without a chat template
    if not isinstance(template, str):
        return None  # named templates: transformers picks one
    # transformers' own environment for chat templates (kit.models' tokenizer renders them so); a template
    # that needs more than this (`{% generation %}`) fails here and is counted by `count` instead.
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[jinja2.ext.loopcontrols])
    environment.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    environment.globals["raise_exception"] = _raise_template_error
    environment.globals["strftime_now"] = lambda format: datetime.now().strftime(format)
    special = {key: value["content"] if isinstance(value, dict) else value for key, value in config.items()
               if key in ("bos_token", "eos_token", "unk_token", "pad_token") and value is not None}
    special.setdefault("pad_token", special.get("eos_token"))  # as models.load_tokenizer sets it
    rendered = environment.from_string(template).render(messages=PROBE, tools=None, documents=None,
                                                        add_generation_prompt=False, **special)
    return encode, _overhead(encode, rendered)


def _serve(section, connection, yield_cpu: bool, parent_end=None) -> None:
    """The helper process: load the tokenizer, then answer lists of conversations with their lengths."""
    if parent_end is not None:
        # The fork copied the parent's end of the pipe: close it, so that when the parent dies (a SIGKILL
        # gives it no time to say goodbye) `recv` ends with EOFError instead of waiting forever.
        parent_end.close()

    # On a large export the load takes CPU time that the conversion would otherwise share its cores with:
    # take what they leave idle (the answer is needed only at the end: after the conversion, or while
    # files are written). A small export waits for the tokenizer at once, so it loads at full priority.
    if yield_cpu:
        with contextlib.suppress(OSError):
            os.nice(HELPER_NICENESS)
    try:
        loaded = fast_encoder(section)
    except Exception:  # e.g. a model that is not there: the parent's own load says what is wrong
        loaded = None
    with contextlib.suppress(EOFError, OSError):  # EOF: the parent is gone
        while (conversations := connection.recv()) is not None:
            # "retry": the counts could differ from `count`'s, which the parent then uses itself.
            connection.send(("retry", None) if loaded is None else ("ok", _count(*loaded, conversations, 2048)))


class TokenCounter:
    """Token counts from a forked helper process that loads the tokenizer (`fast_encoder`) while the conversion
    keeps the main process busy. Without fork, or where `fast_encoder` declines, `count` runs in-process. `yield_cpu`: load at a lower priority than the
    conversion (worth it when the conversion takes longer than the load)."""

    def __init__(self, section, yield_cpu: bool = False):
        self.section = section
        self.connection = self.process = None
        if "fork" in multiprocessing.get_all_start_methods():
            context = multiprocessing.get_context("fork")
            self.connection, child = context.Pipe()
            self.process = context.Process(
                target=_serve, args=(section, child, yield_cpu, self.connection), daemon=True
            )
            self.process.start()
            child.close()

    def lengths(self, conversations: list[list[str]]) -> tuple[list[int] | None, str | None]:
        """(tokens per conversation, None), or (None, why the tokenizer is unavailable)."""
        return self.collect(self.ask(conversations))

    def ask(self, contents: list[list[str]]):
        """Send the conversations (each as its messages' texts) to the helper and return at once; `collect`
        waits for the answer, so the caller can work meanwhile."""
        if self.process is None:
            return contents
        # A big question fills the pipe, and the helper reads it only once its tokenizer is loaded: send
        # from a thread so that this one goes on.
        failed: list[str] = []

        def send() -> None:
            try:
                self.connection.send(contents)
            except (EOFError, OSError) as exc:
                failed.append(f"the tokenizer process ended ({exc})")

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        return sender, failed, contents

    def collect(self, asked) -> tuple[list[int] | None, str | None]:
        """The answer to `ask` (which returned `asked`): as `lengths`."""
        if self.process is not None:
            sender, failed, contents = asked
            sender.join()
            if failed:
                return None, failed[0]
            try:
                status, payload = self.connection.recv()
            except (EOFError, OSError) as exc:
                return None, f"the tokenizer process ended ({exc})"
            if status == "ok":
                return payload, None
        else:
            contents = asked
        from kit import models

        try:
            return count(models.load_tokenizer(self.section), contents), None
        except KitError as exc:
            return None, str(exc).splitlines()[0]
        except Exception as exc:
            if self.process is None:
                raise
            return None, f"{type(exc).__name__}: {exc}"  # as the helper reports it

    def close(self, wait: bool = True) -> None:
        """Stop the helper: politely when its work is done, at once (`wait=False`) when the build failed."""
        if self.process is None:
            return
        if wait:
            with contextlib.suppress(OSError):
                self.connection.send(None)
            self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.connection.close()
        self.process = None
