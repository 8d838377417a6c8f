"""Reading, cleaning, conversation rules, dedup, splits, augmentation and outputs of kit.data."""

import csv
import importlib
import json
import os
import re
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from kit import data
from kit.data import clean
from kit.data import parallel
from kit.data.convert import Assembler, Reader, Settings
from kit.recipe import DataRules, load_recipe

THREAD_TEMPLATE = {
    "description": "test threads",
    "reader": "csv",
    "shape": "messages",
    "fields": {"conversation": "ticket", "timestamp": "time", "role": "who", "text": "body"},
    "roles": {"customer": "user", "agent": "assistant", "bot": "bot"},
}


def template(tmp_path: Path, **changes) -> tuple[Path, data.Template]:
    tree = {**THREAD_TEMPLATE, **changes}
    path = tmp_path / "threads.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path, data.load_template(str(path))


def write_rows(path: Path, rows: list[list], header=("ticket", "time", "who", "body"), encoding="utf-8") -> Path:
    with path.open("w", newline="", encoding=encoding) as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def convert(tmp_path, rows, rules=None, **template_changes):
    _, tpl = template(tmp_path, **template_changes)
    path = write_rows(tmp_path / "export.csv", rows)
    result = data.convert([(str(path), tpl, "threads")], None, Settings(rules=rules))
    assert result.input == result.kept + result.rejected + result.duplicates
    return result


# -- text rules ------------------------------------------------------------------------------------


def test_html_to_text():
    html = '<div><p>Hi&nbsp;there,</p><ul><li>one</li><li>two &amp; three</li></ul><script>x()</script><br>bye</div>'
    assert clean.normalize_whitespace(clean.html_to_text(html)) == "Hi there,\n\n- one\n- two & three\n\nbye"
    assert clean.html_to_text("a < b and c > d, AT&T") == "a < b and c > d, AT&T"  # not HTML: unchanged
    quoted = "<p>Fixed, thanks</p><blockquote>On Monday you wrote: old text</blockquote>"
    assert clean.html_to_text(quoted).strip() == "Fixed, thanks"
    assert "old text" in clean.html_to_text(quoted, drop_quotes=False)


@pytest.mark.parametrize(
    "text",
    [
        "Works now.\n\nOn Tue, Mar 3, 2026 at 10:12 AM Brightloop <help@brightloop.example> wrote:\n> old\n> older",
        "Works now.\n\nOn Tue, Mar 3, 2026 at 10:12 AM Brightloop Support\n<help@brightloop.example> wrote:\n> old",
        "Works now.\n-----Original Message-----\nFrom: Brightloop\nSent: Monday\nold",
        "Works now.\n\nFrom: Brightloop Support <help@brightloop.example>\nSent: Monday, March 2, 2026 9:14 AM\nold",
        "Works now.\n> quoted line\n>> deeper",
        "Works now.\n\nAm 02.03.2026 um 09:14 schrieb Brightloop:\n> alt",
    ],
)
def test_quoted_replies_are_cut(text):
    assert clean.normalize_whitespace(clean.strip_quoted_replies(text)) == "Works now."


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Your refund is on its way.\n\nBest regards,\nPriya Raman\nBrightloop Support", "Your refund is on its way."),
        ("Your refund is on its way.\nThanks,\nPriya", "Your refund is on its way."),
        ("Your refund is on its way.\n-- \nPriya | Billing\n+1 415 555 2671", "Your refund is on its way."),
        ("Is it shipped?\n\nSent from my iPhone", "Is it shipped?"),
        ("Thanks, that worked!", "Thanks, that worked!"),  # one line: content, not a sign-off
        ("Thanks!", "Thanks!"),
        ("Step 1: unplug it.\nStep 2: wait.\nBest regards do not apply here because this line is long", None),
        # a sign-off before a "--" block
        ("It ships today.\n\nBest regards,\nPriya Raman\n-- \nBrightloop Support | +1 415 555 2671", "It ships today."),
        # short marked sign-offs, on their own line or ending the last one
        ("Please restart the hub.\n-Karthik", "Please restart the hub."),
        ("Please restart the hub.\n\nThanks!\n- Dana", "Please restart the hub."),
        ("Can you DM us your order number? ^AB", "Can you DM us your order number?"),
        ("We have passed this on /AY", "We have passed this on"),
        ("Call 800-252-7522 -Suli", "Call 800-252-7522"),
        ("Sorry about that! *JorgeG", "Sorry about that!"),
        # ... but not lists, bullets, prices or product names
        ("We take:\n- PayPal\n- Apple Pay", None),
        ("Steps:\nUnplug it\n- Wait", None),
        ("The bundle is 5 - Free", None),
        ("I bought the 2-Pack", None),
        ("-Karthik", None),
    ],
)
def test_signatures_and_sign_offs_are_cut(text, expected):
    assert clean.strip_signatures(text).strip() == (expected if expected is not None else text)


