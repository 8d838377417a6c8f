"""Every shipped template converts its synthetic sample log; counts and key behaviours are pinned."""

import csv
import json
import re
from pathlib import Path

import pytest
import yaml

from kit import data
from kit.data.convert import Settings
from kit.errors import KitError
from kit.recipe import DataRules

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "data_templates" / "samples"


def run(template: str, sample: str, **settings):
    return data.convert([(str(SAMPLES / sample), data.load_template(template), template)], None, Settings(**settings))


def by_code(result) -> dict:
    return result.by_reason()


def test_every_template_is_listed_with_a_sample_and_a_description():
    templates = sorted(p.stem for p in (REPO / "data_templates").glob("*.yaml"))
    assert templates == ["chat_transcripts_csv", "dialogue_json", "dialogues_by_id_json", "helpdesk_json", "loose_chat_csv",
                         "qa_csv", "qa_json", "qa_jsonl", "reply_threads_csv", "ticket_files_json", "ticket_threads_csv",
                         "turn_pairs_json", "turns_json"]
    listing = data.template_listing()
    for name in templates:
        line = next(line for line in listing.splitlines() if line.startswith(name + " "))
        assert len(line.split(None, 1)[1]) > 20  # a one-line description
        assert "samples/" in (REPO / "data_templates" / f"{name}.yaml").read_text()


def test_qa_jsonl_keeps_intent_and_rejects_broken_lines():
    result = run("qa_jsonl", "brightloop_faq.jsonl")
    assert (result.input, result.kept, result.rejected, result.duplicates) == (12, 9, 2, 1)
    rejects = {r["record"]: r for r in result.rejects}
    assert rejects[5]["code"] == "invalid_json" and rejects[5]["line"] == 5
    assert rejects[7]["reason"] == "empty answer" and rejects[7]["line"] == 8  # a blank line before it is layout
    assert rejects[8]["kind"] == "duplicate"
    first = result.conversations[0]
    assert first.metadata == {"intent": "track_order", "category": "orders_shipping", "id": "F-1"}
    assert "{{EMAIL}}" in result.conversations[3].messages[0]["content"]


def test_qa_json_reads_a_dotted_record_path_and_nested_fields():
    result = run("qa_json", "brightloop_faq_export.json")
    assert (result.input, result.kept, result.rejected, result.duplicates) == (8, 6, 1, 1)
    missing = next(r for r in result.rejects if r["code"] == "missing_field")
    assert missing["path"] == "export.items[4]" and missing["reason"] == "missing field 'reply.text'"
    # KB-106 differs from KB-101 only in case and punctuation: a normalized duplicate
    assert next(r for r in result.rejects if r["kind"] == "duplicate")["path"] == "export.items[5]"
    assert result.conversations[0].metadata == {"intent": "shipping_cost", "category": "orders_shipping", "id": "KB-101"}
    assert "{{CARD}}" in result.conversations[3].messages[0]["content"]
    assert run("qa_json", "brightloop_faq_export.json", dedup="exact").duplicates == 0


def test_ticket_threads_ordered_merged_and_internal_notes_excluded():
    result = run("ticket_threads_csv", "brightloop_ticket_threads.csv")
    assert (result.input, result.kept, result.rejected, result.duplicates) == (22, 15, 7, 0)
    assert by_code(result) == {"after_last_answer": 1, "auto_reply": 1, "bad_row": 1, "excluded": 2,
                               "no_agent_answer": 1, "no_customer_turn": 1}
    tickets = {c.id.split(":")[1]: c for c in result.conversations}
    late = tickets["TK-2001"].messages  # rows arrive shuffled; time order restored
    assert [m["role"] for m in late] == ["user", "assistant", "user", "assistant"]
    assert late[0]["content"].startswith("Hello, my order BL-771204") and "Thanks" not in late[0]["content"]  # sign-off cut
    assert late[1]["content"].endswith("arrives tomorrow before 6 pm.")  # "Best regards, Priya" cut
    assert late[2]["content"] == "Great, thank you!"  # quoted reply cut
    assert "label damaged" not in json.dumps([c.row() for c in result.conversations])  # the internal note
    charged = tickets["TK-2002"].messages  # two customer rows merged; the auto-reply rejected
    assert charged[0]["content"].count("\n\n") == 1 and len(charged) == 2
    assert "{{CARD}}" in charged[0]["content"] and "leo.martins" not in charged[1]["content"]  # "--" signature cut
    assert tickets["TK-2001"].source["records"] == [3, 6, 8, 16]
    assert tickets["TK-2001"].metadata == {"category": "orders_shipping", "subject": "Late delivery"}
    bad_row = next(r for r in result.rejects if r["code"] == "bad_row")
    assert bad_row["line"] == 35 and "{{NAME}}" in bad_row["text"] and "Omar" not in bad_row["text"]


