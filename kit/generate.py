"""Generation for evaluation: greedy, seeded, batched answers to conversation prefixes, with their cost.

Longest prompts first (a batch that does not fit fails at once; batches waste little padding), left
padding, stopping at the model's end-of-turn tokens. `kit.chat` streams answers its own way (sampling,
one conversation at a time, a stop button).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from kit.masking import render


@dataclass
class Generation:
    """Greedy answers in prompt order, with what they cost."""

    answers: list[str]
    tokens: list[int]  # generated tokens per answer, up to and including the end-of-turn token
    latencies: list[float]  # seconds until each answer's batch was done
    seconds: float  # generation wall time, all batches


def eos_ids(model, tokenizer) -> set[int]:
    """The tokens that end an answer: the generation config's and the tokenizer's end tokens."""
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    return ids | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())


def count_generated(row: list[int], ends: set[int]) -> int:
    """Real tokens in one generated row: up to and including the first end token (the rest is padding)."""
    for position, token in enumerate(row):
        if token in ends:
            return position + 1
    return len(row)


def generate_answers(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, batch_size: int, seed: int) -> Generation:
    """Greedy answers to each conversation prefix, batched (similar lengths together) with left padding."""
    import torch
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    texts = [render(tokenizer, p, add_generation_prompt=True) for p in prompts]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    # Longest first: a batch that does not fit in memory fails at once, and batches waste little padding.
    order = sorted(range(len(texts)), key=lambda i: (-lengths[i], i))
    ends = eos_ids(model, tokenizer)
    answers, tokens, latencies = [""] * len(texts), [0] * len(texts), [0.0] * len(texts)
    total = 0.0
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in tqdm(range(0, len(order), batch_size), desc="generating", unit="batch"):
            chosen = order[start : start + batch_size]
            batch = tokenizer([texts[i] for i in chosen], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            torch.manual_seed(seed)
            began = time.perf_counter()
            with torch.no_grad():
                output = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=sorted(ends) or None,
                )
            if device.type == "cuda":
                torch.cuda.synchronize()
            spent = time.perf_counter() - began
            total += spent
            new_tokens = output[:, batch["input_ids"].shape[1] :].tolist()
            for i, row in zip(chosen, new_tokens):
                tokens[i] = count_generated(row, ends)
                answers[i] = tokenizer.decode(row[: tokens[i]], skip_special_tokens=True).strip()
                latencies[i] = spent
    finally:
        tokenizer.padding_side = side
    return Generation(answers=answers, tokens=tokens, latencies=latencies, seconds=total)