def test_auto_replies_default_and_configured():
    cleaner = clean.Cleaner(clean.Rules())
    assert cleaner.is_auto_reply("I am currently out of the office until Monday.")
    assert cleaner.is_auto_reply("This is an automated message: we have received your request.")
    assert not cleaner.is_auto_reply("Sorry for the wait, I checked your order.")
    custom = clean.Cleaner(clean.resolve_rules(DataRules(auto_reply_patterns=[r"^ticket #\d+ created"])))
    assert custom.is_auto_reply("Ticket #123 created") and not custom.is_auto_reply("out of office")
    assert not clean.Cleaner(clean.resolve_rules(DataRules(drop_auto_replies=False))).is_auto_reply("out of office")


@pytest.mark.parametrize("text, automatic", [
    ("Thank you for your email. I am out of the office until Monday 3 March with limited access to email.", True),
    ("Hello,\n\nThanks for your message!\nI am currently on annual leave and will reply when I am back.", True),
    ("Automatic reply: Out of office", True),
    ("Thank you for contacting Brightloop. We have received your request and will reply within one business day.", True),
    # a person mentioning one: the pattern is not where the message starts
    ("I'm out of the office tomorrow, please deliver Friday", False),
    ("Sorry, I was out of the office. Did the refund go through?", False),
    ("I got an auto-reply from you but no answer. We have received your invoice twice.", False),
    ("Thanks for the tracking number! I am away next week, can it wait at the depot?", True),  # (the assembly keeps it mid-conversation)
    ("We have received your request. " + "Here is what I found in your account. " * 20, False),  # a long answer
])
def test_auto_replies_start_with_the_pattern_and_are_short(text, automatic):
    cleaner = clean.Cleaner(clean.Rules())
    assert cleaner.is_auto_reply(text) is automatic
    assert cleaner.auto_replies([text, "Where is my order?"]) == [automatic, False]


def test_auto_replies_are_dropped_and_counted_but_not_a_customer_talking_mid_conversation(tmp_path):
    _, tpl = template(tmp_path)
    ooo = "Thank you for your email. I am out of the office until Monday. For urgent matters call our hotline."
    path = write_rows(tmp_path / "r.csv", [
        ["T1", "2026-03-01T10:00", "customer", "Where is my parcel?"],
        ["T1", "2026-03-01T10:01", "agent", "It is at the depot. Shall we deliver tomorrow?"],
        ["T1", "2026-03-01T10:02", "customer", "I'm out of the office tomorrow, please deliver Friday."],
        ["T1", "2026-03-01T10:03", "agent", "Done: Friday it is."],
        ["T1", "2026-03-01T10:04", "customer", "I am out of the office on Friday too, sorry! Saturday then?"],
        ["T1", "2026-03-01T10:05", "agent", "Saturday it is."],
        ["T2", "2026-03-01T11:00", "customer", "Can I change my delivery address?"],
        ["T2", "2026-03-01T11:01", "agent", ooo],  # an agent's out-of-office note
        ["T2", "2026-03-01T11:02", "agent", "Yes: under Account > Orders, before it ships."],
        ["T3", "2026-03-01T12:00", "customer", "Is the lamp dimmable?"],
        ["T3", "2026-03-01T12:01", "agent", "Yes, with the app. Anything else?"],
        ["T3", "2026-03-01T12:02", "customer", ooo],  # the customer's mailbox answers the agent
    ])
    result = data.convert([(str(path), tpl, "t")], None, Settings(workers=0))
    chats = {c.id: [m["content"] for m in c.messages] for c in result.conversations}
    assert chats["r.csv:T1"] == ["Where is my parcel?", "It is at the depot. Shall we deliver tomorrow?",
                                 "I'm out of the office tomorrow, please deliver Friday.", "Done: Friday it is.",
                                 "I am out of the office on Friday too, sorry! Saturday then?", "Saturday it is."]
    assert chats["r.csv:T2"] == ["Can I change my delivery address?", "Yes: under Account > Orders, before it ships."]
    assert chats["r.csv:T3"] == ["Is the lamp dimmable?", "Yes, with the app. Anything else?"]
    dropped = [(r["record"], r["code"]) for r in result.rejects]
    assert dropped == [(8, "auto_reply"), (12, "auto_reply")]  # each counted (by_reason), none silently
    assert result.by_reason() == {"auto_reply": 2} and result.input == result.kept + result.rejected + result.duplicates


