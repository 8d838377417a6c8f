"""Find and redact private data in support text: emails, phones, cards, IBANs, IPs, addresses, names.

    from kit import pii
    pii.scan("mail me at dana@example.com")          # [Finding(kind='EMAIL', start=11, end=27, ...)]
    pii.redact("call +1 415 555 2671")                # ('call {{PHONE}}', {'PHONE': 1})

`kit.data` redacts every text before anything is written (rejects included); `kit.eval` scans generated
answers for leaks. Typed placeholders (`{{EMAIL}}`, `{{PHONE}}`, ...) are never findings, so redacted
text scans clean. An allowlist keeps the company's own public contact details (its support address,
its hotline) as they are.

Detection is tuned to miss little: card numbers must pass the Luhn check, IBANs the mod-97 check, IPs
must parse, and phone numbers are confirmed by `phonenumbers` (Google's libphonenumber metadata) for the
configured regions, or start with `+` and a country code, or are written the North American way
(`(415) 555-0134`). Names come from the export's users table and name fields (a list given by the
caller), because free-text name detection without a model guesses too much.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import operator
import re
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import phonenumbers

KINDS = ("EMAIL", "PHONE", "CARD", "IBAN", "IP", "ADDRESS", "NAME", "CUSTOM")
# When two findings overlap, the longer one wins; on equal length the kind listed first.
_PRIORITY = {kind: i for i, kind in enumerate(("CUSTOM", "EMAIL", "CARD", "IBAN", "IP", "PHONE", "ADDRESS", "NAME"))}

PLACEHOLDER = re.compile(r"\{\{[A-Z_]+\}\}")
EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}(?![\w-])")

_CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")
_IBAN = re.compile(r"(?<![\w])[A-Za-z]{2}\d{2}(?:[ ]?[A-Za-z0-9]){11,30}(?!\w)")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
# A run of 7+ digits with phone punctuation: only such texts are handed to the (slower) phonenumbers matcher.
# Patterns start with a character class so that `re` can skip ahead to candidate positions fast
# (a leading lookbehind or `\b` disables that); the boundary check comes right after the first char.
_PHONE_CANDIDATE = re.compile(r"(?:\+|\(|\d)[\d ().\-/]{5,}\d")
# Dates and times look like phone numbers to a digit counter; they are removed before counting.
_DATE = re.compile(r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}|\d{1,2}:\d{2}(?::\d{2})?")
# North American formatting is itself a strong signal, even for numbers outside the numbering plan
# (test data and fake numbers often use unassigned area codes such as 977).
_NANP_PHONE = re.compile(r"(?:\+?1[ .-]?)?(?:\(\d{3}\)[ .-]?|(?<!\d)\d{3}[.-])\d{3}[.-]\d{4}(?!\d)")
_PLUS_PHONE = re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .\-]?\(?\d+\)?){2,6}(?!\w)")
_STREET_SUFFIX = (
    "street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|way|place|pl|terrace|close|"
    "crescent|parkway|pkwy|highway|hwy|square|sq|circle|cir|trail|trl|row|mews|gardens|grove"
)
_ADDRESS = re.compile(
    r"\d(?<![\w#-]\d)\d{0,5}[A-Za-z]?,?\s+(?P<words>(?:\w[\w'.-]*\s+){1,4})"
    rf"(?P<suffix>{_STREET_SUFFIX})\b\.?"
    r"(?:,?\s*(?:apt|apartment|suite|ste|unit|flat|#)\.?\s*#?\s*\w+)?"
    r"(?:,\s*[A-Za-z][A-Za-z .'-]{1,30})?"  # city
    r"(?:,?\s*[A-Z]{2}\s+\d{5}(?:-\d{4})?)?",  # state + ZIP
    re.IGNORECASE,
)
# German / Dutch style: street name fused with its kind, number after it ("Hauptstraße 12a").
_ADDRESS_EU = re.compile(
    r"(?<!\w)[A-ZÄÖÜ][\wäöüß-]*(?:straße|strasse|str\.|weg|gasse|platz|allee|laan|straat|gracht)\s+\d{1,4}[a-z]?\b"
    r"(?:,\s*\d{4,5}\s+[A-ZÄÖÜ][\wäöüß-]+)?"
)
# Cheap gates decide which detectors can match at all, so that the common support message costs a
# few C-level string operations: the count of ASCII digits (bytes.translate), substring tests, and
# a set lookup of street words. (A combined trigger regex was tried: `re` tries every alternative at
# every position, so it cost as much as running the detectors.)
_NON_DIGITS = bytes(b for b in range(256) if not 48 <= b <= 57)
_EU_GATE = re.compile(r"(?:straße|strasse|str\.|weg|gasse|platz|allee|laan|straat|gracht)\s+\d")
_PO_BOX = re.compile(r"\bP\.?\s?O\.?\s+Box\s+\d+\b", re.IGNORECASE)
_UK_POSTCODE = re.compile(r"[A-Z](?<![A-Za-z0-9][A-Z])[A-Z]?\d[A-Z\d]?\s+\d[A-Z]{2}\b")
_STREET_WORDS = frozenset(word.encode() for word in _STREET_SUFFIX.split("|"))
# The shape of ASCII text (digit -> 9, capital -> A, small -> a, other -> space): a UK postcode's inward
# code (" 1AA") shows as b" 9AA", a cheap exact gate for the postcode regex.
_SHAPE = bytes((57 if 48 <= c <= 57 else 65 if 65 <= c <= 90 else 97 if 97 <= c <= 122 else 32) for c in range(256))
_NOT_STREET_WORDS = frozenset(
    "a an the on in at to for of my our your his her their and or is was are it this that these those with "
    "from by day days week weeks month months year years hour hours minute minutes time times item items "
    "order orders unit units device devices plug plugs bulb bulbs lamp lamps other more same next last".split()
)
# Suffixes that are everyday words only count when capitalised ("12 Mill Way", not "2 day shipping way").
_WEAK_SUFFIXES = frozenset("way court ct place pl close square sq circle cir row mews gardens grove trail crescent".split())


# Name parts that are also everyday words are only redacted as part of the full name.
_COMMON_WORDS = frozenset(
    "may will bill mark rose june april august hope faith joy grace chase frank sue art guy hunter "
    "bob pat jack max ray don dawn summer autumn page sky rich drew lance miles amber ivy iris crystal "
    "the and you are not can new best sent from thanks team support customer agent admin user system auto bot "
    "assistant service desk help helpdesk notifications noreply reply info sales billing".split()
)


# Words are runs of letters: "O'Neil's" is o / neil / s, so a possessive never hides a name.
_WORD = re.compile(r"[^\W\d_]+")
# ASCII text splits into the same words with C-level bytes methods (every non-letter byte -> space).
_ASCII_NON_LETTERS = bytes(c if chr(c).isalpha() and c < 128 else 32 for c in range(256))
# Between the words of one full name: spaces, or the joiners of "Jean-Luc" and "O'Neil".
_NAME_GAP = re.compile(r"\s+|\s*['’\-.]\s*")


def _ascii_words(text: str) -> list[bytes] | None:
    """The lower-cased words (runs of letters) of an ASCII text, as bytes; None for other text."""
    lower = text.lower()
    return lower.encode().translate(_ASCII_NON_LETTERS).split() if lower.isascii() else None


class NameMatcher:
    """Known people's names: each full name, and each part of 3+ letters ("Dana Whitfield", "Dana",
    "Whitfield"), case-insensitive; parts that are everyday words ("May", "Crystal") only when
    capitalised. Word lookups in sets, so a users table of thousands of names costs the same as one."""

    def __init__(self, names: Iterable[str]):
        self.anycase: set[str] = set()
        self.capitalised: set[str] = set()
        self.multi: dict[str, list[tuple[str, ...]]] = {}
        for name in names:
            words = tuple(w.lower() for w in _WORD.findall(str(name)))
            if not words or len("".join(words)) < 3:
                continue
            if len(words) > 1:
                self.multi.setdefault(words[0], []).append(words)
            for word in words:
                if len(word) < 3:
                    continue
                if word in _COMMON_WORDS:
                    self.capitalised.add(word[:1].upper() + word[1:])
                else:
                    self.anycase.add(word)
        for options in self.multi.values():
            options.sort(key=len, reverse=True)
        # The cheap first test: does the text contain any word of a known name at all?
        self._words = frozenset(self.anycase | set(self.multi) | {w.lower() for w in self.capitalised})
        self._ascii_words = frozenset(w.encode() for w in self._words if w.isascii())

    def __bool__(self) -> bool:
        return bool(self.anycase or self.capitalised or self.multi)

    def maybe(self, text: str, ascii_words: list[bytes] | None = None) -> bool:
        """False when no word of `text` is a word of a known name (exact: the same words `spans` sees).
        `ascii_words`: the text's words from `ascii_words(text)`, when the caller has them already."""
        if ascii_words is None:
            ascii_words = _ascii_words(text)
        if ascii_words is not None:
            return not self._ascii_words.isdisjoint(ascii_words)
        return not self._words.isdisjoint(_WORD.findall(text.lower()))

    def spans(self, text: str, ascii_words: list[bytes] | None = None) -> list[tuple[int, int]]:
        if not self.maybe(text, ascii_words):
            return []
        words = list(_WORD.finditer(text))
        found, i, n = [], 0, len(words)
        while i < n:
            word = words[i].group()
            lower = word.lower()
            matched = 0
            for option in self.multi.get(lower, ()):
                k = len(option)
                if i + k <= n and all(
                    words[i + j].group().lower() == option[j]
                    and _NAME_GAP.fullmatch(text, words[i + j - 1].end(), words[i + j].start()) is not None
                    for j in range(1, k)
                ):
                    matched = k
                    break
            if not matched and (lower in self.anycase or word in self.capitalised):
                matched = 1
            if matched:
                found.append((words[i].start(), words[i + matched - 1].end()))
                i += matched
            else:
                i += 1
        return found


