"""Thai character classes and where orthography rules out a word start, per character and vectorised over
code points.

Each character belongs to one of ``CHAR_CLASSES`` (consonant, leading vowel, following vowel, tone mark, ...
from Unicode ranges); the segmenter embeds the class beside the character's identity, which is what lets it
handle characters it never saw. Thai orthography forbids a word from starting at a following vowel, a tone
mark or a combining mark, and right after a leading vowel (เ แ โ ใ ไ): ``forbidden_starts``.

``char_class`` is the rule one character at a time; the segmenter's hot path uses its vectorised forms over
code points (``codepoints``, ``class_ids``, ``forbidden_from_codepoints``: tables over the Basic Multilingual
Plane), and lays texts out concatenated (``text_offsets``) and in padded rows (``padded_index``). Pure numpy;
no model. The segmenter that uses them is :mod:`models.thai_segmenter`.
"""

from __future__ import annotations

from collections.abc import Sequence

import unicodedata
from functools import lru_cache

import numpy as np

__all__ = [
    "BMP",
    "CHAR_CLASSES",
    "char_class",
    "class_ids",
    "codepoints",
    "forbidden_from_codepoints",
    "forbidden_starts",
    "lookup",
    "padded_index",
    "text_offsets",
]

CHAR_CLASSES = (
    "pad",  # 0: padding only
    "consonant",  # U+0E01-U+0E2E
    "vowel_lead",  # U+0E40-U+0E44 เ แ โ ใ ไ: written before the consonant they follow in speech
    "vowel_follow",  # U+0E30-U+0E3A, U+0E45 (ะ ั า ำ ิ ี ึ ื ุ ู ฺ ๅ)
    "tone",  # U+0E48-U+0E4B mai ek, mai tho, mai tri, mai chattawa
    "diacritic",  # U+0E47 maitaikhu, U+0E4C-U+0E4E thanthakhat, nikhahit, yamakkan
    "thai_sign",  # ฯ ๆ ฿ ๏ ๚ ๛
    "digit",  # ASCII and Thai digits
    "latin",  # ASCII letters
    "space",  # any Unicode whitespace
    "punct",  # Unicode punctuation and symbols (categories P*, S*)
    "other",  # everything else: other scripts, emoji, combining marks of other scripts
)
_CLASS_ID = {name: i for i, name in enumerate(CHAR_CLASSES)}
# Classes at which no Thai word can start.
_NO_START_CLASSES = frozenset({_CLASS_ID["vowel_follow"], _CLASS_ID["tone"], _CLASS_ID["diacritic"]})


@lru_cache(maxsize=65536)
def char_class(ch: str) -> str:
    """The class name of one character (see ``CHAR_CLASSES``)."""
    cp = ord(ch)
    if 0x0E01 <= cp <= 0x0E2E:
        return "consonant"
    if 0x0E40 <= cp <= 0x0E44:
        return "vowel_lead"
    if 0x0E30 <= cp <= 0x0E3A or cp == 0x0E45:
        return "vowel_follow"
    if 0x0E48 <= cp <= 0x0E4B:
        return "tone"
    if cp == 0x0E47 or 0x0E4C <= cp <= 0x0E4E:
        return "diacritic"
    if cp in (0x0E2F, 0x0E46, 0x0E3F, 0x0E4F, 0x0E5A, 0x0E5B):
        return "thai_sign"
    if 0x0E50 <= cp <= 0x0E59 or 0x30 <= cp <= 0x39:
        return "digit"
    if 0x41 <= cp <= 0x5A or 0x61 <= cp <= 0x7A:
        return "latin"
    if ch.isspace():
        return "space"
    category = unicodedata.category(ch)
    if category[0] in "PS":
        return "punct"
    return "other"


@lru_cache(maxsize=65536)
def _class_id(ch: str) -> int:
    return _CLASS_ID[char_class(ch)]


@lru_cache(maxsize=65536)
def _cannot_start(ch: str) -> bool:
    # Any combining mark (category M*) continues the previous character's cluster, in any script.
    return _class_id(ch) in _NO_START_CLASSES or unicodedata.category(ch)[0] == "M"


def forbidden_starts(text: str) -> np.ndarray:
    """Bool (len(text),): True where orthography rules out a word start (never at index 0)."""
    cps = codepoints(text)
    return forbidden_from_codepoints(cps, np.zeros(1, dtype=np.int64), class_ids(cps))


# Vectorised forms of the rules above, over code points: per-character Python calls cost more than
# the model itself at inference (the segmenter's target rate is 1M characters/s). The tables cover the
# Basic Multilingual Plane; characters above it (emoji, rare CJK) take the per-character path.
BMP = 0x10000
_THAI_BLOCK = (0x0E00, 0x0E7F)


@lru_cache(maxsize=1)
def _bmp_tables() -> tuple[np.ndarray, np.ndarray]:
    """(class id per BMP code point, int64), (True where no word can start there, bool)."""
    classes = np.empty(BMP, dtype=np.int64)
    cannot = np.empty(BMP, dtype=bool)
    for cp in range(BMP):
        ch = chr(cp)
        classes[cp] = _CLASS_ID[char_class.__wrapped__(ch)]
        cannot[cp] = classes[cp] in _NO_START_CLASSES or unicodedata.category(ch)[0] == "M"
    return classes, cannot


def codepoints(text: str) -> np.ndarray:
    """Code points of ``text`` as uint32 (lone surrogates kept, as Python strings allow them)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def lookup(table: np.ndarray, cps: np.ndarray, fallback) -> np.ndarray:
    """``table[cp]`` for every BMP code point, ``fallback(ch)`` for the (rare) characters above it."""
    out = table[np.minimum(cps, BMP - 1)]
    for i in np.flatnonzero(cps >= BMP):
        out[i] = fallback(chr(int(cps[i])))
    return out


def text_offsets(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(lengths, start of each text in their concatenation), int64."""
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    return lengths, np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)


def class_ids(cps: np.ndarray) -> np.ndarray:
    """Class id (index in ``CHAR_CLASSES``) per code point, int64."""
    return lookup(_bmp_tables()[0], cps, _class_id)


def forbidden_from_codepoints(cps: np.ndarray, starts: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """``forbidden_starts`` of several texts concatenated: ``starts`` are each text's first index
    (never forbidden, and the character before it belongs to another text); ``classes`` are
    ``class_ids(cps)``."""
    forbidden = lookup(_bmp_tables()[1], cps, _cannot_start)
    if len(cps) > 1:
        lead = classes[:-1] == _CLASS_ID["vowel_lead"]
        thai = (cps[1:] >= _THAI_BLOCK[0]) & (cps[1:] <= _THAI_BLOCK[1])
        forbidden[1:] |= lead & thai
    forbidden[starts[starts < len(cps)]] = False
    return forbidden


def padded_index(lo: np.ndarray, n: np.ndarray, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """(index (B, T), valid (B, T)): row b holds positions ``lo[b] .. lo[b] + n[b] - 1`` of a flat
    per-character array, then ``pad`` (the index of its padding entry); ``valid`` marks the real ones."""
    col = np.arange(int(n.max()))
    valid = col[None, :] < n[:, None]
    return np.where(valid, lo[:, None] + col[None, :], pad), valid
