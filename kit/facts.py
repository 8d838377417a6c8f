"""Checkable facts in support answers, and whether a model states the company's facts or invents its own.

    from kit import facts
    facts.extract("Refunds take 3-5 business days; call 1-800-223-7777.")
    # [Fact(kind='DURATION', value='3-5 business day', ...), Fact(kind='PHONE', value='+18002237777', ...)]
    scores = facts.fact_scores(generations, references, training_answers, allowlist=["help@brightloop.example"])
    scores.metrics()  # {"fact_recall": 0.41, "invented_facts": 7, "invented_contacts": 0, ...}

A support answer carries facts a support lead can check: amounts (`$6.99`), durations and deadlines
(`3-5 business days`, `within 1 hour`, `1-year`), percentages, limits (`up to 5 devices`), measures and
versions (`2.4 GHz`, `iOS 15`), menu paths (`Account > Orders > Cancel order`), plan and product names
(`Loop Cam Indoor`, `Plus membership`), URLs, emails and phone numbers. Each is normalized so that equal facts
compare equal: `1-year` = `one year` = `12 months`, `48 hours` = `2 days`, `$12` = `$12.00`,
`1-800-223-7777` = `(800) 223-7777` = `+1 800 223 7777` (phones through `phonenumbers`, the detection
through `kit.pii`, the same as the leak scan).

Per model (`fact_scores` / `FactBook.score`):
- **fact recall**: the share of the reference answers' facts that the generated answers state;
- **invented facts**: facts in a generated answer that appear nowhere in the training answers (nor in the
  customer's own message): the company never said them. Contacts are facts, so they are counted here too;
- **invented contacts**: the phones, emails and URLs among those, unless allowlisted (the company's public
  hotline or support address; an allowlisted bare host such as `brightloop.example` allows every URL on it).
  These are counted apart from `kit.pii` leaks, which are real customer data repeated by a model;
- **contradicted facts**: values the answer states where its reference states another value of the same kind
  (a duration, amount, percentage, limit, measure, menu path or contact) and the answer not the reference's.
  "The warranty period is 90 days" against a reference saying "1-year" is one, even though the company does
  say "90 days" elsewhere (for replacements), so it is not invented. A menu path that is a prefix of the
  reference's agrees with it. It can also count a true but unrelated value (a 30-day return window in an
  answer whose reference gives the refund time); compare models on it, do not read it alone.

Extraction is a set of plain rules, not a model: it misses facts phrased in unusual ways, and counts only
what it can normalize. The rules are tested on hand-made answers in tests/test_facts.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import phonenumbers

from kit import pii

KINDS = ("URL", "EMAIL", "PHONE", "MONEY", "DURATION", "PERCENT", "MEASURE", "LIMIT", "MENU", "NAME")
CONTACT_KINDS = ("URL", "EMAIL", "PHONE")
# Kinds where two different values in an answer and its reference contradict (names legitimately vary).
CONTRADICTION_KINDS = ("URL", "EMAIL", "PHONE", "MONEY", "DURATION", "PERCENT", "MEASURE", "LIMIT", "MENU")

_WORD_NUMBERS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
    "eleven": 11, "twelve": 12, "fourteen": 14, "fifteen": 15, "twenty": 20, "thirty": 30, "forty": 40,
    "forty-five": 45, "sixty": 60, "ninety": 90, "hundred": 100,
}
_NUM = r"(?:\d+(?:\.\d+)?|" + "|".join(sorted(_WORD_NUMBERS, key=len, reverse=True)) + r")"
_RANGE = r"(?:\s*(?:-|–|—|to)\s*(?P<b>" + _NUM + r"))?"

# Durations: every unit maps to a base unit of its group, so `48 hours` and `2 days` are one fact.
# Business days are a unit of their own (not convertible), months and years another.
_DURATION_UNITS = {
    "second": ("clock", 1), "sec": ("clock", 1), "minute": ("clock", 60), "min": ("clock", 60),
    "hour": ("clock", 3600), "hr": ("clock", 3600), "day": ("clock", 86400), "week": ("clock", 604800),
    "month": ("calendar", 1), "year": ("calendar", 12),
    "yr": ("calendar", 12),
}
_RENDER_UNITS = {"clock": [("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)],
                 "calendar": [("year", 12), ("month", 1)], "business": [("business day", 1)]}
_DURATION = re.compile(
    rf"(?<![\w.$£€])(?P<a>{_NUM}){_RANGE}(?:\s+|-)(?P<biz>(?:business|working)\s+)?"
    r"(?P<unit>seconds?|secs?|minutes?|mins?|hours?|hrs?|days?|weeks?|months?|years?|yrs?)\b",
    re.IGNORECASE,
)
_CURRENCY = {"$": "USD", "£": "GBP", "€": "EUR", "usd": "USD", "dollar": "USD", "dollars": "USD", "eur": "EUR",
             "euro": "EUR", "euros": "EUR", "gbp": "GBP", "pound": "GBP", "pounds": "GBP"}
_MONEY = re.compile(
    r"(?P<sym>[$£€])\s?(?P<amt>\d[\d,]*(?:\.\d{1,2})?)(?!\d)"
    r"|(?<![\w.])(?P<amt2>\d[\d,]*(?:\.\d{1,2})?)\s?(?P<code>USD|EUR|GBP|dollars?|euros?|pounds?)\b",
    re.IGNORECASE,
)
_PERCENT = re.compile(r"(?<![\w.])(?P<n>\d+(?:\.\d+)?)\s?(?:%|percent\b|per cent\b)", re.IGNORECASE)
_MEASURE = re.compile(
    r"(?<![\w.])(?P<n>\d+(?:\.\d+)?)\s?(?P<unit>GHz|MHz|Mbps|Gbps|GB|MB|TB|kB|mAh|W|V|°F|°C|ft|feet|meters?|metres?|cm|mm)(?![\w°])"
    r"|\b(?P<os>iOS|iPadOS|Android|macOS|Windows|watchOS)\s(?P<ver>\d+(?:\.\d+)?)\b",
)
_LIMIT = re.compile(
    rf"\b(?P<q>up to|at most|no more than|a maximum of|maximum of|max\.?|at least|a minimum of|minimum of|only)\s+"
    rf"(?P<n>{_NUM})\s+(?P<noun>[A-Za-z][\w-]*)",
    re.IGNORECASE,
)
_LIMIT_WORDS = {"up to": "max", "at most": "max", "no more than": "max", "a maximum of": "max", "maximum of": "max",
                "max": "max", "max.": "max", "only": "max", "at least": "min", "a minimum of": "min", "minimum of": "min"}
# A menu path: 2+ segments joined by `>` (or an arrow); the ends are trimmed to the UI words below.
# Words are atomic (possessive `++`) and a match starts at a word's start: linear time on a long run of letters.
_SEGMENT = r"[\w+&'/-]++(?:[ ][\w+&'/-]++){0,3}"
_MENU = re.compile(rf"(?<![\w+&'/-]){_SEGMENT}(?:\s*(?:>|›|→|»)\s*{_SEGMENT})+")
_MENU_SPLIT = re.compile(r"\s*(?:>|›|→|»)\s*")
# Words that end a menu path's last segment or that open a sentence before a menu or name.
_STOP = frozenset(
    "a an and or then to in on at for of if when where while before after until so but the your you it its is are "
    "be will can from with by this that these those which who once as into onto via within under first next below "
    "above here there now again".split()
)
_OPENERS = frozenset(
    "the a an your our my this that these those in on at if when thanks thank hi hello hey sorry yes no please open "
    "tap go use check click select choose visit navigate head press plug restart reset unplug contact call email "
    "message send try make set turn sign log find see keep ask add then and or also you we it our unfortunately "
    "great good sure welcome dear for from with under most every one all some any each both many new older first "
    "wait".split()
)
_NAME_RUN = re.compile(r"(?<![\w'-])[A-Z][\w'-]*(?:[ ](?:[A-Z][\w'-]*|\d+(?![\w'-])))+")
_PLAN = re.compile(r"(?<![\w'-])(?P<name>[A-Z][\w'-]*)\s+(?:plan|membership|subscription|tier|package)s?\b")
_URL = re.compile(
    r"(?:https?://|www\.)[^\s<>\"'()\[\]]+"
    r"|(?<![\w@.-])(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,24}(?:/[^\s<>\"'()\[\]]*)?(?![\w@])",
    re.IGNORECASE,
)
_FILE_SUFFIXES = frozenset("jpg jpeg png gif pdf txt csv zip exe doc docx xls xlsx mp4 mov json yaml yml html htm".split())


@dataclass(frozen=True)
class Fact:
    """One checkable fact: its kind, its normalized value (equal facts have equal values) and the text as written."""

    kind: str
    value: str
    text: str

    @property
    def key(self) -> tuple[str, str]:
        return self.kind, self.value

    @property
    def is_contact(self) -> bool:
        return self.kind in CONTACT_KINDS


def _number(text: str) -> float:
    word = text.casefold()
    return float(_WORD_NUMBERS[word]) if word in _WORD_NUMBERS else float(text)


def _fmt(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def _duration(match: re.Match) -> str:
    unit = match["unit"].casefold().rstrip("s")
    ends = [_number(match["a"])] + ([_number(match["b"])] if match["b"] else [])
    if match["biz"]:
        if unit != "day":  # "business weeks" is not a thing support answers promise
            group, scale = "clock", _DURATION_UNITS[unit][1]
        else:
            group, scale = "business", 1
    else:
        group, scale = _DURATION_UNITS[unit]
    base = [end * scale for end in ends]
    for name, size in _RENDER_UNITS[group]:
        if all(float(b / size).is_integer() for b in base):
            return "-".join(_fmt(b / size) for b in base) + f" {name}"
    return "-".join(_fmt(b) for b in base) + f" {_RENDER_UNITS[group][-1][0]}"


def _money(match: re.Match) -> str:
    currency = _CURRENCY[(match["sym"] or match["code"]).casefold()]
    amount = float((match["amt"] or match["amt2"]).replace(",", ""))
    return f"{currency} {amount:.2f}"


def _phone(value: str, regions: Sequence[str]) -> str:
    for region in (*regions, None):
        try:
            number = phonenumbers.parse(value, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_possible_number(number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    digits = re.sub(r"\D", "", value)
    return ("+" if value.lstrip().startswith("+") else "") + digits


def _name(text: str) -> str:
    """`Loop Plugs` = `loop plug`, `Loop Hub's` = `loop hub`: case, possessive and a plural `s` do not matter."""
    words = text.casefold().removesuffix("'s").removesuffix("’s").split()
    last = words[-1]
    if len(last) > 3 and last.endswith("s") and not last.endswith(("ss", "us", "is")):
        words[-1] = last[:-1]
    return " ".join(words)


def _url(text: str) -> str:
    value = text.casefold()
    value = re.sub(r"^https?://", "", value)
    value = value.removeprefix("www.")
    return value.rstrip("/")


def url_host(value: str) -> str:
    """The host of a normalized URL value (`brightloop.example/returns` -> `brightloop.example`)."""
    return value.split("/", 1)[0]


def _trim_menu(segments: list[str]) -> list[str]:
    first = segments[0].split(" ")
    kept: list[str] = []
    for word in reversed(first):  # the first segment is the capitalised (or symbol) words just before `>`
        if word[:1].islower():
            break
        kept.insert(0, word)
    while kept and kept[0].casefold() in _OPENERS and len(kept) > 1:
        kept.pop(0)
    if kept and kept[0].casefold() in _OPENERS:
        kept = []
    last = segments[-1].split(" ")
    tail = [last[0]]
    for word in last[1:]:
        if word.casefold() in _STOP:
            break
        tail.append(word)
    out = ([" ".join(kept)] if kept else []) + segments[1:-1] + [" ".join(tail)]
    return out


def extract(text: str, phone_regions: Sequence[str] = ("US", "GB")) -> list[Fact]:
    """The checkable facts in one text, in order of appearance, each normalized value once."""
    claimed: list[tuple[int, int]] = []
    found: list[tuple[int, Fact]] = []

    def free(start: int, end: int) -> bool:
        return all(end <= a or start >= b for a, b in claimed)

    def add(kind: str, value: str, start: int, end: int) -> None:
        if value and free(start, end):
            claimed.append((start, end))
            found.append((start, Fact(kind, value, text[start:end])))

    for finding in pii.scan(text, kinds=("EMAIL", "PHONE"), phone_regions=tuple(phone_regions)):
        value = finding.value.casefold() if finding.kind == "EMAIL" else _phone(finding.value, phone_regions)
        add(finding.kind, value, finding.start, finding.end)
    for match in _URL.finditer(text):
        raw = match.group().rstrip(".,;:!?")
        host = url_host(_url(raw))
        if host.rsplit(".", 1)[-1] in _FILE_SUFFIXES or "@" in raw:
            continue
        add("URL", _url(raw), match.start(), match.start() + len(raw))
    for match in _MONEY.finditer(text):
        add("MONEY", _money(match), match.start(), match.end())
    for match in _DURATION.finditer(text):
        add("DURATION", _duration(match), match.start(), match.end())
    for match in _PERCENT.finditer(text):
        add("PERCENT", f"{_fmt(float(match['n']))}%", match.start(), match.end())
    for match in _MEASURE.finditer(text):
        if match["os"]:
            value = f"{match['os'].casefold()} {match['ver']}"
        else:
            unit = match["unit"].casefold()
            unit = {"feet": "ft", "meter": "m", "meters": "m", "metre": "m", "metres": "m"}.get(unit, unit)
            value = f"{_fmt(float(match['n']))} {unit}"
        add("MEASURE", value, match.start(), match.end())
    for match in _LIMIT.finditer(text):
        noun = match["noun"].casefold()
        noun = noun[:-1] if noun.endswith("s") and not noun.endswith("ss") else noun
        add("LIMIT", f"{_LIMIT_WORDS[match['q'].casefold()]} {_fmt(_number(match['n']))} {noun}", match.start(), match.end())
    for match in _MENU.finditer(text):
        raw = match.group()
        segments = _trim_menu(_MENU_SPLIT.split(raw))
        if len(segments) < 2 or not all(segments):
            continue
        start = match.start() + raw.find(segments[0])
        end = match.start() + raw.rfind(segments[-1]) + len(segments[-1])
        add("MENU", " > ".join(" ".join(s.casefold().split()) for s in segments), start, end)
    for match in _PLAN.finditer(text):
        if match["name"].casefold() not in _OPENERS:
            add("NAME", match["name"].casefold(), match.start("name"), match.end("name"))
    for match in _NAME_RUN.finditer(text):
        words, start = match.group().split(" "), match.start()
        while words and words[0].casefold() in _OPENERS:
            start += len(words[0]) + 1
            words.pop(0)
        if len(words) >= 2 and not words[0].isdigit():
            name = " ".join(words)
            add("NAME", _name(name), start, start + len(name))

    seen: set[tuple[str, str]] = set()
    facts = []
    for _, fact in sorted(found, key=lambda item: item[0]):
        if fact.key not in seen:
            seen.add(fact.key)
            facts.append(fact)
    return facts


# ---------------------------------------------------------------- scoring a model's answers


@dataclass
class AnswerFacts:
    """The facts of one generated answer against its reference and the company's facts."""

    facts: list[Fact]
    reference: list[Fact]
    recalled: list[Fact]  # reference facts the answer states
    missed: list[Fact]  # reference facts it does not
    invented: list[Fact]  # facts the company never stated (contacts included)
    invented_contacts: list[Fact]  # phones, emails, URLs neither in the training answers nor allowlisted
    contradicted: list[Fact] = field(default_factory=list)  # values where the reference states another of the kind

    def as_dict(self) -> dict:
        """JSON-ready, for `generations.jsonl` rows (values only: the text as written is in the answer)."""
        return {
            "facts": [f"{f.kind}: {f.value}" for f in self.facts],
            "recalled": [f"{f.kind}: {f.value}" for f in self.recalled],
            "missed": [f"{f.kind}: {f.value}" for f in self.missed],
            "invented": [f"{f.kind}: {f.text}" for f in self.invented],
            "invented_contacts": [f"{f.kind}: {f.text}" for f in self.invented_contacts],
            "contradicted": [f"{f.kind}: {f.text}" for f in self.contradicted],
        }


