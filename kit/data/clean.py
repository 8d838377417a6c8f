"""Text cleaning rules: HTML to text, quoted replies, signatures, auto-replies, whitespace.

Each rule is a plain function of a string, gated by a cheap substring test so that the common message
(plain text, no quote, no signature) costs a few string scans. `Rules` holds the resolved switches:
built-in defaults < the template's `rules` < the recipe's `data.rules`.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, fields

from kit.pii import batch_starts, mark_texts, searcher

DEFAULT_AUTO_REPLY_PATTERNS = (
    r"\bout of (?:the )?office\b",
    r"\bauto(?:matic)?[- ]?(?:reply|response|responder)\b",
    r"\bthis is an automated (?:message|response|reply|notification)\b",
    r"\bdo not reply to this (?:e-?mail|message)\b",
    r"\bwe(?:'ve| have) received your (?:request|message|e-?mail|ticket)\b",
    r"\bI am (?:currently )?(?:away|on (?:annual )?leave|out of the office)\b",
)


# An automatic reply says what it is in its first words ("Automatic reply: ...", "I am out of the office
# until ...", "Thank you for contacting us. We have received your request ..."), and says little more; a person
# who mentions an out-of-office day or an auto-reply does so within what they write ("I'm out of the office
# tomorrow, please deliver Friday"). So a pattern counts only at the start of a message, after at most a
# greeting and one thank-you sentence, and only in a short message: 600 characters hold an out-of-office note
# with a return date and two alternative contacts; the shipped sample's acknowledgement has 137.
AUTO_REPLY_MAX_CHARS = 600
_AUTO_REPLY_LEAD = (r"(?:(?:hi|hello|dear|greetings|good (?:morning|afternoon|evening))\b[^\n.!?]{0,40}[,.!:]?\s+)?"
                    r"(?:thanks?(?: you)?\b[^\n.!?]{0,100}[.!]\s*)?")


_GLOBAL_FLAGS = re.compile(r"^\(\?([imsx]+)\)")


def auto_reply_regex(patterns) -> re.Pattern:
    """One regex for the patterns, each matched at a message's start after the optional greeting and thank-you.

    A pattern's leading global flags (`(?i)...`) become scoped ones (`(?i:...)`): behind the lead they would no
    longer be at the start, which Python refuses."""
    scoped = [_GLOBAL_FLAGS.sub(r"(?\1:", p, count=1) + ")" if _GLOBAL_FLAGS.match(p) else f"(?:{p})" for p in patterns]
    return re.compile(_AUTO_REPLY_LEAD + "(?:" + "|".join(scoped) + ")", re.IGNORECASE)


def _maybe_default_auto_reply(lower: str) -> bool:
    # Each built-in pattern contains one of these words (a chain of `in` tests: no generator overhead).
    return "office" in lower or "auto" in lower or "do not reply" in lower or "received your" in lower or "i am " in lower


@dataclass(frozen=True)
class Rules:
    html_to_text: bool = True
    strip_quoted_replies: bool = True
    strip_signatures: bool = True
    drop_auto_replies: bool = True
    auto_reply_patterns: tuple[str, ...] = DEFAULT_AUTO_REPLY_PATTERNS
    remove_patterns: tuple[str, ...] = ()
    normalize_whitespace: bool = True
    merge_consecutive: bool = True
    require_both_sides: bool = True
    trim_trailing_customer: bool = True
    bot_role: str = "assistant"
    min_tokens: int = 0
    max_tokens: int = 0


def resolve_rules(*layers) -> Rules:
    """Built-in defaults, then each layer's set (non-null) values in order (template, then recipe)."""
    values = {}
    for layer in layers:
        if layer is None:
            continue
        for f in fields(Rules):
            value = getattr(layer, f.name, None)
            if value is not None:
                values[f.name] = tuple(value) if isinstance(value, list) else value
    return Rules(**values)