def test_whitespace_normalisation():
    assert clean.normalize_whitespace("  a\u00a0\u00a0b \t c \r\n\r\n\r\n\r\nd\u200b  ") == "a b c\n\nd"
    assert clean.normalize_whitespace("plain text") == "plain text"
    # joiners are parts of words and emoji, not whitespace
    family, hindi, persian = "👩\u200d👩\u200d👧", "क्\u200dष", "می\u200cخواهم"
    assert clean.normalize_whitespace(f"  {family}  {hindi}\t{persian} ") == f"{family} {hindi} {persian}"


_INVISIBLE_SPACE = re.compile(r"[\s\u200b\ufeff]+")


@hypothesis_settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.one_of(
    st.text(max_size=8),  # any Unicode
    st.sampled_from(["👩\u200d👩\u200d👧", "🏳️\u200d🌈", "क्\u200dष", "नमस्ते", "می\u200cخواهم", "\u200d", "\u200c", "\u200b",
                     "\ufeff", " ", "  ", "\t", "\n", "\r\n", "\r", "\u00a0", "\u2009", "\u202f", "\u2028", "\x0b", "e\u0301"]),
), max_size=12).map("".join))
def test_whitespace_normalisation_changes_whitespace_only(text):
    out = clean.normalize_whitespace(text)
    assert _INVISIBLE_SPACE.sub("", out) == _INVISIBLE_SPACE.sub("", text)
    assert out.count("\u200d") == text.count("\u200d") and out.count("\u200c") == text.count("\u200c")
    cleaner = clean.Cleaner(clean.Rules(html_to_text=False, strip_quoted_replies=False, strip_signatures=False))
    assert cleaner.clean(text) == out and cleaner.clean_many([text, text]) == [out, out]


def test_rules_precedence_defaults_template_recipe():
    assert clean.resolve_rules().strip_signatures is True
    template_rules = DataRules(strip_signatures=False, max_tokens=100)
    assert clean.resolve_rules(template_rules).strip_signatures is False
    resolved = clean.resolve_rules(template_rules, DataRules(strip_signatures=True, max_tokens=0))
    assert resolved.strip_signatures is True and resolved.max_tokens == 0


# -- conversation rules ----------------------------------------------------------------------------

ROWS = [
    ["T1", "2026-03-01T10:05:00", "agent", "We can help.\n\nBest regards,\nPriya"],
    ["T1", "2026-03-01T10:00:00", "customer", "My plug is offline."],
    ["T1", "2026-03-01T10:01:00", "customer", "Since the update."],
    ["T1", "2026-03-01T10:09:00", "customer", "Thanks!"],
    ["T2", "2026-03-01T11:00:00", "customer", "Anyone there?"],
    ["T3", "2026-03-01T12:00:00", "bot", "Hi, how can I help?"],
    ["T3", "2026-03-01T12:01:00", "customer", "Refund status?"],
    ["T3", "2026-03-01T12:02:00", "agent", "It is on its way."],
]


def test_default_conversation_rules(tmp_path):
    result = convert(tmp_path, ROWS)
    t1 = result.conversations[0].messages
    assert t1 == [{"role": "user", "content": "My plug is offline.\n\nSince the update."},
                  {"role": "assistant", "content": "We can help."}]
    assert result.by_reason() == {"after_last_answer": 1, "no_agent_answer": 1}
    assert [m["role"] for m in result.conversations[1].messages] == ["assistant", "user", "assistant"]  # bot -> assistant


def test_conversation_rules_switched_off(tmp_path):
    rules = DataRules(merge_consecutive=False, trim_trailing_customer=False, require_both_sides=False,
                      strip_signatures=False, bot_role="user")
    result = convert(tmp_path, ROWS, rules=rules)
    assert result.rejected == 0 and len(result.conversations) == 3
    t1 = result.conversations[0].messages
    assert [m["role"] for m in t1] == ["user", "user", "assistant", "user"]
    assert t1[2]["content"].endswith("Best regards,\n{{NAME}}")  # kept, and the name in it redacted
    assert [m["role"] for m in result.conversations[2].messages] == ["user", "user", "assistant"]


def test_exclude_rules_equals_and_matches(tmp_path):
    rows = [["T1", "2026-03-01T10:00", "customer", "Help", "public"], ["T1", "2026-03-01T10:01", "agent", "Sure", "public"],
            ["T1", "2026-03-01T10:02", "agent", "note: VIP", "Internal"], ["T1", "2026-03-01T10:03", "agent", "[macro] closed", "public"]]
    _, tpl = template(tmp_path, exclude=[{"field": "visibility", "equals": ["internal"], "reason": "internal note"},
                                         {"field": "body", "matches": r"^\[macro\]", "reason": "macro"}])
    path = write_rows(tmp_path / "x.csv", rows, header=("ticket", "time", "who", "body", "visibility"))
    result = data.convert([(str(path), tpl, "t")], None)
    assert [(r["record"], r["reason"]) for r in result.rejects] == [(3, "internal note"), (4, "macro")]