@dataclass
class FactScores:
    """Fact accuracy of one model's answers (one row of the eval table)."""

    answers: int
    reference_facts: int  # facts in the reference answers
    recalled_facts: int  # of those, stated by the generated answers
    invented_facts: int
    invented_fact_answers: int  # answers with at least one invented fact
    invented_contacts: int
    invented_contact_answers: int
    contradicted_facts: int = 0
    contradicted_fact_answers: int = 0
    items: list[AnswerFacts] = field(default_factory=list)

    @property
    def fact_recall(self) -> float | None:
        """Recalled / reference facts over all answers (None when the references state no fact)."""
        return self.recalled_facts / self.reference_facts if self.reference_facts else None

    @property
    def invented_facts_per_answer(self) -> float:
        return self.invented_facts / self.answers if self.answers else 0.0

    def metrics(self) -> dict:
        """The flat numbers for `metrics.json` and the gate (`kit.gate`)."""
        return {
            "fact_recall": self.fact_recall,
            "reference_facts": self.reference_facts,
            "recalled_facts": self.recalled_facts,
            "invented_facts": self.invented_facts,
            "invented_facts_per_answer": self.invented_facts_per_answer,
            "invented_fact_answers": self.invented_fact_answers,
            "invented_contacts": self.invented_contacts,
            "invented_contact_answers": self.invented_contact_answers,
            "contradicted_facts": self.contradicted_facts,
            "contradicted_fact_answers": self.contradicted_fact_answers,
        }

    def invented_list(self, ids: Sequence | None = None) -> list[dict]:
        """Every invented fact as {id, kind, value, text, contact}, for the report."""
        rows = []
        for i, item in enumerate(self.items):
            for fact in item.invented:
                rows.append({"id": ids[i] if ids is not None else i, **asdict(fact), "contact": fact.is_contact})
        return rows


