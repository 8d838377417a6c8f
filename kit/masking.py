"""Chat rendering and the assistant-token mask, for any chat template.

TRL's `assistant_only_loss` needs `{% generation %}` markers that most templates (the bundled
SmolLM2's included) lack, so kit finds the assistant spans itself: it renders the conversation
through `messages[:i]` + generation prompt and through `messages[:i+1]`; the text between the two is
assistant turn i (its content and the end-of-turn token that closes it). Tokens overlapping those
character spans are trained, everything else (system, user, role headers) is not.
"""

from __future__ import annotations

from kit.errors import KitError

# A named fallback for base models that ship no chat template.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    if not messages:
        return ""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns (end-of-turn included)."""
    full = render(tokenizer, messages)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], add_generation_prompt=True)
        through = render(tokenizer, messages[: i + 1])
        if through.startswith(before) and full.startswith(through) and len(before) >= cursor:
            start, end = len(before), len(through)
            # Start at the answer itself, not at a role header a template without a generation prompt leaves.
            content_at = full.find(message["content"], start, end) if message["content"] else -1
            start = content_at if content_at >= 0 else start
        else:
            # Templates that rewrite earlier turns: find the content itself, then the end-of-turn token.
            start = full.find(message["content"], cursor)
            if start < 0:
                continue  # the template leaves this turn out of the rendering: nothing there to train
            end = start + len(message["content"])
            eos = tokenizer.eos_token or ""
            if eos and full.startswith(eos, end):
                end += len(eos)
        while end > start and full[end - 1].isspace():  # the newline after <|im_end|> is layout, not answer
            end -= 1
        spans.append((start, end))
        cursor = end
    return full, spans


def tokenize_conversation(tokenizer, messages: list[dict], max_length: int | None = None) -> dict:
    """`input_ids` and `completion_mask` (1 = trained assistant token), truncated from the end."""
    if not getattr(tokenizer, "is_fast", False):
        raise KitError("model.name: kit needs a fast (Rust) tokenizer to find assistant tokens; this model has none")
    text, spans = assistant_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    mask = [
        int(any(start < span_end and end > span_start for span_start, span_end in spans) and end > start)
        for start, end in encoded["offset_mapping"]
    ]
    truncated = max_length is not None and len(ids) > max_length
    if truncated:
        ids, mask = ids[:max_length], mask[:max_length]
    return {"input_ids": ids, "completion_mask": mask, "truncated": truncated}


def ensure_chat_template(tokenizer) -> None:
    """Base models without a chat template get ChatML (named, printed), never a silent guess."""
    if not getattr(tokenizer, "chat_template", None):
        print("kit: the model has no chat template; using the chatml fallback", flush=True)
        tokenizer.chat_template = CHATML_TEMPLATE
