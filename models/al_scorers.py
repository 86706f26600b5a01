"""Active-learning acquisition scores for word segmentation, from per-character boundary probs.

A segmenter gives, per character i, ``p_i`` = P(a word starts at i). Each character is a binary
decision, so the classic uncertainty measures (Settles 2009, "Active Learning Literature Survey",
section 3.1) reduce to functions of ``p``:

    entropy            H(p) = -p log2 p - (1 - p) log2 (1 - p)       in [0, 1] bits
    margin             1 - |p - (1 - p)| = 1 - |2p - 1|               in [0, 1]
    least_confidence   1 - max(p, 1 - p)                              in [0, 1/2]

All three peak at p = 1/2, vanish at p in {0, 1}, are symmetric about 1/2 and decrease in |p - 1/2|,
so they rank single characters identically; they differ once aggregated over a sentence.

Sentence score, for a text of n characters with probabilities p_0 .. p_{n-1}::

    D     = the decision positions: i in 1 .. n-1 where decision_mask[i] is True
            (decision_mask=None: every i in 1 .. n-1; position 0 always starts a word, so it is
            never a decision, whatever the mask says)
    u_i   = uncertainty(p_i) for i in D
    A     = mean(u) | max(u) | sum(u)                      (``aggregate``; 0 when D is empty)
    score = A                                              (default)
          = A / |D|      if length_normalize               (per decision position)
          = A / n        if cost_aware                     (per character the annotator reads)

Why the mask matters: a segmenter with orthographic rules fixes P(boundary) = 0 where a word cannot
start (before a following vowel or a tone mark, after a leading vowel). Those positions have zero
uncertainty, so averaging over them ranks a sentence rich in vowels and tone marks lower at equal
real uncertainty: ``[1, .5, .5]`` scores 1.0, ``[1, .5, 0, 0, .5]`` only 0.5. With the model's
decision mask both score 1.0.

``cost_aware`` with ``aggregate="sum"`` is "total uncertainty per annotated character": the
annotation cost of a sentence is its length in characters, and ranking by value / cost spends a
character budget best (Settles et al. 2008, "Active learning with real annotation costs").
``length_normalize`` with ``"sum"`` equals ``"mean"``; with ``"max"`` it favours short sentences.
The two divisions are alternatives: asking for both raises ``ValueError``.

``rank`` scores texts with any model that has ``boundary_probs(texts) -> list[np.ndarray]`` and
``decision_masks(texts) -> list[np.ndarray]`` (``models.thai_segmenter.ThaiSegmenter``) and returns
indices best first, ties broken by the lower index. ``sentence_scores`` gives the scores themselves.

Run the tests: ``python -m pytest tests/models/test_al_scorers.py -q``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

__all__ = ["METHODS", "AGGREGATES", "char_uncertainty", "sentence_score", "sentence_scores", "rank", "BoundaryModel",
           "merge_windows", "window_decisions", "select_windows", "char_ngrams", "diverse_order"]

METHODS = ("entropy", "margin", "least_confidence")
AGGREGATES = ("mean", "max", "sum")


class BoundaryModel(Protocol):
    def boundary_probs(self, texts: list[str]) -> list[np.ndarray]:
        """Per text, P(a word starts at character i), one float per character."""

    def decision_masks(self, texts: list[str]) -> list[np.ndarray]:
        """Per text, a bool array as long as the text: True where the model really decides."""


def char_uncertainty(probs, method: str = "entropy") -> np.ndarray:
    """Uncertainty of each binary boundary decision; ``probs`` are P(boundary) in [0, 1].

    Returns float64 of the same shape. See the module docstring for the formulas and ranges.
    """
    if method not in METHODS:
        raise ValueError(f"unknown uncertainty method {method!r}; choose one of {METHODS}")
    p = np.asarray(probs, dtype=np.float64)
    if p.size and (not np.all(np.isfinite(p)) or p.min() < 0.0 or p.max() > 1.0):
        raise ValueError(
            f"probs must be probabilities in [0, 1], got values in [{p.min()}, {p.max()}]; "
            "pass sigmoid outputs, not logits"
        )
    if method == "entropy":
        q = 1.0 - p
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -(np.where(p > 0, p * np.log2(p), 0.0) + np.where(q > 0, q * np.log2(q), 0.0))
        return np.clip(h, 0.0, 1.0)  # clip: rounding can leave -0.0 or 1 + 1e-16
    if method == "margin":
        return 1.0 - np.abs(2.0 * p - 1.0)
    return 1.0 - np.maximum(p, 1.0 - p)


def _mask(decision_mask, n: int) -> np.ndarray:
    """The decision positions 1 .. n-1 as a bool array of length n (position 0 is never one)."""
    if decision_mask is None:
        m = np.ones(n, dtype=bool)
    else:
        m = np.asarray(decision_mask)
        if m.shape != (n,):
            raise ValueError(f"decision_mask must have one entry per character ({n}), got shape {m.shape}")
        if m.dtype != bool:
            if m.size and not (np.issubdtype(m.dtype, np.integer) and np.isin(m, (0, 1)).all()):
                raise ValueError(f"decision_mask must be boolean (True where the model decides), got {m.dtype}")
            m = m.astype(bool)
        m = m.copy()
    if n:
        m[0] = False
    return m


def sentence_score(
    probs,
    *,
    decision_mask=None,
    method: str = "entropy",
    aggregate: str = "mean",
    length_normalize: bool = False,
    cost_aware: bool = False,
) -> float:
    """Acquisition score of one sentence from its per-character boundary probabilities.

    ``probs`` has one entry per character (``ThaiSegmenter.boundary_probs`` output); entry 0 is
    ignored. ``decision_mask`` (bool, as long as ``probs``) keeps only the positions where the model
    really decides (``ThaiSegmenter.decision_masks``); None means every position 1 .. n-1. Higher =
    more worth annotating. See the module docstring for the exact definition.
    """
    if aggregate not in AGGREGATES:
        raise ValueError(f"unknown aggregate {aggregate!r}; choose one of {AGGREGATES}")
    if length_normalize and cost_aware:
        raise ValueError(
            "length_normalize and cost_aware both divide the aggregate; pick one "
            "(cost_aware divides by characters to annotate, length_normalize by decisions)"
        )
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"probs must be 1-D (one value per character), got shape {p.shape}")
    n = p.shape[0]
    u = char_uncertainty(p[_mask(decision_mask, n)], method)
    if u.size == 0:
        return 0.0
    if aggregate == "mean":
        score = float(u.mean())
    elif aggregate == "max":
        score = float(u.max())
    else:
        score = float(u.sum())
    if length_normalize:
        score /= u.size
    elif cost_aware:
        score /= n
    return score


def sentence_scores(
    texts: Sequence[str],
    model: BoundaryModel,
    *,
    method: str = "entropy",
    aggregate: str = "mean",
    length_normalize: bool = False,
    cost_aware: bool = False,
) -> np.ndarray:
    """float64 (len(texts),): :func:`sentence_score` of each text over the model's own decision positions.

    A model without ``decision_masks`` is scored over every position 1 .. n-1."""
    texts = list(texts)
    if not texts:
        return np.zeros(0, dtype=np.float64)
    probs = model.boundary_probs(texts)
    if len(probs) != len(texts):
        raise ValueError(f"model returned {len(probs)} probability arrays for {len(texts)} texts")
    masks_of = getattr(model, "decision_masks", None)
    masks = masks_of(texts) if masks_of is not None else [None] * len(texts)
    if len(masks) != len(texts):
        raise ValueError(f"model returned {len(masks)} decision masks for {len(texts)} texts")
    return np.array([sentence_score(p, decision_mask=m, method=method, aggregate=aggregate,
                                    length_normalize=length_normalize, cost_aware=cost_aware)
                     for p, m in zip(probs, masks)], dtype=np.float64)


def rank(
    texts: Sequence[str],
    model: BoundaryModel,
    *,
    method: str = "entropy",
    aggregate: str = "mean",
    length_normalize: bool = False,
    cost_aware: bool = False,
) -> list[int]:
    """Indices of ``texts``, most informative first; equal scores keep the lower index first.

    Scores use the model's decision masks (:func:`sentence_scores`)."""
    scores = sentence_scores(texts, model, method=method, aggregate=aggregate,
                             length_normalize=length_normalize, cost_aware=cost_aware)
    # lexsort sorts by the last key first: descending score, then ascending index.
    return np.lexsort((np.arange(len(scores)), -scores)).tolist()


