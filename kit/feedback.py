"""The arena's feedback store: votes appended as TRL training data, and read back as a tally.

`<run>/feedback/preferences.jsonl` holds one row per (best, other) pair in TRL's preference format
(prompt, chosen, rejected), ready for DPO; `all_bad.jsonl` holds every answer of an all-bad vote in
TRL's unpaired format (prompt, completion, label=False), ready for KTO. Private data is redacted with
the recipe's `data.pii` settings before anything is written; appends are whole lines, fsync'ed, so a
crash leaves at most one corrupt line, which the reader counts and skips. `kit.chat` (web and terminal)
writes through `record_vote` and shows `load_feedback(recipe).summary(...)`.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from kit import pii
from kit.errors import KitError
from kit.recipe import Recipe

PREFERENCES = "preferences.jsonl"
ALL_BAD = "all_bad.jsonl"


def feedback_dir(recipe: Recipe) -> Path:
    return recipe.run_dir / "feedback"


_append_lock = threading.Lock()


def _append_jsonl(path: Path, rows: list[dict]) -> None:
    """Append whole lines. A line cut short by a crash is closed first, so it stays one corrupt line."""
    if not rows:
        return
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    with _append_lock:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a+b") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() > 0:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    text = "\n" + text
            handle.write(text.encode("utf-8"))  # one write on an O_APPEND file: lines never interleave
            handle.flush()
            os.fsync(handle.fileno())


def _redactor(recipe: Recipe):
    section = recipe.data.pii
    if not section.enabled:
        return lambda text: text
    scanner = pii.section_scanner(section)
    return lambda text: scanner.redact(text)[0]


def record_vote(recipe: Recipe, turn: dict, best: str | None, *, blind: bool, source: str) -> dict:
    """Append one vote on `turn` = {"conversations": {model: messages}, "answers": {model: text}}.

    `best` names the preferred model, or None for "all bad". Returns {"file", "rows", "identical"}.
    """
    # Testers paste real customer messages into the arena: the feedback files are training data, so they get
    # the same redaction as the dataset (`data.pii`) before anything is written.
    redact = _redactor(recipe)
    answers = {name: redact(text) for name, text in turn["answers"].items()}
    conversations = {
        name: [{**message, "content": redact(message["content"])} for message in messages]
        for name, messages in turn["conversations"].items()
    }
    common = {
        "vote": uuid.uuid4().hex,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run": recipe.name,
        "blind": blind,
        "source": source,
        "models": list(answers),
    }
    if best is None:
        path = feedback_dir(recipe) / ALL_BAD
        rows = [
            {"prompt": conversations[name], "completion": [{"role": "assistant", "content": text}], "label": False,
             "metadata": {**common, "model": name}}
            for name, text in answers.items()
        ]
        identical = 0
    else:
        if best not in answers:
            raise KitError(f"vote: {best!r} did not answer; pick one of {', '.join(answers)}")
        path = feedback_dir(recipe) / PREFERENCES
        others = [name for name in answers if name != best]
        # The same text as chosen and rejected teaches DPO nothing: counted, not written.
        identical = sum(answers[name].strip() == answers[best].strip() for name in others)
        rows = [
            {
                # In multi-turn chats the prompt is the conversation as the chosen model saw it.
                "prompt": conversations[best],
                "chosen": [{"role": "assistant", "content": answers[best]}],
                "rejected": [{"role": "assistant", "content": answers[name]}],
                "metadata": {**common, "chosen_model": best, "rejected_model": name},
            }
            for name in others
            if answers[name].strip() != answers[best].strip()
        ]
    _append_jsonl(path, rows)
    return {"file": path, "rows": len(rows), "identical": identical}


@dataclass
class Feedback:
    """The votes collected so far for a run, read back from its feedback files."""

    best: Counter = field(default_factory=Counter)  # model -> votes where it was the best answer
    all_bad: int = 0  # votes that rejected every answer
    pairs: int = 0  # preference rows usable for DPO
    corrupt: list[str] = field(default_factory=list)  # "file:line" of every unreadable line

    @property
    def votes(self) -> int:
        return sum(self.best.values()) + self.all_bad

    def summary(self, names: list[str], per_model: bool = True) -> str:
        """One line for the UI. Blind mode hides the per-model counts until the names are revealed."""
        if not self.votes and not self.corrupt:
            return "No votes yet."
        text = f"{self.votes} vote{'s' * (self.votes != 1)} so far"
        if per_model:
            text += " · best answer: " + ", ".join(f"{name} {self.best[name]}" for name in names)
        text += f" · all bad: {self.all_bad} · {self.pairs} preference pair{'s' * (self.pairs != 1)}"
        if self.corrupt:
            shown = ", ".join(self.corrupt[:3]) + (" ..." if len(self.corrupt) > 3 else "")
            text += f" · {len(self.corrupt)} corrupt line(s) skipped ({shown})"
        return text


def is_messages(value) -> bool:
    """A non-empty list of {"role": str, "content": str}: a prompt or an answer of a feedback row."""
    return (isinstance(value, list) and len(value) > 0
            and all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in value))


NOT_JSON = object()  # what `jsonl_rows` gives for a line that does not parse


def jsonl_rows(path: Path):
    """(line number, parsed row or NOT_JSON) for each non-blank line of a feedback file; nothing if it is missing.
    Read with errors="replace": a line cut short by a crash is one corrupt line, never an exception."""
    if not path.is_file():
        return
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError:
                yield number, NOT_JSON


def load_feedback(recipe: Recipe) -> Feedback:
    """Read both feedback files; a line that is not a valid row is counted in `corrupt` and skipped."""
    feedback = Feedback()
    seen: set[str] = set()
    for filename in (PREFERENCES, ALL_BAD):
        for number, row in jsonl_rows(feedback_dir(recipe) / filename):
            if filename == PREFERENCES:
                valid = isinstance(row, dict) and all(is_messages(row.get(k)) for k in ("prompt", "chosen", "rejected"))
            else:
                valid = (isinstance(row, dict) and is_messages(row.get("prompt"))
                         and is_messages(row.get("completion")) and isinstance(row.get("label"), bool))
            if not valid:
                feedback.corrupt.append(f"{filename}:{number}")
                continue
            meta = row.get("metadata") if isinstance(row.get("metadata"), dict) else {}
            vote = str(meta.get("vote") or f"{filename}:{number}")
            if filename == PREFERENCES:
                feedback.pairs += 1
                if vote not in seen:
                    feedback.best[str(meta.get("chosen_model", "unknown"))] += 1
            elif vote not in seen:
                feedback.all_bad += 1
            seen.add(vote)
    return feedback