def test_remove_patterns_and_unknown_roles(tmp_path):
    rows = [["T1", "2026-03-01T10:00", "customer", "@brand my cam is off https://t.co/abc"],
            ["T1", "2026-03-01T10:01", "agent", "@user1 Restart it ^AB"], ["T1", "2026-03-01T10:02", "narrator", "..."]]
    rules = DataRules(remove_patterns=[r"^@\w+\s*", r"\s*https://t\.co/\w+", r"\s*\^[A-Z]{2}$"])
    result = convert(tmp_path, rows, rules=rules)
    assert [m["content"] for m in result.conversations[0].messages] == ["my cam is off", "Restart it"]
    assert result.rejects[0]["reason"] == "unknown role 'narrator': add it to the template's roles"


def test_token_limits_use_the_model_tokenizer(tiny_recipe):
    # With the tiny model, the 12 conversations are 59-85 tokens long (system prompt and template included).
    recipe = load_recipe(tiny_recipe(data={"rules": {"max_tokens": 70}}))
    folder = data.build(recipe)
    stats = json.loads((folder / "stats.json").read_text())
    assert stats["rejected_by_reason"] == {"too_long": 3} and stats["token_lengths"]["max"] == 69
    assert stats["input"] == stats["kept"] + stats["rejected"] + stats["duplicates"]
    unlimited = json.loads((data.build(load_recipe(tiny_recipe())) / "stats.json").read_text())
    assert unlimited["rejected_by_reason"] == {} and unlimited["token_lengths"]["max"] == 85
    with pytest.raises(data.KitError, match="no usable conversation.*too_short") as info:
        data.build(load_recipe(tiny_recipe(data={"rules": {"min_tokens": 1000}})))
    # the error says why in words, where, and keeps the rejects where they can be read
    message = str(info.value)
    assert "most often: conversation has" in message and "under rules.min_tokens=1000" in message
    rejects = Path(message.split("every record left out is in ")[1].split(";")[0])
    assert rejects.is_file() and {r["code"] for r in data.read_jsonl(rejects)} >= {"too_short"}



@pytest.mark.parametrize("yield_cpu", [False, True])
def test_token_helper_counts_as_the_in_process_tokenizer(tiny_recipe, monkeypatch, yield_cpu):
    # The helper reads tokenizer.json with `tokenizers` and renders the chat template with jinja2 (no
    # transformers; for large exports at a lower priority), and answers while the caller writes files: its
    # counts must be those of the tokenizer kit.sft loads (transformers), the chat template's overhead included.
    recipe = load_recipe(tiny_recipe())
    texts = [["My Loop Cam is offline again?", f"Restart it {n} times, then re-add it. <|im_end|> café 😀"]
             for n in range(300)]  # a question larger than a pipe's buffer
    from kit import models
    from kit.data import tokens

    assert tokens.fast_encoder(recipe.model)[1] > 0  # the tiny model's chat template adds tokens per message
    counter = data.TokenCounter(recipe.model, yield_cpu=yield_cpu)
    assert counter.process is not None
    asked = counter.ask(texts)
    lengths, problem = counter.collect(asked)
    counter.close()
    assert problem is None and counter.process is None
    conversations = [{"messages": [{"role": "user", "content": a}, {"role": "assistant", "content": b}]} for a, b in texts]
    assert lengths == data.token_lengths(conversations, models.load_tokenizer(recipe.model))
    monkeypatch.setattr(tokens.multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    assert data.TokenCounter(recipe.model).lengths(texts) == (lengths, None)  # in-process, with transformers


def test_token_helper_loads_without_transformers(tiny_recipe):
    # In the test process transformers is already imported (and with it jinja2.ext), which hid that the
    # helper's load failed in a fresh process: every count then came from transformers after the conversion.
    import subprocess
    import sys

    recipe_path = tiny_recipe()
    script = (
        "import sys\n"
        "from kit.recipe import load_recipe\n"
        "from kit.data import tokens\n"
        f"loaded = tokens.fast_encoder(load_recipe({str(recipe_path)!r}).model)\n"
        "assert loaded is not None and loaded[1] > 0, loaded\n"
        "assert 'transformers' not in sys.modules and 'torch' not in sys.modules, 'imported the heavy libraries'\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_token_helper_falls_back_to_transformers_where_it_could_differ(tiny_recipe, tmp_path, tiny_model_dir):
    # A tokenizer config that transformers applies on top of tokenizer.json: the helper declines, and the
    # counts come from transformers in the calling process.
    import shutil

    from kit import models
    from kit.data import tokens

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "add_prefix_space": False}))
    recipe = load_recipe(tiny_recipe(model={"name": str(folder)}))
    assert tokens.fast_encoder(recipe.model) is None
    counter = data.TokenCounter(recipe.model)
    lengths, problem = counter.lengths([["hello there", "hi"]])
    counter.close()
    assert problem is None and lengths == tokens.count(models.load_tokenizer(recipe.model), [["hello there", "hi"]])


