"""The public logs in ../shared/data convert with the shipped YAML templates (skipped when absent).

These files are never copied into the repository; a fresh clone has no ../shared, so the tests skip.
"""

import json
from pathlib import Path

import pytest

from kit import data

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
TWCS = SHARED / "twcs_customer_support_on_twitter" / "twcs_kaggle_sample.csv"
ABCD = SHARED / "abcd" / "abcd_sample.json"


@pytest.mark.slow
@pytest.mark.skipif(not TWCS.is_file(), reason="../shared/data is not present")
def test_twcs_sample_rebuilds_threads():
    result = data.convert([(str(TWCS), data.load_template("reply_threads_csv"), "reply_threads_csv")], None)
    assert result.input == 93 and result.input == result.kept + result.rejected + result.duplicates
    assert result.threads["threads"] >= 25 and len(result.conversations) >= 20
    for conversation in result.conversations:
        roles = [m["role"] for m in conversation.messages]
        assert "user" in roles and roles[-1] == "assistant"
        assert not any(m["content"].startswith("@") for m in conversation.messages)


@pytest.mark.slow
@pytest.mark.skipif(not ABCD.is_file(), reason="../shared/data is not present")
def test_abcd_sample_drops_actions_and_redacts_scenario_people():
    result = data.convert([(str(ABCD), data.load_template("dialogue_json"), "dialogue_json")], None)
    dialogues = json.loads(ABCD.read_text())
    assert result.input == sum(len(d["original"]) for d in dialogues)
    assert len(result.conversations) == len(dialogues) and result.by_reason()["excluded"] == sum(
        1 for d in dialogues for speaker, _ in d["original"] if speaker == "action")
    text = json.dumps([c.row() for c in result.conversations]).lower()
    for dialogue in dialogues:
        personal = dialogue["scenario"]["personal"]
        for key in ("customer_name", "username", "email", "phone"):
            if personal.get(key):
                assert personal[key].lower() not in text, key
