"""Find and redact private data in support text: emails, phones, cards, IBANs, IPs, addresses, names,
usernames, national ids.

    from kit import pii
    pii.scan("mail me at dana@example.com")          # [Finding(kind='EMAIL', start=11, end=27, ...)]
    pii.redact("call +1 415 555 2671")                # ('call {{PHONE}}', {'PHONE': 1})
    pii.redact("Thanks,\nKimberley")                  # ('Thanks,\n{{NAME}}', {'NAME': 1})

`kit.data` redacts every text before anything is written (rejects included); `kit.eval` scans generated
answers for leaks. Typed placeholders (`{{EMAIL}}`, `{{PHONE}}`, ...) are never findings, so redacted
text scans clean. An allowlist keeps the company's own public contact details (its support address,
its hotline) as they are. docs/privacy.md lists what each kind catches and misses, with measurements.

Detection is tuned to miss little and alter nothing else: card numbers must pass the Luhn check, IBANs
the mod-97 check, IPs must parse, and phone numbers are confirmed by `phonenumbers` (Google's
libphonenumber metadata) for the configured regions, or start with `+` and a country code, or are
written the North American way, or follow a word that says they are a phone number. Names come from the
export's users table and name fields (a list given by the caller), and from free text where a person's
name stands: after a greeting, in a sign-off, in a self-introduction, after a word that introduces a
person or before a verb of speech. Postal addresses are found from their postcode. Every finding is
widened to whole tokens, so no placeholder is glued to a leftover piece of the value.
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

KINDS = ("EMAIL", "PHONE", "CARD", "IBAN", "IP", "ADDRESS", "NAME", "USERNAME", "NATIONAL_ID", "CUSTOM")
# The kinds a recipe could list before USERNAME and NATIONAL_ID existed: a recipe that lists them all
# means every kind (see `section_scanner`).
_FIRST_KINDS = frozenset(("EMAIL", "PHONE", "CARD", "IBAN", "IP", "ADDRESS", "NAME", "CUSTOM"))
# When two findings overlap, the longer one wins; on equal length the kind listed first.
_PRIORITY = {kind: i for i, kind in enumerate(
    ("CUSTOM", "EMAIL", "CARD", "IBAN", "NATIONAL_ID", "IP", "PHONE", "ADDRESS", "USERNAME", "NAME"))}

PLACEHOLDER = re.compile(r"\{\{[A-Z_]+\}\}")
EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}(?![\w-])")

_CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){11,18}(?![\w-])")
_IBAN = re.compile(r"(?<![\w])[A-Za-z]{2}\d{2}(?:[ ]?[A-Za-z0-9]){11,30}(?!\w)")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
# "firmware 4.2.0.118", "v1.2.3.4": a version number, not an address
_VERSION_BEFORE = re.compile(r"(?i:version|firmware|fw|build|release|update|ver\.?|v)[ \t]*$")
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
    r"(?-i:(?<!\.)[ \t]+(?:(?:North|South)(?:east|west)?|East|West|[NS][EW]?|[EW])\b)?"  # "Main Street NW", "Elm St E"
    r"(?:,?\s*(?:apt|apartment|suite|ste|unit|flat|#)\.?\s*#?\s*\w+)?"
    # the city: capitalised words that end the sentence or the clause ("Seattle.", "St. Louis, MO 63101",
    # "Brooklyn and ...")
    r"(?:,[ \t]*(?-i:[A-Z][A-Za-z'’.-]*(?:[ \t]+(?:(?:of|on|upon|de|la|le|du|del|des|sur)[ \t]+)?[A-Z][A-Za-z'’.-]*){0,3})"
    r"(?<!\.)(?=[ \t]*(?:[,.;:!?)\n]|$)|[ \t]+(?-i:and|or|but|with|for|in|on|at)\b|,?[ \t]*[A-Z]{2}[ \t]+\d{5}))?"
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
    "order orders unit units device devices plug plugs bulb bulbs lamp lamps other more same next last "
    "called named titled".split()  # "1 movie called Dr. Strangelove" (SGD): a title, not a street
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


# A name in the export's name fields with one of these words is the company's, a team's or a bot's.
_ORG_WORDS = frozenset(
    "bot bots team support helpdesk desk service services customer care assistant system automated auto noreply "
    "no-reply notifications notification admin administrator inc ltd llc gmbh ag sa sas srl bv plc corp corporation "
    "company co group store shop official help billing sales accounts agent virtual".split())
# Words are runs of letters: "O'Neil's" is o / neil / s, so a possessive never hides a name.
_WORD = re.compile(r"[^\W\d_]+")
# A capitalised run with one of these words names a place or a business, not a person ("this is Fulton Street
# Cafe", "Marriott Downtown"): real dialogue data (SGD's hotels, restaurants and salons) is full of them.
_PLACE_WORDS = frozenset(
    "hotel hotels inn motel hostel resort suites lodge cafe café coffee restaurant restaurants bar grill pizzeria bistro "
    "diner pub tavern kitchen bakery brewery steakhouse sushi airlines airline airways airport street avenue road "
    "boulevard downtown uptown plaza mall cinema cinemas theatre theater museum salon spa gym fitness hospital "
    "clinic pharmacy station apartments bank garden gardens parking valet library center centre zoo aquarium stadium "
    "arena gallery".split())


def _place_after(text: str, end: int) -> bool:
    """Whether a capitalised place word follows a run of capitalised words (a run is five words at the most: "Dr. Sun
    Yat-Sen Classical Chinese Garden")."""
    following = text[end : end + 16].split(None, 1)
    return bool(following) and following[0][:1].isupper() and following[0].rstrip(",.;:!?").lower() in _PLACE_WORDS


# Sentence-initial nouns that a support message follows with a verb of speech ("Booking confirmed", "Visit confirmed").
_NOT_SPEAKERS = frozenset(
    "booking bookings reservation reservations appointment appointments shipping shipment delivery payment payments "
    "transfer purchase subscription cancellation flight flights ride train bus room table event tickets visit".split())
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
            if len(words) > 1 and not _ORG_WORDS.isdisjoint(words):
                continue  # "Acme Bot", "Brightloop Support": the company's own names are no one's private data
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


# -- Free text: names, usernames, national ids, postal addresses, phones found by their context --------
# A name in free text is recognised by where it stands, not by a list of names: after a greeting
# ("Hi Kimberley,"), in a sign-off ("Thanks,\nStjepan", "-Karthik", "^AB"), in a self-introduction
# ("my name is", "this is", "I'm"), and in a mention after a word that introduces a person ("spoke
# with", "your colleague", "cc", "my wife") or before a verb of speech ("Dana said"). A capitalised
# word elsewhere (Will, May, Grace, product names) is left alone. Each name found this way is then
# redacted wherever else it occurs in the same text.
_CAP = "A-ZÀ-ÖØ-ÞĀĂĄĆĈĊČĎĐĒĔĖĘĚĜĞĠĢĤĦĨĪĬĮİĲĴĶĹĻĽĿŁŃŅŇŊŌŎŐŒŔŖŘŚŜŞŠŢŤŦŨŪŬŮŰŲŴŶŸŹŻŽ"
# A capitalised word, with the joiners of "O'Neil" and "Jean-Luc"; or initials ("AB").
_NAME_WORD = rf"[{_CAP}][^\W\d_]*(?:['’][^\W\d_]+)*(?:-[^\W\d_]+(?:['’][^\W\d_]+)*)*\.?"
_PARTICLES = frozenset("van von de del della der den di da du dos das le la ter ten bin al el y e".split())
_NAME_RUN = (rf"{_NAME_WORD}(?:[ \t]+(?:(?:van|von|de|del|della|der|den|di|da|du|dos|das|le|la|ter|ten|bin|al|el|y)"
             rf"[ \t]+)*{_NAME_WORD}){{0,4}}")
_TITLE = (r"(?:(?i:mr|mrs|ms|miss|mx|dr|prof|sir|herr|frau|monsieur|madame|mme|mlle|señor|señora|sr|sra|srta|"
          r"shri|smt|sri)\.?[ \t]+)?")
# Words that follow a cue but are no one's name ("Hi team", "Dear Customer Care", "this is urgent").
_NOT_NAMES = frozenset(
    "team support customer customers care service services sir madam all there everyone everybody folks guys again "
    "friend friends admin admins agent agents bot the a an this that these those i we you it its my our your their his "
    "her please thanks thank hello hi hey dear yes no ok okay not very so really still just also regarding about re "
    "urgent back here sorry unable writing calling following following-up happy glad sure fine good great "
    "department dept helpdesk desk billing sales accounts account manager management staff sender recipient user "
    "members member hr it-support concerned whom whomever mom mum dad i'm im we're we've i've i'll we'll you're "
    "they're it's that's there's here's let's rest bye goodbye bubye perfect awesome excellent wonderful cool nice".split())
_GREETING = re.compile(
    r"(?m:^)[ \t]*(?i:hi|hello|hey|hiya|howdy|dear|good[ \t]+(?:morning|afternoon|evening)|morning|greetings|bonjour|"
    r"salut|hallo|hola|ciao|namaste|guten[ \t]+tag|liebe|lieber|estimado|estimada|cher|chère)[ \t]*,?[ \t]+"
    + _TITLE + rf"(?P<name>{_NAME_RUN})(?P<after>[ \t]*(?:[,!.:;\n\-–—]|$))"
)
_SIGN_OFF_WORDS = (
    r"thanks|thank[ \t]+you|thanks[ \t]+again|many[ \t]+thanks|thx|ty|ta|cheers|regards|best|all[ \t]+the[ \t]+best|"
    r"best[ \t]+wishes|(?:best|kind|warm|warmest|many)[ \t]+regards|sincerely|yours(?:[ \t]+(?:truly|sincerely|faithfully))?|"
    r"respectfully|take[ \t]+care|love|rgds|regds|br|mfg|(?:viele|beste|liebe)[ \t]+grüße|grüße|gruß|"
    r"mit[ \t]+freundlichen[ \t]+grüßen|cordialement|bien[ \t]+à[ \t]+vous|merci|danke|gracias|saludos|un[ \t]+saludo|"
    r"atentamente|dhanyavaad|shukriya"
)
_SIGN_OFF_LINE = re.compile(rf"[ \t]*(?i:{_SIGN_OFF_WORDS})[ \t]*[,.!]*[ \t]*")
# On the last line, at the very end: "Cheers, Dev", "Thanks! Lucas", "... fixed. -Dana", "Got it, thanks Dana.",
# "TY - Chris", ":) Thanks - Mike", "Thanks - Lee 2/2" (a part counter ends a tweet split in parts)
# (a sign-off word starts the line or follows punctuation: "at Best Buy." is a shop)
_COUNTER = r"[ \t]+\d{1,2}/\d{1,2}"
_SIGN_OFF_END = re.compile(
    rf"(?:(?:^|(?<=[.!?,;:()]))[ \t]*(?i:{_SIGN_OFF_WORDS})[ \t]*[,.!]*(?:[ \t]*(?:--?|[–—~^/*]))?"
    rf"|(?:^|(?<=[.!?]))[ \t]*(?:--?|[–—~^/*]))[ \t]*"
    rf"{_TITLE}(?P<name>{_NAME_RUN})[ \t]*[.!]?(?:{_COUNTER})?[ \t]*$")
_PART_COUNTER = re.compile(_COUNTER + "$")
_NAME_LINE = re.compile(rf"[ \t]*{_TITLE}(?P<name>{_NAME_RUN})[ \t]*")
# The words of the sign-offs that say so (the cheap first test of `_SIGN_OFF_END`), and the marks before
# a name or initials ("-Karthik", "^AB").
_SIGN_OFF_TOKENS = frozenset(
    "thanks thank thx ty ta cheers regards best wishes sincerely yours respectfully care love rgds regds br mfg "
    "grüße gruß grüßen cordialement merci danke gracias saludos saludo atentamente dhanyavaad shukriya".split())
_MARKS = frozenset("-–—~^/*")
_NAME_CANDIDATE = re.compile(_NAME_RUN)
_NAME_WORD_PATTERN = re.compile(_NAME_WORD)
_BEFORE_WORDS = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)?")
_TITLES = frozenset("mr mrs ms miss mx dr prof sir herr frau monsieur madame mme mlle señor señora sr sra srta shri smt "
                    "sri".split())