# -- batch diversity: no near-duplicates in a batch, nor of what is labelled -----------------------------

def char_ngrams(text: str, n: int = 3) -> set[str]:
    """The character n-grams of ``text`` (the text itself if it is shorter than ``n``)."""
    if n < 1:
        raise ValueError(f"n={n} must be >= 1")
    return {text[i:i + n] for i in range(len(text) - n + 1)} or ({text} if text else set())


def diverse_order(
    texts: Sequence[str],
    scores: Sequence[float],
    *,
    covered: Sequence[str] = (),
    diversity: float = 1.0,
    ngram: int = 3,
    budget_chars: int | None = None,
    max_items: int | None = None,
) -> list[int]:
    """Indices of ``texts`` in the order a batch takes them: greedily the largest

        gain_i = score_i * novelty_i ** diversity,
        novelty_i = |ngrams(text_i) - C| / |ngrams(text_i)|

    where ``C`` holds the character n-grams of ``covered`` (what is already labelled) and of the texts already
    taken. A sentence that repeats what the batch or the labelled set already shows loses its gain, so a batch
    is not filled with near-duplicates (n-gram novelty, as in diversity-aware batch active learning).
    ``diversity=0`` is the plain score order. Stops after ``max_items`` texts or once ``budget_chars``
    characters are taken (the last text may cross it). Ties keep the lower index first.

    Novelty only falls as ``C`` grows, so stale gains are upper bounds and a lazy greedy pass (recompute the
    top gain, take it if it still beats the next stored one) gives exactly the greedy order.
    """
    import heapq

    if len(texts) != len(scores):
        raise ValueError(f"{len(texts)} texts but {len(scores)} scores")
    if diversity < 0:
        raise ValueError(f"diversity={diversity} must be >= 0")
    grams = [char_ngrams(t, ngram) for t in texts]
    seen: set[str] = set().union(*(char_ngrams(t, ngram) for t in covered)) if covered else set()

    def gain(i: int) -> float:
        if diversity == 0 or not grams[i]:
            return float(scores[i])
        novelty = len(grams[i] - seen) / len(grams[i])
        return float(scores[i]) * novelty ** diversity

    heap = [(-gain(i), i) for i in range(len(texts))]
    heapq.heapify(heap)
    order: list[int] = []
    chars = 0
    limit = len(texts) if max_items is None else min(max_items, len(texts))
    while heap and len(order) < limit and (budget_chars is None or chars < budget_chars):
        neg, i = heapq.heappop(heap)
        g = gain(i)
        if heap and (-g, i) > heap[0]:  # its gain fell below the next stored bound: put it back, look again
            heapq.heappush(heap, (-g, i))
            continue
        order.append(i)
        chars += len(texts[i])
        seen |= grams[i]
    return order


