"""The reference path: records -> conversations for every template shape, every input record accounted for.

Each input record (a CSV row, a JSONL line, a JSON item, or one message of a nested list) ends as
exactly one of: part of a kept conversation, a reject (with file, record, line or JSON path, reason
and a short code), or a duplicate. So `input == kept + rejected + duplicates` counts records, and the
record numbers across the dataset and `rejects.jsonl` are exactly the input's.

Read in order, one source file at a time (`convert`):
1. read, map, filter (`Source`, `Reader`): parse each record (`kit.data.read`), map the template's fields,
   apply its `exclude` / `keep` rules and role mapping, parse timestamps, and group messages by
   conversation (`Groups`; rows may arrive in any order). People's names are collected.
2. clean, redact, assemble (`Assembler`; phase 1 ran for every source first, so every name in the
   recipe's exports is known): clean each text, drop auto-replies, redact private data, order by time,
   merge consecutive turns, apply the conversation rules, compute the dedup key (`Conversation`).
3. dedup across all sources, in input order, so the first copy is the one kept (`_dedup`).
Splitting and writing follow in `kit.data.build`.

Large exports take the same path faster, with the same result: a large CSV of messages is read by
columns (`kit.data.columnar`) or, where that declines, in two processes, and assembled in worker
processes (`kit.data.parallel`).
"""

from __future__ import annotations

import contextlib
import gc
import json
import operator
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from kit import pii
from kit.data import columnar, parallel, read
from kit.data.conversation import Batch, Conversation, Groups, where
from kit.data.clean import Cleaner, Rules, resolve_rules
from kit.data.dedup import NearDuplicates, exact_key, normalized_keys
from kit.data.template import Template
from kit.errors import KitError

REJECT_TEXT_CHARS = 400
# A mapping key in a JSON path (`read.json_records`: `dialogues["dlg-1"].turns[0]`): the only part of a location
# that comes from the export's data.
_PATH_KEY = re.compile(r'\["(?:[^"\\]|\\.)*"\]')


# Metadata keys that are lists of strings (kit.eval reads `required_phrases`); text cells split on "|".
LIST_METADATA = frozenset({"required_phrases"})
# CSV message exports from this size on are first read by columns (`kit.data.columnar`).
COLUMNAR_MIN_BYTES = 8 << 20
GROUP_TEXTS = 4_096  # messages cleaned as one batch (`Cleaner.clean_many`)
TEXTS_REMEMBERED = 200_000  # distinct texts whose results an assembly process keeps for reuse


@dataclass
class Settings:
    """What the recipe adds to the templates: rule overrides, PII, dedup and parallelism settings."""

    rules: object = None  # kit.recipe.DataRules or None
    pii: object = None  # kit.recipe.PiiSection or None (None: redaction with defaults)
    dedup: str = "normalized"
    near_threshold: float = 0.8
    workers: int | None = None  # None: one per CPU core for large sources; 0 or 1: in-process
    # Also serialize each conversation's JSON line (`Conversation.line`) where it is assembled, i.e. in the workers.
    serialize: bool = False
    progress: object = None  # a callable given one line of progress per phase and source (large builds)


@dataclass
class Conversion:
    """What a set of sources turned into. Counts are in records unless named `conversations`."""

    conversations: list[Conversation] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    input: int = 0
    duplicates: int = 0
    pii: Counter = field(default_factory=Counter)
    assembled: int = 0  # conversations built before the conversation rules and dedup
    duplicate_conversations: int = 0
    rejected_conversations: int = 0
    threads: Counter = field(default_factory=Counter)
    sources: list[dict] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        return len(self.rejects) - self.duplicates

    @property
    def kept(self) -> int:
        return self.input - len(self.rejects)

    def by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(r["code"] for r in self.rejects).items()))


def _filter_value(value) -> str:
    """A value as `exclude` / `keep` compare it: JSON true / false / null as written in JSON, numbers without
    a trailing `.0` (`3` and `3.0` alike), strings stripped."""
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value).strip()


def _describe_test(rule) -> str:
    return f"one of {[_filter_value(v) for v in rule.equals]}" if rule.equals is not None else f"like /{rule.matches}/"


def _message_text(value) -> str | None:
    """A message text: a string; a number or boolean as written; a list of parts (sentences, paragraphs)
    joined with line ends; None when missing."""
    if value.__class__ is str:
        return value
    if isinstance(value, list):
        parts = [part for part in map(_message_text, value) if part and part.strip()]
        return "\n".join(parts) if parts else None
    return read.text_of(value)


def _joined(getters: list):
    """A getter for a text built from several fields (`text: [subject, body]`): the parts present,
    separated by a blank line; MISSING when none is."""
    def get(row):
        parts = [part for part in (_message_text(g(row)) for g in getters) if part and part.strip()]
        return "\n\n".join(parts) if parts else read.MISSING
    return get


_EPOCH = datetime(1970, 1, 1)
_fromiso = datetime.fromisoformat
_strptime = datetime.strptime


def parse_time(value, fmt: str | None) -> float | None:
    """Seconds since the epoch, or None. ISO 8601, epoch seconds / milliseconds, or a strptime format.
    Times without a zone are read as UTC."""
    if value.__class__ is not str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value) / (1000.0 if value > 1e11 else 1.0)
        value = read.text_of(value)
        if value is None:
            return None
    value = value.strip()
    if not value:
        return None
    try:
        moment = _strptime(value, fmt) if fmt else _fromiso(value)
    except ValueError:
        try:
            number = float(value)
        except ValueError:
            return None
        return number / (1000.0 if number > 1e11 else 1.0)
    if moment.tzinfo is None:
        return (moment - _EPOCH).total_seconds()
    return moment.timestamp()