# The words before a name that introduce it (the last one, two or three words, lower case).
# ("the hotel name is Alila", "event name is Dodie": only a person's own name counts.)
_INTRO_CUES = frozenset(
    "my name is|my name's|my names|her name is|his name is|their name is|first name is|last name is|full name is|"
    "surname is|this is|i am|i'm|im|here is|call me|go by|m'appelle|ich bin|heiße|me llamo|soy|mera naam".split("|"))
# "It's Dana again", "it's Dana from accounts" (but "It's Country Music."): a name only before these words.
_ITS_CUES = frozenset(("it's", "its"))
_AFTER_ITS = frozenset("again here from speaking calling writing".split())
_MENTION_CUES = frozenset(
    "spoke with|spoke to|speaking with|speaking to|talked with|talked to|talking with|talking to|chatted with|"
    "chatting with|dealt with|colleague|coworker|co-worker|agent|rep|representative|technician|engineer|"
    "manager|supervisor|advisor|adviser|consultant|pass this to|pass it to|pass me to|passed me to|transfer me to|"
    "transferred me to|forward this to|forward it to|ask|asked|ask for|asked for|cc|wife|husband|son|daughter|partner|"
    "friend|mother|father|mom|mum|dad|brother|sister|boss|neighbour|neighbor|thanks to|thank you|according to|"
    "message from|note from|met with|visit from|wife's|husband's|helped by|served by|assisted by|handled by|"
    "supported by|attended by|seen by".split("|"))
