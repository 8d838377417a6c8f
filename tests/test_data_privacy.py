"""A planted canary list of private data never appears in any file kit.data writes (rejects included)."""

import csv
import json
import re
from pathlib import Path

import yaml

from kit import data
from kit.recipe import load_recipe

CANARIES = {
    "EMAIL": ["canary.one@example.com", "c2+tag@sub.example.org", "ZED.Q@example.net"],
    "PHONE": ["+1 415 555 0134", "(212) 555-0147", "+44 20 7946 0321", "020 7946 0876", "+49 30 1234567"],
    "CARD": ["4539 1488 0343 6467", "5555555555554444", "3782-822463-10005"],
    "IBAN": ["GB82 WEST 1234 5698 7654 32", "DE89370400440532013000", "FR14 2004 1010 0505 0001 3M02 606"],
    "ADDRESS": ["742 Evergreen Terrace", "221B Baker Street", "1600 Pennsylvania Avenue", "Hauptstraße 12a", "PO Box 4417",
                "SW1A 1AA"],
    "IP": ["192.168.44.17"],
    "NAME": ["Zephyrine", "Quackenbush"],
}
ALL = [value for values in CANARIES.values() for value in values]


def sentence(i: int) -> str:
    value = ALL[i % len(ALL)]
    return f"Case {i}: my details are {value}, please update them."


def write_sources(folder: Path) -> list[dict]:
    threads = folder / "threads.csv"
    with threads.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ticket_id", "created_at", "author_role", "author_name", "visibility", "category", "subject", "body"])
        for i in range(len(ALL)):
            ticket = f"T{i}"
            writer.writerow([ticket, "2026-03-01T10:00:00", "customer", "Zephyrine Quackenbush", "public", "c", ALL[i], sentence(i)])
            writer.writerow([ticket, "2026-03-01T10:01:00", "agent", "Agent", "internal", "c", "s", f"note {ALL[i]}"])
            writer.writerow([ticket, "2026-03-01T10:02:00", "agent", "Agent", "public", "c", "s", f"Hi Zephyrine, noted {ALL[-i]}."])
            writer.writerow([ticket, "2026-03-01T10:03:00", "customer", "Zephyrine Quackenbush", "public", "c", "s", f"thanks {ALL[i - 1]}"])
        writer.writerow(["T-bad", "2026", "customer", "x", ALL[0], ALL[5], ALL[9], ALL[12], "extra"])  # wrong column count
        writer.writerow(["T-auto", "2026-03-01T10:00:00", "agent", "Bot", "public", "c", "s", f"Auto-reply: out of office, call {ALL[3]}"])
    qa = folder / "qa.jsonl"
    lines = [json.dumps({"question": sentence(i), "answer": f"Sent to {ALL[-1 - i]}.", "intent": ALL[i]}) for i in range(len(ALL))]
    lines += lines[:3]  # duplicates
    lines.append('{"question": "' + ALL[2] + '", "answer": ')  # invalid JSON line
    lines.append(json.dumps({"question": sentence(1)}))  # missing answer
    qa.write_text("\n".join(lines) + "\n", encoding="utf-8")
    helpdesk = folder / "helpdesk.json"
    helpdesk.write_text(json.dumps({
        "users": [{"id": 1, "name": "Zephyrine Quackenbush", "email": "ZED.Q@example.net", "role": "end-user"},
                  {"id": 2, "name": "Agent Smith", "role": "agent"}],
        "tickets": [{"id": 10, "subject": ALL[4], "custom_fields": {"category": ALL[6]}, "comments": [
            {"author_id": 1, "public": True, "created_at": "2026-03-01T10:00:00Z", "html_body": f"<p>{sentence(7)}</p>"},
            {"author_id": 2, "public": False, "created_at": "2026-03-01T10:01:00Z", "html_body": f"<p>private {ALL[8]}</p>"},
            {"author_id": 2, "public": True, "created_at": "2026-03-01T10:02:00Z", "html_body": "<p>Done, Zephyrine.</p>"},
            {"author_id": 9, "public": True, "created_at": "2026-03-01T10:03:00Z", "html_body": f"<p>{ALL[10]}</p>"}]},
            {"id": 11, "subject": "s", "comments": []}],
    }), encoding="utf-8")
    return [{"path": str(threads), "template": "ticket_threads_csv"}, {"path": str(qa), "template": "qa_jsonl"},
            {"path": str(helpdesk), "template": "helpdesk_json"}]