def test_helpdesk_json_resolves_roles_and_names_through_the_users_table():
    result = run("helpdesk_json", "brightloop_helpdesk_export.json")
    assert (result.input, result.kept, result.rejected, result.duplicates) == (12, 8, 4, 0)
    assert by_code(result) == {"excluded": 1, "missing_field": 1, "no_messages": 1, "unknown_author": 1}
    bulb = result.conversations[0]
    assert [m["role"] for m in bulb.messages] == ["user", "assistant", "user", "assistant"]
    assert bulb.messages[0]["content"] == "Hello,\n\nMy Glow Bulb shows green when I pick warm white.\n\n{{NAME}}\n{{PHONE}}"
    assert bulb.messages[2]["content"] == "Updated and fixed, thank you & have a nice day."  # HTML, entity, blockquote
    assert bulb.metadata["tags"] == ["glow_bulb", "colour"] and bulb.metadata["category"] == "device_troubleshooting"
    assert bulb.source["path"] == "tickets[0].comments[0]"
    plus = result.conversations[1].messages  # comments listed out of order
    assert plus[0]["role"] == "user" and plus[0]["content"].startswith("Why did my Plus")
    text = json.dumps([c.row() for c in result.conversations]) + json.dumps(result.rejects)
    for name in ("Grace", "Ndlovu", "Hiroshi", "Carmen", "Ortiz"):
        assert name not in text


def test_chat_transcripts_bot_role_is_configurable():
    result = run("chat_transcripts_csv", "brightloop_chat_transcripts.csv")
    assert (result.input, result.kept, result.rejected) == (14, 12, 2)
    assert by_code(result) == {"bad_timestamp": 1, "no_customer_turn": 1}
    pairing = result.conversations[0].messages
    assert pairing[0] == {"role": "assistant", "content": "Hi! I'm the Brightloop assistant. What can I help you with?"}
    assert pairing[3]["content"] == "yes, it is\n\noh wait, the password has a & in it"
    template = data.load_template("chat_transcripts_csv")
    dropped = data.convert([(str(SAMPLES / "brightloop_chat_transcripts.csv"), template, "x")], None,
                           Settings(rules=DataRules(bot_role="drop")))
    assert by_code(dropped)["excluded"] == 4  # bot and operator messages
    assert dropped.conversations[0].messages[0]["role"] == "user"
    assert dropped.input == dropped.kept + dropped.rejected + dropped.duplicates


def test_reply_threads_rebuilt_with_orphans_counted():
    result = run("reply_threads_csv", "brightloop_social_threads.csv")
    assert (result.input, result.kept, result.rejected) == (17, 11, 6)
    assert dict(result.threads) == {"threads": 7, "orphans": 2, "broken_threads": 2}
    lamp = result.conversations[0]
    assert lamp.source["records"] == [1, 2, 3, 4, 5]  # rows 2 and 3 arrive swapped
    assert [m["role"] for m in lamp.messages] == ["user", "assistant", "user", "assistant"]
    assert lamp.messages[0]["content"] == "my glow lamp keeps flickering since the update"  # @handle, link cut
    assert lamp.messages[3]["content"].count("\n\n") == 1 and "^PR" not in lamp.messages[3]["content"]
    assert result.conversations[-1].source["records"] == [16, 17]  # "5060.0" in_response_to still links


