"""Pure text functions of corpus preparation: normalisation, cleaning with drop reasons, hash splits, packing.

The counting rules here are the ones the corpus stats report: every input document ends up either in
exactly one split or under exactly one drop reason.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Iterable, Sequence

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\ufeff]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u3000]+")

SPLITS = ("train", "validation", "test")


def normalize_text(text: str, form: str = "NFKC") -> str:
    """Unicode-normalise, drop control characters, collapse runs of spaces, trim lines, drop blank lines.

    SentencePiece collapses whitespace the same way, so a normalised document round-trips through the
    tokenizer (with newlines read as spaces).
    """
    if form not in ("NFC", "NFKC", "NFD", "NFKD", "none"):
        raise ValueError(f"unknown unicode normalisation '{form}'; use NFKC, NFC, NFKD, NFD or none")
    if form != "none":
        text = unicodedata.normalize(form, text)
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


def clean_document(text: str, *, min_chars: int, form: str = "NFKC") -> tuple[str | None, str | None]:
    """(clean text, None) for a usable document, or (None, reason) with reason 'empty' or 'too_short'."""
    out = normalize_text(text, form)
    if not out:
        return None, "empty"
    if len(out) < min_chars:
        return None, "too_short"
    return out, None


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def assign_split(doc_hash: str, validation_fraction: float, test_fraction: float) -> str:
    """Deterministic split from the document's content hash (stable across runs, machines and orderings)."""
    u = int(doc_hash[:12], 16) / float(1 << 48)
    if u < test_fraction:
        return "test"
    if u < test_fraction + validation_fraction:
        return "validation"
    return "train"


def pack_sequences(token_lists: Iterable[Sequence[int]], length: int) -> tuple[list[list[int]], int]:
    """Concatenate token lists and cut them into rows of exactly ``length``; returns (rows, dropped tail).

    As in T5's pretraining input pipeline, documents run across row boundaries (each ends in EOS, so the
    model sees where one stops); the tail shorter than a row is dropped and counted.
    """
    if length < 2:
        raise ValueError(f"pack length must be >= 2, got {length}")
    flat: list[int] = []
    for toks in token_lists:
        flat.extend(toks)
    n = len(flat) // length
    rows = [flat[i * length : (i + 1) * length] for i in range(n)]
    return rows, len(flat) - n * length


def split_long_line(line: str, max_chars: int) -> list[str]:
    """Cut a line into pieces of at most ``max_chars`` at spaces where possible (tokenizer training input)."""
    out = []
    while len(line) > max_chars:
        cut = line.rfind(" ", 0, max_chars)
        cut = cut if cut > max_chars // 2 else max_chars
        out.append(line[:cut])
        line = line[cut:].lstrip()
    if line:
        out.append(line)
    return out