def test_canaries_never_reach_any_output_file(tmp_path, tiny_model_dir):
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump({
        "name": "canary", "output_dir": str(tmp_path / "runs"), "model": {"name": str(tiny_model_dir)},
        "data": {"sources": write_sources(tmp_path), "folds": 2, "augment": {"enabled": True},
                 "validation_fraction": 0.2, "test_fraction": 0.2},
    }))
    folder = data.build(load_recipe(recipe_path))
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"train.jsonl", "validation.jsonl", "test.jsonl", "rejects.jsonl", "stats.json",
                                       "README.md", "fold_0.jsonl", "fold_1.jsonl"}
    stats = json.loads((folder / "stats.json").read_text())
    assert stats["input"] == stats["kept"] + stats["rejected"] + stats["duplicates"]
    assert stats["rejected"] > 10 and stats["duplicates"] > 0 and stats["kept"] > 20  # every path was exercised
    for kind in CANARIES:
        assert stats["pii"].get(kind, 0) > 0, kind
    for path in files:
        text = path.read_text(encoding="utf-8")
        compact = re.sub(r"[\s\-().]", "", text)
        for canary in ALL:
            assert canary.lower() not in text.lower(), f"{canary!r} leaked into {path.name}"
            if sum(c.isdigit() for c in canary) >= 7:
                assert re.sub(r"[\s\-().]", "", canary) not in compact, f"{canary!r} (compacted) leaked into {path.name}"


# Exports that group threads by the customer: the conversation id is an email, a phone number or a name.
KEYS = ["nora.blake@example.com", "+1 415 555 0134", "Nora Blake", "raj@example.org", "(212) 555-0147", "Raj Patel",
        "dana.x@example.net"]


def write_keyed_sources(folder: Path) -> list[dict]:
    rows = [["customer", "created_at", "author_role", "author_name", "visibility", "category", "subject", "body"]]

    def thread(key: str, name: str, texts: list[tuple[str, str]]) -> None:
        for minute, (role, text) in enumerate(texts):
            rows.append([key, f"2026-03-01T10:0{minute}:00", role, name if role == "customer" else "Sam", "public",
                         f"plan of {key}", f"order for {key}", text])

    thread(KEYS[0], "Nora Blake", [("customer", "Where is my order?"), ("agent", "It ships today.")])
    thread(KEYS[1], "Nora Blake", [("customer", "Can I change the address?"), ("agent", "Yes, under Account.")])
    thread(KEYS[2], "Nora Blake", [("customer", "Is the lamp dimmable?"), ("agent", "Yes, with the app.")])
    thread(KEYS[3], "Raj Patel", [("customer", "Hello? Anyone there?")])  # no agent answer: rejected
    thread(KEYS[4], "Raj Patel", [("customer", "Do you ship to Canada?"), (KEYS[3], "Yes.")])  # unknown role: an email
    thread(KEYS[5], "Raj Patel", [("customer", "Where is my order?"), ("agent", "It ships today.")])  # duplicate of the first
    thread("T-1", "Raj Patel", [("customer", "What does Plus cost?"), ("agent", "$6.99 a month.")])  # an id kept as it is
    thread(KEYS[6], "Dana X", [("customer", "Refund please."), ("agent", "Done, 5-7 days.")])
    threads = folder / "by_customer.csv"
    with threads.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    template = yaml.safe_load((Path(data.TEMPLATES_DIR) / "ticket_threads_csv.yaml").read_text())
    template["fields"].update(conversation="customer", metadata=["category", "subject"], names=["author_name", "customer"])
    (folder / "by_customer.yaml").write_text(yaml.safe_dump(template))
    dialogues = folder / "by_email.json"  # a mapping keyed by the customer's email: the key is in every JSON path
    dialogues.write_text(json.dumps({
        KEYS[0]: {"services": ["Orders"], "complete": True, "turns": [
            {"speaker": "USER", "utterance": "Has my refund arrived?"}, {"speaker": "SYSTEM", "utterance": "Yes, today."},
            {"speaker": KEYS[6], "utterance": "Thanks!"}]},  # unknown role
        KEYS[3]: {"services": ["Returns"], "complete": False, "turns": [{"speaker": "USER", "utterance": "Return?"}]},
        KEYS[4]: {"services": ["Orders"], "complete": True, "turns": [  # a duplicate of the first
            {"speaker": "USER", "utterance": "Has my refund arrived?"}, {"speaker": "SYSTEM", "utterance": "Yes, today."}]},
    }), encoding="utf-8")
    return [{"path": str(threads), "template": str(folder / "by_customer.yaml")},
            {"path": str(dialogues), "template": "dialogues_by_id_json"}]


