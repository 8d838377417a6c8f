import json
from pathlib import Path

import pytest

from kit import data
from kit.errors import KitError
from kit.recipe import load_recipe
from tests.conftest import QA_ROWS, write_qa_csv

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data_templates" / "samples" / "brightloop_support_qa.csv"


def test_sample_log_accounts_for_every_record():
    result = data.convert([(str(SAMPLE), data.load_template("qa_csv"))], system_prompt="Be brief.")
    assert result.input == 363
    assert len(result.conversations) == 353 and result.rejected == 6 and result.duplicates == 4
    by_record = {r["record"]: r for r in result.rejects}
    assert by_record[165]["reason"] == "expected 5 fields, got 6" and by_record[165]["line"] == 171
    assert by_record[19]["reason"] == "empty agent_answer"
    assert by_record[222]["reason"] == "empty customer_question"  # whitespace only
    assert by_record[43]["reason"].startswith("duplicate of") and by_record[43]["kind"] == "duplicate"
    first = result.conversations[0]
    assert [m["role"] for m in first.messages] == ["system", "user", "assistant"]
    assert first.metadata["category"] == "device_troubleshooting" and first.metadata["id"] == "T-100001"
    multiline = next(c for c in result.conversations if c.source["record"] == 7)
    assert "\n" in multiline.messages[1]["content"] and multiline.source["line"] == 8


def test_sample_has_several_topics():
    result = data.convert([(str(SAMPLE), data.load_template("qa_csv"))], system_prompt=None)
    categories = {c.metadata["category"] for c in result.conversations}
    assert len(categories) >= 5
    assert result.conversations[0].messages[0]["role"] == "user"  # no system prompt asked for


@pytest.mark.parametrize("encoding", ["utf-8-sig", "cp1252"])
def test_encodings_and_delimiters(tmp_path, encoding):
    path = tmp_path / "export.csv"
    text = "customer_question;agent_answer\ncafé is closed?;\"Hi there; we reopen at 8.\"\n"
    path.write_bytes(text.encode(encoding))
    result = data.convert([(str(path), data.load_template("qa_csv").model_copy(update={"fields": data.TemplateFields(question="customer_question", answer="agent_answer")}))], None)
    assert result.input == 1 and result.conversations[0].messages[0]["content"] == "café is closed?"
    assert result.conversations[0].messages[1]["content"] == "Hi there; we reopen at 8."


def test_missing_column_is_a_clear_error(tmp_path):
    path = tmp_path / "export.csv"
    path.write_text("question,reply\nhi,hello\n")
    with pytest.raises(KitError, match="no column 'customer_question'"):
        data.convert([(str(path), data.load_template("qa_csv"))], None)


def test_split_is_seeded_exact_and_disjoint():
    items = [{"id": str(i)} for i in range(100)]
    first = data.split(items, 0.1, 0.2, seed=3)
    again = data.split(items, 0.1, 0.2, seed=3)
    other = data.split(items, 0.1, 0.2, seed=4)
    assert first == again and first != other
    assert [len(first[k]) for k in ("train", "validation", "test")] == [70, 10, 20]
    ids = [x["id"] for k in first for x in first[k]]
    assert sorted(ids) == sorted(x["id"] for x in items)


def test_build_writes_dataset_and_rebuilds_only_when_stale(tiny_recipe):
    recipe = load_recipe(tiny_recipe())
    folder = data.build(recipe)
    stats = json.loads((folder / "stats.json").read_text())
    assert stats["input"] == len(QA_ROWS) == stats["kept"] and stats["rejected"] == stats["duplicates"] == 0
    lines = {name: (folder / f"{name}.jsonl").read_text().splitlines() for name in data.DATASET_SPLITS}
    assert sum(len(v) for v in lines.values()) == len(QA_ROWS)
    assert json.loads(lines["train"][0])["messages"][0] == {"role": "system", "content": "You are a support assistant."}
    mtime = (folder / "stats.json").stat().st_mtime_ns
    data.build(recipe)
    assert (folder / "stats.json").stat().st_mtime_ns == mtime  # up to date: kept
    write_qa_csv(Path(recipe.data.sources[0].path), extra_lines=["T-99,2026,general,new question,,", "T-100,2026,general,,"])
    stats = json.loads((data.build(recipe) / "stats.json").read_text())
    assert stats["input"] == len(QA_ROWS) + 2 and stats["rejected"] == 2
    rejects = [json.loads(line) for line in (folder / "rejects.jsonl").read_text().splitlines()]
    assert {r["reason"] for r in rejects} == {"expected 5 fields, got 6", "empty customer_question"}
    assert not [p for p in folder.parent.iterdir() if ".tmp-" in p.name]


def test_unknown_template_lists_known_ones():
    with pytest.raises(KitError, match="qa_csv"):
        data.find_template("zendesk_v9")


def test_cli_templates_and_preview(tiny_recipe, capsys):
    data.main(["templates"])
    assert "qa_csv" in capsys.readouterr().out
    data.main(["preview", str(tiny_recipe()), "-n", "2"])
    out = capsys.readouterr().out
    assert out.count("--- ") == 3 and "record 1 (line 2)" in out and f"{len(QA_ROWS)} records" in out


def test_large_builds_report_each_phase_and_small_ones_stay_quiet(tiny_recipe, capsys, monkeypatch):
    lines = []
    sample = REPO / "data_templates" / "samples" / "brightloop_ticket_threads.csv"
    settings = data.Settings(workers=2, progress=lines.append)  # workers set: read in 2 processes at any size
    result = data.convert([(str(sample), data.load_template("ticket_threads_csv"))], None, settings)
    assert [line.split(":")[0].split(" ")[0] for line in lines] == ["reading", sample.name, sample.name, sample.name]
    assert f"{result.input:,} records read in" in lines[1] and lines[1].endswith("(in 2 processes)")
    assert f"assembling {result.assembled:,} conversations" in lines[2] and "assembled in" in lines[3]

    from kit import speed

    kept = []
    monkeypatch.setattr(speed, "keep_freed_memory", lambda: kept.append(1) or True)
    recipe = load_recipe(tiny_recipe())
    data.build(recipe, force=True)
    assert "kit.data: reading" not in capsys.readouterr().err and not kept
    monkeypatch.setattr(data, "PARALLEL_MIN_BYTES", 0)  # every export counts as large
    data.build(recipe, force=True)
    err = capsys.readouterr().err
    assert "kit.data: reading" in err and "kit.data: writing" in err
    assert kept  # a large build keeps freed memory for reuse (glibc malloc)