def _agrees(fact: Fact, other: Fact) -> bool:
    if fact.value == other.value:
        return True
    if fact.kind == "MENU":  # a shorter path on the way to the reference's (or one step further) is not wrong
        a, b = fact.value.split(" > "), other.value.split(" > ")
        return a[: len(b)] == b or b[: len(a)] == a
    return False


def contradicted(answer_facts: Sequence[Fact], reference_facts: Sequence[Fact]) -> list[Fact]:
    """The answer's values that disagree with every value of the same kind in its reference."""
    by_kind: dict[str, list[Fact]] = {}
    for fact in reference_facts:
        if fact.kind in CONTRADICTION_KINDS:
            by_kind.setdefault(fact.kind, []).append(fact)
    return [f for f in answer_facts
            if f.kind in by_kind and not any(_agrees(f, ref) for ref in by_kind[f.kind])]


class FactBook:
    """The facts the company stated: every fact of the training answers, plus an allowlist of contacts.

    Built once per evaluation (extraction over the training answers is the slow part), then `score` each model.
    """

    def __init__(self, training_answers: Iterable[str], allowlist: Iterable[str] = (),
                 phone_regions: Sequence[str] = ("US", "GB")):
        self.phone_regions = tuple(phone_regions)
        self.known: set[tuple[str, str]] = set()
        for answer in training_answers:
            self.known.update(f.key for f in extract(answer, self.phone_regions))
        # Every step on the way to a known menu path is a real menu too (`Account > Orders`).
        self.menu_steps = {" > ".join(value.split(" > ")[:n]) for kind, value in self.known if kind == "MENU"
                           for n in range(2, value.count(" > ") + 2)}
        self.allowed: set[tuple[str, str]] = set()
        self.allowed_hosts: set[str] = set()
        for entry in allowlist:
            entry_facts = [f for f in extract(entry, self.phone_regions) if f.is_contact]
            if not entry_facts and entry.strip():  # a bare value the rules did not read: compare it as written
                entry_facts = [Fact("URL", _url(entry.strip()), entry)]
            for fact in entry_facts:
                self.allowed.add(fact.key)
                if fact.kind == "URL" and "/" not in fact.value:
                    self.allowed_hosts.add(fact.value)

    def is_known(self, fact: Fact) -> bool:
        """Stated in the training answers (a menu path: or on the way to one), or allowlisted."""
        if fact.key in self.known or fact.key in self.allowed:
            return True
        if fact.kind == "MENU":
            return fact.value in self.menu_steps
        if fact.kind == "URL":
            host = url_host(fact.value)
            return any(host == h or host.endswith("." + h) for h in self.allowed_hosts)
        return False

    def check(self, answer: str, reference: str = "", prompt: str = "") -> AnswerFacts:
        """One answer's facts: recalled from the reference, and invented (not known, not in the customer's prompt)."""
        facts = extract(answer, self.phone_regions)
        reference_facts = extract(reference, self.phone_regions) if reference else []
        stated = {f.key for f in facts}
        asked = {f.key for f in extract(prompt, self.phone_regions)} if prompt else set()
        invented = [f for f in facts if not self.is_known(f) and f.key not in asked]
        return AnswerFacts(
            facts=facts,
            reference=reference_facts,
            recalled=[f for f in reference_facts if f.key in stated],
            missed=[f for f in reference_facts if f.key not in stated],
            invented=invented,
            invented_contacts=[f for f in invented if f.is_contact],
            contradicted=contradicted(facts, reference_facts),
        )

    def score(self, generations: Sequence[str], references: Sequence[str],
              prompts: Sequence[str] | None = None) -> FactScores:
        """Fact recall and invented facts / contacts of one model's answers (one per reference)."""
        if len(generations) != len(references) or (prompts is not None and len(prompts) != len(generations)):
            raise ValueError("generations, references (and prompts) must have one entry per test conversation")
        items = [self.check(answer, reference, prompts[i] if prompts is not None else "")
                 for i, (answer, reference) in enumerate(zip(generations, references))]
        return FactScores(
            answers=len(items),
            reference_facts=sum(len(item.reference) for item in items),
            recalled_facts=sum(len(item.recalled) for item in items),
            invented_facts=sum(len(item.invented) for item in items),
            invented_fact_answers=sum(1 for item in items if item.invented),
            invented_contacts=sum(len(item.invented_contacts) for item in items),
            invented_contact_answers=sum(1 for item in items if item.invented_contacts),
            contradicted_facts=sum(len(item.contradicted) for item in items),
            contradicted_fact_answers=sum(1 for item in items if item.contradicted),
            items=items,
        )