def test_jsonl_files_are_hashed_as_written(tmp_path, monkeypatch):
    # write_jsonl encodes a few thousand lines at a time and hashes those bytes: the file must be what
    # text mode writes (UTF-8, the platform's line ends) and the digest that of the file read back.
    import hashlib

    serialized = data.Conversation("pre", None, {}, {}, line='{"id": "pre"}')  # its line made where it was assembled
    rows = [{"id": n, "text": f"caf\u00e9 \u2028 {n}\n"} for n in range(5000)] + [serialized]
    monkeypatch.setattr(data, "WRITE_ROWS", 7)
    for end in ("\n", "\r\n"):
        monkeypatch.setattr(data.os, "linesep", end)
        digest = hashlib.sha256()
        data.write_jsonl(tmp_path / "rows.jsonl", rows, digest)
        written = (tmp_path / "rows.jsonl").read_bytes()
        expected = "".join(data.dumps_line(row) + end for row in rows[:-1]) + '{"id": "pre"}' + end
        assert written == expected.encode("utf-8") and digest.hexdigest() == hashlib.sha256(written).hexdigest()
    assert data.read_jsonl(tmp_path / "rows.jsonl")[0] == rows[0]

# -- reading ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding, text", [("utf-8", "café ☕"), ("utf-8-sig", "café ☕"), ("utf-16", "café ☕"),
                                            ("cp1252", "café – “quoted”"), ("latin-1", "café \x81")])
def test_encodings_are_detected(tmp_path, encoding, text):
    path = tmp_path / "e.csv"
    path.write_bytes(f"customer_question,agent_answer\n{text},fine\n".encode(encoding))
    tpl = data.load_template("qa_csv").model_copy(update={"fields": data.TemplateFields(question="customer_question", answer="agent_answer")})
    result = data.convert([(str(path), tpl, "qa")], None)
    assert result.conversations[0].messages[0]["content"] == text


def test_encoding_detection_skips_ascii_chunks_only_between_characters(tmp_path, monkeypatch):
    # ASCII chunks are not decoded; a character cut by a chunk edge must still be checked whole
    from kit.data import read

    monkeypatch.setattr(read, "CHUNK_BYTES", 4)
    path = tmp_path / "e.csv"
    for raw, expected in [(b"abc\xc3" + b"abcd" + b"\xa9xyz", "cp1252"), ("abcé".encode() + b"abcd" + "é".encode(), "utf-8"),
                          (b"abc\xc3\xa9defg", "utf-8"), (b"abcdefgh", "utf-8")]:
        path.write_bytes(raw)
        assert read.detect_encoding(path) == expected, raw


def test_broken_records_are_rejected_with_location(tmp_path):
    _, tpl = template(tmp_path)
    path = tmp_path / "bad.csv"
    path.write_text('ticket,time,who,body\nT1,2026-03-01,customer,"fine"\nT1,2026-03-01,agent\n'
                    'T1,2026-03-02,agent,ok\n,,,\nT2,2026-03-03,"customer,never closed\nT2,2026-03-03,agent,swallowed\n')
    result = data.convert([(str(path), tpl, "t")], None)
    assert [(r["record"], r["line"], r["code"]) for r in result.rejects] == [
        (2, 3, "bad_row"), (4, 5, "empty_row"), (5, 6, "bad_row")]
    assert result.rejects[2]["reason"] == "expected 4 fields, got 3"  # the open quote ran to the end of the file
    jsonl = tmp_path / "x.jsonl"
    jsonl.write_text('{"q": "a", "a": "b"}\n{"q": "broken"\n{"q": "c"}\n[1, 2]\n')
    qa = data.Template(description="x", reader="jsonl", fields=data.TemplateFields(question="q", answer="a"))
    result = data.convert([(str(jsonl), qa, "x")], None)
    assert [(r["record"], r["line"], r["code"]) for r in result.rejects] == [
        (2, 2, "invalid_json"), (3, 3, "missing_field"), (4, 4, "missing_field")]
    document = tmp_path / "x.json"
    document.write_text('[{"q": "a", "a": "b"},\n {"q": "c" "a": "d"}]')
    result = data.convert([(str(document), qa.model_copy(update={"reader": "json"}), "x")], None)
    assert result.input == 1 and result.rejects[0]["code"] == "invalid_json" and result.rejects[0]["line"] == 2
    other = tmp_path / "y.json"
    other.write_text('{"other": []}')
    with pytest.raises(data.KitError, match="no list of records at `items` \\(top-level keys: other\\)"):
        data.convert([(str(other), qa.model_copy(update={"reader": "json", "records": "items"}), "x")], None)


