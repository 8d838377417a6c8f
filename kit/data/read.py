"""Streaming readers: a file -> (location, record, problem) triples, never an exception for a bad record.

A location is the physical line where a CSV / JSONL record starts, or the JSON path of a record in a
JSON document (`tickets[3]`). A record is a list (CSV row) or the parsed JSON value. A problem is a
(code, reason) pair saying why the record cannot be read; the caller sends such records to the rejects.
"""

from __future__ import annotations

import codecs
import csv
import glob
import io
import json
import operator
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from kit.errors import KitError

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # support bodies can be long; the default is 128 KiB

MISSING = object()
CHUNK_BYTES = 1 << 20  # bytes read at a time when a file is scanned


def text_of(value) -> str | None:
    """A field's value as text: numbers and booleans as `str` writes them; None when missing or a list / object."""
    if value.__class__ is str:
        return value
    if value is MISSING or value is None or isinstance(value, (list, dict)):
        return None
    return str(value)


_FLOAT_ID = re.compile(r"^(\d+)\.0+$")


def id_of(value) -> str:
    """An id as a string, stripped; `2414304.0` (a pandas round trip) is `2414304`."""
    text = text_of(value)
    if not text:
        return ""
    text = text.strip()
    if text.endswith(".0") or text.endswith(".00"):
        match = _FLOAT_ID.match(text)
        if match:
            return match.group(1)
    return text


# The files a folder source holds, by the template's reader.
_SUFFIXES = {"csv": (".csv", ".tsv", ".txt"), "json": (".json",), "jsonl": (".jsonl", ".ndjson", ".json")}


def source_files(path_text: str, reader: str) -> list[str]:
    """The files of a `data.sources[].path`: the file itself; a folder's files of the reader's kind (in
    its subfolders too), or a glob's matches (`exports/2026-*/*.json`, `**` for any depth), in name order."""
    path = Path(path_text)
    if path.is_file():
        return [path_text]
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _SUFFIXES[reader])
        what = f"no {', '.join(_SUFFIXES[reader])} file in the folder"
    elif any(char in path_text for char in "*?["):
        files = sorted(p for p in glob.glob(path_text, recursive=True) if Path(p).is_file())
        what = "no file matches the pattern"
    else:
        raise KitError(f"data.sources[].path: {path_text} not found; point it at an export file, a folder or a glob")
    if not files:
        raise KitError(f"data.sources[].path: {path_text}: {what}; fix the path")
    return files


def detect_encoding(path: Path, declared: str = "auto", data: bytes | None = None) -> str:
    """UTF-8 (with or without BOM) or UTF-16 with BOM when the bytes say so, else cp1252, else latin-1.
    `data`: the file's bytes, when the caller has read them already."""
    if declared != "auto":
        try:
            codecs.lookup(declared)
        except LookupError:
            raise KitError(f"template encoding: unknown codec {declared!r}; use auto, utf-8, cp1252, latin-1...") from None
        return declared
    if data is None:
        with path.open("rb") as handle:
            head = handle.read(4)
    else:
        head = data[:4]
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    for encoding in ("utf-8", "cp1252"):
        decoder = codecs.getincrementaldecoder(encoding)()
        try:
            for chunk in _chunks(path, data):
                # ASCII is valid UTF-8 and cp1252 and tested ten times faster (unless a character
                # from the chunk before is not finished: then the bytes must complete it)
                if not chunk.isascii() or decoder.getstate()[0]:
                    decoder.decode(chunk)
            decoder.decode(b"", final=True)
            return encoding
        except UnicodeDecodeError:
            continue
    return "latin-1"  # decodes any byte string


def _chunks(path: Path, data: bytes | None):
    """The file's bytes, CHUNK_BYTES at a time (from `data` when given)."""
    if data is not None:
        for start in range(0, len(data), CHUNK_BYTES):
            yield data[start : start + CHUNK_BYTES]
        return
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            yield chunk


def _open_text(path: Path, encoding: str):
    return path.open(encoding=encoding, newline="", errors="strict")


def csv_header(path: Path, encoding: str, delimiter: str) -> tuple[list[str], str]:
    """The header row and the delimiter (sniffed among , ; tab | when `auto`)."""
    with _open_text(path, encoding) as handle:
        sample = handle.read(16 * 1024)
    if "\n" in sample[:-1]:
        sample = sample[: sample.rindex("\n") + 1]  # whole lines only
    if delimiter == "auto":
        # The header decides: the candidate that splits it into the most fields. (csv.Sniffer looks at
        # the data rows too and guesses wrong on small or messy files; headers rarely hold , ; tab |.)
        first = sample.splitlines()[0] if sample else ""  # (a CR alone ends a line too: old Mac exports)
        delimiter = max(",\t;|", key=lambda d: len(next(csv.reader([first], delimiter=d), [])))
    elif delimiter in ("\\t", "tab"):
        delimiter = "\t"
    try:
        header = next(csv.reader(sample.splitlines(), delimiter=delimiter))
    except (StopIteration, csv.Error):
        header = []
    return [name.strip() for name in header], delimiter