_LABELS = frozenset("name|full name|customer name|account holder|contact person|contact|customer|from|signed|attn|"
                    "attention".split("|"))
# The last word of each cue, title or modal: the cheap first test of the word before a candidate.
_CUE_ENDS = frozenset({cue.split()[-1] for cue in _INTRO_CUES | _MENTION_CUES} | _TITLES | {t + "." for t in _TITLES}
                      | _ITS_CUES
                      | set("can could would will did does may let has had".split()))
_SPEECH_VERBS = frozenset("said says told promised mentioned confirmed closed called phoned emailed wrote replied "
                          "answered helped offered agreed explained".split())
_MODALS = frozenset("can could would will did does may let has had".split())
_BASE_VERBS = frozenset("call email contact reply help check send look phone ring text get".split())
# Capitalised words in running text that are not names (a candidate's first words are dropped while they
# are one of these, so that "Can Dana call" finds "Dana"). After a greeting or a sign-off, "Will" and "May"
# are names: there only `_NOT_NAMES` applies.
_NOT_NAMES_IN_TEXT = _NOT_NAMES | frozenset(
    "to for if when then also yesterday today tomorrow simply choose just once after before while since because "
    "but so or and as at in on by with from of into unfortunately fortunately however finally first next last "
    "note certainly sure absolutely definitely of-course maybe perhaps would could should can will may might "
    "do does did is are was were be been have has had what which who whom whose where why how there here they he she "
    "someone somebody nobody no-one follow let don't didn't can't won't please kindly sorry order orders done "
    "returns return refund refunds ref ticket case yes no ok okay thanks thank regards kind best cheers any all "
    "some each every our your my his her their its a an the this that these those it i we you hi hello hey dear "
    "still waiting how what why where when who which is are was were has have had do does did can could will "
    "would should may might must shall not bye goodbye interested looking trying having going calling writing "
    "new unable nothing everything something anything "
    # genres, which "It's ..." and "This is ..." introduce as often as a person ("It's Pop from 2017", "This is Comedy")
    "pop rock jazz blues country comedy drama horror thriller action acting fantasy documentary".split())


_CONTRACTION = re.compile(r"(?i:['’](?:ve|ll|d|re|m)|n['’]t)$")  # "You've", "Don't": never a name
_CONTRACTIONS = tuple(q + end for q in "'’" for end in ("ve", "ll", "d", "re", "m", "VE", "LL", "D", "RE", "M")) + (
    "n't", "n’t", "N'T", "N’T")


def _name_span(text: str, start: int, end: int, stop: frozenset = _NOT_NAMES_IN_TEXT) -> tuple[int, int] | None:
    """The name in a capitalised run text[start:end]: leading words that are no one's name dropped, cut at
    the first lower-case word that is not a particle; None when nothing is left."""
    words = [(m.start(), m.end(), m.group().rstrip(".")) for m in _NAME_WORD_PATTERN.finditer(text, start, end)]
    while words and (words[0][2].lower() in stop or words[0][2].lower() in _TITLES
                     or _CONTRACTION.search(words[0][2]) is not None):
        words.pop(0)
    kept = []
    for s, e, value in words:
        if value.lower() in stop and not (kept and len(value) == 1 and text[e - 1] == "."):
            break  # (but a middle initial is part of the name: "Kalpana I. Nathan")
        kept.append((s, e, value))
        if text[e - 1] == "." and len(value) > 1 and value.lower() not in _TITLES:
            break  # "Rohini. Cut me off": a full stop after a word (not an initial or a title) ends the name
    while kept and kept[-1][2].lower() in _PARTICLES:
        kept.pop()
    if not kept:
        return None
    return kept[0][0], kept[0][0] + len(text[kept[0][0]:kept[-1][1]].rstrip("."))


def _end(text: str, start: int, end: int) -> int:
    """The end of the name text[start:end] without its full stops ("Thanks, Miriam." ends at the m)."""
    return start + len(text[start:end].rstrip("."))