# -- partial annotation: the most uncertain boundary windows ------------------------------------------

def merge_windows(windows: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Half-open character windows ``[start, end)``, sorted, with overlapping or touching ones merged."""
    out: list[list[int]] = []
    for s, e in sorted(windows):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def window_decisions(windows: Sequence[tuple[int, int]], n: int) -> np.ndarray:
    """Bool (n,): the boundary positions an annotator decides when shown ``windows``: inside ``[s, e)`` the
    positions s+1 .. e-1 (between two shown characters; position 0 is never a decision)."""
    known = np.zeros(n, dtype=bool)
    for s, e in windows:
        known[max(s + 1, 1): min(e, n)] = True
    return known


def select_windows(
    probs: Sequence[np.ndarray],
    decision_masks: Sequence[np.ndarray | None],
    *,
    budget_chars: int,
    windows_per_text: int = 3,
    half_width: int = 3,
    method: str = "entropy",
) -> dict[int, list[tuple[int, int]]]:
    """Partial annotation (Neubig et al. 2011): the most uncertain decision positions over all texts, each
    shown to the annotator as a window of characters ``[i - half_width, i + half_width)`` (clipped; it
    decides the boundaries inside, :func:`window_decisions`), at most ``windows_per_text`` per text, taken
    best first until the characters shown reach ``budget_chars``. The cost of a text is the characters of
    its merged windows. Returns text index -> merged windows; ties go to the lower text index, then the
    lower position. ``decision_masks`` exclude what is not a decision or is already annotated."""
    if budget_chars < 1 or windows_per_text < 1 or half_width < 1:
        raise ValueError("budget_chars, windows_per_text and half_width must be >= 1")
    if len(probs) != len(decision_masks):
        raise ValueError(f"{len(probs)} probability arrays but {len(decision_masks)} decision masks")
    cand = []  # (-uncertainty, text, position)
    for t, (p, m) in enumerate(zip(probs, decision_masks)):
        p = np.asarray(p, dtype=np.float64)
        mask = _mask(m, p.shape[0])
        u = char_uncertainty(p, method)
        cand += [(-float(u[i]), t, int(i)) for i in np.nonzero(mask)[0] if u[i] > 0.0]
    cand.sort()
    chosen: dict[int, list[tuple[int, int]]] = {}
    spent = 0
    for _, t, i in cand:
        if spent >= budget_chars:
            break
        mine = chosen.get(t, [])
        n = len(probs[t])
        if len(mine) >= windows_per_text or window_decisions(mine, n)[i]:
            continue  # the text's quota is used, or this position is already shown in a window
        before = sum(e - s for s, e in merge_windows(mine))
        mine = merge_windows(mine + [(max(0, i - half_width), min(n, i + half_width))])
        spent += sum(e - s for s, e in mine) - before
        chosen[t] = mine
    return chosen
