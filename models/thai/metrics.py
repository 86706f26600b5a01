"""Word segmentations as start offsets, and their scores against a gold segmentation.

A segmentation is a list of words that partition a text; ``word_starts`` and ``words_from_starts`` convert
between words and start offsets. ``boundary_prf`` scores internal word-start offsets (the text start is not a
boundary), ``word_prf`` / ``word_f1`` score words as (start, end) character spans; both are micro-averaged over
sentences, and a 0/0 precision or recall counts as perfect. Pure Python; the segmenter they score is
:mod:`models.thai_segmenter`.
"""

from __future__ import annotations

__all__ = ["boundary_prf", "word_f1", "word_prf", "word_starts", "words_from_starts"]


def word_starts(words: list[str]) -> list[int]:
    """Start offsets of the non-empty words: ``["ab", "c"] -> [0, 2]``."""
    starts, offset = [], 0
    for w in words:
        if w:
            starts.append(offset)
            offset += len(w)
    return starts


def words_from_starts(text: str, starts) -> list[str]:
    """Cut ``text`` at the given start offsets (0 is implied; duplicates / out of range ignored)."""
    if not text:
        return []
    cuts = sorted({int(s) for s in starts if 0 < s < len(text)})
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _check_pairs(gold: list[list[str]], pred: list[list[str]]) -> None:
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} sentences but pred has {len(pred)}; pass aligned lists")
    for i, (g, p) in enumerate(zip(gold, pred)):
        if "".join(g) != "".join(p):
            raise ValueError(
                f"sentence {i}: gold and pred cover different text ({''.join(g)[:30]!r} vs "
                f"{''.join(p)[:30]!r}); segmentations must partition the same string"
            )


def _prf(tp: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    # 0/0 counts as perfect: no predictions means none wrong, no gold means none missed.
    precision = tp / n_pred if n_pred else 1.0
    recall = tp / n_gold if n_gold else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def boundary_prf(gold: list[list[str]], pred: list[list[str]]) -> tuple[float, float, float]:
    """Micro-averaged (precision, recall, F1) of word boundaries.

    A boundary is an internal word-start offset: 0 < offset < len(text). The text start is not a
    boundary (it is given), so a one-word sentence contributes nothing. 0/0 precision or recall is
    1.0; F1 is 0.0 when precision + recall is 0.
    """
    _check_pairs(gold, pred)
    tp = n_pred = n_gold = 0
    for g, p in zip(gold, pred):
        gs, ps = set(word_starts(g)[1:]), set(word_starts(p)[1:])
        tp += len(gs & ps)
        n_pred += len(ps)
        n_gold += len(gs)
    return _prf(tp, n_pred, n_gold)


def _spans(words: list[str]) -> set[tuple[int, int]]:
    spans, offset = set(), 0
    for w in words:
        if w:
            spans.add((offset, offset + len(w)))
            offset += len(w)
    return spans


def word_prf(gold: list[list[str]], pred: list[list[str]]) -> tuple[float, float, float]:
    """Micro-averaged (precision, recall, F1) of words: a word is correct if its (start, end)
    character span is a gold word span (both of its boundaries right, none inside)."""
    _check_pairs(gold, pred)
    tp = n_pred = n_gold = 0
    for g, p in zip(gold, pred):
        gs, ps = _spans(g), _spans(p)
        tp += len(gs & ps)
        n_pred += len(ps)
        n_gold += len(gs)
    return _prf(tp, n_pred, n_gold)


def word_f1(gold: list[list[str]], pred: list[list[str]]) -> float:
    """Word-level F1 (see ``word_prf``)."""
    return word_prf(gold, pred)[2]
