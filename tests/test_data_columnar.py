"""Reading CSV message exports by columns (`kit.data.columnar`) gives exactly what reading them record by
record gives: the same conversations, messages, record and line numbers, rejects and names; or it
declines and leaves the reader as it was."""

import csv
import io
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

set_hypothesis_home_dir(str(Path(tempfile.gettempdir()) / "kit-hypothesis"))

import importlib

from kit import data
from kit.data import columnar
from kit.data.clean import resolve_rules
from kit.data.conversation import Groups
from kit.data.convert import Conversion, Reader, Settings, Source

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
TEMPLATE = data.load_template("ticket_threads_csv")
HEADER = ["ticket_id", "created_at", "author_role", "author_name", "visibility", "category", "subject", "body"]

# Cells that break CSV readers and the per-value rules: quotes, delimiters, line ends of every kind.
pieces = st.sampled_from(["hi", "Order", '"', '""', ",", "\n", "\r\n", "\r", " ", "é", "😀", "> quoted", "Best,\nJo", ""])
cells = st.lists(pieces, max_size=4).map("".join)
tickets = st.sampled_from(["T1", "T2", " T3", "T3", "7.0", "7", "", "t1"])
times = st.sampled_from(["2026-03-01T10:00:00", "2026-03-01 10:00:05", "2026-02-29T10:00:00", "2024-02-29T23:59:59",
                         "2026-13-01T10:00:00", "2026-03-01T24:00:00", "2026-03-01T10:00:60", "0000-01-01T00:00:00",
                         "2026-03-01T10:00", "2026-03-01T10:00:00Z", "1772000000", "nan", "", " ", "yesterday",
                         "2026-03-01x10:00:00", "1969-12-31T23:59:59"])
roles = st.sampled_from(["customer", "agent", "Agent ", "bot", "requester", "narrator", ""])
visibility = st.sampled_from(["public", "internal", " Private", "note", ""])
rows = st.lists(st.tuples(tickets, times, roles, cells, visibility, st.sampled_from(["billing", " a | b ", ""]), cells, cells),
                min_size=1, max_size=12)


def _source(path: Path) -> Source:
    return Source(str(path), TEMPLATE, "ticket_threads_csv", None)


def _read(path: Path, by_columns: bool):
    source = _source(path)
    reader = Reader(Conversion(), source, resolve_rules(TEMPLATE.rules, None))
    groups = columnar.read_messages(reader) if by_columns else reader.messages()
    return groups, reader


def _same(path: Path) -> bool:
    """Whether the columnar reading was used (it must then match the record-by-record one exactly)."""
    expected, slow = _read(path, False)
    groups, fast = _read(path, True)
    if groups is None:
        assert (fast.rejects, fast.names_seen, fast.result.input) == ([], set(), 0), "a declined reading changes nothing"
        return False
    groups = groups[:]  # the lists, as assembly takes them
    for name in Groups.__slots__:
        assert getattr(groups, name) == getattr(expected, name), name
    assert fast.rejects == slow.rejects
    assert fast.names_seen == slow.names_seen
    assert fast.result.input == slow.result.input
    return True


def _write(path: Path, records, line_end: str = "\r\n", blank_line: bool = False, quote_all: bool = False) -> None:
    buffer = io.StringIO()
    # (csv quotes a field only for the characters of its own line end: with LF, a CR stays bare and
    # splits the row when read back, a broken row; quote_all keeps every row whole)
    writer = csv.writer(buffer, lineterminator=line_end, quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL)
    writer.writerow(HEADER)
    for i, (ticket, time, role, text, vis, category, subject, name) in enumerate(records):
        writer.writerow([ticket, time, role, name, vis, category, subject, text])
        if blank_line and i == 0:
            buffer.write(line_end)
    path.write_text(buffer.getvalue(), encoding="utf-8", newline="")


@SETTINGS
@given(records=rows, line_end=st.sampled_from(["\r\n", "\n", "\r"]), blank_line=st.sampled_from([False, False, False, True]),
       quote_all=st.booleans())
def test_columns_match_records_on_messy_csv(tmp_path_factory, records, line_end, blank_line, quote_all):
    path = tmp_path_factory.mktemp("columnar") / "tickets.csv"
    _write(path, records, line_end, blank_line, quote_all)
    USED.append(_same(path))


USED: list[bool] = []


def test_messy_csv_was_mostly_read_by_columns():
    """(after the test above) Most generated files are read by columns, not declined (about four in
    five; the others have blank lines, or rows that CSV splits into the wrong width)."""
    if len(USED) < 50:
        pytest.skip("run with the test above")
    assert sum(USED) > len(USED) / 2, f"{sum(USED)} of {len(USED)}"


