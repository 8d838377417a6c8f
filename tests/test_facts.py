"""kit.facts on hand-made support answers: extraction, normalization, recall, invented facts and contacts."""

import pytest

from kit import facts

TRAINING = [
    "Hi there, every Brightloop device has a 1-year warranty from the delivery date.",
    "Thanks for reaching out! Refunds reach your card within 5-7 business days.",
    "Hi there, cancel your order under Account > Orders > Cancel order before it ships.",
    "Plus costs $6.99 per month and includes a 3-year warranty on the Loop Cam Indoor.",
    "Send a photo to support@brightloop.example within 7 days, or start a return at brightloop.example/returns.",
]


def values(text: str) -> list[tuple[str, str]]:
    return [(f.kind, f.value) for f in facts.extract(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Standard shipping takes 3-5 business days.", [("DURATION", "3-5 business day")]),
        ("Standard shipping takes 3 to 5 business days.", [("DURATION", "3-5 business day")]),
        ("We reply within 1 hour.", [("DURATION", "1 hour")]),
        ("It has a 1-year warranty.", [("DURATION", "1 year")]),
        ("It has a one year warranty.", [("DURATION", "1 year")]),
        ("It is covered for 12 months.", [("DURATION", "1 year")]),
        ("Charges within the last 48 hours are refunded.", [("DURATION", "2 day")]),
        ("A Plus membership costs $6.99 per month; express is $12.", [("NAME", "plus"), ("MONEY", "USD 6.99"), ("MONEY", "USD 12.00")]),
        ("Express costs 12 USD.", [("MONEY", "USD 12.00")]),
        ("Members save 20% on bulbs.", [("PERCENT", "20%")]),
        ("Link up to 5 devices per hub.", [("LIMIT", "max 5 device")]),
        ("Use your 2.4 GHz network; the app needs iOS 15.", [("MEASURE", "2.4 ghz"), ("MEASURE", "ios 15")]),
        ("Open Account > Orders > Cancel order to stop it.", [("MENU", "account > orders > cancel order")]),
        ("In the app, tap + > Add device, then follow the prompts.", [("MENU", "+ > add device")]),
        ("You only need the Loop Hub for the Loop Motion Sensor.", [("NAME", "loop hub"), ("NAME", "loop motion sensor")]),
        ("Mail support@Brightloop.example today.", [("EMAIL", "support@brightloop.example")]),
        ("See https://www.brightloop.example/returns/ for labels.", [("URL", "brightloop.example/returns")]),
        ("Call 1-800-223-7777.", [("PHONE", "+18002237777")]),
        ("Thanks for reaching out! Restart the plug and try again.", []),
    ],
)
def test_extracts_and_normalizes_facts(text, expected):
    assert values(text) == expected


def test_equal_facts_written_differently_compare_equal():
    same_phone = {facts.extract(t)[0].value for t in ("1-800-223-7777", "(800) 223-7777", "+1 800 223 7777")}
    assert same_phone == {"+18002237777"}
    assert values("a 1-year warranty") == values("a one year warranty") == values("12 months of warranty")
    assert values("48 hours") == values("2 days")
    assert values("$12") == values("$12.00")
    assert values("7 days") != values("7 business days")


def test_the_issue_example_invented_warranty_is_counted_and_recall_misses_the_real_one():
    training = ["Hi there, all devices come with a 1-year warranty.", "Every device has a 1 year warranty from delivery."]
    scores = facts.fact_scores(
        generations=["The warranty period is 90 days from the order date."],
        references=["Hi there, your device has a 1-year warranty."],
        training_answers=training,
    )
    item = scores.items[0]
    assert [(f.kind, f.value) for f in item.invented] == [("DURATION", "90 day")]
    assert [(f.kind, f.value) for f in item.missed] == [("DURATION", "1 year")]
    assert scores.fact_recall == 0.0 and scores.invented_facts == 1 and scores.invented_contacts == 0
    assert [f.value for f in item.contradicted] == ["90 day"]


def test_a_known_value_in_the_wrong_answer_is_contradicted_not_invented():
    training = [*TRAINING, "Replacements keep the remaining warranty or 90 days.", "Express takes 1-2 business days."]
    scores = facts.fact_scores(
        generations=["The warranty period is 90 days from the order date.", "Refunds take 1-2 business days.",
                     "Cancel it under Account > Orders.", "Refunds take 5-7 business days, returns are free for 30 days."],
        references=["Every device has a 1-year warranty.", "Refunds reach your card within 5-7 business days.",
                    "Use Account > Orders > Cancel order before it ships.", "Refunds take 5-7 business days."],
        training_answers=training,
    )
    assert scores.invented_facts == 1  # only the "30 days" of the last answer: every other value is the company's
    assert [[f.text for f in item.contradicted] for item in scores.items] == [["90 days"], ["1-2 business days"], [], ["30 days"]]
    assert (scores.contradicted_facts, scores.contradicted_fact_answers) == (3, 3)
    assert scores.metrics()["contradicted_facts"] == 3
    book = facts.FactBook(TRAINING)
    assert book.check("Go to Account > Orders.").invented == []  # a step on the way to a known path
    assert [f.value for f in book.check("Go to Account > Payments.").invented] == ["account > payments"]


