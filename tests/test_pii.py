import pytest

from kit import pii


@pytest.mark.parametrize(
    "text, kind, value",
    [
        ("mail me at dana.w+x@example.co.uk now", "EMAIL", "dana.w+x@example.co.uk"),
        ("call (415) 555-2671 today", "PHONE", "(415) 555-2671"),
        ("my mobile is +44 20 7946 0958.", "PHONE", "+44 20 7946 0958"),
        ("ring 020 7946 0958 please", "PHONE", "020 7946 0958"),  # a GB national number (phone_regions)
        ("number +49 30 901820 thanks", "PHONE", "+49 30 901820"),
        ("card 4111 1111 1111 1111 exp 09/28", "CARD", "4111 1111 1111 1111"),
        ("amex 3782 822463 10005", "CARD", "3782 822463 10005"),
        ("IBAN GB82 WEST 1234 5698 7654 32 thanks", "IBAN", "GB82 WEST 1234 5698 7654 32"),
        ("iban DE89370400440532013000.", "IBAN", "DE89370400440532013000"),
        ("my ip is 192.168.1.20", "IP", "192.168.1.20"),
        ("v6 2001:db8::8a2e:370:7334 here", "IP", "2001:db8::8a2e:370:7334"),
        ("ship to 742 Evergreen Terrace, Springfield, IL 62704 please", "ADDRESS", "742 Evergreen Terrace, Springfield, IL 62704"),
        ("send it to 6821 1st ave", "ADDRESS", "6821 1st ave"),
        ("Hauptstraße 12a, 10115 Berlin", "ADDRESS", "Hauptstraße 12a, 10115 Berlin"),
        ("PO Box 1234", "ADDRESS", "PO Box 1234"),
        ("London SW1A 1AA", "ADDRESS", "London SW1A 1AA"),  # the city before the postcode too
    ],
)
def test_each_kind_is_found_with_its_exact_span(text, kind, value):
    findings = pii.scan(text)
    assert [(f.kind, f.value) for f in findings] == [(kind, value)]
    assert text[findings[0].start : findings[0].end] == value


@pytest.mark.parametrize(
    "text",
    [
        "card 4111-1111-1111-1112 fails Luhn",
        "order 404-9266355-4116356 is an order number",  # passes Luhn, but not printed like a card
        "order BL-482913 shipped on 2026-03-01 10:30, 3-5 days",
        "firmware v2.1.0.4 at 10:30",
        "I have 3 red lamps in the hall and 2 day shipping way",
        "the ticket GB82 is open",
        "version 999.1.1.1 is not an address",
    ],
)
def test_lookalikes_are_not_findings(text):
    assert pii.scan(text) == []


def test_placeholders_are_never_findings_and_redacted_text_scans_clean():
    text = "Hi {{NAME}}, write to dana@example.com or call +1 (415) 555-2671; card 4111 1111 1111 1111."
    redacted, counts = pii.redact(text, names=["Dana Reyes"])
    assert redacted == "Hi {{NAME}}, write to {{EMAIL}} or call {{PHONE}}; card {{CARD}}."
    assert counts == {"EMAIL": 1, "PHONE": 1, "CARD": 1}
    assert pii.scan(redacted, names=["Dana Reyes"]) == []


def test_allowlist_keeps_company_contacts():
    text = "Email support@brightloop.example or call 1-800-555-0199; I am at jo@example.com"
    redacted, counts = pii.redact(text, allowlist=["support@brightloop.example", "+1 800 555 0199"])
    assert redacted == "Email support@brightloop.example or call 1-800-555-0199; I am at {{EMAIL}}"
    assert counts == {"EMAIL": 1}


def test_known_names_full_and_parts_case_insensitive_but_common_words_only_capitalised():
    text = "Hi Crystal Minh! crystal clear. Crystal, thanks. dana whitfield and WHITFIELD, May I help?"
    redacted, counts = pii.redact(text, names=["crystal minh", "Dana Whitfield", "May Lee"])
    assert redacted == "Hi {{NAME}}! crystal clear. {{NAME}}, thanks. {{NAME}} and {{NAME}}, {{NAME}} I help?"
    assert counts == {"NAME": 5}
    assert pii.redact("Mayday and Danas", names=["May Lee", "Dana Whitfield"])[1] == {}