def _csv_width(path: Path, encoding: str, delimiter: str) -> int:
    """The number of columns: the header's, read as `csv_records` reads it."""
    with _open_text(path, encoding) as handle:
        try:
            return len(next(csv.reader(handle, delimiter=delimiter)))
        except (StopIteration, csv.Error):
            return 0


def csv_records(
    path: Path, encoding: str, delimiter: str, start: int = 0, lines_before: int = 0, joined: list | None = None
) -> Iterator[tuple[int, list | None, tuple | None]]:
    """Yield (first line, row, problem) for each record after the header. Blank lines are layout, not records.

    `start` > 0: the records from that byte offset on (the start of a line after the header, see
    `split_offset`), with `lines_before` the number of lines before it. `joined` (a list): a row with more
    fields than the header has its extra fields joined back into the last one with the delimiter (its
    free text held an unquoted delimiter), and its line is appended to `joined`; else it is a `bad_row`."""
    if start:
        width = _csv_width(path, encoding, delimiter)
        raw = path.open("rb")
        raw.seek(start)
        handle = io.TextIOWrapper(raw, encoding="utf-8" if encoding == "utf-8-sig" else encoding, newline="",
                                  errors="strict")
    else:
        handle = _open_text(path, encoding)
    with handle:
        reader = csv.reader(handle, delimiter=delimiter)
        if not start:
            try:
                header = next(reader)
            except StopIteration:
                return
            except csv.Error:
                header = []
            width = len(header)
        line = lines_before + reader.line_num + 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield line, None, ("bad_row", f"unreadable CSV record ({exc})")
                line = lines_before + reader.line_num + 1
                continue
            if not row:
                line = lines_before + reader.line_num + 1
                continue
            if not any(row):
                yield line, None, ("empty_row", "empty row")
            elif len(row) > width > 0 and joined is not None:
                joined.append(line)
                yield line, row[: width - 1] + [delimiter.join(row[width - 1 :])], None
            elif len(row) != width:
                yield line, row, ("bad_row", f"expected {width} fields, got {len(row)}")
            else:
                yield line, row, None
            line = lines_before + reader.line_num + 1


# Encodings in which the bytes of `"`, CR and LF always are those characters (never part of another one).
SPLITTABLE_ENCODINGS = frozenset({"utf-8", "utf-8-sig", "cp1252", "latin-1", "iso8859-1", "ascii"})


def split_offset(path: Path, encoding: str, fraction: float = 0.5) -> tuple[int, int] | None:
    """A place to split a CSV for reading in two processes: (byte offset, lines before it), or None.

    The offset is the start of a non-blank line near `fraction` of the file with an even number of
    quote characters before it: in standard CSV, where a record starts. Quote parity can be fooled
    (a stray quote inside an unquoted field), so the caller must check that reading from the start
    reaches a record boundary exactly there before using the second half.
    """
    if codecs.lookup(encoding).name not in SPLITTABLE_ENCODINGS:
        return None
    size = path.stat().st_size
    target = int(size * fraction)
    quotes = newlines = returns = pairs = 0
    previous = b""
    with path.open("rb") as handle:
        done = 0
        while done < target:  # the counts before `target`, a chunk at a time
            chunk = handle.read(min(CHUNK_BYTES, target - done))
            if not chunk:
                return None
            quotes += chunk.count(b'"')
            newlines += chunk.count(b"\n")
            returns += chunk.count(b"\r")
            pairs += chunk.count(b"\r\n") + (previous == b"\r" and chunk[:1] == b"\n")
            previous = chunk[-1:]
            done += len(chunk)
        window = handle.read(4 * CHUNK_BYTES)  # the boundary must come soon after `target`
    position = 0
    while (found := window.find(b"\n", position)) >= 0:
        after = found + 1
        segment = window[position:after]
        quotes += segment.count(b'"')
        newlines += 1
        returns += segment.count(b"\r")
        pairs += segment.count(b"\r\n") + (position == 0 and previous == b"\r" and segment[:1] == b"\n")
        position = after
        if quotes % 2 == 0 and after < len(window) and window[after : after + 1] not in (b"\r", b"\n"):
            return target + after, newlines + returns - pairs
    return None


