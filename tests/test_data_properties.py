"""Accounting, property-tested on generated messy inputs for every reader and shape:
input records = kept + rejected + duplicates, and every record number lands in exactly one place."""

import csv
import io
import json
import tempfile
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

# Hypothesis keeps caches in .hypothesis/; keep them out of the working tree.
set_hypothesis_home_dir(str(Path(tempfile.gettempdir()) / "kit-hypothesis"))

from kit import data
from kit.data.convert import Settings

# database=None: failures print their example instead of storing it.
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)

# Text with the things that break converters: quotes, delimiters, newlines, HTML, unicode, emails.
pieces = st.sampled_from(["hi", "Hello", "order", "BL-1234", '"', "'", ",", ";", "\t", "\n", "\r\n", "  ", "<p>", "</p>",
                          "&amp;", "é", "😀", "> quoted", "On Mon wrote:", "Best regards,", "jo@example.com", "\u00a0",
                          "out of office", "4111 1111 1111 1111", "+1 415 555 2671", ""])
texts = st.lists(pieces, max_size=6).map("".join)
roles = st.sampled_from(["customer", "agent", "bot", "Customer ", "AGENT", "narrator", ""])
times = st.sampled_from(["2026-03-01T10:00:00", "2026-03-01T10:05:00", "2026-03-01 09:00", "1772000000", "yesterday", "",
                         "2026-03-01T10:00:00+02:00"])
tickets = st.sampled_from(["T1", "T2", "T3", " T1", "", "T4"])


def account(result, extra_check=None):
    assert result.input == result.kept + result.rejected + result.duplicates
    seen = Counter()
    for conversation in result.conversations:
        seen.update((conversation.source["file"], n) for n in conversation.source["records"])
    seen.update((r["file"], r["record"]) for r in result.rejects)
    files = {f for f, _ in seen}
    expected = Counter()
    for source in result.sources:
        expected.update((source["file"], n) for n in range(1, source["records"] + 1))
    assert seen == expected, "every record exactly once, in a conversation or in the rejects"
    assert sum(s["records"] for s in result.sources) == result.input
    assert files <= {s["file"] for s in result.sources}


def run(path: Path, template, **kw):
    return data.convert([(str(path), template, "t")], None, Settings(**kw))


MESSAGES_CSV = data.Template(
    description="t", reader="csv", shape="messages",
    fields=data.TemplateFields(conversation="ticket", timestamp="time", role="who", text="body"),
    roles={"customer": "user", "agent": "assistant", "bot": "bot"},
)