@functools.lru_cache(maxsize=4096)
def name_matcher(names: tuple[str, ...]) -> NameMatcher | None:
    """A cached `NameMatcher` for these names (None when there is none to look for)."""
    matcher = NameMatcher(names)
    return matcher if matcher else None


@dataclass(frozen=True)
class Finding:
    """One piece of private data: its kind, where it is in the text (`text[start:end] == value`)."""

    kind: str
    start: int
    end: int
    value: str


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, char in enumerate(reversed(digits)):
        n = ord(char) - 48
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


_CARD_GROUPS = re.compile(r"\d{4}(?:[ -]\d{4}){2}[ -]\d{1,7}|\d{4}[ -]\d{6}[ -]\d{4,5}|\d{13,19}")


def card_ok(text: str) -> bool:
    """A payment card number: printed the way cards are (groups of 4, Amex 4-6-5, or unbroken), with a
    known network prefix and length, and a valid Luhn check digit. Order numbers rarely pass all three."""
    if not _CARD_GROUPS.fullmatch(text):
        return False
    digits = _digits(text)
    n = len(digits)
    if len(set(digits)) == 1 or not luhn_ok(digits):
        return False
    two, four = int(digits[:2]), int(digits[:4])
    if digits[0] == "4":
        return n in (13, 16, 19)  # Visa
    if 51 <= two <= 55 or 2221 <= four <= 2720:
        return n == 16  # Mastercard
    if two in (34, 37):
        return n == 15  # American Express
    if digits.startswith(("6011", "65")) or 644 <= int(digits[:3]) <= 649 or two == 62:
        return 16 <= n <= 19  # Discover, UnionPay
    if two == 35:
        return 16 <= n <= 19  # JCB
    if two in (36, 38, 39) or 300 <= int(digits[:3]) <= 305:
        return 14 <= n <= 19  # Diners Club
    if two in (50, 56, 57, 58, 63, 67, 68, 69):
        return 12 <= n <= 19  # Maestro
    return False


