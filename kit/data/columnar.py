"""Phase 1 for large CSV message exports, a column at a time: pyarrow parses, numpy groups and sorts.

`read_messages(reader)` gives exactly what `Reader.messages` (kit/data/convert.py) gives (the same conversations in the same
order, the same rejects, record and line numbers, names and record count), in well under half the
time on a big ticket export, or None when the file is outside what it can match exactly; then the
caller reads the file record by record as before. It declines:
- encodings other than the byte-compatible ones (UTF-16), and templates without a role column;
- files that pyarrow cannot split into rows of the header's width (a broken row: its reject needs
  Python's reading);
- files with a row whose every field is empty (pyarrow cannot tell it from a blank line, which is
  layout, not a record);
Otherwise pyarrow and Python's `csv` give the same fields (LF, CRLF or lone-CR line ends, quoted
fields over several lines, stray quotes), and a record's first line is counted as `csv` counts it;
`tests/test_data_columnar.py` checks both on generated messy CSV.

Per-value rules run once per distinct value (roles, exclusion rules, conversation ids, metadata);
timestamps in the plain ISO form `YYYY-MM-DDTHH:MM:SS` are read by numpy, any other value by the
reader's own parser.
"""

from __future__ import annotations

import codecs

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from kit.data import read
from kit.data.conversation import Groups

_TIME_LAYOUT = b"0000-00-00T00:00:00"  # digits where 0, the separators as they must be (T or a space)
_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def read_messages(reader):
    """`reader.messages()`'s `Groups`, read by columns; None (and the reader unchanged) when declined."""
    source = reader.source
    data, source.data = source.data, None  # (the bytes `Source` read, if any: freed once parsed)
    if reader.get_role is None or source.header is None or codecs.lookup(source.encoding).name not in read.SPLITTABLE_ENCODINGS:
        return None
    data = data or source.path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    if codecs.lookup(source.encoding).name not in ("utf-8", "utf-8-sig", "ascii") and not data.isascii():
        data = data.decode(source.encoding).encode("utf-8")  # the same bytes for " , CR and LF
    width = len(source.header)
    names = [f"c{i}" for i in range(width)]
    try:
        table = pcsv.read_csv(
            pa.BufferReader(data),
            read_options=pcsv.ReadOptions(column_names=names, block_size=16 << 20),
            parse_options=pcsv.ParseOptions(delimiter=source.delimiter, quote_char='"', double_quote=True,
                                            escape_char=False, newlines_in_values=True, ignore_empty_lines=False),
            convert_options=pcsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()),
                                                strings_can_be_null=False, quoted_strings_can_be_null=False),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # a row of another width, a row too long...
        return None
    del data
    if table.num_rows < 2 or [value.strip() for value in table.slice(0, 1).to_pylist()[0].values()] != source.header:
        return None
    columns = table.columns
    # A row whose every field is empty: a blank line (layout) or an empty record (a reject); pyarrow
    # gives both the same way.
    suspects = None
    for column in columns:
        blank = pc.equal(pc.binary_length(column), 0)
        suspects = blank if suspects is None else pc.and_(suspects, blank)
        if not pc.any(suspects).as_py():
            break
    else:
        return None
    # The lines each record spans, as Python's csv counts them: a line ends at LF, CRLF or a lone CR.
    breaks = sum(np.concatenate([_line_breaks(chunk) for chunk in column.chunks]) for column in columns)
    lines_per_row = breaks + 1
    lines = (np.cumsum(lines_per_row) - lines_per_row + 1)[1:]  # each record's first line (the header's is 1)
    return _group(reader, [column.slice(1) for column in columns], lines, table.num_rows - 1)


def _line_breaks(column) -> np.ndarray:
    """For each value of a string array, its line breaks as Python's csv counts them (LF, CRLF, lone CR),
    found in the raw bytes at once rather than value by value."""
    counts = np.zeros(len(column), dtype=np.int64)
    if column.buffers()[2] is None:
        return counts
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int32, count=len(column) + 1, offset=column.offset * 4)
    data = np.frombuffer(column.buffers()[2], dtype=np.uint8)[: offsets[-1]]
    ends = np.flatnonzero(data == 10)  # LF
    returns = np.flatnonzero(data == 13)
    if len(returns):  # a CR followed by an LF in the same value is one break with it
        rows = np.searchsorted(offsets, returns, side="right") - 1
        after = returns + 1
        paired = (after < offsets[rows + 1]) & (data[np.minimum(after, len(data) - 1)] == 10)
        ends = np.concatenate((ends, returns[~paired]))
    ends = ends[ends >= offsets[0]]
    counts += np.bincount(np.searchsorted(offsets, ends, side="right") - 1, minlength=len(column))[: len(column)]
    return counts


