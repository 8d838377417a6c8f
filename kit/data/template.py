"""A log format as data: the YAML schema of `data_templates/*.yaml`, and finding / loading templates.

A template says how to read a file (`reader`), where the records are (`records`, `messages`: dotted
paths into JSON), how fields map onto a conversation (`fields`), how author roles map onto chat roles
(`roles`, `users`), which records are left out (`exclude`) and which cleaning rules it wants (`rules`).
"""

from __future__ import annotations

import os
import re
import typing
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kit.data.clean import auto_reply_regex
from kit.errors import KitError
from kit.recipe import DataRules, describe_error, type_name
from kit.shipped import shipped_dir
from kit.yamlfile import read_yaml_tree

TEMPLATES_DIR = shipped_dir("data_templates")

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
    parts: dict[str, Role] = Field(
        default_factory=dict,
        description="JSON message records that each hold several messages (a turn with the agent's utterance and the "
        "customer's answer, as in Google's simulated dialogues): path inside the record -> that message's role, in the "
        "order they were said (`{system_utterance: assistant, user_utterance: user}`). Each part present becomes a "
        "message whose text is `fields.text` inside the part (a part that is itself text is the text); a record with "
        "none of them is rejected (`no_messages`). Conversation, metadata and names are read from the record that "
        "holds the messages (`messages`), else from the record itself. Needs shape `messages` and no `fields.role`.",
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
        if self.parts:
            if self.shape != "messages" or self.reader == "csv":
                raise ValueError("`parts` is for JSON message records: set shape messages and reader json or jsonl")
            if f.role is not None or f.author is not None:
                raise ValueError("`parts` gives each message its role; remove fields.role and fields.author")
            need = ["conversation"]  # a part that is itself text needs no fields.text
        missing = [name for name in need if getattr(f, name) is None]
        if self.shape != "qa_pairs" and f.role is None and not (f.author and self.users and self.users.role) and not self.parts:
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
        for pattern in self.rules.remove_patterns or []:
            re.compile(pattern)
        for pattern in self.rules.auto_reply_patterns or []:
            auto_reply_regex([pattern])
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


def _locate(node, loc: tuple) -> tuple[str, int | None]:
    """The dotted key of a validation error's location as far as the YAML has it (union member names and
    the like dropped), and the line of the deepest node found (of the key itself for an unknown key)."""
    parts, line = [], None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if match is None:
                if isinstance(part, str):
                    parts.append(part)  # an unknown or missing key
                break
            parts.append(str(part))
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            parts[-1:] = [f"{parts[-1]}[{part}]"] if parts else [f"[{part}]"]
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return ".".join(parts) or "(top level)", line


def _known_keys(model, loc: tuple) -> list[str]:
    """The keys a section of the template schema accepts (for a misspelled key's error)."""
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part)) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        candidates += [a for c in list(candidates) for a in getattr(c, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return []
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def load_template(name: str) -> Template:
    """Read and validate a template. Raises KitError with one line per problem, each with its key and line."""
    path = find_template(name)
    tree, node = read_yaml_tree(path)
    if not isinstance(tree, dict):
        raise KitError(f"{path}: a template is a mapping (description, reader, fields, ...), not a {type(tree).__name__}")
    try:
        return Template.model_validate(tree)
    except ValidationError as exc:
        lines = []
        for e in exc.errors():
            key, line = _locate(node, e["loc"])
            known = _known_keys(Template, e["loc"][:-1]) if e["type"] == "extra_forbidden" else []
            text = f"{path}: {key}{f' (line {line})' if line else ''}: {describe_error(e, known)}"
            if text not in lines:
                lines.append(text)
        raise KitError("\n".join(lines)) from None
    except re.error as exc:
        raise KitError(f"{path}: bad regex ({exc}); fix the pattern") from None


def _reference_rows(model: type[BaseModel], prefix: str, rows: list[str]) -> None:
    for name, field in model.model_fields.items():
        key, annotation = f"{prefix}{name}", field.annotation
        options = [annotation, *typing.get_args(annotation)]
        nested = next((o for o in options if isinstance(o, type) and issubclass(o, BaseModel)), None)
        item = typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else None
        if field.is_required():
            default = "required"
        else:
            value = field.get_default(call_default_factory=True)
            value = value.model_dump(exclude_none=True) if isinstance(value, BaseModel) else value
            default = f"`{yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}`"
        description = " ".join((field.description or "").split()).replace("|", "\\|")
        if isinstance(item, type) and issubclass(item, BaseModel):
            rows.append(f"| `{key}` | list of {item.__name__} | {default} | {description} |")
            _reference_rows(item, f"{key}[].", rows)
        elif nested is not None:
            if description:
                rows.append(f"| `{key}` | {nested.__name__} | {default} | {description} |")
            _reference_rows(nested, f"{key}.", rows)
        else:
            rows.append(f"| `{key}` | {type_name(annotation)} | {default} | {description} |")


def template_reference() -> str:
    """docs/templates.md: the template keys, generated from the schema's field help (a test keeps the file
    in sync: `python -m kit.data reference > docs/templates.md`), and the shipped templates."""
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    _reference_rows(Template, "", rows)
    shipped = ["| template | reads |", "| --- | --- |"]
    for path in sorted(TEMPLATES_DIR.glob("*.yaml")):
        shipped.append(f"| `{path.stem}` | {load_template(str(path)).description.replace('|', chr(92) + '|')} |")
    return "\n".join([
        "# Log format templates",
        "",
        "<!-- generated by `python -m kit.data reference > docs/templates.md`; tests/test_data_templates.py checks it -->",
        "",
        "A template is a YAML file that maps one export format onto conversations; a recipe names it in",
        "`data.sources[].template` (a name from `data_templates/`, or a path). `python -m kit.data preview` shows",
        "what it makes of a file; every record left out goes to `rejects.jsonl` with its file, record, line or",
        "JSON path and reason. Each shipped template starts with a comment that explains it and names its sample",
        "in `data_templates/samples/`.",
        "",
        "`data.sources[].path` is a file, a folder (its files of the template's reader: `.csv`/`.tsv`/`.txt`,",
        "`.json`, `.jsonl`/`.ndjson`, in subfolders too) or a glob (`exports/2026-*/*.json`, `**` for any depth);",
        "each file is accounted for by name in `stats.json`.",
        "",
        "Field values are CSV column names or dotted paths into JSON records (`custom_fields.category`, `0` for",
        "the first item of a list). `exclude` and `keep` compare values case-insensitively, JSON numbers and",
        "booleans as written (`5`, `5.0` and `\"5\"` alike; `true`); a rule whose field occurs in no record of a file",
        "stops the build, since a misspelled field would otherwise filter nothing.",
        "",
        "## Keys",
        "",
        *rows,
        "",
        "## Shipped templates",
        "",
        *shipped,
        "",
    ])


def template_listing() -> str:
    """One line per template: the shipped ones, and those in ./data_templates (which win on a name clash)."""
    found = {path.stem: path for path in sorted(TEMPLATES_DIR.glob("*.yaml"))}
    own = Path("data_templates")
    if own.is_dir() and own.resolve() != TEMPLATES_DIR.resolve():
        found.update({path.stem: path for path in sorted(own.glob("*.yaml"))})
    lines = []
    for name, path in sorted(found.items()):
        mark = "  (./data_templates)" if path.parent == own else ""
        lines.append(f"{name:<20} {load_template(str(path)).description}{mark}")
    return "\n".join(lines) + "\n"