def _metadata_value(value):
    """A metadata value as kept: strings stripped, JSON numbers and booleans as they are (typed), lists of
    strings; None (left out) for objects and missing values."""
    if isinstance(value, list):
        return [str(v) for v in value if v is not None]
    if isinstance(value, dict) or value is None or value is read.MISSING:
        return None
    if value.__class__ is str:
        return value.strip()
    return value if isinstance(value, (bool, int, float)) else str(value)


def _raw_text(raw) -> str:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, list) and all(isinstance(cell, str) for cell in raw):
        return " | ".join(raw)  # a CSV row
    return json.dumps(raw, ensure_ascii=False, default=str)


def _shorten(text: str) -> str:
    return text if len(text) <= REJECT_TEXT_CHARS else text[:REJECT_TEXT_CHARS] + "…"


@contextlib.contextmanager
def no_gc():
    """Pause the cyclic garbage collector: a conversion creates millions of small containers and no
    cycles, and each full collection walks them all again (3x slower on a 1M-message export)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _scanner(settings: Settings, names: list[str]) -> pii.Scanner | None:
    section = settings.pii
    if section is not None and not section.enabled:
        return None
    if section is None:
        return pii.Scanner(names=names)
    return pii.section_scanner(section, names)


# -- phase 1: reading ---------------------------------------------------------------------------------


# A message of a record's `parts`: its role and, for a part that is itself text, its text.
PART_ROLE, PART_TEXT = "\x00role", "\x00text"


def _part_text(get_text):
    return lambda row: row[PART_TEXT] if PART_TEXT in row else get_text(row) if get_text is not None else read.MISSING


def _inside(loc, sub: str):
    """The location of `sub` (a path inside a record) at `loc`: a line number, (line, path) or a JSON path."""
    if isinstance(loc, int):
        return loc, sub
    if isinstance(loc, tuple):
        return loc[0], f"{loc[1]}.{sub}"
    return f"{loc}.{sub}"


class Source:
    """One export file read through its template: records in file order, and field getters."""

    def __init__(self, path_text: str, template: Template, template_name: str, users_file: str | None):
        self.file = path_text
        self.path = Path(path_text)
        if not self.path.is_file():
            raise KitError(f"data.sources[].path: {path_text} not found; point it at an export file")
        self.template = template
        self.template_name = template_name
        # A large CSV of messages is first read by columns (`kit.data.columnar`): into memory once, for
        # the encoding and the columns both.
        # Rows whose extra fields are joined into the last one are read one by one (`csv_extra_fields: join`).
        self.joined_lines: list[int] | None = [] if template.csv_extra_fields == "join" else None
        self.by_columns = (template.reader == "csv" and template.shape == "messages" and self.joined_lines is None
                           and isinstance(template.fields.text, str) and self.path.stat().st_size >= COLUMNAR_MIN_BYTES)
        self.data = self.path.read_bytes() if self.by_columns else None
        self.encoding = read.detect_encoding(self.path, template.encoding, self.data)
        self.header: list[str] | None = None
        self.document = None
        self.document_problem: tuple | None = None
        self.document_line = 0
        if template.reader == "csv":
            self.header, self.delimiter = read.csv_header(self.path, self.encoding, template.delimiter)
            self._check_columns()
        elif template.reader == "json":
            self.document, self.document_problem, self.document_line = read.load_json(self.path, self.encoding)
        self.users = self._users(users_file)

    def _check_columns(self) -> None:
        f = self.template.fields
        required = [f.conversation, f.message_id, f.reply_to, f.role, f.author, f.timestamp]
        for name in (f.question, f.answer, f.text):  # a text of several fields needs each of them
            required += name if isinstance(name, list) else [name]
        for kind in ("exclude", "keep"):  # a rule on a column the file lacks would filter nothing
            for index, rule in enumerate(getattr(self.template, kind)):
                if rule.field not in self.header:
                    raise KitError(f"template {self.template_name}: {kind}[{index}].field {rule.field!r}: {self.file} has "
                                   f"no such column (columns: {', '.join(self.header)}); fix the field name")
        missing = [name for name in dict.fromkeys(required) if name and name not in self.header]
        if missing:
            raise KitError(
                f"{self.file}: header has no column {', '.join(map(repr, missing))} (columns: {', '.join(self.header)}); "
                f"fix the template's fields or the file"
            )

    def get(self, name: str | list[str] | None):
        """A getter for a template field (a CSV column or a dotted JSON path; a list of them for a text built
        from several fields); None when unset."""
        if name is None:
            return None
        if isinstance(name, list):
            return _joined([self.get(part) for part in name])
        if self.header is not None and name not in self.header:
            return lambda row: read.MISSING  # an optional column this export lacks
        return read.getter(name, self.header)

    def _users(self, users_file: str | None) -> dict[str, tuple]:
        table = self.template.users
        if table is None:
            if users_file:
                raise KitError(f"data.sources[].users: template {self.template_name} has no `users` section; remove it")
            return {}
        if users_file:
            rows = read.read_users(Path(users_file), table)
        elif table.path and self.document is not None:
            rows = read.get_path(self.document, read.split_path(table.path))
            if not isinstance(rows, list):
                raise KitError(f"{self.file}: no users list at `{table.path}`; fix the template's users.path")
        elif table.path and self.document_problem:
            rows = []
        else:
            raise KitError(
                f"data.sources[].users: template {self.template_name} resolves authors through a users table; "
                f"set data.sources[].users to the users export"
            )
        users = {}
        get_id = read.getter(table.id, None)
        getters = [read.getter(name, None) if name else None for name in (table.role, table.name, table.email)]
        for row in rows:
            if isinstance(row, dict) and (key := read.id_of(get_id(row))):
                users[key] = tuple(read.text_of(get(row)) if get else None for get in getters)
        return users

    def user_names(self) -> list[str]:
        return [value for _, name, email in self.users.values() for value in (name, email) if value]

    def records(self):
        """(location, message row, problem, container row) for every input record, in file order."""
        t = self.template
        if t.reader == "csv":
            return ((line, row, problem, row) for line, row, problem
                    in read.csv_records(self.path, self.encoding, self.delimiter, joined=self.joined_lines))
        if t.reader == "jsonl":
            outer = read.jsonl_records(self.path, self.encoding)
        elif self.document_problem:
            outer = iter([(self.document_line, None, self.document_problem)])
        else:
            outer = read.json_records(self.document, t.records, self.path, t.records_as, t.key_field)
        records = (((loc, row, problem, row) for loc, row, problem in outer) if not t.messages
                   else self._nested(outer, read.split_path(t.messages)))
        return self._parts(records) if t.parts else records

    def _parts(self, records):
        """Each message record's `parts` as records of their own (`{**part, PART_ROLE: role}`), in order."""
        parts = [(path, read.split_path(path), role) for path, role in self.template.parts.items()]
        for loc, row, problem, container in records:
            if problem is not None:
                yield loc, row, problem, container
                continue
            found = False
            for path, split, role in parts:
                part = read.get_path(row, split)
                if part is read.MISSING or part is None or part == "":
                    continue
                found = True
                yield _inside(loc, path), ({**part, PART_ROLE: role} if isinstance(part, dict)
                                           else {PART_TEXT: part, PART_ROLE: role}), None, container
            if not found:
                yield loc, row, ("no_messages", f"none of the parts {', '.join(map(repr, self.template.parts))}"), container

    def _nested(self, outer, parts):
        name = self.template.messages
        for loc, row, problem in outer:
            if problem:
                yield loc, row, problem, None
                continue
            items = read.get_path(row, parts)
            if not isinstance(items, list) or not items:
                what = "no list" if not isinstance(items, list) else "an empty list"
                yield loc, row, ("no_messages", f"{what} of messages at `{name}`"), None
                continue
            for index, item in enumerate(items):
                yield _inside(loc, f"{name}[{index}]"), item, None, row


