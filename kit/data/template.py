"""A log format as data: the YAML schema of `data_templates/*.yaml`, and finding / loading templates.

A template says how to read a file (`reader`), where the records are (`records`, `messages`: dotted
paths into JSON), how fields map onto a conversation (`fields`), how author roles map onto chat roles
(`roles`, `users`), which records are left out (`exclude`) and which cleaning rules it wants (`rules`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kit.errors import KitError
from kit.recipe import DataRules

TEMPLATES_DIR = Path(__file__).resolve().parent.parent.parent / "data_templates"

Role = Literal["user", "assistant", "system", "bot", "drop"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TemplateFields(_Strict):
    """Which field holds what. Values are field names (CSV columns) or dotted paths into JSON (`a.b.0`)."""

    question: str | list[str] | None = Field(
        None, description="`qa_pairs`: the customer's message (a list of fields: joined, e.g. `[subject, body]`).")
    answer: str | list[str] | None = Field(None, description="`qa_pairs`: the agent's reply (a list: as `question`).")
    id: str | None = Field(None, description="`qa_pairs`: the record id, kept in `metadata.id`.")
    conversation: str | None = Field(
        None, description="`messages`: the ticket / conversation id that groups messages (on the record when nested)."
    )
    message_id: str | None = Field(None, description="`reply_threads`: the message's own id.")
    reply_to: str | None = Field(None, description="`reply_threads`: the id of the message this one answers.")
    replies: str | None = Field(None, description="`reply_threads`: comma-separated ids of the answers to this message.")
    timestamp: str | None = Field(None, description="When the message was sent; messages are ordered by it.")
    role: str | None = Field(None, description="The author's role (mapped through `roles`); or use `author` + `users`.")
    author: str | None = Field(None, description="The author's id, looked up in the `users` table.")
    text: str | list[str] | None = Field(
        None, description="The message body. A list of fields builds it from several (`[subject, body]`, joined by a "
        "blank line); a field holding a list of parts (sentences) is joined by line ends.")
    metadata: list[str] | dict[str, str] = Field(
        default_factory=list,
        description="Fields copied into `metadata`: a list (key = last path part) or a mapping key -> field.",
    )
    names: list[str] = Field(
        default_factory=list, description="Fields holding people's names for this conversation, redacted as {{NAME}}."
    )


class UsersTable(_Strict):
    path: str | None = Field(None, description="Dotted path of the users list inside the export (JSON).")
    id: str = Field("id", description="The user's id, matched against `fields.author`.")
    role: str | None = Field("role", description="The user's role, mapped through `roles`.")
    name: str | None = Field("name", description="The user's name, redacted wherever it appears.")
    email: str | None = Field(None, description="The user's email, redacted wherever it appears.")


class FilterRule(_Strict):
    """One test of a record (or of the conversation holding it) for `exclude` and `keep`."""

    field: str = Field(description="The field tested: a column, or a dotted JSON path.")
    equals: list[str | int | float | bool] | None = Field(
        None, description="Matches when the value is one of these (case-insensitive; `true`, `3` and `\"3\"` alike)."
    )
    matches: str | None = Field(None, description="Matches when the value matches this regex (case-insensitive).")
    level: Literal["message", "conversation"] = Field(
        "message",
        description="`message`: the record itself; `conversation`: the record that holds the conversation (the "
        "ticket of a nested export; in a flat export the record itself, so the field should repeat on each).",
    )
    reason: str | None = Field(None, description="Why, as written to the rejects (a default says which rule).")

    @model_validator(mode="after")
    def _one_test(self) -> "FilterRule":
        if (self.equals is None) == (self.matches is None):
            raise ValueError("give exactly one of `equals` or `matches`")
        if self.matches is not None:
            re.compile(self.matches)
        return self


ExcludeRule = FilterRule  # the name before `keep` existed


class Template(_Strict):
    """A declarative log format."""

    description: str = Field(description="One line shown by `python -m kit.data templates`.")
    reader: Literal["csv", "json", "jsonl"] = Field(description="How the file is read.")
    encoding: str = Field("auto", description="`auto` (UTF-8 with or without BOM, else cp1252 / latin-1) or a codec.")
    delimiter: str = Field("auto", description="CSV field separator, or `auto` to sniff `,` `;` tab or `|`.")
    csv_extra_fields: Literal["reject", "join"] = Field(
        "reject",
        description="CSV rows with more fields than the header: `reject` them (`bad_row`), or `join` the extra fields "
        "back into the last column with the delimiter, for exports whose last column is free text written without "
        "quotes (`Hi, my order, the blue one, is late`). Joined rows are kept and counted (`joined_rows` in "
        "stats.json's sources); such a file is read row by row.",
    )
    records: str | None = Field(
        None, description="JSON: dotted path of the record list (unset: the document is the list). JSONL: one record a line."
    )
    records_as: Literal["list", "mapping", "record"] = Field(
        "list",
        description="JSON: what is at `records`: a `list` of records; a `mapping` of id -> record (the id is "
        "available as the field named by `key_field`); or one `record` (a file per ticket, e.g. with a glob path).",
    )
    key_field: str = Field("key", description="`records_as: mapping`: the field that holds each record's key.")
    messages: str | None = Field(
        None, description="Nested exports: dotted path, inside each record, of its list of messages."
    )
    shape: Literal["qa_pairs", "messages", "reply_threads"] = Field(
        "qa_pairs",
        description="`qa_pairs`: one record = question + answer; `messages`: one record per message, grouped by "
        "`conversation`; `reply_threads`: one record per message, threaded by `reply_to`.",
    )
    fields: TemplateFields
    roles: dict[str | int | float | bool, Role] = Field(
        default_factory=dict, description="Raw role value (case-insensitive; JSON numbers and booleans as written: "
        "`0: user`, `true: assistant`) -> user / assistant / system / bot / drop."
    )
    unknown_role: Role | None = Field(None, description="Role for values not in `roles`; unset: such records are rejected.")
    users: UsersTable | None = Field(None, description="A users table that resolves `fields.author` to role and name.")
    timestamp_format: str | None = Field(
        None, description="strptime format of `timestamp` when it is not ISO 8601 or epoch seconds."
    )
    exclude: list[FilterRule] = Field(
        default_factory=list, description="Records left out when any rule matches (private notes, spam tickets...). A "
        "rule whose field occurs in no record of a file stops the build: a misspelled field would filter nothing.")
    keep: list[FilterRule] = Field(
        default_factory=list, description="Records kept only when every rule matches (`status: solved`, a CSAT of 4 "
        "or 5, `level: conversation` for a conversation's fields); the others are rejected. Checked like `exclude`.")
    rules: DataRules = Field(default_factory=DataRules, description="This format's cleaning rules (the recipe's win).")

    @model_validator(mode="after")
    def _fields_fit_shape(self) -> "Template":
        f = self.fields
        need = {
            "qa_pairs": ["question", "answer"],
            "messages": ["conversation", "text"],
            "reply_threads": ["message_id", "reply_to", "text"],
        }[self.shape]
        missing = [name for name in need if getattr(f, name) is None]
        if self.shape != "qa_pairs" and f.role is None and not (f.author and self.users and self.users.role):
            missing.append("role (or author + users.role)")
        if missing:
            raise ValueError(f"shape {self.shape} needs fields.{', fields.'.join(missing)}")
        if self.messages and self.shape == "qa_pairs":
            raise ValueError("`messages` (nested lists) needs shape messages or reply_threads")
        if self.reader != "csv" and self.csv_extra_fields != "reject":
            raise ValueError("`csv_extra_fields` is for CSV files")
        if self.reader != "json" and self.records_as != "list":
            raise ValueError("`records_as` is for JSON documents; JSONL and CSV have one record per line or row")
        if self.reader == "csv" and (self.records or self.messages):
            raise ValueError("`records` and `messages` are JSON paths; a CSV has one record per row")
        if self.users and self.users.path is None and self.reader == "csv":
            pass  # the users table comes from data.sources[].users
        for pattern in (self.rules.auto_reply_patterns or []) + (self.rules.remove_patterns or []):
            re.compile(pattern)
        return self

    def metadata_fields(self) -> dict[str, str]:
        if isinstance(self.fields.metadata, dict):
            return dict(self.fields.metadata)
        return {path.split(".")[-1]: path for path in self.fields.metadata}


def find_template(name: str) -> Path:
    """A template name (`qa_csv`) or a path to a template YAML -> the YAML file."""
    candidates = [Path(name)] if name.endswith((".yaml", ".yml")) or os.sep in name else []
    candidates += [Path("data_templates") / f"{name}.yaml", TEMPLATES_DIR / f"{name}.yaml"]
    for path in candidates:
        if path.is_file():
            return path
    known = ", ".join(sorted(p.stem for p in TEMPLATES_DIR.glob("*.yaml")))
    raise KitError(f"data.sources[].template: no template {name!r}; use one of {known} or a path to a YAML file")


def load_template(name: str) -> Template:
    path = find_template(name)
    try:
        return Template.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except yaml.YAMLError as exc:
        raise KitError(f"{path}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    except ValidationError as exc:
        lines = []
        for e in exc.errors():
            key = ".".join(map(str, e["loc"])) or "(top level)"
            lines.append(f"{path}: {key}: {e['msg'].removeprefix('Value error, ')}")
        raise KitError("\n".join(lines)) from None
    except re.error as exc:
        raise KitError(f"{path}: bad regex ({exc}); fix the pattern") from None


def template_listing() -> str:
    lines = []
    for path in sorted(TEMPLATES_DIR.glob("*.yaml")):
        lines.append(f"{path.stem:<20} {load_template(str(path)).description}")
    return "\n".join(lines) + "\n"