def _judge(text: str, start: int, end: int) -> bool:
    """Whether the capitalised name text[start:end] stands where a person's name stands: after words that
    introduce a person, after a label, or before a verb of speech."""
    if end - start > 3 and text[start:end].isupper():
        return False  # "this is URGENT"
    j = start
    while j > 0 and text[j - 1] in " \t":
        j -= 1
    last = text[j - 1 : j]  # the character before the name and its spaces ("" at the start)
    words: list[str] = []
    if last.isalpha() or last in ("'", "’"):
        # the word right before the name: most capitalised words ("the Glow Bulb") have no cue before them
        previous = text[text.rfind(" ", 0, j) + 1 : j].lower().replace("’", "'")
        if previous not in _CUE_ENDS:
            return False
    if last.isalpha() or last in (".", ":", ","):
        words = [w.lower().replace("’", "'") for w in _BEFORE_WORDS.findall(text, max(0, j - 40), j)]
        if words and words[-1] in _TITLES and last.isalpha() or last == ".":
            if words and words[-1] in _TITLES:  # "Mr. Smith", "Dr. Jones": a title names the person after it
                title = words.pop()
                if text[start:end].split(None, 1)[0].lower() in _TITLED_BRANDS:
                    return False  # "Mr. Coffee", "Madame Tussauds"
                j = text.rfind(" ", 0, j) if " " in text[max(0, j - 8) : j] else j  # the title's start
                before = text[max(0, j - 40) : j].split()
                word = before[-1].strip(",.!?:;") if before else ""
                # ... but "Oak Dr. Seattle" is a street: "dr" after a capitalised word or a number
                if title != "dr" or not (word[:1].isdigit() or (word[:1].isupper() and word.lower() not in _NOT_NAMES_IN_TEXT
                                                                and word.lower() not in _SIGN_OFF_TOKENS)):
                    return True
                while j > 0 and text[j - 1] in " \t":
                    j -= 1
                last = text[j - 1 : j]
            else:
                words = []
    if words and last.isalpha():
        for k in (1, 2, 3):
            cue = " ".join(words[-k:])
            if cue in _INTRO_CUES or cue in _MENTION_CUES:
                return True
        if words[-1] in _ITS_CUES:
            following = text[end : end + 24].split(None, 1)
            return bool(following) and following[0].lower().strip(",.!?;:") in _AFTER_ITS
    if words and ((last == ":" and (words[-1] in _LABELS or " ".join(words[-2:]) in _LABELS))
                  or (last == "," and words[-1] == "name")):
        return True
    after = text[end : end + 30]
    next_words = after.split(None, 2)
    if not next_words:
        return False
    first = next_words[0].lower().strip(",.!?;:")
    if last in ("", "\n", ".", "!", "?", ",", ";", ":"):  # the start of a sentence or clause
        if first in _SPEECH_VERBS:
            return True
        if len(next_words) > 1 and first in ("from", "at") and next_words[1].lower().startswith("your"):
            return True  # "Dana from your billing team", "Dana at your store" (not "Anthem from the album")
        for word in ("here", "speaking"):  # "Ana here.", "Ana Silva speaking,"
            if first.startswith(word) and after.lstrip(" \t")[len(word) : len(word) + 1] in ("", ",", ".", "!", ":", ";", "\n"):
                return True
    elif words and words[-1] in _MODALS and first in _BASE_VERBS:
        return True
    return False


_GREETING_STARTS = ("hi", "hello", "hey", "dear", "good", "morning", "greetings", "bonjour", "salut", "hallo", "hola",
                    "ciao", "namaste", "guten", "liebe", "estimad", "cher")
# The words after a capitalised word at the start of a sentence that make it a person's name.
_AFTER_NAME = _SPEECH_VERBS | {"from", "at", "here", "speaking"}


_TITLE_DOTS = frozenset(t + "." for t in _TITLES)
# Brands and places named like a person ("Mr. Coffee", "Dr. Martens", "Madame Tussauds"): after a title, no one's name.
_TITLED_BRANDS = frozenset("coffee clean muscle sheen pepper martens oetker scholl's scholls bronner's tussauds "
                           "strangelove dolittle doolittle doubtfire".split())  # (and films: "Dr. Strangelove")
_LABEL_ENDS = frozenset(label.split()[-1] + ":" for label in _LABELS)


def _may_be_named(text: str, start: int, end: int) -> bool:
    """The cheap first test of `_judge`: most capitalised words have no cue word right before them, and
    start no sentence whose next word makes them a person ("Dana said", "Dana from your team")."""
    j = start
    while j > 0 and text[j - 1] in " \t":
        j -= 1
    last = text[j - 1 : j]
    if last and last not in "\n!?;":
        previous = text[max(text.rfind(" ", 0, j), text.rfind("\n", 0, j)) + 1 : j].lower().replace("’", "'")
        if last.isalpha() or last == "'":
            return previous in _CUE_ENDS
        if previous in _TITLE_DOTS or previous == "name," or previous in _LABEL_ENDS:
            return True
    following = text[end : end + 24].split(None, 1)
    return bool(following) and following[0].lower().strip(",.!?;:") in _AFTER_NAME


def name_runs(values: Iterable[str]) -> re.Pattern | None:
    """A pattern for names found in one text, to find them in the other texts of a conversation: runs of their
    words of 3+ letters as written (case-sensitive, whole words), without everyday, place and business words
    ("Priya Raman" -> "Priya", "Raman", "Priya Raman"). None when no word is left."""
    words = {w for value in values for w in _WORD.findall(value) if len(w) >= 3 and w.lower() not in _PARTICLES
             and w.lower() not in _NOT_NAMES_IN_TEXT and w.lower() not in _PLACE_WORDS}
    return _name_runs(frozenset(words)) if words else None


@functools.lru_cache(maxsize=4096)
def _name_runs(words: frozenset[str]) -> re.Pattern:  # conversations repeat names: compiled once each
    one = "|".join(map(re.escape, sorted(words, key=lambda w: (-len(w), w))))
    return re.compile(rf"(?<!\w)(?:{one})(?:[ \t]+(?:{one}))*(?!\w)")


