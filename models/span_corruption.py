"""T5 span corruption: noise masks, sentinel substitution, length helper and a batch collator.

Reference: Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified
Text-to-Text Transformer" (arXiv 1910.10683), and its code,
google-research/text-to-text-transfer-transformer ``t5/data/preprocessors.py``:
``random_spans_helper``, ``random_spans_noise_mask``, ``noise_span_to_unique_sentinel``,
``nonnoise_span_to_unique_sentinel``. This module is a NumPy port that keeps T5's counting rules
exactly, edge cases included (noise_density 0, length 0 and 1, the noise_density == 0.5 hack in
the length helper, float32 rounding of the noise counts, half-to-even rounding). Only the random
stream differs: T5 uses TF stateless seeds, we take an explicit ``np.random.Generator``.

Example::

    collate = SpanCorruptionCollator(vocab_size=32100, inputs_length=512)
    rows = ...  # (B, collate.tokens_length) int array of packed token ids
    batch = collate(rows, rng=np.random.default_rng(0))  # input_ids (B, 512), labels (B, 114)

Run the tests: ``pytest tests/models/test_span_corruption.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# HF's CrossEntropyLoss ignore_index; T5ForConditionalGeneration._shift_right maps it to pad.
LABEL_PAD_ID = -100


def compute_input_and_target_lengths(
    inputs_length: int, noise_density: float, mean_noise_span_length: float
) -> tuple[int, int]:
    """Raw-token length that span-corrupts to exactly ``inputs_length``, and the targets length.

    T5's ``random_spans_helper`` with one sentinel per span on each side
    (``extra_tokens_per_span_inputs = extra_tokens_per_span_targets = 1``); both reported lengths
    include the EOS that is appended after corruption. Counting rule for ``n`` raw tokens
    (Python floats, half-to-even ``round``, no clipping, exactly as T5's helper):

        noise = round(n * noise_density); spans = round(noise / mean_noise_span_length)
        inputs(n)  = (n - noise) + spans + 1
        targets(n) = noise + spans + 1

    ``tokens_length`` is the largest ``n`` with ``inputs(n) <= inputs_length``. When
    ``noise_density == 0.5`` and the targets come out longer than the inputs, T5 drops one raw token
    so the targets length equals the (round-number) inputs length; we keep that hack.

    >>> compute_input_and_target_lengths(512, 0.15, 3.0)
    (568, 114)
    """
    if inputs_length < 2:
        raise ValueError(f"inputs_length={inputs_length} must be >= 2 (one token plus EOS).")
    _check_density_and_span(noise_density, mean_noise_span_length)

    def _inputs_and_targets(tokens_length: int) -> tuple[int, int]:
        num_noise_tokens = int(round(tokens_length * noise_density))
        num_nonnoise_tokens = tokens_length - num_noise_tokens
        num_noise_spans = int(round(num_noise_tokens / mean_noise_span_length))
        return (
            num_nonnoise_tokens + num_noise_spans + 1,
            num_noise_tokens + num_noise_spans + 1,
        )

    tokens_length = inputs_length - 1
    while _inputs_and_targets(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    corrupted_inputs_length, targets_length = _inputs_and_targets(tokens_length)
    # T5's "minor hack to get the targets length to be equal to inputs length".
    if noise_density == 0.5 and targets_length > corrupted_inputs_length:
        tokens_length -= 1
        targets_length -= 1
    return tokens_length, targets_length


def noise_counts(
    length: int, noise_density: float, mean_noise_span_length: float
) -> tuple[int, int]:
    """``(num_noise_tokens, num_noise_spans)`` that ``random_spans_noise_mask`` uses for ``length``.

    As in T5: ``length`` is first raised to 2; the products are float32 (T5 computes them in TF
    float32, which differs from float64 at ties such as ``30 * 0.15``); rounding is half-to-even;
    ``num_noise_tokens`` is clipped to ``[1, length - 1]`` and ``num_noise_spans`` to ``>= 1``.
    Not meaningful for ``noise_density == 0`` (the mask is then all False).
    """
    length = max(length, 2)
    num_noise_tokens = int(np.rint(np.float32(length) * np.float32(noise_density)))
    num_noise_tokens = min(max(num_noise_tokens, 1), length - 1)
    num_noise_spans = int(
        np.rint(np.float32(num_noise_tokens) / np.float32(mean_noise_span_length))
    )
    num_noise_spans = max(num_noise_spans, 1)
    return num_noise_tokens, num_noise_spans


def random_spans_noise_mask(
    length: int,
    noise_density: float,
    mean_noise_span_length: float,
    *,
    rng: np.random.Generator,
    random_roll: bool = False,
) -> np.ndarray:
    """Boolean mask of shape ``(length,)`` made of alternating non-noise / noise spans.

    Invariants (T5): with ``num_noise_tokens, num_noise_spans = noise_counts(...)`` and
    ``length >= 2``, the mask has exactly ``num_noise_tokens`` True entries in exactly
    ``num_noise_spans`` runs, and (without ``random_roll``) it starts with non-noise and ends with
    noise. Subject to that, every segmentation is equally likely. ``noise_density == 0`` gives all
    False. ``length`` 0 and 1 are computed at length 2 and truncated, as in T5 (so length 1 is
    ``[False]``).

    ``random_roll`` rolls the (truncated) mask by a uniform offset in ``[0, max(length, 2))``,
    which spreads noise evenly when a single span suffices (otherwise it always sits at the end).

    Random draws, in order: noise-span segmentation, non-noise segmentation, roll offset.
    """
    if length < 0:
        raise ValueError(f"length={length} must be >= 0.")
    _check_density_and_span(noise_density, mean_noise_span_length)
    if noise_density == 0.0:
        return np.zeros(length, dtype=bool)

    orig_length = length
    length = max(length, 2)  # avoid degeneracy, as T5 does
    num_noise_tokens, num_noise_spans = noise_counts(length, noise_density, mean_noise_span_length)
    num_nonnoise_tokens = length - num_noise_tokens
    if num_noise_spans > num_nonnoise_tokens:
        raise ValueError(
            f"length={length}, noise_density={noise_density}, "
            f"mean_noise_span_length={mean_noise_span_length} ask for {num_noise_spans} noise "
            f"spans but leave only {num_nonnoise_tokens} non-noise tokens to separate them; lower "
            "noise_density or raise mean_noise_span_length."
        )

    noise_span_lengths = _random_segmentation(num_noise_tokens, num_noise_spans, rng)
    nonnoise_span_lengths = _random_segmentation(num_nonnoise_tokens, num_noise_spans, rng)
    interleaved_span_lengths = np.stack(
        [nonnoise_span_lengths, noise_span_lengths], axis=1
    ).reshape(-1)
    span_starts = np.cumsum(interleaved_span_lengths)[:-1]
    span_start_indicator = np.zeros(length, dtype=np.int64)
    span_start_indicator[span_starts] = 1  # starts are distinct: every span is non-empty
    span_num = np.cumsum(span_start_indicator)
    mask = (span_num % 2 == 1)[:orig_length]

    if random_roll:
        # T5 rolls after truncation, with the offset drawn in [0, max(length, 2)).
        mask = np.roll(mask, int(rng.integers(0, length)))
    return mask


def _random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Uniformly random composition of ``num_items`` into ``num_segments`` positive parts."""
    assert 1 <= num_segments <= num_items, (num_items, num_segments)
    # Shuffle (num_segments - 1) "segment starts here" flags among the num_items - 1 gaps.
    first_in_segment = np.concatenate(
        [[0], rng.permutation(np.arange(num_items - 1) < num_segments - 1).astype(np.int64)]
    )
    segment_id = np.cumsum(first_in_segment)
    return np.bincount(segment_id, minlength=num_segments)


def noise_span_to_unique_sentinel(tokens, noise_mask, vocab_size: int) -> np.ndarray:
    """Replace each run of noise tokens with one sentinel; span ``i`` gets ``vocab_size - 1 - i``.

    T5 order: the first span gets the highest id (``<extra_id_0>``), so ``vocab_size`` is the id of
    ``<extra_id_0>`` plus one. Non-noise tokens are kept in order. Output length is
    ``len(tokens) - num_noise_tokens + num_noise_spans``.

    >>> noise_span_to_unique_sentinel([10, 11, 12, 13, 14, 15], [1, 1, 0, 0, 1, 0], 1000).tolist()
    [999, 12, 13, 998, 15]
    """
    tokens = np.asarray(tokens)
    noise_mask = np.asarray(noise_mask, dtype=bool)
    if tokens.ndim != 1 or tokens.shape != noise_mask.shape:
        raise ValueError(
            f"tokens {tokens.shape} and noise_mask {noise_mask.shape} must be 1-D of the same "
            "shape; apply the function per row."
        )
    if tokens.size == 0:
        return tokens.copy()
    prev_token_is_noise = np.concatenate([[False], noise_mask[:-1]])
    first_noise_tokens = noise_mask & ~prev_token_is_noise
    subsequent_noise_tokens = noise_mask & prev_token_is_noise
    sentinel = vocab_size - np.cumsum(first_noise_tokens, dtype=np.int64)
    out = np.where(first_noise_tokens, sentinel, tokens).astype(tokens.dtype, copy=False)
    return out[~subsequent_noise_tokens]


def nonnoise_span_to_unique_sentinel(tokens, noise_mask, vocab_size: int) -> np.ndarray:
    """The targets side: each run of *non*-noise tokens becomes one sentinel (same numbering).

    >>> tokens, mask = [10, 11, 12, 13, 14, 15], [1, 1, 0, 0, 1, 0]
    >>> nonnoise_span_to_unique_sentinel(tokens, mask, 1000).tolist()
    [10, 11, 999, 14, 998]
    """
    return noise_span_to_unique_sentinel(tokens, ~np.asarray(noise_mask, dtype=bool), vocab_size)


@dataclass
class SpanCorruptionCollator:
    """Turns packed raw-token rows into T5 span-corruption batches of fixed shape.

    Per row (T5 ``span_corruption``): mask = ``random_spans_noise_mask``;
    inputs = ``noise_span_to_unique_sentinel`` + EOS; targets = ``nonnoise_span_to_unique_sentinel``
    + EOS. A full row of ``tokens_length`` real tokens yields at most ``inputs_length`` /
    ``targets_length`` ids (exactly, for the usual settings such as 0.15 / 3.0); shorter results
    are right-padded: ``input_ids`` with ``pad_id``, ``labels`` with -100 (ignored by HF's loss,
    and turned into ``pad_id`` by T5's ``_shift_right`` when it builds decoder inputs). Derive the
    encoder attention mask as ``input_ids != pad_id``.

    Rows may end in ``pad_id`` tokens (a short last document); only the tokens before the padding
    are corrupted. Padding in the middle of a row is rejected.
    """

    vocab_size: int
    """Id of ``<extra_id_0>`` plus one; sentinels count down from ``vocab_size - 1``. For the stock
    T5 tokenizer this is ``len(tokenizer)`` (32100). Any extra token (SpacTor's ``<mask>``) must sit
    below the sentinels."""
    inputs_length: int
    """Encoder input length after corruption, EOS included (T5: 512)."""
    noise_density: float = 0.15
    """Fraction of raw tokens that become noise (T5 default 0.15)."""
    mean_noise_span_length: float = 3.0
    """Mean noise-span length in tokens (T5 default 3)."""
    eos_id: int = 1
    pad_id: int = 0
    num_sentinels: int = 100
    """Sentinel ids ``<extra_id_0..num_sentinels-1>`` the vocabulary has (T5: 100). A full row may not have
    more noise spans than this: ids below the sentinels would collide with the vocabulary (and ``<mask>``)."""

    def __post_init__(self) -> None:
        _check_density_and_span(self.noise_density, self.mean_noise_span_length)
        if self.num_sentinels < 1 or self.num_sentinels >= self.vocab_size:
            raise ValueError(f"num_sentinels={self.num_sentinels} must be in [1, vocab_size={self.vocab_size})")
        if self.vocab_size <= max(self.eos_id, self.pad_id) + 1:
            raise ValueError(
                f"vocab_size={self.vocab_size} must exceed eos_id={self.eos_id} and "
                f"pad_id={self.pad_id}; pass the id of <extra_id_0> plus one."
            )
        tokens_length, targets_length = compute_input_and_target_lengths(
            self.inputs_length, self.noise_density, self.mean_noise_span_length
        )
        self._tokens_length, self._targets_length = tokens_length, targets_length
        _, spans = noise_counts(tokens_length, self.noise_density, self.mean_noise_span_length)
        if spans > self.num_sentinels:
            raise ValueError(
                f"inputs_length={self.inputs_length} with noise_density={self.noise_density}, "
                f"mean_noise_span_length={self.mean_noise_span_length} gives {spans} noise spans per row, more "
                f"than the {self.num_sentinels} sentinels: lower inputs_length or noise_density, or raise "
                "mean_noise_span_length (or num_sentinels, with a vocabulary that has that many)."
            )
        # A full row is the longest case (both lengths are non-decreasing in the row length), and
        # its lengths do not depend on the random draw. T5's helper counts in float64 without
        # clipping, the mask in float32 with clipping; refuse settings where they disagree upward.
        full_inputs, full_targets = self._corrupted_lengths(tokens_length)
        if full_inputs > self.inputs_length or full_targets > targets_length:
            raise ValueError(
                f"inputs_length={self.inputs_length} with noise_density={self.noise_density}, "
                f"mean_noise_span_length={self.mean_noise_span_length} corrupts to "
                f"({full_inputs}, {full_targets}) > ({self.inputs_length}, {targets_length}) "
                "because T5's length helper (float64, unclipped) and its mask (float32, clipped) "
                "round differently here; choose a neighbouring inputs_length."
            )

    @property
    def tokens_length(self) -> int:
        """Raw tokens per row expected by ``__call__`` (568 for 512 / 0.15 / 3.0)."""
        return self._tokens_length

    @property
    def targets_length(self) -> int:
        """Length of ``labels`` (114 for 512 / 0.15 / 3.0)."""
        return self._targets_length

    def _corrupted_lengths(self, n: int) -> tuple[int, int]:
        """(inputs, targets) lengths, EOS included, for a row of ``n`` real tokens."""
        if n == 0:
            return 1, 1
        if n == 1 or self.noise_density == 0.0:  # the mask is all False: one non-noise span
            return n + 1, 2
        noise, spans = noise_counts(n, self.noise_density, self.mean_noise_span_length)
        return n - noise + spans + 1, noise + spans + 1

    def __call__(self, rows: np.ndarray, *, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """``rows`` (B, tokens_length) ints -> ``input_ids`` (B, inputs_length) and
        ``labels`` (B, targets_length), both int64 tensors."""
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] != self.tokens_length:
            raise ValueError(
                f"rows have shape {rows.shape}; expected (batch, {self.tokens_length}) raw tokens "
                f"(tokens_length for inputs_length={self.inputs_length}); pack or split documents "
                "to exactly that length."
            )
        if not np.issubdtype(rows.dtype, np.integer):
            raise ValueError(f"rows have dtype {rows.dtype}; pass integer token ids.")
        batch_size = rows.shape[0]
        input_ids = np.full((batch_size, self.inputs_length), self.pad_id, dtype=np.int64)
        labels = np.full((batch_size, self.targets_length), LABEL_PAD_ID, dtype=np.int64)
        for i, row in enumerate(rows):
            tokens = row[: self._num_real_tokens(row, i)].astype(np.int64)
            noise_mask = random_spans_noise_mask(
                tokens.size, self.noise_density, self.mean_noise_span_length, rng=rng
            )
            inputs = noise_span_to_unique_sentinel(tokens, noise_mask, self.vocab_size)
            targets = nonnoise_span_to_unique_sentinel(tokens, noise_mask, self.vocab_size)
            assert inputs.size < self.inputs_length and targets.size < self.targets_length, (
                inputs.size,
                targets.size,
            )
            input_ids[i, : inputs.size] = inputs
            input_ids[i, inputs.size] = self.eos_id
            labels[i, : targets.size] = targets
            labels[i, targets.size] = self.eos_id
        return {"input_ids": torch.from_numpy(input_ids), "labels": torch.from_numpy(labels)}

    def _num_real_tokens(self, row: np.ndarray, index: int) -> int:
        is_pad = row == self.pad_id
        n = int(np.argmax(is_pad)) if is_pad.any() else row.size
        if is_pad[n:].size and not is_pad[n:].all():
            raise ValueError(
                f"row {index} has pad_id={self.pad_id} at position {n} followed by real tokens; "
                "padding is only allowed at the end of a row."
            )
        return n


def _check_density_and_span(noise_density: float, mean_noise_span_length: float) -> None:
    if not 0.0 <= noise_density < 1.0:
        raise ValueError(f"noise_density={noise_density} must be in [0, 1); T5 uses 0.15.")
    if not mean_noise_span_length >= 1.0:
        raise ValueError(
            f"mean_noise_span_length={mean_noise_span_length} must be >= 1 token; T5 uses 3.0."
        )
