"""Duplicate conversations: exact and normalized keys, and MinHash near-duplicates (LSH banding)."""

from __future__ import annotations

import hashlib
import re
import zlib

_NOT_WORD = re.compile(r"[\W_]+")


def exact_key(messages: list[dict]) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    for message in messages:
        digest.update(message["role"].encode())
        digest.update(b"\x1f")
        digest.update(message["content"].encode())
        digest.update(b"\x1e")
    return digest.digest()


_ASCII_PUNCTUATION = str.maketrans({chr(c): " " for c in range(128) if not chr(c).isalnum()})


def normalize(text: str) -> str:
    """Case, whitespace and punctuation folded away: `Hi,  there!` and `hi there` are the same."""
    lower = text.lower()
    if lower.isascii():  # the same result, with C-level string methods instead of a regex
        return " ".join(lower.translate(_ASCII_PUNCTUATION).split())
    return _NOT_WORD.sub(" ", lower).strip()


_ASCII_ALNUM = bytes(c if chr(c).isalnum() and c < 128 else 32 for c in range(256))


def _normalized_bytes(text: str) -> bytes:
    """`normalize(text).encode()`, with bytes methods for ASCII text (most support messages)."""
    lower = text.lower()
    if lower.isascii():
        return b" ".join(lower.encode().translate(_ASCII_ALNUM).split())
    return _NOT_WORD.sub(" ", lower).strip().encode()


# Keeps ASCII letters and digits, and the markers \x01 (a message starts) and \x02 (its text starts).
_CANONICAL = bytes(c if (chr(c).isalnum() and c < 128) or c in (1, 2) else 32 for c in range(256))


def normalized_key(messages: list[dict]) -> bytes:
    """Equal for conversations whose messages have the same roles and the same `normalize`d texts.

    The hash is of the tokens `\x01 role \x02 word word ...` for each message; an ASCII conversation
    (the common case) is normalised in one pass over all its messages."""
    parts = []
    for message in messages:
        parts += (" \x01 ", message["role"], " \x02 ", message["content"])
    text = "".join(parts)
    n = len(messages)
    if (text.isascii() and text.count("\x01") == n and text.count("\x02") == n
            and all(m["role"].isalnum() and m["role"].islower() for m in messages)):
        canonical = text.lower().encode().translate(_CANONICAL)
    else:  # per message (texts that are not ASCII, or hold the markers); the same tokens
        canonical = b" ".join(b"\x01 " + m["role"].encode() + b" \x02 " + _normalized_bytes(m["content"])
                              for m in messages)
    return hashlib.blake2b(b" ".join(canonical.split()), digest_size=16).digest()


# Roles whose names hold no marker or case (the other roles' conversations take `normalized_key`).
_PLAIN_ROLES = frozenset({"user", "assistant", "system"})
# `_CANONICAL`, also keeping \x03 (where the next conversation starts, in `normalized_keys`).
_CANONICAL_MANY = bytes(c if (chr(c).isalnum() and c < 128) or c in (1, 2, 3) else 32 for c in range(256))


def normalized_keys(conversations: list[list[dict]]) -> list[bytes]:
    """`normalized_key` of each conversation's messages. The ASCII conversations with plain roles (most)
    are normalised together: one lower(), translate() and collapse of spaces over all of them, then a
    hash each, instead of a dozen steps per conversation."""
    keys: list = [None] * len(conversations)
    plain, texts, messages = [], [], 0
    for index, conversation in enumerate(conversations):
        parts = []
        for message in conversation:
            role = message["role"]
            if role not in _PLAIN_ROLES:
                break
            parts += (" \x01 ", role, " \x02 ", message["content"])
        else:
            text = "".join(parts)
            if text.isascii():
                plain.append(index)
                texts.append(text)
                messages += len(conversation)
                continue
        keys[index] = normalized_key(conversation)
    joined = "\x03".join(texts)
    if joined.count("\x01") != messages or joined.count("\x02") != messages or joined.count("\x03") != len(texts) - 1:
        for index in plain:  # a text holds a marker: conversation by conversation
            keys[index] = normalized_key(conversations[index])
        return keys
    import numpy as np

    canonical = np.frombuffer(joined.lower().encode().translate(_CANONICAL_MANY), dtype=np.uint8)
    space = canonical == 32
    space[1:] &= space[:-1].copy()  # a space after a space: dropped (each run of spaces becomes one)
    blake2b = hashlib.blake2b
    for index, text in zip(plain, canonical[~space].tobytes().split(b"\x03")):
        keys[index] = blake2b(text.strip(), digest_size=16).digest()
    return keys


class NearDuplicates:
    """MinHash over word 3-grams with LSH banding; a candidate pair is confirmed by its estimated Jaccard.

    128 permutations in 32 bands of 4 rows catch pairs above ~0.4 similarity as candidates, then the
    signature agreement (an unbiased Jaccard estimate) must reach `threshold`.
    """

    PRIME = (1 << 61) - 1

    def __init__(self, threshold: float = 0.8, permutations: int = 128, bands: int = 32, seed: int = 1):
        import numpy as np  # only the optional near-duplicate mode needs it

        self.np = np
        assert permutations % bands == 0
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, self.PRIME, size=permutations, dtype=np.uint64)
        self.b = rng.integers(0, self.PRIME, size=permutations, dtype=np.uint64)
        self.threshold = threshold
        self.bands = bands
        self.rows = permutations // bands
        self.buckets: list[dict] = [dict() for _ in range(bands)]
        self.signatures: list = []
        self.names: list[str] = []

    def signature(self, text: str):
        words = normalize(text).split()
        grams = {" ".join(words[i : i + 3]) for i in range(max(1, len(words) - 2))} or {""}
        np = self.np
        hashes = np.fromiter((zlib.crc32(g.encode()) for g in grams), dtype=np.uint64, count=len(grams))
        # (a*x + b) mod p with x < 2^32: a*x can overflow 64 bits, which only reshuffles the hash; it
        # stays a fixed random function of x, which is all MinHash needs.
        values = (hashes[:, None] * self.a[None, :] + self.b[None, :]) % np.uint64(self.PRIME)
        return values.min(axis=0)

    def check_and_add(self, name: str, text: str) -> str | None:
        """The name of an earlier near-duplicate of `text`, or None (then `text` is remembered)."""
        signature = self.signature(text)
        candidates: set[int] = set()
        keys = []
        for band in range(self.bands):
            key = signature[band * self.rows : (band + 1) * self.rows].tobytes()
            keys.append(key)
            candidates.update(self.buckets[band].get(key, ()))
        best, best_score = None, 0.0
        for index in candidates:
            score = float((self.signatures[index] == signature).mean())
            if score >= self.threshold and score > best_score:
                best, best_score = index, score
        if best is not None:
            return self.names[best]
        index = len(self.signatures)
        self.signatures.append(signature)
        self.names.append(name)
        for band, key in enumerate(keys):
            self.buckets[band].setdefault(key, []).append(index)
        return None