def test_users_table_from_a_separate_file(tmp_path):
    users = tmp_path / "users.csv"
    users.write_text("id,name,kind\n1,Dana Reyes,customer\n2,Sam Ortiz,staff\n")
    _, tpl = template(tmp_path, fields={"conversation": "ticket", "timestamp": "time", "author": "author", "text": "body"},
                      users={"id": "id", "name": "name", "role": "kind"}, roles={"customer": "user", "staff": "assistant"})
    path = write_rows(tmp_path / "e.csv", [["T1", "2026-03-01T10:00", "1", "Hi, Dana here"], ["T1", "2026-03-01T10:01", "2", "Hi Dana, Sam here"],
                                           ["T1", "2026-03-01T10:02", "3", "who am I"]], header=("ticket", "time", "author", "body"))
    result = data.convert([(str(path), tpl, "t", str(users))], None)
    assert [m["content"] for m in result.conversations[0].messages] == ["Hi, {{NAME}} here", "Hi {{NAME}}, {{NAME}} here"]
    assert result.rejects[0]["reason"] == "author 3 is not in the users table"
    with pytest.raises(data.KitError, match="set data.sources\\[\\].users"):
        data.convert([(str(path), tpl, "t")], None)


# -- dedup, splits, augmentation, outputs ----------------------------------------------------------


def test_dedup_exact_normalized_and_near(tmp_path):
    long = ("My Loop Cam stopped recording at night after the last firmware update and the app now shows a grey "
            "screen instead of the live view, even after I restarted the camera, the hub and my router twice today")
    rows = [["T1", "2026-03-01T10:00", "customer", long], ["T1", "2026-03-01T10:01", "agent", "Reinstall the app."],
            ["T2", "2026-03-01T10:00", "customer", long.upper() + "!!"], ["T2", "2026-03-01T10:01", "agent", "reinstall the app"],
            ["T3", "2026-03-01T10:00", "customer", long.replace("grey", "black")], ["T3", "2026-03-01T10:01", "agent", "Reinstall the app."]]
    _, tpl = template(tmp_path)
    path = write_rows(tmp_path / "d.csv", rows)
    counts = {}
    for mode in ("none", "exact", "normalized", "near"):
        result = data.convert([(str(path), tpl, "t")], None, Settings(dedup=mode))
        counts[mode] = (len(result.conversations), result.duplicates)
        assert result.input == result.kept + result.rejected + result.duplicates
    assert counts == {"none": (3, 0), "exact": (3, 0), "normalized": (2, 2), "near": (1, 4)}
    near = data.convert([(str(path), tpl, "t")], None, Settings(dedup="near"))
    assert {r["code"] for r in near.rejects} == {"duplicate", "near_duplicate"}
    assert all(r["reason"].endswith("d.csv record 1") for r in near.rejects)


def conversations_with(categories: dict[str, int]) -> list[dict]:
    return [{"id": f"{cat}-{i}", "metadata": {"category": cat}, "messages": []} for cat, n in categories.items() for i in range(n)]


def test_stratified_split_keeps_shares_and_never_splits_a_conversation():
    items = conversations_with({"a": 50, "b": 30, "c": 20})
    parts = data.split(items, 0.1, 0.2, seed=1, stratify="category")
    assert [len(parts[k]) for k in ("train", "validation", "test")] == [70, 10, 20]
    for name, share in (("test", 0.2), ("validation", 0.1)):
        for cat, n in (("a", 50), ("b", 30), ("c", 20)):
            got = sum(1 for c in parts[name] if c["metadata"]["category"] == cat)
            assert abs(got - n * share) <= 1, (name, cat, got)
    ids = [c["id"] for k in parts for c in parts[k]]
    assert len(ids) == len(set(ids)) == 100
    assert parts == data.split(items, 0.1, 0.2, seed=1, stratify="category")
    assert parts != data.split(items, 0.1, 0.2, seed=2, stratify="category")


def test_folds_are_disjoint_and_cover_everything():
    items = conversations_with({"a": 12, "b": 9})
    parts = data.folds(items, 3, seed=0, stratify="category")
    assert [len(p) for p in parts] == [7, 7, 7]
    assert sorted(c["id"] for p in parts for c in p) == sorted(c["id"] for c in items)
    assert all(sum(1 for c in p if c["metadata"]["category"] == "b") == 3 for p in parts)