class Reader:
    """Phase 1 for one source: records -> work items (qa pairs or message groups) and early rejects."""

    def __init__(self, result: Conversion, source: Source, rules: Rules, split: bool = False):
        self.result = result
        self.source = source
        self.rules = rules
        self.split = split  # read a large CSV in two processes (`messages` shape)
        self.how = ""  # how the file was read, when not record by record in this process (for progress lines)
        self.rejects: list[dict] = []  # raw texts: redacted once every name is known
        self.names_seen: set[str] = set(source.user_names())
        t = source.template
        f = t.fields
        # conversation id, metadata and names live on the container (the record holding the messages or parts)
        self.container_level = bool(t.messages or t.parts)
        get = source.get
        self.get_conversation = get(f.conversation)
        self.get_text = _part_text(get(f.text)) if t.parts else get(f.text)
        self.get_role = operator.itemgetter(PART_ROLE) if t.parts else get(f.role)
        self.get_author = get(f.author)
        self.get_time = get(f.timestamp)
        self.get_message_id = get(f.message_id)
        self.get_reply_to = get(f.reply_to)
        self.get_replies = get(f.replies)
        self.metadata = [(key, get(path)) for key, path in t.metadata_fields().items()]
        self.name_getters = [get(path) for path in f.names]
        # CSV: all name columns in one C-level call (each index twice, so that itemgetter always returns a
        # tuple); values are stripped when the scanner is built.
        self.flat_names = (operator.itemgetter(*[source.header.index(n) for n in f.names] * 2)
                           if source.header is not None and f.names and all(n in source.header for n in f.names) else None)
        self.roles = {_filter_value(k).lower(): v for k, v in t.roles.items()} | {role: role for role in t.parts.values()}
        # Raw role values seen so far -> their chat role (user / assistant), filled by `role_of`.
        self.fast_roles: dict[str, str] = {}
        self.iso_times = t.timestamp_format is None
        # exclude / keep rules: (getter, values, pattern, reason, keep, on the conversation's record)
        self.exclude = []
        self.filter_rules = [(rule, False) for rule in t.exclude] + [(rule, True) for rule in t.keep]
        for rule, keep in self.filter_rules:
            values = None if rule.equals is None else {_filter_value(v).lower() for v in rule.equals}
            pattern = re.compile(rule.matches, re.IGNORECASE) if rule.matches else None
            reason = rule.reason or (f"{rule.field} is not {_describe_test(rule)} (keep)" if keep
                                     else f"{rule.field} is {_describe_test(rule)} (exclude)")
            self.exclude.append((get(rule.field), values, pattern, reason, keep, rule.level == "conversation"))
        self.exclude_seen: list[dict[str, bool]] = [{} for _ in self.exclude]  # raw value -> matches
        self.filter_present = [False] * len(self.exclude)  # the rule's field occurred in some record

    def reject(self, number: int, loc, code: str, reason: str, raw=None) -> None:
        entry = {**where(self.source.file, number, loc), "reason": reason, "code": code, "kind": "rejected"}
        if raw is not None and raw is not read.MISSING:
            text = _raw_text(raw).strip()
            if text:
                entry["text"] = text
        self.rejects.append(entry)

    def excluded(self, row, container=None) -> str | None:
        """Why the template's `exclude` / `keep` rules leave this record out, or None."""
        for i, ((get, values, pattern, reason, keep, conversation), seen) in enumerate(zip(self.exclude, self.exclude_seen)):
            value = get(container if conversation and container is not None else row)
            hit = seen.get(value) if value.__class__ is str else None  # values repeat (public / internal)
            if hit is None:
                text = None if value is read.MISSING or value is None else _filter_value(value)
                if value is not read.MISSING:
                    self.filter_present[i] = True
                hit = text is not None and bool(
                    (values is not None and text.lower() in values) or (pattern is not None and pattern.search(text)))
                if value.__class__ is str and len(seen) < 10_000:
                    seen[value] = hit
            else:
                self.filter_present[i] = True
            if hit != keep:
                return reason
        return None

    def check_filters(self, records: int) -> None:
        """Stop when an `exclude` / `keep` rule's field occurred in no record: it filtered nothing (or, for
        `keep`, everything), which is almost always a misspelled field."""
        t = self.source.template
        for (rule, keep), present in zip(self.filter_rules, self.filter_present):
            if not present and records:
                index = (t.keep if keep else t.exclude).index(rule)
                where = "conversation records" if rule.level == "conversation" and t.messages else "records"
                raise KitError(f"template {self.source.template_name}: {'keep' if keep else 'exclude'}[{index}].field "
                               f"{rule.field!r} occurs in none of the {records} {where} of {self.source.file}; fix the "
                               f"field name{' or its level' if t.messages else ''}")

    def role_of(self, row) -> tuple[str | None, tuple | None]:
        """(user / assistant / drop, None) or (None, (code, reason))."""
        if self.get_role is not None:
            value = self.get_role(row)
            role, problem = self.role_of_value(value)
            if problem is None:
                self.fast_roles[value] = role
            return role, problem
        author = read.id_of(self.get_author(row))
        user = self.source.users.get(author)
        if user is None or not user[0]:
            what = "has no role" if user else "is not in the users table"
            return None, ("unknown_author", f"author {author or '(none)'} {what}")
        return self.role_of_value(user[0])

    def role_of_value(self, raw) -> tuple[str | None, tuple | None]:
        """`role_of` for a raw role value (a role column's cell, or the users table's role)."""
        if raw.__class__ is not str:  # a JSON number or boolean: 1 and 1.0 alike, true as written in JSON
            raw = "" if raw is None or raw is read.MISSING or isinstance(raw, (list, dict)) else _filter_value(raw)
        raw = raw.strip()
        role = self.roles.get(raw.lower(), self.source.template.unknown_role)
        if role is None:
            return None, ("unknown_role", f"unknown role {raw!r}: add it to the template's roles")
        if role == "bot":
            role = self.rules.bot_role
        if role == "drop":
            return None, ("excluded", f"role {raw!r} is dropped by the template")
        return role, None

    def metadata_of(self, row) -> dict:
        metadata = {}
        for key, get in self.metadata:
            value = self.metadata_value(key, get(row))
            if value or value.__class__ in (bool, int, float):  # (a JSON 0 or false is a value; "" or [] is not)
                metadata[key] = value
        return metadata

    @staticmethod
    def metadata_value(key: str, value):
        """A metadata field's value as kept (None or empty: left out)."""
        value = _metadata_value(value)
        if value and key in LIST_METADATA and value.__class__ is str:  # a CSV cell: "phrase one | phrase two"
            value = [part.strip() for part in value.split("|") if part.strip()]
        return value

    def collect_names(self, row) -> None:
        """Remember the people named in this record: their names are redacted everywhere in the export."""
        if self.flat_names is not None and row.__class__ is list:  # a CSV row: one set update
            try:
                self.names_seen.update(self.flat_names(row))
                return
            except IndexError:  # a short, broken CSV row
                pass
        for get in self.name_getters:
            try:
                value = get(row)
            except (IndexError, KeyError, TypeError):  # a short, broken CSV row
                continue
            if value.__class__ is str:
                if value:
                    self.names_seen.add(value.strip())
            elif isinstance(value, list):
                self.names_seen.update(str(v).strip() for v in value if v)
            elif (text := read.text_of(value)) is not None:
                self.names_seen.add(text.strip())

    # -- shapes --------------------------------------------------------------------------------------
    def qa_pairs(self) -> list:
        """Work items: (number, loc, question, answer, metadata)."""
        f = self.source.template.fields
        get_q, get_a, get_id = self.source.get(f.question), self.source.get(f.answer), self.source.get(f.id)
        items = []
        number = 0
        names = self.name_getters
        for number, (loc, row, problem, _) in enumerate(self.source.records(), start=1):
            if names and row is not None:
                self.collect_names(row)
            if problem is not None:
                self.reject(number, loc, *problem, raw=row)
                continue
            if self.exclude and (reason := self.excluded(row, row)) is not None:
                self.reject(number, loc, "excluded", reason, raw=row)
                continue
            question, answer = _message_text(get_q(row)), _message_text(get_a(row))
            if question is None or answer is None:
                missing = f.question if question is None else f.answer
                self.reject(number, loc, "missing_field", f"missing field {missing!r}", raw=row)
                continue
            metadata = self.metadata_of(row)
            if get_id is not None and (value := read.text_of(get_id(row))) is not None:
                metadata["id"] = value.strip()
            items.append((number, loc, question, answer, metadata))
        self.result.input += number
        self.check_filters(number)
        return items

    def _message(self, number, loc, row, problem, container) -> list | None:
        """[time, number, role, raw text, loc] for a chat message, or None after rejecting the record.

        This runs once per input record, so the common case (a role column, an ISO timestamp) is inlined."""
        if self.name_getters:
            if row is not None:
                self.collect_names(row)
            if self.container_level and container is not None and container is not row:
                self.collect_names(container)
        if problem is not None:
            self.reject(number, loc, *problem, raw=row)
            return None
        if self.exclude and (reason := self.excluded(row, container)) is not None:
            self.reject(number, loc, "excluded", reason, raw=self.get_text(row))
            return None
        raw_role = self.get_role(row) if self.get_role is not None else None
        role = self.fast_roles.get(raw_role) if raw_role.__class__ is str else None
        if role is None:
            role, role_problem = self.role_of(row)
            if role_problem is not None:
                self.reject(number, loc, *role_problem, raw=self.get_text(row))
                return None
        text = self.get_text(row)
        if text.__class__ is not str:
            text = _message_text(text)
            if text is None:
                self.reject(number, loc, "missing_field", f"missing field {self.source.template.fields.text!r}", raw=row)
                return None
        if self.get_time is not None:
            value = self.get_time(row)
            try:
                moment = (_fromiso(value) - _EPOCH).total_seconds() if self.iso_times else None
            except (ValueError, TypeError):  # not ISO, or with a time zone: the general parser
                moment = None
            if moment is None:
                moment = parse_time(value, self.source.template.timestamp_format)
            if moment is None:
                value = read.text_of(value)
                self.reject(number, loc, "bad_timestamp",
                            f"unreadable timestamp {value!r}" if value and value.strip() else "missing timestamp", raw=text)
                return None
        else:
            moment = float(number)
        return [moment, number, role, text, loc]

    def moment_of(self, value) -> float | None:
        """A timestamp cell as seconds since the epoch (None: unreadable), as `_message` reads it (inlined
        there: it runs once per record)."""
        if self.iso_times:
            try:
                return (_fromiso(value) - _EPOCH).total_seconds()
            except (ValueError, TypeError):  # not ISO, or with a time zone: the general parser
                pass
        return parse_time(value, self.source.template.timestamp_format)

    def messages(self) -> Groups:
        """The conversations, one per conversation id, in order of their first record."""
        groups: dict[str, list] = {}
        metadata: dict[str, dict] = {}
        source = self.source
        if source.by_columns and source.header is not None:
            items = columnar.read_messages(self)  # (it takes `source.data`, so that the bytes go when it is done with them)
            if items is not None:
                self.how = "by columns"
                return items
        source.data = None
        split = read.split_offset(source.path, source.encoding) if self.split and source.header is not None else None
        if split is None:
            number = self.group(source.records(), groups, metadata)
        else:
            number = parallel.group_in_two(self, split, groups, metadata)
        self.result.input += number
        if source.header is None:  # (a CSV's rule fields were checked against its header)
            self.check_filters(number)
        return Groups.of([(key, group, metadata[key]) for key, group in groups.items()])

    def group(self, records, groups: dict, metadata: dict, start: int = 1) -> int:
        """Add each record's message to its conversation's group; the number of the last record."""
        get_conversation = self.get_conversation
        container_level = self.container_level
        message_of = self._message
        number = start - 1
        for number, (loc, row, problem, container) in enumerate(records, start=start):
            message = message_of(number, loc, row, problem, container)
            if message is None:
                continue
            holder = container if container_level else row
            key = get_conversation(holder)
            if key.__class__ is not str or not key or key[0] == " " or key[-1] == " " or key[-2:] == ".0":
                key = read.id_of(key)
            if not key:
                self.reject(number, loc, "missing_field", f"missing field {self.source.template.fields.conversation!r}",
                            raw=message[3])
                continue
            group = groups.get(key)
            if group is None:
                groups[key] = group = []
                metadata[key] = self.metadata_of(holder)
            group.append(message)
        return number

    def reply_threads(self) -> Groups:
        """Conversations like `messages`, with threads rebuilt from reply ids. A post whose parent is not in
        the export (an orphan) starts its own thread, marked `broken_thread`; reply cycles are rejected."""
        nodes: dict[str, list] = {}
        parents: dict[str, str] = {}
        listed: dict[str, str] = {}
        holders: dict[str, object] = {}
        number = 0
        for number, (loc, row, problem, container) in enumerate(self.source.records(), start=1):
            message = self._message(number, loc, row, problem, container)
            if message is None:
                continue
            key = read.id_of(self.get_message_id(row))
            if not key or key in nodes:
                code, reason = ("missing_field", "missing message id") if not key else ("bad_thread", f"message id {key} appears twice")
                self.reject(number, loc, code, reason, raw=message[3])
                continue
            nodes[key] = message
            holders[key] = container if self.container_level else row
            parent = read.id_of(self.get_reply_to(row))
            if parent:
                parents[key] = parent
            if self.get_replies is not None:
                for child in (read.text_of(self.get_replies(row)) or "").replace(";", ",").split(","):
                    if child := read.id_of(child):
                        listed.setdefault(child, key)
        self.result.input += number
        if self.source.header is None:
            self.check_filters(number)
        for child, parent in listed.items():  # a reply known only from its parent's list of replies
            if child in nodes and child not in parents:
                parents[child] = parent
        roots: dict[str, str | None] = {}

        def root_of(key: str) -> str | None:
            path, seen = [], set()
            while True:
                if key in roots:
                    top = roots[key]
                    break
                parent = parents.get(key)
                if parent is None or parent not in nodes:
                    top = key
                    break
                if key in seen:
                    top = None  # a reply cycle
                    break
                seen.add(key)
                path.append(key)
                key = parent
            for item in path:
                roots[item] = top
            return top

        threads: dict[str, list] = {}
        for key, message in nodes.items():
            top = root_of(key)
            if top is None:
                self.reject(message[1], message[4], "bad_thread", "reply cycle: the thread never reaches a first message",
                            raw=message[3])
                continue
            threads.setdefault(top, []).append(message)
        self.result.threads["threads"] += len(threads)
        self.result.threads["orphans"] += sum(1 for key in nodes if key in parents and parents[key] not in nodes)
        self.result.threads["broken_threads"] += sum(1 for top in threads if top in parents)
        items = []
        for top, group in threads.items():
            metadata = self.metadata_of(holders[top])
            if top in parents:
                metadata["broken_thread"] = "true"
            items.append((top, group, metadata))
        return Groups.of(items)