def jsonl_records(path: Path, encoding: str) -> Iterator[tuple[int, object, tuple | None]]:
    with _open_text(path, encoding) as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                yield number, json.loads(text), None
            except json.JSONDecodeError as exc:
                yield number, text.rstrip("\r\n"), ("invalid_json", f"invalid JSON line ({exc.msg}: column {exc.colno})")


def load_json(path: Path, encoding: str) -> tuple[object, tuple | None, int]:
    """The parsed document, or (None, problem, line) when it is not valid JSON."""
    with _open_text(path, encoding) as handle:
        text = handle.read()
    try:
        return json.loads(text), None, 0
    except json.JSONDecodeError as exc:
        return None, ("invalid_json", f"invalid JSON document ({exc.msg}: line {exc.lineno} column {exc.colno})"), exc.lineno


def split_path(dotted: str) -> list:
    return [int(part) if part.lstrip("-").isdigit() else part for part in dotted.split(".") if part != ""]


def get_path(value, parts: list):
    """Walk a dotted path through dicts and lists; MISSING when any step is absent."""
    for part in parts:
        if isinstance(value, dict):
            value = value.get(part if isinstance(part, str) else str(part), MISSING)
        elif isinstance(value, list) and isinstance(part, int):
            value = value[part] if -len(value) <= part < len(value) else MISSING
        else:
            return MISSING
        if value is MISSING:
            return MISSING
    return value


def json_records(document, dotted: str | None, path: Path, records_as: str = "list",
                 key_field: str = "key") -> Iterator[tuple[str, object, tuple | None]]:
    """Yield (JSON path, record, None) for each record at `dotted` (the document itself when unset):
    each item of a list (`records_as: list`), each value of a mapping with its key added as `key_field`
    (`mapping`: `{"dlg-1": {...}, "dlg-2": {...}}`), or the one object there (`record`: a file per ticket)."""
    items = document if not dotted else get_path(document, split_path(dotted))
    where = f"`{dotted}`" if dotted else "the top level"
    keys = f" (top-level keys: {', '.join(map(str, list(document)[:12]))})" if isinstance(document, dict) else ""
    prefix = dotted or ""
    if records_as == "record":
        if not isinstance(items, dict):
            raise KitError(f"{path}: no object at {where}; fix the template's `records` path or `records_as`")
        yield prefix or "$", items, None
        return
    if records_as == "mapping":
        if not isinstance(items, dict):
            raise KitError(f"{path}: no mapping of records at {where}{keys}; fix the template's `records` path or "
                           "`records_as`")
        for key, item in items.items():
            # the key is available as a field (a record that is not an object is kept as `value`)
            record = {**item, key_field: key} if isinstance(item, dict) else {"value": item, key_field: key}
            yield f"{prefix}[{json.dumps(key, ensure_ascii=False)}]", record, None
        return
    if not isinstance(items, list):
        hint = (" or set `records_as: mapping` (records keyed by id) or `record` (one record)" if isinstance(items, dict)
                else " or set `records_as: record` (the file is one record)" if isinstance(document, dict) else "")
        raise KitError(f"{path}: no list of records at {where}{keys}; fix the template's `records` path{hint}")
    for index, item in enumerate(items):
        yield f"{prefix}[{index}]", item, None


def getter(field: str, header: list[str] | None) -> Callable:
    """A function row -> value for a CSV column name (header given) or a dotted JSON path."""
    if header is not None:
        return operator.itemgetter(header.index(field))
    parts = split_path(field)
    if len(parts) == 1 and isinstance(parts[0], str):
        key = parts[0]
        return lambda row: row.get(key, MISSING) if isinstance(row, dict) else MISSING
    return lambda row: get_path(row, parts)


def read_users(path: Path, table, declared_encoding: str = "auto") -> list:
    """Rows of a separate users file (CSV, JSON or JSONL) as dicts."""
    if not path.is_file():
        raise KitError(f"data.sources[].users: {path} not found; point it at the users export")
    encoding = detect_encoding(path, declared_encoding)
    suffix = path.suffix.lower()
    if suffix in (".json",):
        document, problem, _ = load_json(path, encoding)
        if problem:
            raise KitError(f"data.sources[].users: {path}: {problem[1]}")
        items = get_path(document, split_path(table.path)) if table.path else document
        if not isinstance(items, list):
            raise KitError(f"data.sources[].users: {path}: no list of users; set the template's users.path")
        return items
    if suffix in (".jsonl", ".ndjson"):
        return [row for _, row, problem in jsonl_records(path, encoding) if problem is None]
    header, delimiter = csv_header(path, encoding, "auto")
    return [dict(zip(header, row)) for _, row, problem in csv_records(path, encoding, delimiter) if problem is None]
