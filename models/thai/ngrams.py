"""Hashed character n-gram rows: the pointwise n-gram features of KyTea-style segmenters (Neubig et al. 2011),
as rows of a learned embedding table.

Around each position ``i`` the segmenter adds the embeddings of the character bigrams and trigrams of
``NGRAM_WINDOWS`` (offsets from ``i``). Each window's character rows (vocabulary ids) are combined into one
integer, mixed, and reduced modulo ``buckets`` into that window's block of rows of one table (window ``j`` at
rows ``j * buckets ...``). Beyond a text's ends a neighbour counts as padding (row 0), in padded rows
(``ngram_ids``) as in texts concatenated in one row (``ngram_ids_flat``), so a text gets the same rows either
way. Pure torch; the table itself is the segmenter's (:mod:`models.thai_segmenter`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["NGRAM_PAD", "NGRAM_WINDOWS", "ngram_ids", "ngram_ids_flat"]

#: Character n-grams around position i whose embeddings the n-gram features add, as offsets from i:
#: the bigrams ending and starting at i, and the three trigrams that contain i.
NGRAM_WINDOWS = ((-1, 0), (0, 1), (-2, -1, 0), (-1, 0, 1), (0, 1, 2))
NGRAM_PAD = 2  # the widest reach of a window on either side


def ngram_ids(chars: torch.Tensor, *, vocab_capacity: int, buckets: int) -> torch.Tensor:
    """(B, T, len(NGRAM_WINDOWS)) n-gram rows for padded char ids (B, T) (padding 0 beyond the text)."""
    T = chars.shape[1]
    padded = F.pad(chars, (NGRAM_PAD, NGRAM_PAD))
    return _hash_ngrams(lambda offset: padded[:, NGRAM_PAD + offset : NGRAM_PAD + offset + T], chars,
                        vocab_capacity=vocab_capacity, buckets=buckets)


def ngram_ids_flat(chars: torch.Tensor, text_id: torch.Tensor, *, vocab_capacity: int, buckets: int) -> torch.Tensor:
    """``ngram_ids`` of texts concatenated in one row (``text_id``: each character's text): a neighbour in
    another text counts as padding (row 0), so every text gets the rows it gets alone. (N, len(NGRAM_WINDOWS))."""
    N = chars.shape[0]
    pad_chars = F.pad(chars, (NGRAM_PAD, NGRAM_PAD))
    pad_ids = F.pad(text_id, (NGRAM_PAD, NGRAM_PAD), value=-2)

    def shifted(offset: int) -> torch.Tensor:
        window = slice(NGRAM_PAD + offset, NGRAM_PAD + offset + N)
        return torch.where(pad_ids[window] == text_id, pad_chars[window], 0)

    return _hash_ngrams(shifted, chars, vocab_capacity=vocab_capacity, buckets=buckets)


def _hash_ngrams(shifted, chars: torch.Tensor, *, vocab_capacity: int, buckets: int) -> torch.Tensor:
    """Each window's character rows (``shifted(offset)``: the row ``offset`` characters away,
    shaped like ``chars``) combined into one integer, mixed, and reduced modulo ``buckets``,
    into window j's block of rows. Shape ``chars.shape + (len(NGRAM_WINDOWS),)``."""
    neighbours = {offset: shifted(offset) for offset in range(-NGRAM_PAD, NGRAM_PAD + 1)}
    ids = []
    for j, window in enumerate(NGRAM_WINDOWS):
        key = torch.zeros_like(chars)
        for offset in window:  # < vocab_capacity ** 3 <= 2**36 for the default capacity
            key = key * vocab_capacity + neighbours[offset]
        key = (key + j) * 0x2545F49  # odd, < 2**26: the product stays below 2**63
        key = key ^ (key >> 29)  # fold the high bits into the low ones before the modulo
        ids.append(key % buckets + j * buckets)
    return torch.stack(ids, dim=-1)