def context_names(text: str) -> list[tuple[int, int]]:
    """Spans of people's names recognised by their context (greetings, sign-offs, introductions, mentions),
    and of the other occurrences of the same names in the text."""
    spans = []
    if "\n" in text or text.lstrip()[:12].lower().startswith(_GREETING_STARTS):
        # one line: the greeting can only start the text (finditer would try every position)
        for m in _GREETING.finditer(text) if "\n" in text else filter(None, (_GREETING.match(text),)):
            span = _name_span(text, m.start("name"), m.end("name"), _NOT_NAMES)
            if span is not None and span[1] == _end(text, m.start("name"), m.end("name")):
                spans.append(span)
    for m in _NAME_CANDIDATE.finditer(text):
        start, end = m.span()
        if end - start < 2:
            continue  # "I"; initials count only in sign-offs
        value = m.group()
        multi = " " in value or "\t" in value
        if not multi and value.isupper():
            continue  # acronyms and initials count only in sign-offs ("BL-2026", "DM us", but "^AB")
        first = value.split(None, 1)[0] if multi else value
        lower = first.lower()
        if lower in _NOT_NAMES_IN_TEXT or lower.rstrip(".") in _TITLES or first.endswith(_CONTRACTIONS):
            if not multi:
                continue
            span = _name_span(text, start, end)  # "Can Dana", "I'm Dana Lee": the name starts later
            if span is None:
                continue
            start, end = span
            multi = False
        if not _may_be_named(text, start, end):
            continue
        if ((lower in _NOT_SPEAKERS and not multi) or not _PLACE_WORDS.isdisjoint(w.lower() for w in _WORD.findall(value))
                or _place_after(text, end)):
            continue  # "Booking confirmed"; a hotel, a restaurant, a street ("... Chinese Garden"): no one's name
        if multi:
            span = _name_span(text, start, end)
            if span is None:
                continue
            start, end = span
        elif text[end - 1] == ".":  # (a span from `_name_span` ends before its full stop already)
            end -= 1
        if _judge(text, start, end):
            spans.append((start, end))
    # Sign-offs: a name alone on the line after a sign-off line ("Best regards,\nName", maybe before a
    # title, a company or a `--` block), or ending the last line ("Cheers, Dev", "-Karthik", "^AB").
    stripped = text.rstrip()
    if "\n" in stripped:
        offset = max(0, len(stripped) - 400)
        lines = stripped[offset:].split("\n")
        positions = list(itertools.accumulate((len(line) + 1 for line in lines), initial=offset))
        for i in range(max(1, len(lines) - 8), len(lines)):
            line = lines[i]
            if (len(line) > 60 or len(lines[i - 1]) > 40 or not line.lstrip()[:1].isupper()
                    or _SIGN_OFF_LINE.fullmatch(lines[i - 1]) is None):
                continue
            m = _NAME_LINE.fullmatch(line)
            if m is not None:
                span = _name_span(text, positions[i] + m.start("name"), positions[i] + m.end("name"), _NOT_NAMES)
                if span is not None and span[1] == _end(text, positions[i] + m.start("name"), positions[i] + m.end("name")):
                    spans.append(span)
    line_start = stripped.rfind("\n") + 1
    last_line = stripped[max(line_start, len(stripped) - 80) :]
    end_word = (_PART_COUNTER.sub("", last_line) if last_line[-1:].isdigit() else last_line).rstrip(" \t.!")
    end_word = end_word[max(end_word.rfind(" "), end_word.rfind("\t")) + 1 :].lstrip("-–—~^/*")
    m = None
    # a text that ends with a name (a capital first, a letter last), after a sign-off word or a mark
    if end_word[:1].isupper() and end_word[-1].isalnum():
        if (not _SIGN_OFF_TOKENS.isdisjoint(map(str.lower, _WORD.findall(last_line)))  # ("DM.Thanks-Emir")
                or any(token[:1] in _MARKS for token in last_line.rsplit(None, 5)[-5:])):
            m = _SIGN_OFF_END.search(last_line)
    if m is not None:
        at = len(stripped) - len(last_line)
        bullet = last_line.lstrip()[:1]
        previous = stripped[: line_start].rstrip("\n")
        previous = previous[previous.rfind("\n") + 1 :].lstrip()
        # a list item ("- PayPal") is no sign-off: the line before it starts with the same mark
        if not (bullet in "-–—~^/*" and previous[:1] == bullet and m.start() == 0):
            span = _name_span(text, at + m.start("name"), at + m.end("name"), _NOT_NAMES)
            if (span is not None and span[1] == _end(text, at + m.start("name"), at + m.end("name"))
                    and _PLACE_WORDS.isdisjoint(w.lower() for w in _WORD.findall(text[span[0]:span[1]]))):
                spans.append(span)  # (not "..., Best Western Primrose Hotel.")
    if not spans:
        return spans
    words = {w for s, e in spans for w in _WORD.findall(text[s:e]) if len(w) >= 3 and w.lower() not in _PARTICLES}
    if words:
        for m in _WORD.finditer(text):
            if m.group() in words:
                spans.append((m.start(), m.end()))
    return spans



# Usernames: after a word that introduces one, or an @handle that is not part of an email.
_USERNAME_LIKE = r"[A-Za-z][\w.\-]*[\d_][\w.\-]*[A-Za-z0-9_]|[A-Za-z][\w\-]*\d"  # a digit or _ in it
_USERNAME = re.compile(
    # "username: jdoe", "my handle is jdoe", "I log in as jdoe", "account: jdoe"
    r"(?i:\b(?:user[ \t]*name|user[ \t]*id|userid|login[ \t]+(?:name|id)|handle|gamertag|screen[ \t]*name)(?![\w-])"
    r"[ \t]*(?:is[ \t]*:?|was|[:=#])[ \t]*"
    r"|\b(?:login|account(?:[ \t]+name)?)(?![\w-])[ \t]*[:=#][ \t]*"
    r"|\b(?:log(?:ged)?[ \t]+in[ \t]+as|sign(?:ed)?[ \t]+in[ \t]+as)[ \t]+)"
    r"@?(?P<value>[A-Za-z0-9][\w.\-]*[A-Za-z0-9_]|[A-Za-z0-9])"
    # "my login is jdoe77", "Login jdoe77 fails": a token that looks like a username after such a word
    rf"|(?i:\b(?:login|username|user|handle|account))(?:[ \t]+(?i:is|was))?[ \t]+(?P<value2>{_USERNAME_LIKE})"
    r"|(?<![\w.+\-@])@(?P<handle>[A-Za-z0-9_][\w.]*[A-Za-z0-9_])"
)
_NOT_USERNAMES = frozenset("is was and or the a an not to be can cannot can't no locked blocked disabled myself me "
                           "him her them us guest yourself "
                           "suspended doesn't does isn't won't will keeps still".split())