def iban_ok(text: str) -> bool:
    compact = text.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34 or not compact[:2].isalpha() or not compact[2:4].isdigit():
        return False
    rearranged = compact[4:] + compact[:4]
    try:
        return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1
    except ValueError:
        return False


def _norm(value: str) -> str:
    return re.sub(r"[\W_]+", "", value.lower())


def _digits(value: str) -> str:
    return re.sub(r"\D+", "", value)


def batch_starts(texts: list[str]) -> list[int]:
    """Where each text starts in `"\\x00".join(texts)`, and (last) the joined length + 1."""
    return list(itertools.accumulate(map(operator.add, map(len, texts), itertools.repeat(1)), initial=0))


def mark_texts(find, starts: list[int], marks: list, value=True) -> None:
    """Mark (`marks[i] |= value`) each text i of a joined batch in which `find(position)` (the next hit
    at or after a position of the joined string, or -1) has a hit. Searches resume at the next text, so
    the cost is one search per marked text. Hits must not span texts (no pattern matches the separator)."""
    last = len(marks) - 1
    position = 0
    while (at := find(position)) >= 0:
        index = bisect_right(starts, at) - 1
        marks[index] |= value
        if index >= last:
            return
        position = starts[index + 1]


def _find_word(padded: bytes, needle: bytes, position: int) -> int:
    """The next whole-word occurrence of `needle` (b" word") in `padded` at or after `position`, or -1."""
    end = len(needle)
    while (at := padded.find(needle, position)) >= 0:
        if padded[at + end] == 32:
            return at
        position = at + 1
    return -1


