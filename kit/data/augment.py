"""Seeded text augmentation of customer turns (EDA: synonym replacement, random insertion, swap, deletion).

Only training conversations are augmented; each copy is marked (`metadata.augmented`,
`metadata.augmented_from`) and never reaches validation or test. Placeholders such as `{{EMAIL}}`
are never changed, moved or deleted.
"""

from __future__ import annotations

import random
import re

# A small support-domain vocabulary; the recipe's `data.augment.synonyms` adds to it.
SYNONYMS: dict[str, list[str]] = {
    "order": ["purchase", "package"],
    "purchase": ["order"],
    "package": ["parcel", "delivery"],
    "parcel": ["package"],
    "delivery": ["shipment"],
    "shipment": ["delivery"],
    "refund": ["reimbursement", "money back"],
    "return": ["send back"],
    "cancel": ["stop", "end"],
    "broken": ["faulty", "damaged", "not working"],
    "damaged": ["broken"],
    "faulty": ["broken", "defective"],
    "help": ["assist", "support"],
    "problem": ["issue", "trouble"],
    "issue": ["problem"],
    "error": ["fault", "problem"],
    "account": ["profile"],
    "password": ["passcode", "login"],
    "login": ["sign-in", "log-in"],
    "email": ["e-mail", "mail"],
    "phone": ["mobile", "cell"],
    "app": ["application"],
    "device": ["gadget", "unit"],
    "charge": ["fee", "payment"],
    "charged": ["billed"],
    "bill": ["invoice", "statement"],
    "invoice": ["bill"],
    "payment": ["transaction"],
    "card": ["credit card"],
    "subscription": ["membership", "plan"],
    "plan": ["subscription"],
    "late": ["delayed", "overdue"],
    "delayed": ["late"],
    "quickly": ["fast", "soon"],
    "want": ["would like", "need"],
    "need": ["require", "want"],
    "buy": ["purchase", "get"],
    "get": ["receive", "obtain"],
    "received": ["got"],
    "fix": ["repair", "sort out"],
    "change": ["update", "modify"],
    "update": ["change"],
    "address": ["location"],
    "hi": ["hello", "hey"],
    "hello": ["hi", "hey"],
    "thanks": ["thank you", "cheers"],
    "please": ["kindly", "pls"],
    "now": ["right now", "currently"],
    "still": ["yet"],
    "again": ["once more"],
    "doesn't": ["does not", "won't"],
    "can't": ["cannot", "am unable to"],
    "working": ["functioning", "running"],
    "offline": ["disconnected", "not online"],
    "reset": ["restart", "reboot"],
    "setup": ["installation", "set-up"],
    "arrived": ["came", "was delivered"],
    "wrong": ["incorrect"],
    "missing": ["lost", "not there"],
    "week": ["seven days"],
    "today": ["this day"],
    "money": ["funds", "cash"],
}
_TOKEN = re.compile(r"\{\{[A-Z_]+\}\}|\S+")
_PLACEHOLDER = re.compile(r"\{\{[A-Z_]+\}\}")
_EDGE = re.compile(r"^(\W*)(.*?)(\W*)$", re.DOTALL)


def _free(words: list[str]) -> list[int]:
    return [i for i, w in enumerate(words) if not _PLACEHOLDER.search(w)]


def _synonym(word: str, vocabulary: dict, rng: random.Random) -> str | None:
    lead, core, trail = _EDGE.match(word).groups()
    options = vocabulary.get(core.lower())
    if not options:
        return None
    choice = rng.choice(options)
    if core[:1].isupper():
        choice = choice[:1].upper() + choice[1:]
    return f"{lead}{choice}{trail}"


def augment_text(text: str, operation: str, rate: float, rng: random.Random, vocabulary: dict) -> str:
    """One EDA operation on one text; changes about `rate` of its words (at least one)."""
    words = _TOKEN.findall(text)
    free = _free(words)
    if not free:
        return text
    n = max(1, round(len(words) * rate))
    if operation == "synonym":
        candidates = [i for i in free if _synonym(words[i], vocabulary, random.Random(0)) is not None]
        rng.shuffle(candidates)
        for i in candidates[:n]:
            words[i] = _synonym(words[i], vocabulary, rng)
    elif operation == "insert":
        pool = [_synonym(words[i], vocabulary, rng) for i in free]
        pool = [w.strip(".,!?;:") for w in pool if w]
        for _ in range(n):
            if not pool:
                break
            words.insert(rng.randrange(len(words) + 1), rng.choice(pool).lower())
    elif operation == "swap":
        if len(free) >= 2:
            for _ in range(n):
                i, j = rng.sample(free, 2)
                words[i], words[j] = words[j], words[i]
    elif operation == "delete":
        if len(free) >= 2:
            drop = set(rng.sample(free, min(n, len(free) - 1)))
            words = [w for i, w in enumerate(words) if i not in drop]
    else:
        raise ValueError(f"unknown augmentation {operation!r}")
    return " ".join(words)


def augment(conversations: list[dict], settings, seed: int) -> list[dict]:
    """Augmented copies of `conversations` (customer turns changed), marked and seeded."""
    rng = random.Random(seed)
    vocabulary = {**SYNONYMS, **{k.lower(): list(v) for k, v in settings.synonyms.items()}}
    copies = []
    for conversation in conversations:
        for copy in range(settings.copies):
            operation = rng.choice(settings.operations)
            messages, changed = [], False
            for message in conversation["messages"]:
                if message["role"] == "user":
                    text = augment_text(message["content"], operation, settings.rate, rng, vocabulary)
                    changed |= text != message["content"]
                    message = {**message, "content": text}
                messages.append(message)
            if not changed:
                continue
            copies.append(
                {
                    "id": f"{conversation['id']}#aug{copy + 1}",
                    "messages": messages,
                    "metadata": {
                        **conversation["metadata"],
                        "augmented": operation,
                        "augmented_from": conversation["id"],
                    },
                    "source": conversation["source"],
                }
            )
    return copies