# -- phase 2: assembling ------------------------------------------------------------------------------


_NAME_KIND = frozenset(("NAME",))  # what `Assembler._same_names` looks for again


class Assembler:
    """Phase 2: clean, redact, order, merge and check. Holds no per-run state (only caches of results that
    depend on a text alone), so workers can run it."""

    def __init__(self, source: Source, rules: Rules, scanner: pii.Scanner | None, dedup: str, system_prompt: str | None,
                 serialize: bool = False):
        self.file = source.file
        self.file_name = source.path.name
        self.template_name = source.template_name
        self.fields = source.template.fields
        self.rules = rules
        self.cleaner = Cleaner(rules)
        self.scanner = scanner
        self.keys_of = {"exact": lambda conversations: [exact_key(messages) for messages in conversations],
                        "normalized": normalized_keys, "near": normalized_keys}.get(dedup)
        self.system_prompt = system_prompt
        self.value_cache: dict[str, tuple] = {}
        self.remembered: dict[str, tuple] = {}  # raw text -> (cleaned, automatic reply, redaction), see `_groups`
        self.has_paths = source.template.reader == "json"  # (locations of other readers are line numbers)
        self.serialize = serialize

    def _redact(self, text: str, batch: Batch) -> str:
        if self.scanner is None:
            return text
        out, counts = self.scanner.redact(text)
        if counts:
            batch.pii.update(counts)
        return out

    def private_free(self, text: str) -> str:
        """`text` redacted and not counted: ids, reasons and locations repeat values that the counts of message
        texts and metadata already hold (or name a field that nothing counts). Reasons repeat: scanned once each."""
        if self.scanner is None:
            return text
        cached = self.value_cache.get(text)
        if cached is None:
            cached = self.scanner.redact(text)
            if len(self.value_cache) < 100_000:
                self.value_cache[text] = cached
        return cached[0]

    def private_free_loc(self, loc):
        """A record's location with the mapping keys in its JSON path redacted (lines and list indexes hold no data)."""
        if loc.__class__ is str and '["' in loc and self.scanner is not None:
            return _PATH_KEY.sub(lambda match: self.private_free(match.group()), loc)
        return loc

    def private_free_reject(self, entry: dict) -> dict:
        """A reject made before the names were known (`Reader.reject`), with its reason and path redacted."""
        entry["reason"] = self.private_free(entry["reason"])
        if "path" in entry:
            entry["path"] = self.private_free_loc(entry["path"])
        return entry

    def conversation_keys(self, part: Groups) -> list[str]:
        """Each conversation id of a part as written: as it is, or, where the scanner finds private data in it (an
        export that groups threads by the customer's email), redacted and suffixed with the conversation's first
        record number (`{{EMAIL}}#17`): unique, stable across rebuilds, and nothing to reverse. docs/privacy.md."""
        if self.scanner is None:
            return part.keys
        numbers, starts = part.numbers, part.starts
        return [key if redacted == key else f"{redacted}#{min(numbers[starts[i]:starts[i + 1]])}"
                for i, (key, (redacted, _)) in enumerate(zip(part.keys, self.scanner.redact_many(part.keys)))]

    def _redact_value(self, value: str, batch: Batch) -> str:
        """Metadata values repeat (categories, subjects, tags): each distinct value is scanned once."""
        cached = self.value_cache.get(value)
        if cached is None:
            cached = self.scanner.redact(value)
            if len(self.value_cache) < 100_000:
                self.value_cache[value] = cached
        if cached[1]:
            batch.pii.update(cached[1])
        return cached[0]

    def _reject(self, batch: Batch, number: int, loc, code: str, reason: str, text: str | None) -> None:
        entry = {**where(self.file, number, self.private_free_loc(loc)), "reason": self.private_free(reason), "code": code,
                 "kind": "rejected"}
        if text:
            entry["text"] = _shorten(text)
        batch.rejects.append(entry)

    def _clean(self, batch: Batch, number: int, loc, raw: str, name: str) -> str | None:
        """Cleaned, redacted text, or None after rejecting the record."""
        text = self.cleaner.clean(raw)
        return self._checked(batch, number, loc, raw, name, text, bool(text) and self.cleaner.is_auto_reply(text))

    def _checked(self, batch: Batch, number: int, loc, raw: str, name: str, text: str, automatic: bool,
                 redacted: tuple | None = None) -> str | None:
        """`_clean` once the text is cleaned and tested for an automatic reply (and maybe redacted:
        `redacted` is the scanner's (text, counts) for it)."""
        if not text:
            reason = f"empty {name}" if not raw.strip() else f"empty {name} after cleaning"
            self._reject(batch, number, loc, "empty_text", reason, self._redact(raw.strip(), batch) if raw.strip() else None)
            return None
        if redacted is None:
            text = self._redact(text, batch)
        else:
            text, counts = redacted
            if counts:
                batch.pii.update(counts)
        if automatic:
            self._reject(batch, number, loc, "auto_reply", "automatic reply (rules.auto_reply_patterns)", text)
            return None
        return text

    def _metadata(self, metadata: dict, batch: Batch) -> dict:
        if self.scanner is None:
            return metadata
        redact = self._redact_value
        return {key: redact(value, batch) if value.__class__ is str
                else [redact(v, batch) for v in value] if value.__class__ is list else value  # numbers, booleans
                for key, value in metadata.items()}

    def _conversation(self, cid: str, messages: list[dict], metadata: dict, located: list, batch: Batch) -> Conversation:
        """A kept conversation; `_seal` adds its dedup key (and line)."""
        if self.scanner is not None and self.has_paths:
            located = [(n, self.private_free_loc(loc)) for n, loc in located]
        number, loc = located[0]
        records = [n for n, _ in located]
        if loc.__class__ is int:  # (a CSV or JSONL line: `where`, built directly)
            source = {"file": self.file, "record": number, "line": loc, "records": records, "template": self.template_name}
        else:
            source = {**where(self.file, number, loc), "records": records, "template": self.template_name}
        return Conversation(cid, messages, self._metadata(metadata, batch), source, located)

    def _seal(self, made: list[Conversation], batch: Batch) -> None:
        """Give a part's conversations their dedup keys (all at once: `normalized_keys`) and add them to the batch."""
        if self.keys_of is not None:
            for conversation, key in zip(made, self.keys_of([c.messages for c in made])):
                conversation.key = key  # (without the system prompt)
        for conversation in made:
            if self.system_prompt:
                conversation.messages.insert(0, {"role": "system", "content": self.system_prompt})
            if self.serialize:
                # The line carries the messages; what goes back to the main process does not (half the pickling).
                conversation.line = conversation.dumps()
                conversation.messages = None
        batch.conversations.extend(made)

    def qa_pairs(self, items: list) -> Batch:
        batch = Batch()
        made = []
        question_name, answer_name = self.fields.question, self.fields.answer
        for number, loc, question, answer, metadata in items:
            question = self._clean(batch, number, loc, question, question_name)
            if question is None:
                continue
            answer = self._clean(batch, number, loc, answer, answer_name)
            if answer is None:
                continue
            messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            batch.assembled += 1
            made.append(self._conversation(f"{self.file_name}:{number}", messages, metadata, [(number, loc)], batch))
        self._seal(made, batch)
        return batch

    def groups(self, groups: Groups) -> Batch:
        batch = Batch()
        starts = groups.starts
        first = 0
        for end in range(1, len(groups) + 1):  # parts of about GROUP_TEXTS messages
            if starts[end] - starts[first] >= GROUP_TEXTS or end == len(groups):
                self._groups(groups[first:end], batch)
                first = end
        return batch

    def _same_names(self, messages: list[dict], named: list[str], batch: Batch) -> None:
        """A name found in one message of a conversation is redacted in every message of it (the agent's "thanks
        Priya" after the customer's "I am Priya Raman"); `named`: the cleaned texts where names were found."""
        pattern = pii.name_runs(f.value for text in named for f in self.scanner.scan(text, kinds=_NAME_KIND)
                                if f.kind == "NAME")
        if pattern is None:
            return
        for message in messages:
            out, count = pattern.subn("{{NAME}}", message["content"])
            if count:
                message["content"] = out
                batch.pii["NAME"] += count

    def _groups(self, part: Groups, batch: Batch) -> None:
        rules = self.rules
        merge = rules.merge_consecutive
        text_name = self.fields.text
        # Cleaning, the auto-reply test and redaction run over the part's new texts at once (see
        # `Cleaner.clean_many`). Support logs repeat texts (canned answers, greetings, thanks) and each
        # rule is a function of the text alone, so a text met before reuses its results.
        raws = part.texts
        remembered = self.remembered
        if len(remembered) > TEXTS_REMEMBERED:
            remembered.clear()
        new = list(dict.fromkeys(raw for raw in raws if raw not in remembered))
        cleaned = self.cleaner.clean_many(new)
        redacted = self.scanner.redact_many(cleaned) if self.scanner is not None else [None] * len(cleaned)
        remembered.update(zip(new, zip(cleaned, self.cleaner.auto_replies(cleaned), redacted)))
        texts, automatic, redacted = zip(*[remembered[raw] for raw in raws]) if raws else ((), (), ())
        numbers, roles, locs, starts = part.numbers, part.roles, part.locs, part.starts
        made = []
        for index, (key, metadata) in enumerate(zip(self.conversation_keys(part), part.metadata)):
            batch.assembled += 1
            turns: list[list] = []  # [role, [texts], [(number, loc)]]
            named = []  # the cleaned texts of this conversation where a name was found
            first, last = starts[index], starts[index + 1] - 1
            for i in range(first, last + 1):
                number, role, loc = numbers[i], roles[i], locs[i]
                text, auto_reply, redaction = texts[i], automatic[i], redacted[i]
                if redaction is not None and "NAME" in redaction[1]:
                    named.append(text)
                if auto_reply and role == "user" and first < i < last:
                    # A customer's mailbox answers at a thread's start or end; in the middle, a customer who
                    # starts with "I am out of the office tomorrow" is talking, and the agent's next turn answers it.
                    auto_reply = False
                if text and not auto_reply and redaction is not None and not redaction[1]:
                    text = redaction[0]  # the common message: kept, nothing private in it
                else:
                    text = self._checked(batch, number, loc, raws[i], text_name, text, auto_reply, redaction)
                    if text is None:
                        continue
                if merge and turns and turns[-1][0] == role:
                    turns[-1][1].append(text)
                    turns[-1][2].append((number, loc))
                else:
                    turns.append([role, [text], [(number, loc)]])
            if not turns:  # every message was rejected on its own already
                batch.rejected_conversations += 1
                continue
            sides = {t[0] for t in turns}
            if rules.trim_trailing_customer and turns[-1][0] == "user" and "assistant" in sides:
                while turns[-1][0] == "user":
                    _, parts, located = turns.pop()
                    for text, (number, loc) in zip(parts, located):
                        self._reject(batch, number, loc, "after_last_answer", "customer message after the last agent answer", text)
                sides = {t[0] for t in turns}
            problem = None
            if rules.require_both_sides and "user" not in sides:
                problem = ("no_customer_turn", "conversation has no customer message")
            elif rules.require_both_sides and "assistant" not in sides:
                problem = ("no_agent_answer", "conversation has no agent answer")
            if problem is not None:
                batch.rejected_conversations += 1
                for _, parts, located in turns:
                    for text, (number, loc) in zip(parts, located):
                        self._reject(batch, number, loc, problem[0], f"{problem[1]} (conversation {key})", text)
                continue
            messages = [{"role": role, "content": "\n\n".join(parts) if len(parts) > 1 else parts[0]} for role, parts, _ in turns]
            if named:
                self._same_names(messages, named, batch)
            located = [item for t in turns for item in t[2]]
            located.sort()
            made.append(self._conversation(f"{self.file_name}:{key}", messages, metadata, located, batch))
        self._seal(made, batch)