def test_columns_are_used_and_match_on_a_ticket_export(tmp_path):
    """The declines above must not hide a reading that never happens: a plain export (CRLF, multi-line
    quoted bodies, internal notes, unknown roles, bad times, rows in any order) is read by columns."""
    records = []
    for i in range(400):
        ticket = f"TK-{i % 37}" if i % 53 else ""
        time = f"2026-03-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:{(7 * i) % 60:02d}" if i % 41 else "soon"
        role = ["customer", "agent", "bot", "Agent", "narrator"][i % 5] if i % 29 else "intern"
        body = f'Hi, "order" {i},\nline two\r\nthree' if i % 3 else f"plain {i}"
        records.append((ticket, time, role, body, "internal" if i % 17 == 0 else "public", "billing", f"S {i % 5}",
                        f"Name {i % 7}"))
    path = tmp_path / "tickets.csv"
    _write(path, records)
    assert _same(path)
    groups, reader = _read(path, True)
    assert len(groups) > 30 and {r["code"] for r in reader.rejects} >= {"excluded", "unknown_role", "bad_timestamp",
                                                                        "missing_field"}


@pytest.mark.parametrize("trouble", ["blank line", "empty record", "wrong width", "lone CR in a body"])
def test_columns_decline_or_match_where_csv_readers_differ(tmp_path, trouble):
    lines = ["ticket_id,created_at,author_role,author_name,visibility,category,subject,body",
             "T1,2026-03-01T10:00:00,customer,Jo,public,c,s,hello",
             "T1,2026-03-01T10:05:00,agent,Al,public,c,s,hi there"]
    if trouble == "blank line":
        lines.insert(2, "")
    elif trouble == "empty record":
        lines.insert(2, ",,,,,,,")
    elif trouble == "wrong width":
        lines.insert(2, "T1,2026-03-01T10:01:00,customer")
    else:
        lines[2] = 'T1,2026-03-01T10:01:00,customer,Jo,public,c,s,"one\rtwo"'
    path = tmp_path / "tickets.csv"
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8", newline="")
    used = _same(path)
    assert used == (trouble == "lone CR in a body")  # the others need Python's reading (blank lines, rejects)


def test_large_exports_are_read_by_columns_with_the_same_dataset(tmp_path, monkeypatch):
    """`convert` takes the columnar reading from COLUMNAR_MIN_BYTES on; the conversion is the same."""
    records = [(f"T{i % 11}", f"2026-03-01T10:{i % 60:02d}:00", ["customer", "agent"][i % 2], f"Message {i}\nthanks",
                "public", "billing", "s", "Jo Ellis") for i in range(120)]
    path = tmp_path / "tickets.csv"
    _write(path, records)
    calls = []
    original = columnar.read_messages
    monkeypatch.setattr(columnar, "read_messages", lambda reader: calls.append(1) or original(reader))

    def run(minimum: int):
        monkeypatch.setattr(importlib.import_module("kit.data.convert"), "COLUMNAR_MIN_BYTES", minimum)
        result = data.convert([(str(path), TEMPLATE, "ticket_threads_csv")], None, Settings(workers=0))
        return result.conversations, result.rejects, result.input

    slow = run(1 << 40)
    assert not calls
    assert run(0) == slow and calls


def test_iso_times_are_read_as_fromisoformat_reads_them():
    import random
    from datetime import datetime, timedelta

    import pyarrow as pa

    rng = random.Random(0)
    epoch = datetime(1970, 1, 1)
    values = [(datetime(1, 1, 1) + timedelta(seconds=rng.randrange(0, 315537897599))).isoformat(sep=rng.choice("T "))
              for _ in range(5000)]
    values += ["2024-02-29T12:00:00", "2023-02-29T12:00:00", "1900-02-29T00:00:00", "2000-02-29T00:00:00",
               "0000-01-01T00:00:00", "2026-04-31T00:00:00", "2026-01-01T23:59:60", "2026-01-01t10:00:00",
               "2026-01-01T1a:00:00", "20260101T10:00:00", "2026-01-01T10:00:0"]
    seconds, done = columnar.iso_seconds(pa.chunked_array([pa.array(values)]))
    for value, read, moment in zip(values, done.tolist(), seconds.tolist()):
        try:
            expected = (datetime.fromisoformat(value) - epoch).total_seconds()
        except ValueError:
            expected = None
        if read:  # what numpy reads, it reads as Python does (the rest is left to Python)
            assert moment == expected, value
        else:
            assert expected is None or len(value) != 19 or value[10] not in "T ", value
    assert sum(done.tolist()) == 5002  # the 5000 and the two real leap days