def test_custom_patterns_and_kind_selection():
    text = "account AC-99812 and mail jo@example.com"
    assert pii.redact(text, patterns=[r"AC-\d{5}"])[0] == "account {{CUSTOM}} and mail {{EMAIL}}"
    assert pii.redact(text, patterns=[r"AC-\d{5}"], kinds=["CUSTOM"])[0] == "account {{CUSTOM}} and mail jo@example.com"
    with pytest.raises(ValueError, match="unknown PII kinds"):
        pii.Scanner(kinds=["SSN"])


def test_overlaps_keep_the_longest_finding():
    # An email whose local part is a known name: one EMAIL, not a NAME inside it.
    redacted, counts = pii.redact("write to dana.whitfield@example.com", names=["Dana Whitfield"])
    assert redacted == "write to {{EMAIL}}" and counts == {"EMAIL": 1}


def test_validators():
    assert pii.luhn_ok("4539148803436467") and not pii.luhn_ok("4539148803436468")
    assert pii.iban_ok("GB82 WEST 1234 5698 7654 32") and not pii.iban_ok("GB82 WEST 1234 5698 7654 33")
    assert pii.card_ok("5555-5555-5555-4444") and not pii.card_ok("5180735251790")


def test_many_names_stay_word_bounded():
    syllables = ["ka", "lo", "mi", "ren", "tu", "vas", "zo", "bel", "dor", "fi"]
    names = [f"{a}{b}{c} {c}{a}{b}".title() for a in syllables for b in syllables for c in syllables] + ["Ana Souza"]
    matcher = pii.name_matcher(tuple(names))
    assert len(names) == 1001
    assert matcher.spans("banana bread, Ana!") == [(14, 17)]
    assert matcher.spans("kalomi and Fikatu Tufika.") == [(0, 6), (11, 24)]
    assert matcher.spans("kalomiX is not a name") == []


def _pii_fragments():
    from hypothesis import strategies as st

    return st.sampled_from([
        "Hi", "order BL-123456", "in 3-5 days", " ", "\n", ", ", ".", ":", "(", ")", "-", "/", "+", "0", "12", "2026-03-14",
        "9:14", "dana.w+x@example.co.uk", "@", "(415) 555-2671", "+44 20 7946 0958", "020 7946 0958", "415.555.2671",
        "4111 1111 1111 1111", "3782 822463 10005", "GB82 WEST 1234 5698 7654 32", "DE89370400440532013000",
        "192.168.1.20", "1.2.3.4", "2001:db8::8a2e:370:7334", "fe::ab", "742 Evergreen Terrace", "6821 1st ave",
        "12 Mill Way", "Hauptstraße 12a", "Hauptstrasse 12", "Kerkstraat 5", "PO Box 1234", "SW1A 1AA", "1AA", "Dana",
        "Whitfield", "dana whitfield", "May", "may", "O'Neil", "{{EMAIL}}", "support@brightloop.example", "é", "\x00",
        "1st", "street", "box", "straight", "weg", "+49 301 2345", "+33 1 2345 67",
    ])


@pytest.mark.parametrize("setup", ["default", "names_and_allowlist", "kinds", "patterns"])
def test_batch_gate_marks_every_text_with_a_finding_and_redacts_the_same(setup):
    """`Scanner.candidates` may mark too much but never too little, detector by detector; `redact_many`
    (which runs only the marked detectors) equals `redact` text by text."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    scanner = {
        "default": pii.Scanner(),
        "names_and_allowlist": pii.Scanner(allowlist=["support@brightloop.example"], names=["Dana Whitfield", "May O'Neil"]),
        "kinds": pii.Scanner(kinds=["EMAIL", "NAME"], names=["Dana Whitfield"]),
        "patterns": pii.Scanner(patterns=[r"BL-\d+"]),
    }[setup]

    @settings(max_examples=150, deadline=None, database=None)
    @given(st.lists(st.lists(_pii_fragments(), max_size=6).map("".join), min_size=2, max_size=10))
    def check(batch):
        for text, marks in zip(batch, scanner.candidates(batch)):
            # each finding's detector is among those the marks allow (none for an unmarked text)
            assert {f.kind for f in scanner.scan(text)} <= pii._KINDS_OF_MARKS[marks], text
        assert scanner.redact_many(batch) == [scanner.redact(text) for text in batch]

    check()