def test_private_conversation_ids_never_reach_any_output_file(tmp_path, tiny_model_dir):
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump({
        "name": "keyed", "output_dir": str(tmp_path / "runs"), "model": {"name": str(tiny_model_dir)},
        "data": {"sources": write_keyed_sources(tmp_path), "validation_fraction": 0.2, "test_fraction": 0.2},
    }))
    recipe = load_recipe(recipe_path)
    folder = data.build(recipe)
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"train.jsonl", "validation.jsonl", "test.jsonl", "rejects.jsonl", "stats.json", "README.md"}
    for path in files:
        text = path.read_text(encoding="utf-8")
        compact = re.sub(r"[\s\-().+]", "", text)
        for value in KEYS + ["Dana X"]:
            assert value.lower() not in text.lower(), f"{value!r} leaked into {path.name}"
            assert json.dumps(value)[1:-1].lower() not in text.lower(), f"{value!r} (escaped) leaked into {path.name}"
            if sum(c.isdigit() for c in value) >= 7:
                assert re.sub(r"[\s\-().+]", "", value) not in compact, f"{value!r} (compacted) leaked into {path.name}"

    stats = json.loads((folder / "stats.json").read_text())
    assert stats["input"] == 15 + 6 == stats["kept"] + stats["rejected"] + stats["duplicates"]
    assert stats["rejected_by_reason"] == {"duplicate": 4, "excluded": 1, "no_agent_answer": 2, "unknown_role": 2}
    rows = [row for name in data.DATASET_SPLITS for row in data.load_split(recipe, name)]
    ids = {row["source"]["file"].rsplit("/", 1)[-1] + " " + str(row["source"]["record"]): row["id"] for row in rows}
    assert len(set(ids.values())) == len(rows) == 6
    # Redacted and suffixed with the conversation's first record number; an id with nothing private stays as it is.
    assert ids == {"by_customer.csv 1": "by_customer.csv:{{EMAIL}}#1", "by_customer.csv 3": "by_customer.csv:{{PHONE}}#3",
                   "by_customer.csv 5": "by_customer.csv:{{NAME}}#5", "by_customer.csv 12": "by_customer.csv:T-1",
                   "by_customer.csv 14": "by_customer.csv:{{EMAIL}}#14",
                   "by_email.json 1": "by_email.json:{{EMAIL}}#1"}
    rejects = data.read_jsonl(folder / "rejects.jsonl")
    reasons = {r["reason"] for r in rejects if r["code"] in ("no_agent_answer", "unknown_role")}
    assert reasons == {"conversation has no agent answer (conversation {{EMAIL}}#7)",
                       "conversation has no agent answer (conversation {{PHONE}}#8)",  # its agent row was rejected
                       "unknown role '{{EMAIL}}': add it to the template's roles"}
    # JSON paths: the unknown role, the incomplete dialogue, the duplicate's two turns
    assert {r["path"] for r in rejects if "path" in r} == {'["{{EMAIL}}"].turns[2]', '["{{EMAIL}}"].turns[0]',
                                                           '["{{PHONE}}"].turns[0]', '["{{PHONE}}"].turns[1]'}

    again = data.build(recipe, force=True)  # ids and splits are the same on every build
    assert [row["id"] for name in data.DATASET_SPLITS for row in data.load_split(recipe, name)] == \
        [row["id"] for row in rows]
    assert again == folder
    inline, forked = (data.convert(data.recipe_sources(recipe), None, data.Settings(workers=workers)) for workers in (0, 2))
    assert [c.id for c in forked.conversations] == [c.id for c in inline.conversations]  # assembled in worker processes
    assert forked.rejects == inline.rejects