def test_dialogue_json_drops_action_events_and_redacts_scenario_names():
    result = run("dialogue_json", "brightloop_dialogues.json")
    assert (result.input, result.kept, result.rejected) == (27, 17, 10)
    assert by_code(result) == {"after_last_answer": 1, "excluded": 5, "no_agent_answer": 2, "no_messages": 1,
                               "unknown_role": 1}
    first = result.conversations[0]
    assert first.metadata == {"intent": "shipping_issue", "subflow": "status_delayed"}
    assert [m["content"] for m in first.messages[3:6]] == ["{{NAME}}", "Thanks {{NAME}}. Could you confirm your email?", "{{EMAIL}}"]
    assert first.source["path"] == "[0].original[0]" and 6 not in first.source["records"]  # the action
    action = next(r for r in result.rejects if r["record"] == 6)
    assert action["text"] == "Account has been pulled up for {{NAME}}."
    # a username typed on its own line (as in ABCD) matches no detector; the scenario's username field names it
    assert result.conversations[1].messages[2]["content"] == "{{NAME}}\n\n{{PHONE}}"
    assert "rpatel646" not in json.dumps([c.row() for c in result.conversations] + result.rejects)


def test_qa_csv_reads_tsv_and_semicolons(tmp_path):
    for delimiter in ("\t", ";", "|"):
        path = tmp_path / "export.txt"
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle, delimiter=delimiter)
            writer.writerow(["ticket_id", "created_at", "category", "customer_question", "agent_answer"])
            writer.writerow(["T1", "2026", "general", "where is\nmy order", "It ships today | sorry; twice\tok"])
            writer.writerow(["T2", "2026", "general", "and the lamp", "Also today."])
        result = data.convert([(str(path), data.load_template("qa_csv"), "qa_csv")], None)
        assert result.input == 2 and not result.rejects, delimiter
        assert result.conversations[0].messages[0]["content"] == "where is\nmy order"
        assert result.conversations[0].messages[1]["content"] == "It ships today | sorry; twice ok", delimiter
        assert result.conversations[1].source["line"] == 4


def test_cli_preview_shows_source_and_records(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "p", "output_dir": str(tmp_path), "model": {"name": "unused"},
        "data": {"sources": [{"path": str(SAMPLES / "brightloop_ticket_threads.csv"), "template": "ticket_threads_csv"}]},
    }))
    data.main(["preview", str(recipe), "-n", "1"])
    out = capsys.readouterr().out
    assert "brightloop_ticket_threads.csv record 1 (line 2); records 1, 10, 14 [ticket_threads_csv]" in out
    assert "[user] I was charged twice" in out
    assert out.strip().endswith("(after_last_answer 1, auto_reply 1, bad_row 1, excluded 2, no_agent_answer 1, no_customer_turn 1)")
    data.main(["templates"])
    assert "reply_threads_csv" in capsys.readouterr().out


def test_turn_pairs_json_splits_each_turn_into_its_messages(tmp_path):
    result = run("turn_pairs_json", "brightloop_turn_pairs.json")
    account(result)
    assert (result.input, result.kept, result.rejected, result.duplicates) == (11, 8, 3, 0)
    assert by_code(result) == {"after_last_answer": 1, "no_messages": 2}  # a turn with no part; a dialogue with no turns
    orders, devices = result.conversations
    assert [m["role"] for m in orders.messages] == ["user", "assistant", "user", "assistant"]  # the agent first in a turn
    assert orders.messages[1]["content"] == "sorry about that . which address should it go to ?"
    assert orders.source["path"] == "[0].turns[0].user_utterance" and orders.source["records"] == [1, 2, 3, 4]
    empty = next(r for r in result.rejects if r["path"] == "[1].turns[3]")
    assert empty["reason"] == "none of the parts 'system_utterance', 'user_utterance'"
    # parts that are text themselves, in JSONL, with the conversation on the record
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(row) for row in [
        {"ticket": "A", "customer": "where is my parcel?", "agent": "It ships today."},
        {"ticket": "A", "customer": "thanks!", "agent": ""},
        {"ticket": "B", "other": 1}]) + "\n")
    path = tmp_path / "pairs.yaml"
    path.write_text("description: x\nreader: jsonl\nshape: messages\nparts: {customer: user, agent: assistant}\n"
                    "fields: {conversation: ticket}\n")
    flat = data.convert([(str(tmp_path / "pairs.jsonl"), data.load_template(str(path)), "pairs")], None, Settings())
    account(flat)
    assert [c.messages for c in flat.conversations] == [[{"role": "user", "content": "where is my parcel?"},
                                                         {"role": "assistant", "content": "It ships today."}]]
    assert by_code(flat) == {"after_last_answer": 1, "no_messages": 1}
    path.write_text("description: x\nreader: csv\nshape: messages\nparts: {customer: user}\nfields: {conversation: t}\n")
    with pytest.raises(data.KitError, match="`parts` is for JSON message records"):
        data.load_template(str(path))
    path.write_text("description: x\nreader: json\nshape: messages\nparts: {a: user}\nfields: {conversation: t, role: r}\n")
    with pytest.raises(data.KitError, match="remove fields.role"):
        data.load_template(str(path))