def fact_scores(generations: Sequence[str], references: Sequence[str], training_answers: Iterable[str],
                allowlist: Iterable[str] = (), prompts: Sequence[str] | None = None,
                phone_regions: Sequence[str] = ("US", "GB")) -> FactScores:
    """Fact recall, invented facts and invented contacts of one model's answers (see the module docstring).

    `prompts` (the customer's side of each conversation, as text) keeps a value the customer wrote from counting
    as invented. To score several models against the same training data, build one `FactBook` and call `score`.
    """
    return FactBook(training_answers, allowlist, phone_regions).score(generations, references, prompts)


def report_markdown(scores: dict[str, FactScores], ids: Sequence | None = None, examples: int = 5) -> str:
    """The report's section: one row per model, then each model's invented contacts (all) and a few invented facts."""
    lines = ["## Facts", "",
             "Fact recall: the share of the reference answers' facts (amounts, durations, limits, menu paths, names, "
             "contacts) the answers state. Invented: facts the training answers never state; contacts among them "
             "unless allowlisted. Contradicted: a value where the reference states another of the same kind.", "",
             "| model | fact recall ↑ | invented facts ↓ | answers with one | invented contacts ↓ | contradicted ↓ |",
             "| --- | --- | --- | --- | --- | --- |"]
    for label, row in scores.items():
        recall = "n/a" if row.fact_recall is None else f"{row.fact_recall:.3f}"
        lines.append(f"| {label} | {recall} | {row.invented_facts} | {row.invented_fact_answers} of {row.answers} | "
                     f"{row.invented_contacts} | {row.contradicted_facts} |")
    lines.append("")
    for label, row in scores.items():
        invented = row.invented_list(ids)
        contacts = [item for item in invented if item["contact"]]
        others = [item for item in invented if not item["contact"]]
        if not invented:
            continue
        lines.append(f"- **{label}**: " + "; ".join(
            [f"invented contact `{item['text']}` ({item['kind']}, `{item['id']}`)" for item in contacts]
            + [f"`{item['text']}` ({item['kind']}, `{item['id']}`)" for item in others[:examples]]
            + ([f"{len(others) - examples} more"] if len(others) > examples else [])))
    return "\n".join(lines) + "\n"