def searcher(pattern: re.Pattern, text: str):
    """`find` for `mark_texts`: the start of the next match of `pattern` in `text`."""
    def find(position: int) -> int:
        match = pattern.search(text, position)
        return -1 if match is None else match.start()
    return find


# Batch gates (`Scanner.candidates`): each is implied by what its detector needs to find anything.
# Phones and cards have 7 digits with only phone punctuation between them: with the punctuation deleted
# and every digit written 9, "9999999". Then the end of an IPv4 address and two colons of IPv6.
_DIGIT_SHAPE = bytes(57 if 48 <= b <= 57 else 0 if b == 0 else 120 for b in range(256))
_PHONE_PUNCTUATION = b" ().-/"
_IPV4_GATE = re.compile(r"\.\d{1,3}\.\d{1,3}\.\d")
_IPV6_GATE = re.compile(r":[0-9A-Fa-f]{0,4}:")
# A fused European street name ("Kerkstraat 5") is a word that ends in one of these (ASCII: straße is not).
_EU_ENDINGS = (b"str", b"strasse", b"weg", b"gasse", b"platz", b"allee", b"laan", b"straat", b"gracht")
_ONLY_DIGITS = bytes(b for b in range(256) if not 48 <= b <= 57 and b != 0)  # keeps digits and the separator
# The gates' marks, one bit per family of detectors; a text is scanned only by the detectors its marks allow.
_GATE_EMAIL, _GATE_IP, _GATE_DIGIT_RUN, _GATE_IBAN, _GATE_ADDRESS, _GATE_NAME = 1, 2, 4, 8, 16, 32
_GATE_ALL = 63
_GATE_KINDS = {_GATE_EMAIL: ("EMAIL",), _GATE_IP: ("IP",), _GATE_DIGIT_RUN: ("PHONE", "CARD"), _GATE_IBAN: ("IBAN",),
               _GATE_ADDRESS: ("ADDRESS",), _GATE_NAME: ("NAME",)}
# The kinds a text with these marks may hold (all of them, CUSTOM included, for _GATE_ALL).
_KINDS_OF_MARKS = [frozenset(kind for bit, kinds in _GATE_KINDS.items() if marks & bit for kind in kinds)
                   for marks in range(_GATE_ALL)] + [frozenset(KINDS)]