def test_invented_contact_details_are_counted_apart():
    scores = facts.fact_scores(
        generations=[
            "Please call us at +44 (02) 7833 233 and we'll help.",
            "Call 1-800-223-7777 or mail help@brightloop-support.com.",
            "Send a photo to support@brightloop.example within 7 days.",
        ],
        references=["Send a photo in the app chat.", "Message us in the app.", "Send a photo to support@brightloop.example."],
        training_answers=TRAINING,
    )
    invented = [[f.text for f in item.invented_contacts] for item in scores.items]
    assert invented == [["+44 (02) 7833 233"], ["1-800-223-7777", "help@brightloop-support.com"], []]
    assert scores.invented_contacts == 3 and scores.invented_contact_answers == 2
    assert scores.invented_facts == 3  # contacts are facts too; the known email and the 7 days are not invented
    assert scores.items[2].recalled[0].value == "support@brightloop.example"
    row = scores.metrics()
    assert row["invented_contacts"] == 3 and row["invented_fact_answers"] == 2 and row["fact_recall"] == 1.0


def test_report_section_lists_every_invented_contact():
    book = facts.FactBook(TRAINING)
    refs = ["Send a photo in the app chat.", "Plus costs $6.99 per month."]
    rows = {"tuned": book.score(["Call +44 (02) 7833 233 now.", "Plus costs $7.99 per month."], refs),
            "preferred": book.score(["Send a photo in the app chat.", "Plus costs $6.99 per month."], refs)}
    text = facts.report_markdown(rows, ids=["c-1", "c-2"])
    assert "| tuned | 0.000 | 2 | 2 of 2 | 1 | 1 |" in text and "| preferred | 1.000 | 0 | 0 of 2 | 0 | 0 |" in text
    assert "- **tuned**: invented contact `+44 (02) 7833 233` (PHONE, `c-1`); `$7.99` (MONEY, `c-2`)" in text
    assert "**preferred**" not in text


def test_allowlist_keeps_the_company_hotline_and_its_site():
    book = facts.FactBook(TRAINING, allowlist=["+1 800 223 7777", "brightloop.example"])
    item = book.check("Call (800) 223-7777 or see www.brightloop.example/help and help.brightloop.example/faq.")
    assert item.invented_contacts == []
    item = book.check("Or see brightloop-help.com/faq.")
    assert [f.value for f in item.invented_contacts] == ["brightloop-help.com/faq"]


def test_a_value_the_customer_wrote_is_not_invented():
    book = facts.FactBook(TRAINING)
    prompt = "I was charged $49.99 twice, call me on 415-555-0134"
    item = book.check("I'm sorry about the $49.99 charge; we'll call 415-555-0134.", prompt=prompt)
    assert item.invented == []
    assert [f.value for f in book.check("The charge was $49.99.").invented] == ["USD 49.99"]


def test_recall_counts_every_reference_fact_and_known_facts_are_not_invented():
    scores = facts.fact_scores(
        generations=["Refunds take 5-7 business days; cancel under Account > Orders > Cancel order.",
                     "Plus costs $6.99 per month."],
        references=["Refunds reach your card within 5-7 business days; cancel it under Account > Orders > Cancel order.",
                    "Plus is $6.99 a month with a 3-year warranty."],
        training_answers=TRAINING,
    )
    assert (scores.reference_facts, scores.recalled_facts) == (4, 3)
    assert scores.fact_recall == pytest.approx(0.75)
    assert scores.invented_facts == 0
    assert [f.value for f in scores.items[1].missed] == ["3 year"]
    assert scores.items[0].as_dict()["recalled"] == ["DURATION: 5-7 business day", "MENU: account > orders > cancel order"]


def test_no_reference_facts_gives_no_recall_rather_than_a_perfect_one():
    scores = facts.fact_scores(["Restart the plug."], ["Restart the plug and the router."], TRAINING)
    assert scores.fact_recall is None and scores.metrics()["fact_recall"] is None


def test_lengths_must_match():
    with pytest.raises(ValueError):
        facts.fact_scores(["a", "b"], ["a"], TRAINING)


# ---------------------------------------------------------------- properties on generated messy answers

import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.configuration import set_hypothesis_home_dir  # noqa: E402

set_hypothesis_home_dir(str(Path(tempfile.gettempdir()) / "kit-hypothesis"))

PIECES = st.sampled_from([
    "Hi there, ", "Refunds take ", "3-5 business days", "within 1 hour", "a 1-year warranty", "$6.99", "20%", " up to 5 devices",
    "Account > Orders > Cancel order", " > ", "Loop Hub", "Plus membership", "brightloop.example/returns", "support@brightloop.example",
    "+44 (02) 7833 233", "1-800-223-7777", "iOS 15", ". ", ", ", "\n", "é", "😀", "{{PHONE}}", "the ", "Order BL-401572", "",
])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(st.lists(PIECES, max_size=8).map("".join))
def test_every_fact_is_found_in_the_text_once_and_an_answer_recalls_its_own_facts(text):
    found = facts.extract(text)
    assert all(f.text and f.text in text and f.kind in facts.KINDS for f in found)
    assert len({f.key for f in found}) == len(found)
    scores = facts.fact_scores([text], [text], [text])  # an answer that is its own reference and training data
    assert scores.invented_facts == 0 and scores.fact_recall in (None, 1.0)


def test_extraction_stays_linear_on_a_long_unbroken_run():
    import time

    started = time.perf_counter()
    for text in ("a" * 30_000, "ab-" * 10_000, "Aa Bb > " * 5_000):
        facts.extract(text)
    assert time.perf_counter() - started < 3.0  # quadratic menu matching took about 50 s on the first text alone