def test_a_name_found_in_one_message_is_redacted_in_the_whole_conversation():
    result = run("turn_pairs_json", "brightloop_turn_pairs.json")
    devices = result.conversations[1].messages
    assert devices[2]["content"] == "yes , it is . I am {{NAME}} by the way ."  # found by its context here
    assert devices[3]["content"].startswith("thanks {{NAME}} . move the hub")  # and so also in the agent's answer
    assert "Priya" not in json.dumps([c.row() for c in result.conversations]) and result.pii["NAME"] == 2


def test_bad_template_is_a_clear_error(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("description: x\nreader: csv\nshape: messages\nfields: {text: body}\n")
    with pytest.raises(data.KitError, match=r"mine.yaml: \(top level\): shape messages needs fields.conversation"):
        data.load_template(str(path))
    path.write_text("description: x\nreader: csv\nfields: {question: q, answer: a}\nrules: {remove_patterns: ['(']}\n")
    with pytest.raises(data.KitError, match="bad regex"):
        data.load_template(str(path))


@pytest.mark.parametrize("text, message", [
    # a misspelled key: the recipe's one-line style, with its line and the keys that exist
    ("description: x\nreader: csv\nfields:\n  question: q\n  answr: a\n",
     r"^\S*mine.yaml: fields.answr \(line 5\): unknown key: remove it or fix its spelling \(known: question, answer, "),
    ("description: x\nreader: csv\nfields: {question: q, answer: a}\nexclude:\n  - field: f\n    equals: [x]\n    resaon: y\n",
     r"^\S*mine.yaml: exclude\[0\].resaon \(line 7\): unknown key"),
    ("description: x\nreader: csv\nreader: json\nfields: {question: q, answer: a}\n",
     r"^\S*mine.yaml: reader: set twice, on lines 2 and 3; keep one$"),
    ("description: x\nreader: [csv\n", r"^\S*mine.yaml: line 3: not valid YAML: fix the syntax"),
    ("description: x\nreader: xml\nfields: {question: q, answer: a}\n",
     r"^\S*mine.yaml: reader \(line 2\): Input should be 'csv', 'json' or 'jsonl' \(got 'xml'\)$"),
    ("- a\n- b\n", r"^\S*mine.yaml: a template is a mapping"),
])
def test_template_errors_are_one_line_each_with_the_key_and_line(tmp_path, text, message):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(data.KitError) as info:
        data.load_template(str(path))
    first = str(info.value).splitlines()[0]
    assert re.search(message, first), first


def run_files(template: str, path: str, **settings):
    """`run` for a source path that may be a folder or a glob (each file a source of its own)."""
    from kit.data.read import source_files

    loaded = data.load_template(template)
    return data.convert([(p, loaded, template) for p in source_files(path, loaded.reader)], None, Settings(**settings))


def account(result) -> None:
    assert result.input == result.kept + result.rejected + result.duplicates
    assert result.input == sum(s["records"] for s in result.sources)


def test_a_folder_of_one_ticket_per_file_each_file_accounted_for(tmp_path):
    result = run_files("ticket_files_json", str(SAMPLES / "brightloop_ticket_files"))
    account(result)
    assert [Path(s["file"]).name for s in result.sources] == ["T-1001.json", "T-1002.json", "T-1003.json"]
    assert [s["records"] for s in result.sources] == [4, 2, 2] and len(result.conversations) == 2
    assert by_code(result) == {"excluded": 3, "after_last_answer": 1}
    spam = [r for r in result.rejects if r["reason"].startswith("ticket not solved")]
    assert [(Path(r["file"]).name, r["path"]) for r in spam] == [("T-1002.json", "$.comments[0]"), ("T-1002.json", "$.comments[1]")]
    first = result.conversations[0]
    # subject + body paragraphs (a list) make the text; JSON numbers stay numbers in metadata
    assert first.messages[0]["content"] == ("Loop Plug offline\n\nMy Loop Plug goes offline every night.\n"
                                               "I already restarted the router twice.")
    assert first.metadata == {"status": "solved", "csat": 5, "tags": ["wifi", "plug"]}
    assert first.source["path"] == "$.comments[0]"
    # a glob gives the same files
    globbed = run_files("ticket_files_json", str(SAMPLES / "brightloop_ticket_files" / "T-*.json"))
    assert [c.messages for c in globbed.conversations] == [c.messages for c in result.conversations]
    with pytest.raises(KitError, match="no file matches"):
        run_files("ticket_files_json", str(tmp_path / "*.json"))


def test_records_in_a_mapping_keyed_by_id_with_list_valued_text():
    result = run("dialogues_by_id_json", "brightloop_dialogues_by_id.json")
    account(result)
    assert (result.input, result.kept, result.rejected) == (12, 10, 2)
    assert [c.id.split(":")[-1] for c in result.conversations] == ["dlg-001", "dlg-003", "dlg-004"]  # the key is the id
    # dialogue corpora have no auto-replies: "I am on leave" is the customer talking, kept mid-dialogue
    assert result.conversations[2].messages[2]["content"] == "I am on leave next week.\nPlease deliver after the 20th."
    assert result.conversations[0].messages[1]["content"] == "It left the depot this morning.\nIt arrives tomorrow before 6 pm."
    incomplete = next(r for r in result.rejects if r["code"] == "excluded")
    assert incomplete["path"] == '["dlg-002"].turns[0]' and incomplete["reason"] == "incomplete dialogue"
    assert "{{NAME}}" in result.conversations[1].messages[0]["content"]


def _template(tmp_path, **changes) -> str:
    base = yaml.safe_load((REPO / "data_templates" / "ticket_files_json.yaml").read_text())
    base.update(changes)
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(base))
    return str(path)