class Scanner:
    """A compiled PII detector. Build it once (names and patterns are compiled) and call `scan` per text."""

    def __init__(
        self,
        allowlist: Iterable[str] = (),
        names: Iterable[str] = (),
        patterns: Iterable[str] = (),
        phone_regions: Iterable[str] = ("US", "GB"),
        kinds: Iterable[str] | None = None,
    ):
        self.kinds = frozenset(KINDS if kinds is None else kinds)
        unknown = self.kinds - set(KINDS)
        if unknown:
            raise ValueError(f"unknown PII kinds {sorted(unknown)}; use {', '.join(KINDS)}")
        self.allow_norm = {_norm(value) for value in allowlist if value.strip()}
        self.allow_digits = {d for d in (_digits(value) for value in allowlist) if len(d) >= 7}
        self.phone_regions = tuple(phone_regions)
        self.patterns = [re.compile(p) for p in patterns]
        self.names = name_matcher(tuple(names))
        # The words `candidates` looks for: street words, and the words of known names.
        self._gate_words = _STREET_WORDS | {b"box"} | (self.names._ascii_words if self.names is not None else frozenset())

    def _allowed(self, kind: str, value: str) -> bool:
        if not self.allow_norm:
            return False
        if _norm(value) in self.allow_norm:
            return True
        if kind == "PHONE":
            digits = _digits(value)
            return any(a.endswith(digits) or digits.endswith(a) for a in self.allow_digits if len(digits) >= 7)
        return False

    def scan(self, text: str, names: NameMatcher | None = None, kinds: frozenset | None = None) -> list[Finding]:
        """Findings in `text`; `names` (a `name_matcher`) adds the names known for this text only.
        `kinds`: look only for these (the ones `candidates` allows); the scanner's own kinds still apply."""
        found: list[Finding] = []
        add = found.append
        kinds = self.kinds if kinds is None else self.kinds & kinds
        # The words are shared by the name and street-address gates.
        words = _ascii_words(text) if "NAME" in kinds or "ADDRESS" in kinds else None
        self._detect(text, add, words, kinds)
        if "NAME" in kinds:
            for matcher in (self.names, names):
                if matcher is not None:
                    for start, end in matcher.spans(text, words):
                        add(Finding("NAME", start, end, text[start:end]))
        if "CUSTOM" in kinds:
            for pattern in self.patterns:
                for m in pattern.finditer(text):
                    if m.end() > m.start():
                        add(Finding("CUSTOM", m.start(), m.end(), m.group()))
        if not found:
            return found
        return self._resolve(text, found)

    def _detect(self, text: str, add, words: list[bytes] | None, kinds: frozenset) -> None:
        if "@" in text and "EMAIL" in kinds:
            for m in EMAIL.finditer(text):
                add(Finding("EMAIL", m.start(), m.end(), m.group()))
        digits = len(text.encode("utf-8", "replace").translate(None, _NON_DIGITS))
        if digits == 0:
            if "::" in text and "IP" in kinds:  # IPv6 written with letters only ("fe::ab")
                self._ipv6(text, add)
            return
        if digits >= 13 and "CARD" in kinds:
            for m in _CARD.finditer(text):
                if card_ok(m.group()):
                    add(Finding("CARD", m.start(), m.end(), m.group()))
        if digits >= 7 and "PHONE" in kinds:
            self._phones(text, add)
        if "IP" in kinds:
            if digits >= 4 and text.count(".") >= 3:
                for m in _IPV4.finditer(text):
                    if all(int(part) <= 255 for part in m.group().split(".")):
                        add(Finding("IP", m.start(), m.end(), m.group()))
            if "::" in text or text.count(":") >= 7:
                self._ipv6(text, add)
        if digits >= 10 and "IBAN" in kinds:
            for m in _IBAN.finditer(text):
                value = m.group().rstrip()
                # The pattern may run on into the next word; shorten until the checksum holds.
                while len(value.replace(" ", "")) >= 15:
                    if iban_ok(value):
                        add(Finding("IBAN", m.start(), m.start() + len(value), value))
                        break
                    value = value[:-1].rstrip()
        if "ADDRESS" in kinds:
            lower = text.lower()
            # Exact gates for ASCII text: an address needs a street word as a whole word; a fused street
            # name ends in one of a few words; a postcode has the shape " 9AA".
            street = words is None or not _STREET_WORDS.isdisjoint(words)
            for m in _ADDRESS.finditer(text) if street else ():
                words = m.group("words").lower().split()
                suffix = m.group("suffix")
                if suffix.lower() in _WEAK_SUFFIXES and not suffix[0].isupper():
                    continue
                if not any(w.strip(".,'") in _NOT_STREET_WORDS for w in words):
                    add(Finding("ADDRESS", m.start(), m.end(), m.group()))
            eu = words is None or (
                "str" in lower or "weg" in lower or "gasse" in lower or "platz" in lower or "allee" in lower
                or "laan" in lower or "gracht" in lower)
            gates = (
                (eu and _EU_GATE.search(lower) is not None, _ADDRESS_EU),
                ("box" in lower, _PO_BOX),
                (digits >= 2 and (words is None or b" 9AA" in text.encode().translate(_SHAPE)), _UK_POSTCODE),
            )
            for gate, pattern in gates:
                if gate:
                    for m in pattern.finditer(text):
                        add(Finding("ADDRESS", m.start(), m.end(), m.group()))

    def _ipv6(self, text: str, add) -> None:
        for m in _IPV6.finditer(text):
            try:
                ipaddress.IPv6Address(m.group())
            except ValueError:
                continue
            add(Finding("IP", m.start(), m.end(), m.group()))

    def _phones(self, text: str, add) -> None:
        for c in _PHONE_CANDIDATE.finditer(text):
            value = c.group()
            if len(_digits(_DATE.sub(" ", value))) < 7:
                continue
            # The matcher is slow (~50 us a call): it only sees the candidate, never the whole text.
            offset = c.start()
            if offset and text[offset - 1] == "+":
                offset, value = offset - 1, "+" + value
            # The shapes that are phones on sight (+<country> ..., (415) 555-0134) skip the matcher.
            plus = value[0] == "+" and _PLUS_PHONE.fullmatch(value) is not None and 8 <= len(_digits(value)) <= 15
            if plus or _NANP_PHONE.fullmatch(value) is not None:
                add(Finding("PHONE", offset, offset + len(value), value))
                continue
            for region in self.phone_regions:
                for m in phonenumbers.PhoneNumberMatcher(value, region, leniency=phonenumbers.Leniency.VALID):
                    add(Finding("PHONE", offset + m.start, offset + m.end, m.raw_string))
            for m in _PLUS_PHONE.finditer(value):
                if 8 <= len(_digits(m.group())) <= 15:
                    add(Finding("PHONE", offset + m.start(), offset + m.end(), m.group()))
            for m in _NANP_PHONE.finditer(value):
                add(Finding("PHONE", offset + m.start(), offset + m.end(), m.group()))

    def candidates(self, texts: list[str]) -> list[int]:
        """For each text, the detectors that may find anything in it: a bit mask of `_GATE_*` marks, 0
        when `scan` finds nothing in it for sure (so a mark is also a truth value).

        The texts are joined with NUL, and each detector's gate runs once over the batch: substring and
        C-level searches instead of a dozen steps per text. A gate is implied by what its detectors need
        (an `@` for an email, 7 digits in phone punctuation for a phone or card, a street word as a whole
        word for a street address, a word of a known name...), so a text without a detector's mark would
        give it no finding. Texts that are not ASCII (lower() may change their length) or contain NUL get
        every mark; so do all texts when the recipe adds its own patterns."""
        n = len(texts)
        if n < 2 or (self.patterns and "CUSTOM" in self.kinds):
            return [_GATE_ALL] * n
        if n > 1024:  # a whole-word search passes over the batch once per word found: keep batches short
            return [marked for i in range(0, n, 1024) for marked in self.candidates(texts[i : i + 1024])]
        joined = "\x00".join(texts)
        if not joined.isascii() or joined.count("\x00") != n - 1:
            plain = [i for i, text in enumerate(texts) if text.isascii() and "\x00" not in text]
            marks = [_GATE_ALL] * n
            for i, marked in zip(plain, self.candidates([texts[i] for i in plain])):
                marks[i] = marked
            return marks
        starts = batch_starts(texts)
        marks = [0] * n
        lower = joined.lower()
        if "@" in joined:
            mark_texts(lambda position: joined.find("@", position), starts, marks, _GATE_EMAIL)
        for pattern in (_IPV4_GATE, _IPV6_GATE):
            mark_texts(searcher(pattern, joined), starts, marks, _GATE_IP)
        encoded = joined.encode()
        phones = encoded.translate(_DIGIT_SHAPE, _PHONE_PUNCTUATION).split(b"\x00")
        for i in itertools.compress(range(n), map(operator.contains, phones, itertools.repeat(b"9999999"))):
            marks[i] |= _GATE_DIGIT_RUN
        digits = encoded.translate(None, _ONLY_DIGITS).split(b"\x00")
        for i in itertools.compress(range(n), map((10).__le__, map(len, digits))):  # IBAN
            marks[i] |= _GATE_IBAN
        # Whole words (street words, "box", names, fused street names): in `padded`, each run of letters
        # stands between spaces, at its offset in `joined`; the batch's words are looked up first, then the
        # texts that hold them found.
        padded = b" " + lower.encode().translate(_ASCII_NON_LETTERS) + b" "
        words = set(padded.split())
        found = set(self._gate_words.intersection(words))
        found.update(filter(operator.methodcaller("endswith", _EU_ENDINGS), words))
        names = self.names._ascii_words if self.names is not None else frozenset()
        for word in found:
            mark = ((_GATE_NAME if word in names else 0)
                    | (_GATE_ADDRESS if word in _STREET_WORDS or word == b"box" or word.endswith(_EU_ENDINGS) else 0))
            mark_texts(functools.partial(_find_word, padded, b" " + word), starts, marks, mark)
        shape = encoded.translate(_SHAPE)  # UK postcodes
        if b" 9AA" in shape:
            mark_texts(lambda position: shape.find(b" 9AA", position), starts, marks, _GATE_ADDRESS)
        return marks

    def redact_many(self, texts: list[str]) -> list[tuple[str, dict[str, int]]]:
        """`redact` of each text, by the detectors `candidates` allows it; the texts it rules out are
        returned as they are."""
        redact, kinds = self.redact, _KINDS_OF_MARKS
        return [redact(text, kinds=kinds[marks]) if marks else (text, {}) for text, marks in zip(texts, self.candidates(texts))]

    def _resolve(self, text: str, found: list[Finding]) -> list[Finding]:
        """Drop allowlisted values and placeholders; keep the best of overlapping findings."""
        blocked = [(m.start(), m.end()) for m in PLACEHOLDER.finditer(text)] if "{{" in text else []
        keep: list[Finding] = []
        for f in sorted(found, key=lambda f: (-(f.end - f.start), _PRIORITY[f.kind], f.start)):
            if self._allowed(f.kind, f.value):
                continue
            if any(s < f.end and f.start < e for s, e in blocked):
                continue
            if any(k.start < f.end and f.start < k.end for k in keep):
                continue
            keep.append(f)
        keep.sort(key=lambda f: f.start)
        return keep

    def redact(self, text: str, names: NameMatcher | None = None, kinds: frozenset | None = None) -> tuple[str, dict[str, int]]:
        findings = self.scan(text, names, kinds)
        if not findings:
            return text, {}
        parts, last = [], 0
        for f in findings:
            parts.append(text[last : f.start])
            parts.append("{{" + f.kind + "}}")
            last = f.end
        parts.append(text[last:])
        return "".join(parts), dict(Counter(f.kind for f in findings))