_LOOKS_HTML = re.compile(r"</?[A-Za-z][\w-]*(?:\s[^<>]*)?/?>")
_HTML_DROP = re.compile(r"<(script|style|head)\b.*?</\1\s*>|<!--.*?-->", re.IGNORECASE | re.DOTALL)
_HTML_QUOTE = re.compile(
    r"<blockquote\b.*?</blockquote\s*>|<div[^>]*class=\"[^\"]*(?:gmail_quote|moz-cite-prefix)[^\"]*\".*",
    re.IGNORECASE | re.DOTALL,
)
_HTML_ITEM = re.compile(r"<li\b[^>]*>", re.IGNORECASE)
_HTML_BREAK = re.compile(r"<(?:br|/?p|/?div|/tr|/h[1-6]|/?ul|/?ol|/?table|hr)\b[^>]*>", re.IGNORECASE)
_HTML_TAG = re.compile(r"<[^<>]+>")
_ENTITY = re.compile(r"&(?:#\d+|#x[0-9A-Fa-f]+|[A-Za-z]+\d*);")


def html_to_text(text: str, drop_quotes: bool = True) -> str:
    if "<" in text and _LOOKS_HTML.search(text):
        text = _HTML_DROP.sub("", text)
        if drop_quotes:
            text = _HTML_QUOTE.sub("", text)
        text = text.replace("\n", " ")  # in HTML, newlines are spaces; tags make the lines
        text = _HTML_ITEM.sub("\n- ", text)
        text = _HTML_BREAK.sub("\n", text)
        text = _HTML_TAG.sub("", text)
    if "&" in text and _ENTITY.search(text):
        text = html.unescape(text)
    return text


_QUOTE_START = re.compile(
    r"^[ \t]*(?:"
    r"On\b[^\n]{0,200}(?:\n[^\n]{0,200})?\bwrote:[ \t]*$"  # Gmail / Apple Mail, may wrap onto a second line
    r"|Am\b[^\n]{0,200}schrieb[^\n]{0,80}:[ \t]*$"
    r"|Le\b[^\n]{0,200}a écrit[ \t]*:[ \t]*$"
    r"|-{2,}[ \t]*(?:Original Message|Forwarded message)[ \t]*-{2,}"
    r"|_{10,}[ \t]*\n[ \t]*From:"
    r"|From:[^\n]*\n[ \t]*(?:Sent|Date):"  # Outlook header block
    r")",
    re.MULTILINE | re.IGNORECASE,
)
_QUOTED_LINE = re.compile(r"^[ \t]*>[^\n]*(?:\n|$)", re.MULTILINE)


def strip_quoted_replies(text: str) -> str:
    if "wrote:" in text or "From:" in text or "-----" in text or "schrieb" in text or "a écrit" in text or "____" in text:
        match = _QUOTE_START.search(text)
        if match is not None:
            text = text[: match.start()]
    if ">" in text:
        text = _QUOTED_LINE.sub("", text)
    return text


_SIGN_OFF = re.compile(
    r"(?:(?:best|kind|warm|warmest|many)\s+)?(?:regards|wishes)\b.*"
    r"|(?:thanks|thank you|thanks again|many thanks|thx|cheers|sincerely|yours(?: truly| sincerely)?|"
    r"all the best|best|br|talk soon|take care|have a (?:great|nice|good) (?:day|one))[ \t]*[,.!]*"
    r"|(?:thanks|thank you|cheers|best)[ \t]*[,!.]?[ \t]*[-–—]?[ \t]*[A-Z][\w.'-]*(?:[ \t]+[A-Z][\w.'-]*)?[ \t]*",
    re.IGNORECASE,
)
# The batch gate of a marked sign-off (`_MARKED_SIGN_OFF` at the end of a text of a NUL-joined batch).
_MARKED_END = re.compile(r"[-–—~^/*][ \t]?[A-Z][\w'’.]*(?:[ \t][A-Z][\w'’.]*)?(?=\s*(?:\x00|\Z))")
_SENT_FROM = re.compile(r"^[ \t]*(?:Sent from my [^\n]{1,40}|Get Outlook for [^\n]{1,20})[ \t]*$", re.MULTILINE)