def test_a_filter_on_a_field_that_never_occurs_stops_the_build(tmp_path):
    folder = str(SAMPLES / "brightloop_ticket_files")
    misspelled = _template(tmp_path, keep=[{"field": "state", "equals": ["solved"], "level": "conversation"}])
    with pytest.raises(KitError, match=r"keep\[0\]\.field 'state' occurs in none of the 4 conversation records"):
        run_files(misspelled, folder)
    # the right field at the wrong level: comments have no status
    wrong_level = _template(tmp_path, keep=[{"field": "status", "equals": ["solved"]}])
    with pytest.raises(KitError, match="keep\\[0\\].field 'status'.*or its level"):
        run_files(wrong_level, folder)
    # CSV: a rule on a column the file lacks
    with pytest.raises(KitError, match=r"exclude\[0\]\.field 'visiblity': .* has no such column"):
        template = yaml.safe_load((REPO / "data_templates" / "ticket_threads_csv.yaml").read_text())
        template["exclude"] = [{"field": "visiblity", "equals": ["internal"]}]
        (tmp_path / "csv.yaml").write_text(yaml.safe_dump(template))
        run(str(tmp_path / "csv.yaml"), "brightloop_ticket_threads.csv")


def test_keep_and_exclude_compare_typed_values(tmp_path):
    folder = str(SAMPLES / "brightloop_ticket_files")
    # csat is a JSON number: `equals: [5]` and `equals: ["5"]` alike
    for csat in ([5], ["5"], [5.0]):
        result = run_files(_template(tmp_path, keep=[{"field": "csat", "equals": csat, "level": "conversation"}]), folder)
        account(result)
        assert [c.id.split(":")[-1] for c in result.conversations] == ["1001"]
    # roles given as JSON booleans / numbers in the export and as YAML keys
    path = tmp_path / "typed.json"
    path.write_text(json.dumps({"d1": {"turns": [{"agent": False, "text": "Where is my order?"},
                                                 {"agent": True, "text": "It arrives tomorrow."}]}}))
    template = _template(tmp_path, records_as="mapping", key_field="cid", messages="turns", keep=[], exclude=[],
                         fields={"conversation": "cid", "role": "agent", "text": "text"}, roles={False: "user", True: "assistant"})
    result = run_files(template, str(path))
    assert [m["role"] for m in result.conversations[0].messages] == ["user", "assistant"]