class ColumnGroups:
    """`Groups` kept as arrays: conversation i's messages are the records `rows[starts[i]:starts[i + 1]]`
    (indices into the columns, in order). Slicing gives a `Groups` of lists, so each assembly process
    makes the lists of its own part only."""

    def __init__(self, keys: list, metadata: list, starts: list, rows, roles, texts, lines):
        self.keys, self.metadata, self.starts = keys, metadata, starts
        self.rows, self.roles, self.texts, self.lines = rows, roles, texts, lines

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, part: slice) -> Groups:
        first, last = part.start or 0, len(self.keys) if part.stop is None else part.stop
        lo, hi = self.starts[first], self.starts[last]
        rows = self.rows[lo:hi]
        return Groups(self.keys[first:last], self.metadata[first:last], [s - lo for s in self.starts[first : last + 1]],
                      (rows + 1).tolist(), self.roles[rows].tolist(), self.texts[rows].tolist(),
                      self.lines[rows].tolist())

    def sizes(self) -> list[int]:
        return [b - a for a, b in zip(self.starts, self.starts[1:])]


def _codes(column):
    """(distinct values in order of first appearance, each row's index into them)."""
    distinct = pc.unique(column)
    return distinct.to_pylist(), pc.index_in(column, value_set=distinct).to_numpy()


def _column(reader, name: str | None, columns: list):
    if name is None or name not in reader.source.header:
        return None
    return columns[reader.source.header.index(name)]


def _group(reader, columns: list, lines, n: int):
    source = reader.source
    fields = source.template.fields
    text_column = _column(reader, fields.text, columns)

    # 0: a message; else the reject (code, reason) at status - 1 in `problems`.
    status = np.zeros(n, dtype=np.int64)
    problems: list[tuple[str, str]] = []

    def mark(rows, code: str, reason: str) -> None:
        rows = rows & (status == 0)
        if rows.any():
            problems.append((code, reason))
            status[rows] = len(problems)

    for (_, values, pattern, reason, keep, _), (rule, _) in zip(reader.exclude, reader.filter_rules):
        column = _column(reader, rule.field, columns)  # (the source checked that the column exists)
        distinct, codes = _codes(column)
        hits = np.array([bool((values is not None and value.strip().lower() in values)
                              or (pattern is not None and pattern.search(value.strip()))) for value in distinct], dtype=bool)
        mark(~hits[codes] if keep else hits[codes], "excluded", reason)

    distinct, codes = _codes(_column(reader, fields.role, columns))
    role_names: list[str] = []
    role_ids = np.zeros(len(distinct), dtype=np.int64)
    for index, value in enumerate(distinct):
        role, problem = reader.role_of_value(value)
        if problem is not None:
            problem_rows = codes == index
            mark(problem_rows, *problem)
            continue
        if role not in role_names:
            role_names.append(role)
        role_ids[index] = role_names.index(role)
    roles = role_ids[codes]

    times = np.arange(1, n + 1, dtype=np.float64)  # without a timestamp column, a message's time is its number
    time_column = _column(reader, fields.timestamp, columns)
    if time_column is not None:
        parsed = iso_seconds(time_column) if reader.iso_times else None
        if parsed is None:
            parsed = (np.zeros(n), np.zeros(n, dtype=bool))
        times, done = parsed
        moment_of = reader.moment_of
        rows = np.flatnonzero(~done & (status == 0))
        values = time_column.to_pylist() if len(rows) else []
        for row in rows.tolist():
            value = values[row]
            moment = moment_of(value)
            if moment is None:
                reason = f"unreadable timestamp {value!r}" if value.strip() else "missing timestamp"
                problems.append(("bad_timestamp", reason))
                status[row] = len(problems)
            else:
                times[row] = moment

    column = _column(reader, fields.conversation, columns)
    distinct = pc.unique(column)
    codes = pc.index_in(column, value_set=distinct).to_numpy()
    if pc.any(pc.match_substring_regex(distinct, r"^$|^ | $|\.0$")).as_py():  # ids the reader would tidy up
        keys = [key if key and key[0] != " " and key[-1] != " " and key[-2:] != ".0" else read.id_of(key)
                for key in distinct.to_pylist()]
        empty_keys = np.array([not key for key in keys], dtype=bool)
        mark(empty_keys[codes], "missing_field", f"missing field {fields.conversation!r}")
        canonical: dict[str, int] = {}
        codes = np.array([canonical.setdefault(key, len(canonical)) for key in keys], dtype=np.int64)[codes]
        keys = list(canonical)
    else:  # each distinct value is an id as it is
        keys = distinct.to_pylist()

    kept = np.flatnonzero(status == 0)

    # Conversations in order of their first message; a conversation's messages by time, then record.
    key_ids = codes[kept]
    _, first = np.unique(key_ids, return_index=True)  # each conversation's first message (as an index of `kept`)
    rank = np.empty(len(keys), dtype=np.int64)
    used = key_ids[np.sort(first)]
    rank[used] = np.arange(len(used))
    ranks = rank[key_ids]
    sort = np.lexsort((times[kept], ranks))
    order = kept[sort]
    bounds = np.flatnonzero(np.diff(ranks[sort])) + 1
    unordered = np.isnan(times[order])
    if unordered.any():  # "nan" read as a time: the order is Python's sort of such a conversation, not numpy's
        edges = np.concatenate(([0], bounds, [len(order)]))
        for group in np.unique(np.searchsorted(edges, np.flatnonzero(unordered), side="right") - 1).tolist():
            start, end = int(edges[group]), int(edges[group + 1])
            messages = [[time, row] for row, time in zip(np.sort(order[start:end]).tolist(), times[np.sort(order[start:end])].tolist())]
            messages.sort()  # as `Groups.of` sorts [time, number, ...], the group in file order
            order[start:end] = [row for _, row in messages]
    firsts = np.sort(first)
    groups = ColumnGroups(
        keys=[keys[key] for key in key_ids[firsts].tolist()],
        metadata=_metadata(reader, columns, kept[firsts]),  # from each conversation's first record
        starts=[0, *bounds.tolist(), len(order)] if len(order) else [0],
        rows=order, roles=np.array(role_names or [None], dtype=object)[roles],
        texts=np.array(text_column.to_pylist(), dtype=object), lines=lines,
    )

    # Nothing declined: now the reader's state changes. Rejects in record order, as one pass gives them.
    rejected = np.flatnonzero(status)
    for row, text in zip(rejected.tolist(), groups.texts[rejected].tolist()):
        code, reason = problems[status[row] - 1]
        reader.reject(row + 1, int(lines[row]), code, reason, raw=text)
    for name in fields.names:  # people's names, from every record
        column = _column(reader, name, columns)
        if column is not None:
            reader.names_seen.update(pc.unique(column).to_pylist())
    reader.result.input += n
    return groups