@SETTINGS
@given(rows=st.lists(st.one_of(
    st.tuples(tickets, times, roles, texts).map(list),
    st.lists(texts, max_size=6),  # wrong column counts, empty rows
), max_size=25), garbage=st.sampled_from(["", '\n"unclosed,quote\n', "\n\n", "\x00,\x00\n"]),
    dedup=st.sampled_from(["none", "normalized", "near"]), encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16"]))
def test_csv_message_rows(rows, garbage, dedup, encoding):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["ticket", "time", "who", "body"])
    writer.writerows(rows[: len(rows) // 2])
    buffer.write(garbage)
    writer.writerows(rows[len(rows) // 2 :])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "export.csv"
        path.write_bytes(buffer.getvalue().encode(encoding))
        result = run(path, MESSAGES_CSV, dedup=dedup)
        account(result)
        with path.open(encoding=encoding, newline="") as handle:
            assert result.input == sum(1 for row in list(csv.reader(handle))[1:] if row)


QA_CSV = data.Template(description="t", reader="csv", fields=data.TemplateFields(question="q", answer="a", metadata=["cat"]))


@SETTINGS
@given(rows=st.lists(st.lists(texts, min_size=1, max_size=4), max_size=30), delimiter=st.sampled_from([",", ";", "\t", "|"]))
def test_csv_qa_rows(rows, delimiter):
    rows = rows + rows[:3]  # exact duplicates too
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter)
    writer.writerow(["q", "a", "cat"])
    writer.writerows(rows)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "qa.csv"
        path.write_text(buffer.getvalue(), encoding="utf-8")
        account(run(path, QA_CSV.model_copy(update={"delimiter": delimiter})))


QA_JSONL = data.Template(description="t", reader="jsonl", fields=data.TemplateFields(question="q.text", answer="a", metadata=["intent"]))
json_values = st.one_of(texts, st.integers(), st.none(), st.booleans(), st.lists(st.integers(), max_size=2))
jsonl_lines = st.one_of(
    st.fixed_dictionaries({"q": st.fixed_dictionaries({"text": json_values}), "a": json_values, "intent": json_values}).map(json.dumps),
    st.dictionaries(st.sampled_from(["q", "a", "x"]), json_values, max_size=3).map(json.dumps),
    st.sampled_from(['{"q": ', "[1, 2]", "null", '"text"', "", "   ", "{'single': 'quotes'}"]),
)


@SETTINGS
@given(lines=st.lists(jsonl_lines, max_size=30))
def test_jsonl_qa_lines(lines):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "qa.jsonl"
        path.write_text("\n".join(lines + lines[:2]) + "\n", encoding="utf-8")
        result = run(path, QA_JSONL)
        account(result)
        assert result.input == sum(1 for line in lines + lines[:2] if line.strip())


NESTED_JSON = data.Template(
    description="t", reader="json", records="tickets", messages="comments", shape="messages",
    fields=data.TemplateFields(conversation="id", role="0", text="1", metadata=["tags"], names=["requester"]),
    roles={"customer": "user", "agent": "assistant", "note": "drop"},
)
turns = st.one_of(st.tuples(st.sampled_from(["customer", "agent", "note", "x"]), texts).map(list),
                  st.lists(json_values, max_size=3), json_values)
tickets_json = st.fixed_dictionaries(
    {"id": st.one_of(st.integers(0, 5), st.sampled_from(["a", "", None])),
     "comments": st.one_of(st.lists(turns, max_size=6), json_values)},
    optional={"tags": st.lists(texts, max_size=2), "requester": st.sampled_from(["Dana Reyes", "", None])},
)


@SETTINGS
@given(items=st.lists(st.one_of(tickets_json, json_values), max_size=12), broken=st.booleans())
def test_nested_json_documents(items, broken):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "export.json"
        text = json.dumps({"tickets": items})
        path.write_text(text[:-2] if broken and len(text) > 20 else text, encoding="utf-8")
        result = run(path, NESTED_JSON)
        account(result)
        if broken and len(text) > 20:
            assert result.input == 1 and result.rejects[0]["code"] == "invalid_json"
        else:  # one record per message; a ticket without a usable list of messages is one record too
            assert result.input == sum(
                len(item["comments"]) if isinstance(item, dict) and isinstance(item.get("comments"), list) and item["comments"]
                else 1 for item in items)
        assert "Dana" not in json.dumps([c.row() for c in result.conversations])


THREADS = data.Template(
    description="t", reader="csv", shape="reply_threads",
    fields=data.TemplateFields(message_id="id", reply_to="parent", replies="children", role="inbound", text="text",
                               timestamp="time"),
    roles={"true": "user", "false": "assistant"},
)
ids = st.sampled_from(["1", "2", "3", "4", "5", "6", "2.0", "", "99"])


@SETTINGS
@given(rows=st.lists(st.tuples(ids, ids, st.sampled_from(["", "3", "4,5", "1"]), st.sampled_from(["True", "False", "maybe"]),
                               texts, times).map(list), max_size=20))
def test_reply_threads_with_orphans_cycles_and_duplicate_ids(rows):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "posts.csv"
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "parent", "children", "inbound", "text", "time"])
            writer.writerows(rows)
        result = run(path, THREADS)
        account(result)
        assert result.threads["orphans"] >= result.threads["broken_threads"] >= 0


# Fragments that trip each cleaning rule's gate (and the batch separator, NUL), for the batched cleaner.
rule_pieces = st.sampled_from(["Hi", "thanks", "I am", "i am ", "AUTO", "Auto-Reply", "out of office", " ", "  ", "\t", "\n", "\r", "\x00",
                               ":", ">", "<b>", "&amp;", "-----", "____", "Sent from my phone", "Get Outlook for iOS",
                               "On Mon, Jo wrote:", "-- ", "\n\nBest regards,\nJo", "\u00a0", "\u200b", "é", "İ", "Σ"])


@SETTINGS
@given(st.lists(st.lists(rule_pieces, max_size=8).map("".join), max_size=12))
def test_batched_cleaning_equals_one_text_at_a_time(batch):
    from kit.data.clean import DEFAULT_AUTO_REPLY_PATTERNS, Cleaner, Rules

    for rules in (Rules(), Rules(auto_reply_patterns=(r"\bthanks\b",)), Rules(remove_patterns=(r"Jo",))):
        cleaner = Cleaner(rules)
        assert cleaner.clean_many(batch) == [cleaner.clean(text) for text in batch]
        assert cleaner.auto_replies(batch) == [cleaner.is_auto_reply(text) for text in batch]
    assert Rules().auto_reply_patterns == DEFAULT_AUTO_REPLY_PATTERNS


def _reference_normalized_key(messages):
    """The normalised dedup key as first written: a hash of role and normalised text per message."""
    import hashlib

    from kit.data.dedup import normalize

    return hashlib.blake2b("".join(f"{m['role']}\x1f{normalize(m['content'])}\x1e" for m in messages).encode()).digest()


dedup_pieces = st.sampled_from(["Hi", "hi", "HI!", " ", "  ", ",", "\n", "\x01", "\x02", "user", "é", "É", "ß", "—", "Σ",
                                "2", "x_y", "’", "\u00a0", "ok."])
dedup_messages = st.lists(st.tuples(st.sampled_from(["user", "assistant", "system", "User"]),
                                    st.lists(dedup_pieces, max_size=5).map("".join)), min_size=1, max_size=3)


@SETTINGS
@given(dedup_messages, dedup_messages)
def test_normalized_key_equality_is_unchanged(first, second):
    from kit.data.dedup import normalized_key

    a = [{"role": r, "content": c} for r, c in first]
    b = [{"role": r, "content": c} for r, c in second]
    assert (normalized_key(a) == normalized_key(b)) == (_reference_normalized_key(a) == _reference_normalized_key(b))
    assert normalized_key(a) == normalized_key([dict(m) for m in a])
    # Variants that normalise the same (mostly): case, spacing and punctuation around and inside.
    for variant in ([{"role": m["role"], "content": f" {m['content'].upper()}! "} for m in a],
                    [{"role": m["role"], "content": m["content"].replace(" ", " , ")} for m in a]):
        assert (normalized_key(a) == normalized_key(variant)) == (
            _reference_normalized_key(a) == _reference_normalized_key(variant))


@SETTINGS
@given(st.lists(dedup_messages, max_size=8), st.sampled_from(["", "\x03", "a\x03b"]))
def test_normalized_keys_of_a_batch_are_each_conversations_key(conversations, extra):
    """The batch (ASCII conversations normalised together) gives exactly `normalized_key` of each one."""
    from kit.data.dedup import normalized_key, normalized_keys

    batch = [[{"role": r, "content": c} for r, c in messages] for messages in conversations]
    if batch and extra:  # the batch separator inside a text
        batch[0][0]["content"] += extra
    assert normalized_keys(batch) == [normalized_key(messages) for messages in batch]


# The template features of the second release: records in a mapping, text as a list of parts or from two
# fields, keep / exclude on the conversation's record with typed values, CSV rows with extra fields joined.
MAPPING_JSON = data.Template(
    description="t", reader="json", records_as="mapping", key_field="cid", messages="turns", shape="messages",
    fields=data.TemplateFields(conversation="cid", role="who", text=["subject", "body"], metadata=["csat"]),
    roles={"customer": "user", "agent": "assistant", True: "assistant", 0: "user"},
    keep=[{"field": "csat", "equals": [4, 5], "level": "conversation"}],
    exclude=[{"field": "public", "equals": [False]}],
)
values = st.sampled_from([None, True, False, 0, 1, 4, 5, 4.0, "5", "", "x"])
turn = st.fixed_dictionaries({"who": st.sampled_from(["customer", "agent", True, 0, None, "narrator"])},
                             optional={"subject": texts, "body": st.one_of(texts, st.lists(texts, max_size=3), values),
                                       "public": values})
dialogue = st.fixed_dictionaries({"csat": values}, optional={"turns": st.one_of(st.lists(turn, max_size=5), values)})


@SETTINGS
@given(document=st.dictionaries(st.sampled_from(["d1", "d2", "d3", "", "d 4"]), st.one_of(dialogue, values), max_size=4),
       dedup=st.sampled_from(["none", "normalized"]))
def test_json_mapping_with_typed_filters_and_joined_text(document, dedup):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "export.json"
        path.write_text(json.dumps(document))
        try:
            result = run(path, MAPPING_JSON, dedup=dedup)
        except data.KitError as exc:  # a rule's field in no record: loud, never silent
            assert "occurs in none of the" in str(exc)
            return
        account(result)


LOOSE_CSV = data.Template(
    description="t", reader="csv", csv_extra_fields="join", shape="messages",
    fields=data.TemplateFields(conversation="ticket", timestamp="time", role="who", text="body"),
    roles={"customer": "user", "agent": "assistant"},
)


@SETTINGS
@given(rows=st.lists(st.lists(st.one_of(tickets, times, roles, texts), min_size=1, max_size=7), max_size=20))
def test_csv_rows_with_extra_fields_joined(rows):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "export.csv"
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["ticket", "time", "who", "body"])
            writer.writerows(rows)
        result = run(path, LOOSE_CSV)
        account(result)
        joined = result.sources[0].get("joined_rows", 0)
        with path.open(encoding="utf-8", newline="") as handle:
            assert joined == sum(1 for row in list(csv.reader(handle))[1:] if len(row) > 4 and any(row))