# Words without which the context detectors cannot match (searched in the lower-cased text first).
_USERNAME_GATE = re.compile("user|log|sign|handle|gamertag|screen|account")
_PHONE_GATE = re.compile("phone|tel|mobile|cell|whatsapp|call|reach|ring|text|contact|number|handy|portable|móvil")
_ID_GATE = re.compile("ssn|social security|insurance|nino|aadhaar|tax id|passport|national id|id number|id card")
_FIVE_DIGITS = re.compile(r"\d{5}")


def _postcode_like(text: str) -> bool:
    """Whether a run of 5+ digits in `text` may be a postcode: not glued after a letter, digit or code
    (`BL-719211` is an order number); after a hyphen only when a lower-case city precedes it (`Saharanpur-286012`)."""
    for m in _FIVE_DIGITS.finditer(text):
        i = m.start()
        before = text[i - 1] if i else " "
        if before == "-" and i > 1 and text[i - 2].islower():
            return True
        if not (before.isalnum() or before in "-_/.#"):
            return True
    return False
# US Social Security numbers (area 001-899 but 666, group 01-99, serial 0001-9999), written 123-45-6789,
# or 9 digits after "SSN" / "social security"; UK National Insurance numbers; Indian Aadhaar numbers
# after their name.
_SSN = re.compile(r"(?<![\w-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w-])")
_ID_CUE = re.compile(
    r"(?i:\bssn|\bsocial[ \t]+security(?:[ \t]+(?:number|no\.?|#))?|\bnational[ \t]+insurance(?:[ \t]+(?:number|no\.?))?|"
    r"\bnino|\baadhaar(?:[ \t]+(?:number|no\.?))?|\btax[ \t]+id|\bpassport(?:[ \t]+(?:number|no\.?))?|"
    r"\bnational[ \t]+id(?:[ \t]+(?:number|no\.?))?|\bid[ \t]+(?:number|card[ \t]+number))"
    r"(?:[ \t]*(?:is|was|[:#=]))?[ \t]*(?P<value>[A-Z0-9][A-Z0-9 \-]{4,18}[A-Z0-9])"
)
_NINO = re.compile(r"(?<!\w)(?![DFIQUV])[A-Z](?![DFIOQUV])[A-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D](?!\w)")
# A number after a word that says it is a phone number ("call me on 0413461092", "Phone: 04 44 84 75 64"):
# national formats of any country, which `phonenumbers` cannot confirm without knowing the region.
_PHONE_CUE = re.compile(
    r"(?i:\bphone|\btel|\btelephone|\bmobile|\bcell|\bwhatsapp|\bcall[ \t]+me|\breach[ \t]+me|\bring[ \t]+me|"
    r"\btext[ \t]+me|\bcontact[ \t]+number|"
    r"\bnumber(?<!order number)(?<!ticket number)(?<!case number)(?<!tracking number)(?<!invoice number)"
    r"(?<!reference number)(?<!confirmation number)(?<!booking number)(?<!serial number)(?<!model number)"
    r"(?<!policy number)[ \t]+is|\bhandy|\btéléphone|\bportable|\bmóvil|\bteléfono)"
    r"[^\d+(\n]{0,20}?(?P<value>[+(]?\d[\d \t().\-/]{5,20}\d(?:[ \t]*(?:x|ext\.?|#)[ \t]*\d{1,6})?)"
)

# Postal addresses, found from their postcode: a US state and ZIP after a comma ("Adamsbury, OR 13900"),
# a UK postcode, a five-digit postcode before a capitalised city (DE, FR, ES, IT, ...), a postcode
# ending the address after a comma (ES: "Tarragona, 30188"), an Indian PIN after its city ("Bhopal
# 690743", "Saharanpur-286012"); then extended back over the comma- or line-separated parts before it
# that read like an address (numbers, capitalised words, street words such as "rue", "calle", "Apt.").
_US_STATES = frozenset(
    "AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM NY NC ND OH OK "
    "OR PA RI SC SD TN TX UT VT VA WA WV WI WY PR VI GU AS MP MH FM PW AA AE AP".split())
_CITY = (rf"[{_CAP}][^\W\d_]*(?:['’][^\W\d_]+)?(?:(?:[ \t]+|-)(?:(?:an|am|der|die|den|im|in|sur|sous|les|lès|la|le|de|"
         rf"del|en|bei|ob|d'|l')(?:[ \t]+|-))*[{_CAP}][^\W\d_]*(?:['’][^\W\d_]+)?){{0,3}}(?:[ \t]+CEDEX(?:[ \t]+\d+)?)?")
_ADDRESS_ANCHOR = re.compile(
    r",[ \t]*(?P<state>[A-Z]{2})[ \t]+\d{5}(?:-\d{4})?(?![\w-])"  # US: ", OR 13900"
    r"|(?<![\w-])(?:APO|FPO|DPO)[ \t]+A[AEP][ \t]+\d{5}(?![\w-])"  # US military
    r"|(?<![\w-])[A-Z]{1,2}\d[A-Z\d]?[ \t]+\d[A-Z]{2}(?![\w-])"  # UK postcode
    rf"|(?<![\w-])(?P<eu>\d{{5}})[ \t]+(?P<city>{_CITY})"  # 66907 Werdau, 97636 Sainte Antoinenec
    rf"|(?<=,)[ \t]*(?P<trail>\d{{5,6}})(?![\w-]|[.,]\d|[ \t]+[{_CAP}])"  # ES: Tarragona, 30188
    rf"|(?P<pin_city>[{_CAP}][a-zà-ÿ]{{2,}})(?:[ \t]*-[ \t]*|[ \t]+)(?P<pin>\d{{6}})(?![\w-])"  # IN: Bhopal 690743
)
_ADDRESS_TOKEN = re.compile(
    r"(?:(?i:no\.?|h\.?[ ]?no\.?|#))?\d+[A-Za-z]?(?:[-/]\d+[A-Za-z]?)*[º°ª]?[.,]?"  # 26-83, 33/78, 3º
    rf"|[{_CAP}][\w'’.\-]*"
    r"|(?i:de|del|de la|della|der|den|des|du|da|di|do|dos|das|van|von|la|le|les|el|y|e|rue|avenue|av\.?|bd\.?|"
    r"boulevard|allée|chemin|impasse|place|quai|route|calle|c/|avenida|avda\.?|plaza|paseo|camino|carrera|"
    r"callejón|ronda|travesía|glorieta|cuesta|pasaje|vía|via|strada|piazza|street|st\.?|road|rd\.?|lane|ln\.?|"
    r"apt\.?|flat|floor|fl\.?|piso|puerta|bis|ter|nagar|marg|colony|sector|block|phase|near|opp\.?|[a-z])"
)
_NOT_ADDRESS_WORDS = frozenset(
    "i my our your please ship deliver send address the to thanks thank hi hello dear it we you moved sent mail post "
    "delivery shipping billing invoice order ticket case ref reference rma tracking error code version build model serial "
    "sn id total from at in on is was and or for of".split())