def _metadata(reader, columns: list, rows) -> list[dict]:
    """`reader.metadata_of` for each conversation's first record: each field's distinct values cleaned
    once, each distinct combination of them made into a dict once (and copied per conversation)."""
    fields = []  # (key, cleaned distinct values, index of each row's value)
    combination = np.zeros(len(rows), dtype=np.int64)
    for key, path in reader.source.template.metadata_fields().items():
        column = _column(reader, path, columns)
        if column is None:
            continue
        distinct, codes = _codes(column.take(rows))
        fields.append((key, [reader.metadata_value(key, value) for value in distinct], codes))
        # (renumbered after each field, so that the number stays below the number of rows)
        combination = np.unique(combination * len(distinct) + codes, return_inverse=True)[1].reshape(-1)
    _, first, combination = np.unique(combination, return_index=True, return_inverse=True)
    made = []
    for row in first.tolist():
        made.append({key: values[codes[row]] for key, values, codes in fields if values[codes[row]]})
    return [dict(made[i]) for i in combination.reshape(-1).tolist()]


def iso_seconds(column):
    """(seconds since the epoch, which rows were read) for values in the exact form YYYY-MM-DDTHH:MM:SS
    (or with a space for T) with a valid date and time: what `datetime.fromisoformat` gives them. Other
    rows are left to the caller."""
    n = len(column)
    done = np.zeros(n, dtype=bool)
    seconds = np.zeros(n, dtype=np.float64)
    size = len(_TIME_LAYOUT)
    rows = np.flatnonzero(pc.binary_length(column).to_numpy() == size)
    if not len(rows):
        return seconds, done
    fixed = (column.take(rows) if len(rows) < n else column).combine_chunks()
    offsets = np.frombuffer(fixed.buffers()[1], dtype=np.int32, count=len(fixed) + 1, offset=fixed.offset * 4)
    raw = np.frombuffer(fixed.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]].reshape(-1, size)
    columns = np.ascontiguousarray(raw.T)  # one row per character position: fast whole-array steps
    ok = np.ones(len(rows), dtype=bool)
    digits = {}
    for position, expected in enumerate(_TIME_LAYOUT):
        if expected == ord("0"):
            digits[position] = columns[position] - np.uint8(ord("0"))  # 0 to 9, or wrapped above
            ok &= digits[position] <= 9
        elif position == 10:
            ok &= (columns[position] == ord("T")) | (columns[position] == ord(" "))
        else:
            ok &= columns[position] == expected

    def number(start: int, end: int):
        total = digits[start].astype(np.int64)
        for position in range(start + 1, end):
            total = total * 10 + digits[position]
        return total

    year, month, day = number(0, 4), number(5, 7), number(8, 10)
    hour, minute, second = number(11, 13), number(14, 16), number(17, 19)
    leap = ((year % 4 == 0) & (year % 100 != 0)) | (year % 400 == 0)
    month_days = np.array((0, *_MONTH_DAYS), dtype=np.int64)[np.clip(month, 0, 12)] + (leap & (month == 2))
    ok &= (year >= 1) & (month >= 1) & (month <= 12) & (day >= 1) & (day <= month_days)
    ok &= (hour <= 23) & (minute <= 59) & (second <= 59)
    # Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
    y = year - (month <= 2)
    era = np.floor_divide(y, 400)
    yoe = y - era * 400
    doy = (153 * (month + np.where(month > 2, -3, 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    days = era * 146097 + doe - 719468
    seconds[rows] = (days * 86400 + hour * 3600 + minute * 60 + second).astype(np.float64)
    done[rows] = ok
    return seconds, done
