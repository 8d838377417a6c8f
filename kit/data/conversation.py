"""The records that pass between kit.data's steps: `Groups` (read, mapped and filtered messages, grouped by
conversation), `Conversation` (assembled, as written to a split file) and `Batch` (what assembling a part
of the groups gave)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import orjson


def dumps_line(value) -> str:
    """One line of a JSONL file: compact JSON, not ASCII-escaped (orjson: about ten times faster than
    `json` on a dataset line). Text that UTF-8 cannot hold (a lone surrogate from a JSON export's
    escapes) or numbers orjson does not take are written by `json`, escaped."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(value, separators=(",", ":"))


def where(file: str, number: int, loc) -> dict:
    """A record's place, as rejects and `source` give it: its file, record number, and line (CSV, JSONL) or
    JSON path, or both (a message nested in a JSONL record)."""
    if loc.__class__ is int:
        return {"file": file, "record": number, "line": loc}
    if isinstance(loc, tuple):
        return {"file": file, "record": number, "line": loc[0], "path": loc[1]}
    return {"file": file, "record": number, "path": loc}


@dataclass(slots=True)
class Conversation:
    """One conversation: `row()` is its line in a split file (`id`, `messages`, `metadata`, `source`).

    `records` lists (record number, location) of each input record it holds, so that a duplicate's records
    can be rejected one by one; `key` is its dedup key. A large build serializes the line where the
    conversation is assembled (`line`, in a worker process) and drops `messages` (half the data sent back)."""

    id: str
    messages: list[dict] | None
    metadata: dict
    source: dict
    records: list[tuple] = field(default_factory=list)
    key: bytes | None = None
    line: str | None = None

    def __reduce__(self):
        # A tuple of fields pickles (to and from worker processes) several times faster than slots' state dict.
        return Conversation, (self.id, self.messages, self.metadata, self.source, self.records, self.key, self.line)

    def chat(self) -> list[dict]:
        """The messages, also when only the serialized line was kept."""
        return self.messages if self.messages is not None else json.loads(self.line)["messages"]

    def row(self) -> dict:
        return {"id": self.id, "messages": self.chat(), "metadata": self.metadata, "source": self.source}

    def dumps(self) -> str:
        return self.line or dumps_line(self.row())


class Groups:
    """Messages grouped by conversation, in flat lists: conversation i (`keys[i]`, `metadata[i]`) has the
    messages `starts[i]` to `starts[i + 1]` of `numbers` (record numbers), `roles`, `texts` (raw) and `locs`,
    in order (by time, then record number). Slicing gives the groups of a part."""

    __slots__ = ("keys", "metadata", "starts", "numbers", "roles", "texts", "locs")

    def __init__(self, keys: list, metadata: list, starts: list, numbers: list, roles: list, texts: list, locs: list):
        self.keys, self.metadata, self.starts = keys, metadata, starts
        self.numbers, self.roles, self.texts, self.locs = numbers, roles, texts, locs

    @classmethod
    def of(cls, items: list) -> Groups:
        """From (key, [[time, number, role, text, loc], ...], metadata) items, each group sorted."""
        keys, metadata, starts, numbers, roles, texts, locs = [], [], [0], [], [], [], []
        for key, group, meta in items:
            group.sort()  # by time, then by record number (unique)
            keys.append(key)
            metadata.append(meta)
            for _, number, role, text, loc in group:
                numbers.append(number)
                roles.append(role)
                texts.append(text)
                locs.append(loc)
            starts.append(len(numbers))
        return cls(keys, metadata, starts, numbers, roles, texts, locs)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, part: slice) -> Groups:
        first, last = part.start or 0, len(self.keys) if part.stop is None else part.stop
        lo, hi = self.starts[first], self.starts[last]
        return Groups(self.keys[first:last], self.metadata[first:last], [s - lo for s in self.starts[first : last + 1]],
                      self.numbers[lo:hi], self.roles[lo:hi], self.texts[lo:hi], self.locs[lo:hi])

    def sizes(self) -> list[int]:
        return [b - a for a, b in zip(self.starts, self.starts[1:])]


@dataclass
class Batch:
    """What assembling a part gave: kept conversations, rejects, PII counts and conversation counts."""

    conversations: list[Conversation] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    pii: Counter = field(default_factory=Counter)
    assembled: int = 0
    rejected_conversations: int = 0