def test_a_json_file_that_is_one_record_and_records_as_errors(tmp_path):
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"id": 7, "status": "solved", "comments": [
        {"author_type": "end_user", "public": True, "created_at": "2026-03-02T09:00:00Z", "body": "Hi, is it shipped?"},
        {"author_type": "agent", "public": True, "created_at": "2026-03-02T09:01:00Z", "body": "Yes, today."}]}))
    result = run_files("ticket_files_json", str(path))
    assert len(result.conversations) == 1 and result.conversations[0].source["path"] == "$.comments[0]"
    with pytest.raises(KitError, match="no object at the top level"):
        (tmp_path / "list.json").write_text("[]")
        run_files("ticket_files_json", str(tmp_path / "list.json"))
    with pytest.raises(KitError, match="no list of records at `export.items`.*records_as: record"):
        run("qa_json", str(path))
    mapping = tmp_path / "mapping.json"
    mapping.write_text(json.dumps({"export": {"items": {"a": {}, "b": {}}}}))
    with pytest.raises(KitError, match="no list of records at `export.items`.*records_as: mapping"):
        run("qa_json", str(mapping))


def test_csv_rows_with_unquoted_delimiters_in_the_last_column_are_joined_and_counted(tmp_path):
    result = run("loose_chat_csv", "brightloop_loose_chat.csv")
    account(result)
    assert (result.input, result.kept, result.rejected) == (7, 6, 1)
    assert result.sources[0]["joined_rows"] == 4
    assert result.conversations[0].messages[0]["content"] == "Hi, my Loop Plug, the white one, keeps going offline."
    short = next(r for r in result.rejects if r["code"] == "bad_row")
    assert short["line"] == 8 and short["reason"] == "expected 4 fields, got 2"  # too few fields: still rejected
    # without the setting the same rows are rejected, as before
    template = yaml.safe_load((REPO / "data_templates" / "loose_chat_csv.yaml").read_text())
    del template["csv_extra_fields"]
    (tmp_path / "strict.yaml").write_text(yaml.safe_dump(template))
    strict = run(str(tmp_path / "strict.yaml"), "brightloop_loose_chat.csv")
    account(strict)
    assert strict.by_reason()["bad_row"] == 5 and "joined_rows" not in strict.sources[0]


def test_the_template_reference_in_docs_is_generated_from_the_schema():
    text = (REPO / "docs" / "templates.md").read_text(encoding="utf-8")
    assert text == data.template_reference(), "run `python -m kit.data reference > docs/templates.md`"
    for key in ("`records_as`", "`fields.text`", "`keep[].level`", "`csv_extra_fields`", "`ticket_files_json`"):
        assert key in text


def test_turns_json_reads_schema_guided_dialogue_lists(tmp_path):
    result = run("turns_json", "brightloop_turns.json")
    account(result)
    assert (result.input, result.kept, result.rejected, result.duplicates) == (17, 12, 1, 4)
    assert by_code(result) == {"empty_text": 1, "duplicate": 4}  # 1_00003 repeats 1_00001
    first = result.conversations[0]
    assert first.metadata == {"services": ["Orders_1"]} and first.messages[2]["content"] == "{{ADDRESS}} please."
    # an event named "Out of office" (Schema-Guided Dialogue's calendar) is no auto-reply: both turns stay in order
    schedule = result.conversations[2].messages
    assert len(schedule) == 6 and schedule[2]["content"] == "Call it Out of office and keep it at 16 degrees."
    # many files of the same layout: a folder
    for i in range(2):
        (tmp_path / f"dialogues_00{i}.json").write_text((SAMPLES / "brightloop_turns.json").read_text())
    many = run_files("turns_json", str(tmp_path))
    account(many)
    assert len(many.sources) == 2 and many.duplicates == 4 + 17 - 1  # the second file repeats the first (its empty turn is rejected)