# A short sign-off at the end of the last line: "... for you. ^MO", "Thanks! -Karthik", "Fixed now /AY",
# or alone on it (support teams sign tweets and chats with a name or initials after a mark).
_MARKED_SIGN_OFF = re.compile(r"(?P<mark>--?|[–—~^/*])(?P<space>[ \t]?)[A-Z][\w'’.]*(?:[ \t][A-Z][\w'’.]*)?[ \t]*$")


def _marked_sign_off(line: str, previous: str | None) -> int | None:
    """Where a marked sign-off at the end of `line` starts (None if there is none). `previous`: the line
    before (None for a one-line text)."""
    match = _MARKED_SIGN_OFF.search(line, max(0, len(line) - 40))
    if match is None:
        return None
    head = line[: match.start()]
    mark, spaced = match.group("mark"), bool(match.group("space"))
    if not head.strip():  # alone on its line
        if previous is None or not previous.strip():
            return None
        if previous.lstrip()[:1] == line.lstrip()[:1]:
            return None  # the last item of a list ("- PayPal\n- Apple Pay")
        if mark in ("-", "*") and spaced and previous.rstrip()[-1:] not in (".", "!", "?", ",", ")"):
            return None  # "Step 1\n- Unplug it": a bullet, unless a sentence ends before it
        return match.start()
    if head.rstrip()[-1:] in (".", "!", "?", ")"):
        return match.start()
    if head[-1:] in (" ", "\t") and (mark in ("^", "/", "*", "~") or not spaced):
        return match.start()  # " ^AB", " -Suli"; not " - Free"
    return None


def strip_signatures(text: str) -> str:
    if "Sent from my" in text or "Get Outlook for" in text:
        text = _SENT_FROM.sub("", text).rstrip()
    if "\n" not in text.rstrip():  # a single line: only a marked sign-off at its end
        if "^" in text or "-" in text or "/" in text or "~" in text or "*" in text or "–" in text or "—" in text:
            at = _marked_sign_off(text.rstrip(), None)
            if at is not None and text[:at].strip():
                return text[:at].rstrip()
        return text
    stripped = text.rstrip()
    lines = stripped.split("\n")
    n = len(lines)
    # "-- " alone on a line starts a signature (RFC 3676); only trusted near the end. A sign-off may
    # stand before it ("Best regards,\nName\n-- \nCompany"): the text before it is looked at again.
    for i in range(max(1, n - 8), n):
        if lines[i].rstrip() in ("--", "-- ", "—"):
            return strip_signatures("\n".join(lines[:i]).rstrip())
    at = _marked_sign_off(lines[-1], lines[-2])
    if at is not None:
        head = ("\n".join(lines[:-1]) + "\n" + lines[-1][:at]).rstrip()
        if head:
            return strip_signatures(head)  # "Thanks!\n- Dana": the sign-off line before it too
    # A sign-off line near the end, followed only by a few short lines (name, title, company, phone).
    for i in range(max(1, n - 6), n):
        line = lines[i].strip()
        if len(line) <= 40 and _SIGN_OFF.fullmatch(line):
            tail = lines[i + 1 :]
            if len(tail) <= 4 and all(len(rest.strip()) <= 60 for rest in tail):
                head = "\n".join(lines[:i]).rstrip()
                if head:
                    return head
    return text


_WS_NEEDED = re.compile(r"[ \t\u00a0\u2009\u202f]{2}|[\t\u00a0\u2009\u202f\u200b\ufeff]| \n|\n |\n\n\n")
_WS_RUN = re.compile(r"[ \t\u00a0\u2009\u202f]+")
_BLANKS = re.compile(r"\n{3,}")


