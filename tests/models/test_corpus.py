from hypothesis import given, strategies as st

from models.corpus import assign_split, clean_document, normalize_text, pack_sequences, split_long_line, text_hash


def test_normalize_collapses_spaces_drops_controls_and_blank_lines():
    assert normalize_text("  a\t\tb\x00c \r\n\n\n  d  ") == "a bc\nd"


def test_normalize_nfkc_folds_compatibility_characters():
    assert normalize_text("ﬁ ½") == "fi 1⁄2"


def test_clean_document_reports_empty_and_too_short():
    assert clean_document(" \n\t ", min_chars=3) == (None, "empty")
    assert clean_document("ab", min_chars=3) == (None, "too_short")
    assert clean_document("abc", min_chars=3) == ("abc", None)


@given(st.text(max_size=200))
def test_normalize_is_idempotent(text):
    once = normalize_text(text)
    assert normalize_text(once) == once


def test_split_is_a_pure_function_of_the_hash_with_the_requested_fractions():
    hashes = [text_hash(str(i)) for i in range(20000)]
    splits = [assign_split(h, 0.1, 0.2) for h in hashes]
    assert splits == [assign_split(h, 0.1, 0.2) for h in hashes]
    frac = {s: splits.count(s) / len(splits) for s in ("train", "validation", "test")}
    assert abs(frac["test"] - 0.2) < 0.02 and abs(frac["validation"] - 0.1) < 0.02


@given(st.lists(st.lists(st.integers(0, 50), max_size=30), max_size=20), st.integers(2, 40))
def test_packing_keeps_every_token_in_order_except_the_counted_tail(lists, length):
    rows, tail = pack_sequences(lists, length)
    flat = [t for x in lists for t in x]
    assert all(len(r) == length for r in rows)
    assert [t for r in rows for t in r] == flat[: len(flat) - tail]
    assert 0 <= tail < length


@given(st.text(alphabet=st.sampled_from("ab "), max_size=300), st.integers(5, 50))
def test_split_long_line_bounds_pieces_and_keeps_the_words(line, max_chars):
    pieces = split_long_line(line, max_chars)
    assert all(len(p) <= max_chars for p in pieces)
    assert "".join(pieces).replace(" ", "") == line.replace(" ", "")