# -- the whole conversion -----------------------------------------------------------------------------


def convert(sources: list[tuple], system_prompt: str | None, settings: Settings | None = None) -> Conversion:
    """Read each (path, template[, template name[, users file]]) source into conversations, rejects and counts.

    Dedup runs across all sources. Token limits are applied by `kit.data.build` (they need the model's
    tokenizer).
    """
    with no_gc():
        return _convert(sources, system_prompt, settings or Settings())


def _convert(sources: list[tuple], system_prompt: str | None, settings: Settings) -> Conversion:
    result = Conversion()
    read_sources = []
    names: set[str] = set()
    for item in sources:  # phase 1 for every source first: a name known anywhere is redacted everywhere
        path_text, template = item[0], item[1]
        template_name = item[2] if len(item) > 2 else "template"
        source = Source(path_text, template, template_name, item[3] if len(item) > 3 else None)
        rules = resolve_rules(template.rules, settings.rules)
        split = (template.reader == "csv" and template.shape == "messages" and parallel.worker_count(settings, 0, True) > 1
                 and source.joined_lines is None
                 and (settings.workers is not None or source.path.stat().st_size >= parallel.PARALLEL_MIN_BYTES))
        reader = Reader(result, source, rules, split)
        before = result.input
        if settings.progress:
            settings.progress(f"reading {source.path.name} ({source.path.stat().st_size / 2**20:,.0f} MiB)")
        started = time.perf_counter()
        items = reader.qa_pairs() if template.shape == "qa_pairs" else getattr(reader, template.shape)()
        names.update(name for name in reader.names_seen if name)
        read_sources.append((source, rules, reader, items, result.input - before))
        if settings.progress:
            settings.progress(f"{source.path.name}: {result.input - before:,} records read in "
                              f"{time.perf_counter() - started:.1f} s{f' ({reader.how})' if reader.how else ''}")
    scanner = _scanner(settings, sorted({name.strip() for name in names} - {""}))
    for source, rules, reader, items, records in read_sources:
        assembler = Assembler(source, rules, scanner, settings.dedup, system_prompt, settings.serialize)
        # Early rejects kept their raw text until every name was known; redact them now (reasons and paths too).
        early = [entry for entry in reader.rejects if "text" in entry]
        texts = [entry["text"] for entry in early]
        for entry, (text, counts) in zip(early, scanner.redact_many(texts) if scanner is not None else zip(texts, [{}] * len(texts))):
            result.pii.update(counts)
            entry["text"] = _shorten(text)
        result.rejects.extend(map(assembler.private_free_reject, reader.rejects))
        method = "qa_pairs" if source.template.shape == "qa_pairs" else "groups"
        started = time.perf_counter()
        if settings.progress:
            workers = parallel.worker_count(settings, records)
            settings.progress(f"{source.path.name}: cleaning, redacting and assembling {len(items):,} "
                              f"{'pairs' if method == 'qa_pairs' else 'conversations'}"
                              f"{f' in {workers} processes' if workers else ''}")
        for batch in parallel.assemble(assembler, method, items, records, settings):
            result.conversations.extend(batch.conversations)
            result.rejects.extend(batch.rejects)
            result.pii.update(batch.pii)
            result.assembled += batch.assembled
            result.rejected_conversations += batch.rejected_conversations
        result.sources.append({"file": source.file, "template": source.template_name, "records": records})
        if source.joined_lines:  # kept, and counted: rows whose last field held unquoted delimiters
            result.sources[-1]["joined_rows"] = len(source.joined_lines)
        if settings.progress:
            settings.progress(f"{source.path.name}: assembled in {time.perf_counter() - started:.1f} s")
    _dedup(result, settings)
    kept = Counter(c.source["file"] for c in result.conversations)
    for entry in result.sources:  # after dedup across sources (the same file listed twice shares its count)
        entry["conversations"] = kept[entry["file"]]
    for conversation in result.conversations:  # needed by dedup only (a 1M-message export: ~100 MB)
        conversation.records = conversation.key = None
    return result


def _dedup(result: Conversion, settings: Settings) -> None:
    if settings.dedup == "none":
        return
    near = NearDuplicates(settings.near_threshold) if settings.dedup == "near" else None
    seen: dict[bytes, Conversation] = {}  # key -> the first conversation with it
    kept = []
    label = lambda c: f"{c.source['file']} record {c.source['record']}"  # noqa: E731 (only when needed)
    for conversation in result.conversations:
        first = seen.get(conversation.key)
        original = None if first is None else label(first)
        kind = "duplicate"
        if original is None and near is not None:
            text = "\n".join(m["content"] for m in conversation.chat() if m["role"] != "system")
            original = near.check_and_add(label(conversation), text)
            kind = "near_duplicate"
        if original is None:
            seen[conversation.key] = conversation
            kept.append(conversation)
            continue
        source = conversation.source
        result.duplicate_conversations += 1
        for number, loc in conversation.records:
            result.rejects.append({**where(source["file"], number, loc), "reason": f"{kind.replace('_', ' ')} of {original}",
                                   "code": kind, "kind": "duplicate"})
            result.duplicates += 1
    result.conversations = kept