def section_scanner(section, names: Iterable[str] = ()) -> Scanner:
    """A Scanner with a recipe's `data.pii` settings (allowlist, patterns, phone regions, kinds)."""
    return Scanner(section.allowlist, names, section.patterns, section.phone_regions, section.kinds)


@functools.lru_cache(maxsize=32)
def _scanner(allowlist: tuple, names: tuple, patterns: tuple, phone_regions: tuple, kinds: tuple | None) -> Scanner:
    return Scanner(allowlist, names, patterns, phone_regions, kinds)


def scan(
    text: str,
    allowlist: Iterable[str] = (),
    *,
    names: Iterable[str] = (),
    patterns: Iterable[str] = (),
    phone_regions: Iterable[str] = ("US", "GB"),
    kinds: Iterable[str] | None = None,
) -> list[Finding]:
    """The private data in `text`, in order, without overlaps. Placeholders and allowlisted values are not findings."""
    scanner = _scanner(tuple(allowlist), tuple(names), tuple(patterns), tuple(phone_regions), None if kinds is None else tuple(kinds))
    return scanner.scan(text)


def redact(
    text: str,
    allowlist: Iterable[str] = (),
    *,
    names: Iterable[str] = (),
    patterns: Iterable[str] = (),
    phone_regions: Iterable[str] = ("US", "GB"),
    kinds: Iterable[str] | None = None,
) -> tuple[str, dict[str, int]]:
    """`text` with each finding replaced by its typed placeholder (`{{EMAIL}}`), and the counts by kind."""
    scanner = _scanner(tuple(allowlist), tuple(names), tuple(patterns), tuple(phone_regions), None if kinds is None else tuple(kinds))
    return scanner.redact(text)