_ADDRESS_DIGIT = re.compile(r"\d")
# A street named without a house number still makes the part before a postcode an address ("rue de Lemaire").
_STREET_TYPE = re.compile(
    r"(?i)^(?:rue|avenue|av\.?|bd\.?|boulevard|allée|chemin|impasse|place|quai|route|calle|avenida|avda\.?|plaza|paseo|"
    r"camino|carrera|callejón|ronda|travesía|glorieta|cuesta|pasaje|rambla|vía|via|strada|piazza|marg|nagar)$"
    r"|(?i:straße|strasse|str\.|weg|gasse|platz|allee|ring|damm|ufer)$")


def _address_start(text: str, anchor_start: int, limit: int = 6) -> tuple[int, bool]:
    """Where the address ending in the anchor at `anchor_start` begins (walking back over its parts), and
    whether a part before the anchor holds a number (a house number, a flat)."""
    left = anchor_start
    cursor = anchor_start
    numbered = False
    for _ in range(limit):
        separator = max(text.rfind(",", 0, cursor), text.rfind("\n", 0, cursor), text.rfind(":", 0, cursor),
                        text.rfind(";", 0, cursor), text.rfind("(", 0, cursor))
        segment = text[separator + 1 : cursor]
        tokens = list(re.finditer(r"\S+", segment))
        whole = True
        kept = len(tokens)
        for token in reversed(tokens):
            value = token.group()
            if (len(tokens) - kept >= 9 or value.lower().strip(".,") in _NOT_ADDRESS_WORDS
                    or _ADDRESS_TOKEN.fullmatch(value) is None):
                whole = False
                break
            kept -= 1
        if kept < len(tokens):
            left = separator + 1 + tokens[kept].start()
            numbered = numbered or any(_ADDRESS_DIGIT.search(t.group()) is not None or _STREET_TYPE.search(t.group()) is not None
                                       for t in tokens[kept:])
        if not tokens and cursor == anchor_start and separator >= 0 and text[separator] in ",\n":
            cursor = separator  # the anchor starts its part ("Werdau, OR 13900", "12 Main St\n10115 Berlin")
            continue
        if not whole or separator < 0 or text[separator] in ":;(" or not tokens:
            break
        if text[separator] == "\n" and text[max(0, separator - 1)] == "\n":
            break  # a blank line ends the address
        cursor = separator
        if text[separator] == "\n" and separator > 0 and text[separator - 1] == ",":
            cursor = separator - 1  # ",\n" is one separator
    return left, numbered


def postal_addresses(text: str) -> list[tuple[int, int]]:
    """Spans of postal addresses found from their postcode (see above)."""
    spans = []
    for m in _ADDRESS_ANCHOR.finditer(text):
        if m.group("state") is not None and m.group("state") not in _US_STATES:
            continue
        start = m.start()
        if m.group("state") is not None or m.group("trail") is not None:
            start = m.start() + (m.group().index(m.group("state") or m.group("trail")))
        left, numbered = _address_start(text, start)
        if m.group("eu") is not None or m.group("trail") is not None or m.group("pin") is not None:
            if not numbered:  # a bare number before a word: only an address with a house number before it
                continue
        spans.append((left, m.end()))
    return spans


_NUMBER_KINDS = frozenset(("PHONE", "CARD", "IBAN", "NATIONAL_ID", "IP"))


def _word_char(char: str) -> bool:
    return char.isalnum() or char == "_"


def _whole_token(text: str, f: "Finding") -> "Finding | None":
    """`f` widened to the whole token it sits in, so that no placeholder is glued to a leftover piece of
    the value (`dana77` -> `{{USERNAME}}`, not `{{NAME}}77`; `+1-555-0134x523` whole). A number glued
    after letters and a dash (`BL-2026-004512`) is part of a code, not private data: None."""
    start, end, n = f.start, f.end, len(text)
    if f.kind in _NUMBER_KINDS:
        if start > 0 and _word_char(text[start - 1]):
            return None if f.kind != "PHONE" or not text[start - 1].isdigit() else _whole_token(
                text, Finding(f.kind, start - 1, end, text[start - 1 : end]))
        if start > 1 and text[start - 1] in "-_/" and text[start - 2].isalpha():
            return None
    else:
        while start > 0 and (_word_char(text[start - 1]) or (
                text[start - 1] in ".-" and start > 1 and _word_char(text[start - 2]) and _word_char(text[start]))):
            start -= 1
    while end < n and (_word_char(text[end]) or (
            text[end] in ".-" and end + 1 < n and _word_char(text[end + 1]) and _word_char(text[end - 1]))):
        end += 1
    if (start, end) == (f.start, f.end):
        return f
    return Finding(f.kind, start, end, text[start:end])


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