def normalize_whitespace(text: str) -> str:
    """Line ends to \\n, runs of spaces (tabs, no-break and thin spaces) to one space, at most one blank
    line, no zero-width spaces or byte-order marks, no spaces around lines. Whitespace only: the zero-width
    joiner and non-joiner (U+200D, U+200C) are parts of emoji sequences and of Indic and Persian words."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if _WS_NEEDED.search(text) is None:
        return text.strip()
    for char in "\u200b\ufeff":
        text = text.replace(char, "")
    text = "\n".join(_WS_RUN.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANKS.sub("\n\n", text).strip()


# A text with none of these characters and strings is left as it is by every rule but the final strip():
# the gates of `Cleaner.clean` (html < &, quotes > : ----- ____, signatures, whitespace) in one search.
_RULE_CHARS = re.compile("[<&>:\n\r\t\u00a0\u2009\u202f\u200b\ufeff]")
_RULE_STRINGS = ("-----", "____", "Sent from my", "Get Outlook for", "  ")
_AUTO_REPLY_WORDS = ("office", "auto", "do not reply", "received your", "i am ")  # see _maybe_default_auto_reply


class Cleaner:
    """The rules compiled for one source: `clean(text)` and `is_auto_reply(text)`."""

    def __init__(self, rules: Rules):
        self.rules = rules
        self.auto_reply = (
            auto_reply_regex(rules.auto_reply_patterns)
            if rules.drop_auto_replies and rules.auto_reply_patterns
            else None
        )
        self.remove = [re.compile(p, re.MULTILINE) for p in rules.remove_patterns]
        # Most messages contain none of the built-in patterns' words, and a few substring tests cost far
        # less than a case-insensitive regex search.
        self.default_patterns = rules.auto_reply_patterns == DEFAULT_AUTO_REPLY_PATTERNS

    def clean(self, text: str) -> str:
        # The rules' own gates, repeated here so that a plain one-line message makes no function calls.
        rules = self.rules
        if rules.html_to_text and ("<" in text or "&" in text):
            text = html_to_text(text, rules.strip_quoted_replies)
        for pattern in self.remove:
            text = pattern.sub("", text)
        if rules.strip_quoted_replies and (">" in text or ":" in text or "-----" in text or "____" in text):
            text = strip_quoted_replies(text)
        if rules.strip_signatures and ("\n" in text or "Sent from my" in text or "Get Outlook for" in text
                                       or _MARKED_END.search(text, max(0, len(text) - 48)) is not None):
            text = strip_signatures(text)
        if rules.normalize_whitespace:
            return normalize_whitespace(text)
        return text.strip()

    def clean_many(self, texts: list[str]) -> list[str]:
        """`clean` of each text. Most support messages hold none of the characters a rule looks for
        (one search over the batch finds those that do); the others only need `strip()`."""
        if self.remove or len(texts) < 2:
            return [self.clean(text) for text in texts]
        joined = "\x00".join(texts)
        starts = batch_starts(texts)
        marks = [False] * len(texts)
        mark_texts(searcher(_RULE_CHARS, joined), starts, marks)
        if self.rules.strip_signatures:
            mark_texts(searcher(_MARKED_END, joined), starts, marks)
        for string in _RULE_STRINGS:
            if string in joined:
                mark_texts(lambda position, string=string: joined.find(string, position), starts, marks)
        clean = self.clean
        return [clean(text) if marked else text.strip() for text, marked in zip(texts, marks)]

    def auto_replies(self, texts: list[str]) -> list[bool]:
        """`is_auto_reply` of each text; with the built-in patterns, one search per gate word over the batch."""
        if self.auto_reply is None:
            return [False] * len(texts)
        joined = "\x00".join(texts)
        if not self.default_patterns or not joined.isascii():  # (lower() keeps the length of ASCII text only)
            return [self.is_auto_reply(text) for text in texts]
        lower = joined.lower()
        starts = batch_starts(texts)
        marks = [False] * len(texts)
        for word in _AUTO_REPLY_WORDS:
            if word in lower:
                mark_texts(lambda position, word=word: lower.find(word, position), starts, marks)
        match = self.auto_reply.match
        return [marked and len(text) <= AUTO_REPLY_MAX_CHARS and match(text) is not None for text, marked in zip(texts, marks)]

    def is_auto_reply(self, text: str) -> bool:
        """A short text that starts (after a greeting and one thank-you sentence) with an auto-reply pattern. The
        assembly also keeps a customer's such message in the middle of a conversation (`kit.data.convert`)."""
        if self.auto_reply is None or len(text) > AUTO_REPLY_MAX_CHARS:
            return False
        if self.default_patterns and not _maybe_default_auto_reply(text.lower()):
            return False
        return self.auto_reply.match(text) is not None