def test_augmentation_is_seeded_marked_and_keeps_placeholders():
    from kit.data.augment import augment, augment_text
    from kit.recipe import AugmentSection

    import random

    text = "Hi, my order {{ORDER}} is late and the package is damaged, please help {{EMAIL}}"
    for operation in ("synonym", "insert", "swap", "delete"):
        out = augment_text(text, operation, 0.3, random.Random(0), {"order": ["purchase"], "package": ["parcel"]})
        assert out != text and out.count("{{EMAIL}}") == 1 and out.count("{{ORDER}}") == 1, operation
    conversation = {"id": "c1", "metadata": {"category": "x"}, "source": {},
                    "messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "On it."}]}
    settings = AugmentSection(enabled=True, copies=2)
    first, again = augment([conversation], settings, seed=3), augment([conversation], settings, seed=3)
    assert first == again and len(first) == 2
    assert first[0]["metadata"]["augmented_from"] == "c1" and first[0]["messages"][1]["content"] == "On it."
    assert first[0]["id"] == "c1#aug1"


def test_build_outputs_card_folds_augmentation_and_loads_with_datasets(tiny_recipe):
    from datasets import load_dataset

    recipe = load_recipe(tiny_recipe(data={"folds": 2, "augment": {"enabled": True}, "stratify_by": "category"}))
    folder = data.build(recipe)
    stats = json.loads((folder / "stats.json").read_text())
    assert stats["augmented"] > 0 and stats["folds"] == [5, 5]  # train 8 + validation 2
    card = (folder / "README.md").read_text()
    assert "input records =" in card and "load_dataset" in card and f"{stats['augmented']} augmented" in card
    for name in ("validation", "test"):
        assert all("augmented" not in c["metadata"] for c in data.load_split(recipe, name))
    train = data.load_split(recipe, "train")
    assert sum("augmented" in c["metadata"] for c in train) == stats["augmented"]
    loaded = load_dataset("json", data_files={n: str(folder / f"{n}.jsonl") for n in data.DATASET_SPLITS})
    assert loaded["train"].num_rows == stats["splits"]["train"]
    assert loaded["test"][0]["messages"][0]["role"] == "system"


def test_workers_give_the_same_result_as_in_process(tmp_path, monkeypatch):
    rows = [[f"T{i // 3}", f"2026-03-01T10:0{i % 3}", "customer" if i % 3 != 1 else "agent", f"message {i} mail x{i}@example.com"]
            for i in range(60)]
    _, tpl = template(tmp_path)
    path = write_rows(tmp_path / "w.csv", rows)
    inline = data.convert([(str(path), tpl, "t")], None, Settings(workers=0))
    monkeypatch.setattr(parallel, "CHUNK_RECORDS", 4)  # many chunks, taken in turn by both processes
    forked = data.convert([(str(path), tpl, "t")], None, Settings(workers=2))
    assert forked.conversations == inline.conversations and forked.rejects == inline.rejects
    assert forked.pii == inline.pii and inline.pii["EMAIL"] == 60


def test_repeated_texts_reuse_their_results_exactly(tmp_path, monkeypatch):
    """A text met before (in this part or an earlier one) reuses its cleaning, auto-reply and redaction
    results: the conversion is the same as with nothing remembered, PII counts included."""
    texts = ["Thanks!", "Mail me at jo@example.com", "Out of office until Monday", "Best regards,\nJo", "   "]
    rows = [[f"T{i // 3}", f"2026-03-01T10:0{i % 3}", "customer" if i % 3 != 1 else "agent", texts[i % len(texts)]]
            for i in range(90)]
    _, tpl = template(tmp_path)
    path = write_rows(tmp_path / "r.csv", rows)
    convert = importlib.import_module("kit.data.convert")
    monkeypatch.setattr(convert, "GROUP_TEXTS", 7)  # many parts
    remembered = data.convert([(str(path), tpl, "t")], None, Settings(workers=0))
    monkeypatch.setattr(convert, "TEXTS_REMEMBERED", 0)  # forgotten before every part
    forgotten = data.convert([(str(path), tpl, "t")], None, Settings(workers=0))
    assert remembered.conversations == forgotten.conversations and remembered.rejects == forgotten.rejects
    assert remembered.pii == forgotten.pii and remembered.pii["EMAIL"] == 18
    assert {r["code"] for r in remembered.rejects} >= {"auto_reply", "empty_text"}


@pytest.mark.parametrize("failure", ["error", "death"])
def test_a_failing_assembly_process_fails_the_conversion(tmp_path, monkeypatch, failure):
    """An error in a forked assembly process is raised here; a process that dies (killed, out of memory)
    is reported, not waited for."""
    rows = [[f"T{i // 2}", f"2026-03-01T10:0{i % 2}", "customer" if i % 2 == 0 else "agent", f"message {i}"] for i in range(40)]
    _, tpl = template(tmp_path)
    path = write_rows(tmp_path / "w.csv", rows)
    monkeypatch.setattr(parallel, "CHUNK_RECORDS", 2)
    parent, groups = os.getpid(), Assembler.groups

    def failing(self, items):
        if os.getpid() == parent:
            time.sleep(0.05)  # so that the other process surely takes chunks too
            return groups(self, items)
        if failure == "death":
            os._exit(3)
        raise ValueError("bad chunk")

    monkeypatch.setattr(Assembler, "groups", failing)
    with pytest.raises(ValueError if failure == "error" else RuntimeError, match="bad chunk|ended without its results"):
        data.convert([(str(path), tpl, "t")], None, Settings(workers=2))


def _thread_lines(n: int) -> list[str]:
    lines = []
    for i in range(n):
        body = f'"line one of {i}\nline two, with ""quotes"""' if i % 7 == 0 else f"message {i} from T{i // 4}"
        lines.append(f"T{(i * 5) % (n // 4)},2026-03-01T10:{i % 60:02d},{'agent' if i % 4 == 3 else 'customer'},{body}")
    return lines


@pytest.mark.parametrize("case", ["standard", "stray_quote", "blank_and_broken", "cp1252", "no_timestamp"])
def test_reading_in_two_processes_gives_the_one_pass_result(tmp_path, monkeypatch, case):
    lines = _thread_lines(400)
    encoding, changes = "utf-8", {}
    if case == "stray_quote":  # a quote inside an unquoted field fools the quote-parity split: read on alone
        lines[20] = lines[20].replace("message", 'a 5" screen message')
    elif case == "blank_and_broken":
        lines[199:199] = ["", "T1,2026-03-01T10:00,customer", "", "", ",,,"]
    elif case == "cp1252":
        encoding = "cp1252"
        lines[250] = lines[250].replace("message", "café message €")
    elif case == "no_timestamp":
        changes = {"fields": {"conversation": "ticket", "role": "who", "text": "body"}}
    path = tmp_path / "threads.csv"
    path.write_bytes(("ticket,time,who,body\r\n" + "\r\n".join(lines) + "\r\n").encode(encoding))
    _, tpl = template(tmp_path, **changes)
    one_pass = data.convert([(str(path), tpl, "t")], None, Settings(workers=0))
    calls = []
    group = Reader.group
    monkeypatch.setattr(Reader, "group", lambda self, *args, **kw: calls.append(1) or group(self, *args, **kw))
    split = data.convert([(str(path), tpl, "t")], None, Settings(workers=2))
    assert split.conversations == one_pass.conversations and split.rejects == one_pass.rejects
    assert (split.input, split.pii) == (one_pass.input, one_pass.pii) and one_pass.input >= 400
    # The parent reads alone (a second `group` call) only when the split offset was not a record boundary.
    assert len(calls) == (2 if case == "stray_quote" else 1)


def test_required_phrases_metadata_is_a_list(tmp_path):
    path = tmp_path / "qa.csv"
    write_rows(path, [["where is my order", "It ships today.", "ships today | tracking link"]],
               header=("question", "answer", "phrases"))
    tpl = data.Template(description="x", reader="csv",
                        fields=data.TemplateFields(question="question", answer="answer", metadata={"required_phrases": "phrases"}))
    result = data.convert([(str(path), tpl, "x")], None)
    assert result.conversations[0].metadata["required_phrases"] == ["ships today", "tracking link"]


def test_unloadable_tokenizer_only_matters_for_token_limits(tiny_recipe, tmp_path):
    recipe = load_recipe(tiny_recipe(model={"name": str(tmp_path / "no-such-model")}))
    stats = json.loads((data.build(recipe) / "stats.json").read_text())
    assert stats["token_lengths"] is None and "no-such-model" in stats["token_lengths_unavailable"]
    limited = load_recipe(tiny_recipe(model={"name": str(tmp_path / "no-such-model")}, data={"rules": {"max_tokens": 50}}))
    with pytest.raises(data.KitError, match="max_tokens/min_tokens need the model's tokenizer"):
        data.build(limited)


def test_auto_reply_pattern_with_leading_global_flags_is_scoped():
    from kit.data.clean import Cleaner, Rules

    cleaner = Cleaner(Rules(auto_reply_patterns=("(?i)on vacation until",)))
    assert cleaner.is_auto_reply("Hello, ON VACATION UNTIL Monday.")
    assert not cleaner.is_auto_reply("We were on vacation until Monday, and the parcel never came.")