_CARD_GROUPS = re.compile(r"\d{4}(?:[ -]\d{4}){2}[ -]\d{1,7}|\d{4}[ -]\d{6}[ -]\d{4,5}|\d{12,19}")


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
    if digits.startswith(("1800", "2131")):
        return n == 15  # JCB's older 15-digit numbers
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
# A run of 5 digits that `_postcode_like` accepts: not glued after a letter, digit or code mark, or after a
# hyphen that follows a lower-case letter (`Saharanpur-286012`). `BL-719211` is an order number.
# (Both alternatives start with a digit and look behind it, so that `re` skips ahead to digits.)
_POSTCODE_GATE = re.compile(r"\d(?<![\w\-/.#]\d)\d{4}|\d(?<=[a-z]-\d)\d{4}")
# The gates' marks, one bit per family of detectors; a text is scanned only by the detectors its marks allow.
_GATE_EMAIL, _GATE_IP, _GATE_DIGIT_RUN, _GATE_IBAN, _GATE_ADDRESS, _GATE_NAME, _GATE_CONTEXT = 1, 2, 4, 8, 16, 32, 64
_GATE_ALL = 127
# The context detectors (names after a greeting, usernames after "login", numbers after "phone"...) look for
# words too common to gate on ("hi", "this is", "I'm"): every text gets their mark. (Gating the usernames',
# phones' and ids' cue words over the batch was tried: it cost what it saved.)
_GATE_KINDS = {_GATE_EMAIL: ("EMAIL", "USERNAME"), _GATE_IP: ("IP",), _GATE_DIGIT_RUN: ("PHONE", "CARD", "NATIONAL_ID"),
               _GATE_IBAN: ("IBAN",), _GATE_ADDRESS: ("ADDRESS",), _GATE_NAME: ("NAME",),
               _GATE_CONTEXT: ("NAME", "USERNAME", "NATIONAL_ID", "PHONE")}
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
            for start, end in context_names(text):
                add(Finding("NAME", start, end, text[start:end]))
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
        lower = text.lower()
        if "USERNAME" in kinds and ("@" in text or _USERNAME_GATE.search(lower) is not None):
            for m in _USERNAME.finditer(text):
                group = next(g for g in ("value", "value2", "handle") if m.group(g) is not None)
                if m.group(group).lower() not in _NOT_USERNAMES:
                    add(Finding("USERNAME", m.start(group), m.end(group), m.group(group)))
        digits = len(text.encode("utf-8", "replace").translate(None, _NON_DIGITS))
        if digits == 0:
            if "::" in text and "IP" in kinds:  # IPv6 written with letters only ("fe::ab")
                self._ipv6(text, add)
            return
        if digits >= 12 and "CARD" in kinds:
            for m in _CARD.finditer(text):
                if card_ok(m.group()):
                    add(Finding("CARD", m.start(), m.end(), m.group()))
        if digits >= 7 and "PHONE" in kinds:
            # a phone number's 7 digits stand together but for phone punctuation (exact for ASCII; `\d` and
            # phonenumbers also read other scripts' digits)
            if not text.isascii() or b"9999999" in text.encode().translate(_DIGIT_SHAPE, _PHONE_PUNCTUATION):
                self._phones(text, add)
            for m in _PHONE_CUE.finditer(text) if _PHONE_GATE.search(lower) is not None else ():
                if 7 <= len(_digits(m.group("value"))) <= 15:
                    add(Finding("PHONE", m.start("value"), m.end("value"), m.group("value")))
        if digits >= 6 and "NATIONAL_ID" in kinds:
            if digits >= 9 and "-" in text:
                for m in _SSN.finditer(text):
                    add(Finding("NATIONAL_ID", m.start(), m.end(), m.group()))
            cued = _ID_GATE.search(lower) is not None
            for m in _NINO.finditer(text) if cued else ():
                add(Finding("NATIONAL_ID", m.start(), m.end(), m.group()))
            for m in _ID_CUE.finditer(text) if cued else ():
                value = m.group("value").rstrip(" -")
                if sum(c.isdigit() for c in value) >= 6:
                    add(Finding("NATIONAL_ID", m.start("value"), m.start("value") + len(value), value))
        if "IP" in kinds:
            if digits >= 4 and text.count(".") >= 3:
                for m in _IPV4.finditer(text):
                    if all(int(part) <= 255 for part in m.group().split(".")) and _VERSION_BEFORE.search(
                            text, max(0, m.start() - 12), m.start()) is None:
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
            # Exact gates for ASCII text: an address needs a street word as a whole word; a fused street
            # name ends in one of a few words; a postcode has the shape " 9AA".
            street = words is None or not _STREET_WORDS.isdisjoint(words)
            position = 0
            while street and (m := _ADDRESS.search(text, position)) is not None:
                suffix = m.group("suffix")
                if ((suffix.lower() in _WEAK_SUFFIXES and not suffix[0].isupper())
                        or any(w.strip(".,'") in _NOT_STREET_WORDS for w in m.group("words").lower().split())):
                    position = m.start() + 1  # a later number may start one ("a 5 star called 45 Park Lane")
                    continue
                add(Finding("ADDRESS", m.start(), m.end(), m.group()))
                position = m.end()
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
            if digits >= 5 and _postcode_like(text) or gates[2][0]:
                for start, end in postal_addresses(text):
                    add(Finding("ADDRESS", start, end, text[start:end]))

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
        word or a postcode for an address, a word of a known name...), so a text without a detector's mark would
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
        marks = [_GATE_CONTEXT] * n
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
        mark_texts(searcher(_POSTCODE_GATE, joined), starts, marks, _GATE_ADDRESS)
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
        """Drop allowlisted values and placeholders; widen each finding to whole tokens (and drop numbers
        that are part of a code such as `BL-2026-004512`); keep the best of overlapping findings."""
        blocked = [(m.start(), m.end()) for m in PLACEHOLDER.finditer(text)] if "{{" in text else []
        keep: list[Finding] = []
        found = [w for w in map(functools.partial(_whole_token, text), found) if w is not None]
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
    """A Scanner with a recipe's `data.pii` settings (allowlist, patterns, phone regions, kinds). A recipe
    that lists every kind of the first release means every kind (the later USERNAME and NATIONAL_ID too)."""
    kinds = set(section.kinds)
    if kinds >= _FIRST_KINDS:
        kinds = set(KINDS)
    return Scanner(section.allowlist, names, section.patterns, section.phone_regions, kinds)


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
