"""Character-level Thai word segmenter: per character, the probability that a word begins there.

Thai is written without spaces between words, so segmentation is a sequence-labelling problem over
characters (as in DeepCut / AttaCut; Kittinaradorn et al. 2019, Chormai et al. 2019): label 1 at a
character that starts a word, 0 elsewhere. Each character is embedded twice, by identity (a vocabulary
built from the training characters, with an unknown bucket) and by Thai character class (consonant,
leading vowel, following vowel, tone mark, ... from Unicode ranges; the class embedding is what lets
the model handle characters it never saw). Two encoders are selectable by ``SegmenterConfig.arch``:

- ``"cnn"`` (default): a stack of residual dilated 1-D convolutions (dilation 1, 2, 4, ...); with
  kernel 5 and 3 layers (the default) each decision sees +-14 characters, with 4 layers +-30. Fast and
  batch-parallel on CPU.
- ``"bilstm"``: a bidirectional LSTM over the projected embeddings; sees the whole sentence.

With ``ngram_buckets > 0`` (default) each position also adds learned embeddings of the character
bigrams and trigrams around it, hashed into fixed tables: the pointwise n-gram features of KyTea-style
segmenters (Neubig et al. 2011) as lookups. They carry most of what a wide encoder would learn, so the
default encoder is narrow (32 channels) and segments ~1M characters/s on 2 CPU threads.

Thai orthography forbids a word from starting at a following vowel, a tone mark or a combining mark,
and from starting right after a leading vowel (เ แ โ ใ ไ); in ORCHID 99.94 % of the 319,595 gold
boundaries obey this (the rest are corpus errors). With ``orthographic_constraints`` (default) these
positions are fixed at probability 0, and position 0 (a word always starts the text) at 1; they are
excluded from the loss, so the model only learns the real decisions.

Invariant: ``"".join(segment(text)) == text`` for every string, including "", whitespace, emoji and
characters never seen in training.

The code is in parts:
- ``models.thai.chars``: character classes, the orthographic rule, and their vectorised forms over code points;
- ``models.thai.ngrams``: the hashed character n-gram rows;
- ``models.thai.layers``: the channels-last convolution and, for CPU inference, its fused GELU;
- ``models.thai.inference``: batched inference over concatenated texts (``boundary_probs``, ``segment_batch``);
- ``models.thai.metrics``: word starts and the scores (``boundary_prf`` of internal word-start offsets,
  ``word_prf`` / ``word_f1`` of words as (start, end) character spans);
- this module: the config, the model (its layers, training forward and ``fit``), its public inference
  methods, and ``save`` / ``load``.

Run the tests: ``python -m pytest tests/models/test_thai_segmenter.py -q``.
"""

from __future__ import annotations

from collections.abc import Sequence

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.thai.chars import CHAR_CLASSES, class_ids, codepoints, forbidden_starts, padded_index, text_offsets
from models.thai.inference import decisions_from_codepoints, flat_inputs, probs_flat, vocab_ids
from models.thai.layers import conv_nwc
from models.thai.metrics import word_starts
from models.thai.ngrams import NGRAM_PAD, NGRAM_WINDOWS, ngram_ids

__all__ = ["FitResult", "SegmenterConfig", "ThaiSegmenter"]


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class SegmenterConfig:
    """Model and training hyperparameters. Unknown keys are rejected by the dataclass itself."""

    arch: str = "cnn"
    """Encoder: "cnn" (residual dilated convolutions) or "bilstm"."""
    embed_dim: int = 48
    """Character-identity embedding size."""
    class_dim: int = 8
    """Character-class embedding size."""
    hidden: int = 32
    """Encoder width (for "bilstm", the sum of both directions; must be even). With the n-gram features
    32 is enough: on 4,000 ORCHID sentences word F1 0.885 at width 32 against 0.832 for width 96
    without n-grams, at about 4x the speed (docs/results.md, segmenter speed)."""
    layers: int = 3
    """Conv layers (dilation 2**i in layer i) or LSTM layers. With kernel 5, 3 layers see +-14
    characters (+-16 with the n-grams); a 4th layer (+-30) measured the same word F1 (0.885 vs 0.883 on
    4,000 sentences) at about 0.8x the speed."""
    kernel: int = 5
    """Conv kernel width (odd). Receptive field: 1 + (kernel - 1) * (2**layers - 1) characters."""
    dropout: float = 0.1
    """Dropout on encoder activations during fit (drawn from fit's generator)."""
    vocab_capacity: int = 4096
    """Rows of the character table, including pad (0) and unknown (1). Characters beyond capacity
    map to unknown."""
    min_char_count: int = 2
    """A character enters the vocabulary once seen this often in one fit call; rarer ones are
    "unknown", which is how the unknown row gets trained."""
    lr: float = 3e-3
    weight_decay: float = 0.0
    epochs: int = 3
    batch_size: int = 32
    """Sentences per training step."""
    grad_clip: float = 1.0
    """Max global gradient norm; 0 disables clipping."""
    threshold: float = 0.5
    """segment() starts a word where the boundary probability is >= threshold."""
    orthographic_constraints: bool = True
    """Fix impossible word starts (see module docstring) at probability 0."""
    inference_batch_chars: int = 16384
    """boundary_probs packs texts into batches of at most this many padded characters."""
    ngram_buckets: int = 16384
    """Rows of each hashed character n-gram table; 0 = no n-gram features (the model before 2026-12-02). With n-grams, every position
    also adds the embeddings of the bigrams and trigrams around it (``NGRAM_WINDOWS``), hashed from the
    character rows into ``ngram_buckets`` rows per window (the pointwise features of Neubig et al. 2011,
    learned here as embeddings): capacity from table lookups, which cost no multiplications, so a
    narrow encoder segments as well as a wide one and several times faster."""
    inference_dtype: str = "float32"
    """"float32" or "bfloat16" (bf16 autocast of the encoder during boundary_probs, on CPUs with bf16
    instructions (AVX-512 BF16, AMX) about 1.3-2x faster, on CPUs without them about 7x slower, as the
    convolution falls back to a slow kernel; probabilities differ from float32 by about 1e-2)."""

    def __post_init__(self) -> None:
        if self.arch not in ("cnn", "bilstm"):
            raise ValueError(f"arch must be 'cnn' or 'bilstm', got {self.arch!r}")
        positive = ("embed_dim", "class_dim", "hidden", "layers", "kernel", "epochs", "batch_size",
                    "min_char_count", "inference_batch_chars")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(self.ngram_buckets, int) or isinstance(self.ngram_buckets, bool) or self.ngram_buckets < 0:
            raise ValueError(f"ngram_buckets must be an int >= 0 (0 = no n-gram features), got {self.ngram_buckets!r}")
        if self.inference_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"inference_dtype must be 'float32' or 'bfloat16', got {self.inference_dtype!r}")
        if self.kernel % 2 == 0:
            raise ValueError(f"kernel must be odd so the convolution is centred, got {self.kernel}")
        if self.arch == "bilstm" and self.hidden % 2:
            raise ValueError(f"hidden must be even for arch='bilstm' (two directions), got {self.hidden}")
        if not isinstance(self.vocab_capacity, int) or self.vocab_capacity < 3:
            raise ValueError(f"vocab_capacity must be an int >= 3 (pad, unknown, 1 char), got {self.vocab_capacity!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0 (0 disables), got {self.grad_clip!r}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold!r}")


@dataclass
class FitResult:
    """What one fit call did."""

    epoch_losses: list[float] = field(default_factory=list)  # mean BCE per decision, per epoch
    n_sentences: int = 0
    n_decisions: int = 0  # characters per epoch that carried a free boundary decision
    vocab_size: int = 0  # characters in the vocabulary after the call (pad and unknown excluded)

# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


class ThaiSegmenter(nn.Module):
    """Boundary classifier over characters. Build, ``fit``, then ``segment``.

    >>> g = torch.Generator().manual_seed(0)
    >>> model = ThaiSegmenter(SegmenterConfig(epochs=1), generator=g)
    >>> model.fit([["ฉัน", "กิน", "ข้าว"]], generator=g)   # doctest: +SKIP
    >>> model.segment("ฉันกินข้าว")                         # doctest: +SKIP
    """

    def __init__(self, config: SegmenterConfig, *, generator: torch.Generator) -> None:
        super().__init__()
        if not isinstance(config, SegmenterConfig):
            raise ValueError(f"config must be a SegmenterConfig, got {type(config).__name__}")
        self.config = config
        self.vocab: dict[str, int] = {}  # char -> row of char_embed; 0 = pad, 1 = unknown
        c = config
        self.char_embed = nn.Embedding(c.vocab_capacity, c.embed_dim, padding_idx=0)
        self.class_embed = nn.Embedding(len(CHAR_CLASSES), c.class_dim, padding_idx=0)
        self.proj = nn.Linear(c.embed_dim + c.class_dim, c.hidden)
        if c.arch == "cnn":
            self.convs = nn.ModuleList(
                nn.Conv1d(c.hidden, c.hidden, c.kernel, dilation=2**i, padding=(c.kernel // 2) * 2**i)
                for i in range(c.layers)
            )
            self.norms = nn.ModuleList(nn.LayerNorm(c.hidden) for _ in range(c.layers))
        else:
            # Inter-layer LSTM dropout would draw from the global RNG, so there is none; dropout is
            # applied (from the fit generator) to the LSTM input and output instead.
            self.lstm = nn.LSTM(
                c.hidden, c.hidden // 2, num_layers=c.layers, batch_first=True, bidirectional=True
            )
        self.head = nn.Linear(c.hidden, 1)
        # One table holds every window's rows (window j at rows j * ngram_buckets ...).
        self.ngram_embed = (nn.Embedding(len(NGRAM_WINDOWS) * c.ngram_buckets, c.hidden) if c.ngram_buckets
                            else None)
        self._dropout_generator: torch.Generator | None = None
        self._init_parameters(generator)

    # -- parameters ------------------------------------------------------------------------

    @torch.no_grad()
    def _init_parameters(self, generator: torch.Generator) -> None:
        def uniform_(tensor: torch.Tensor, bound: float) -> None:
            tensor.copy_((torch.rand(tensor.shape, generator=generator) * 2 - 1) * bound)

        for module in self.modules():
            if isinstance(module, nn.Embedding):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator))
                module.weight[0].zero_()  # padding row
            elif isinstance(module, (nn.Linear, nn.Conv1d)):
                fan_in = module.weight[0].numel()
                uniform_(module.weight, 1.0 / math.sqrt(fan_in))
                module.bias.zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
            elif isinstance(module, nn.LSTM):
                for p in module.parameters():
                    uniform_(p, 1.0 / math.sqrt(module.hidden_size))
        if self.ngram_embed is not None:  # added to the projection's output: start small beside it
            self.ngram_embed.weight.mul_(0.1)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    # -- encoding ---------------------------------------------------------------------------

    def _extend_vocab(self, texts: list[str]) -> None:
        counts: dict[str, int] = {}
        for text in texts:
            for ch in text:
                if ch not in self.vocab:
                    counts[ch] = counts.get(ch, 0) + 1
        new = sorted((ch for ch, n in counts.items() if n >= self.config.min_char_count),
                     key=lambda ch: (-counts[ch], ch))
        room = self.config.vocab_capacity - 2 - len(self.vocab)
        for ch in new[: max(room, 0)]:
            self.vocab[ch] = len(self.vocab) + 2

    def _encode(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        cps = codepoints(text)
        return torch.from_numpy(vocab_ids(self, cps)), torch.from_numpy(class_ids(cps))

    def _encode_batch(self, texts: list[str]):
        """Padded inputs of non-empty ``texts`` in one vectorised pass: (chars (B, T), classes (B, T),
        lengths (B,)) tensors, plus (row, column) of every character in text order."""
        cps = codepoints("".join(texts))
        lengths, starts = text_offsets(texts)
        inputs = flat_inputs(self, cps, class_ids(cps), lengths, ngrams=False)
        index, valid = padded_index(starts, lengths, pad=len(cps))
        index_t = torch.from_numpy(index)
        tensors = (inputs["chars"][index_t].to(self.device), inputs["classes"][index_t].to(self.device),
                   torch.from_numpy(lengths))
        return tensors, np.nonzero(valid)

    def _pad(self, encoded: list[tuple[torch.Tensor, torch.Tensor]]):
        lengths = torch.tensor([len(c) for c, _ in encoded], dtype=torch.long)
        chars = nn.utils.rnn.pad_sequence([c for c, _ in encoded], batch_first=True)
        classes = nn.utils.rnn.pad_sequence([k for _, k in encoded], batch_first=True)
        return chars.to(self.device), classes.to(self.device), lengths

    # -- forward ----------------------------------------------------------------------------

    def _dropout(self, x: torch.Tensor) -> torch.Tensor:
        p = self.config.dropout
        if not self.training or p == 0.0 or self._dropout_generator is None:
            return x
        keep = torch.rand(x.shape, generator=self._dropout_generator, device="cpu").to(x.device) >= p
        return x * keep / (1.0 - p)

    def _ngram_ids(self, chars: torch.Tensor) -> torch.Tensor:
        """(B, T, len(NGRAM_WINDOWS)) rows of ``ngram_embed`` for padded char ids (B, T) (padding 0
        beyond the text)."""
        return ngram_ids(chars, vocab_capacity=self.config.vocab_capacity, buckets=self.config.ngram_buckets)

    def _input_layer(self, chars: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """(B, T, H) pre-activation of the input layer."""
        if self.training:
            x = torch.cat([self.char_embed(chars), self.class_embed(classes)], dim=-1)  # (B, T, E+C)
            pre = self.proj(self._dropout(x))
        else:  # the projection folded into the two tables: two lookups instead of a matmul per character
            E = self.config.embed_dim
            pre = (F.embedding(chars, self.char_embed.weight @ self.proj.weight[:, :E].T)
                   + F.embedding(classes, self.class_embed.weight @ self.proj.weight[:, E:].T) + self.proj.bias)
        if self.ngram_embed is not None:
            ids = self._ngram_ids(chars)
            pre = pre + F.embedding_bag(ids.reshape(-1, ids.shape[-1]), self.ngram_embed.weight,
                                        mode="sum").view_as(pre)
        return pre

    def forward(self, chars: torch.Tensor, classes: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Boundary logits (B, T) for padded char ids (B, T), class ids (B, T), lengths (B,)."""
        T = chars.shape[1]
        mask = (torch.arange(T, device=chars.device)[None, :] < lengths.to(chars.device)[:, None])
        mask = mask.unsqueeze(-1).to(self.head.weight.dtype)  # (B, T, 1)
        x = F.gelu(self._input_layer(chars, classes)) * mask  # (B, T, H)
        if self.config.arch == "cnn":
            for conv, norm in zip(self.convs, self.norms):
                # Re-zero padding after every layer: the convolution then sees exactly the zero
                # padding it sees for an unpadded text, so outputs do not depend on batch padding.
                h = F.gelu(conv_nwc(conv, x))  # (B, T, H)
                x = norm(x + self._dropout(h)) * mask
        else:
            packed = nn.utils.rnn.pack_padded_sequence(
                self._dropout(x), lengths.cpu(), batch_first=True, enforce_sorted=False
            )
            out, _ = self.lstm(packed)
            x, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)  # (B, T, H)
        return self.head(self._dropout(x)).squeeze(-1)  # (B, T)

    # -- training ---------------------------------------------------------------------------

    def _decision_mask(self, text: str) -> np.ndarray:
        """Bool (len(text),): positions whose label the model must predict."""
        free = np.ones(len(text), dtype=bool)
        if len(text):
            free[0] = False
        if self.config.orthographic_constraints:
            free &= ~forbidden_starts(text)
        return free

    def fit(
        self,
        sentences: list[list[str]],
        *,
        generator: torch.Generator,
        epochs: int | None = None,
        progress: bool = False,
        partial: Sequence[tuple[str, Sequence[int], Sequence[int]]] = (),
    ) -> FitResult:
        """Train on gold segmentations (lists of words). Continues from the current weights.

        ``partial`` adds partially annotated texts, as ``(text, starts, known)``: ``known`` are the
        positions whose boundary the annotator decided, ``starts`` those of them where a word starts;
        the loss sees only the known decision positions of such a text (partial annotation for a
        pointwise model, Neubig et al. 2011). The vocabulary is extended with this call's frequent
        characters first. ``generator`` drives shuffling and dropout. Returns per-epoch mean losses.
        """
        epochs = self.config.epochs if epochs is None else epochs
        if not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        data = [[w for w in s if w] for s in sentences]
        data = [s for s in data if s]
        partial = [(t, list(st), list(kn)) for t, st, kn in partial if t and len(kn)]
        if not data and not partial:
            raise ValueError("fit needs at least one non-empty sentence (a list of words)")
        texts = ["".join(s) for s in data]
        self._extend_vocab(texts + [t for t, _, _ in partial])

        examples = []  # (chars, classes, labels, decision mask)
        for words, text in zip(data, texts):
            labels = np.zeros(len(text), dtype=np.float32)
            labels[word_starts(words)] = 1.0
            chars, classes = self._encode(text)
            examples.append((chars, classes, torch.from_numpy(labels),
                             torch.from_numpy(self._decision_mask(text))))
        for text, starts, known in partial:
            if any(not 0 <= i < len(text) for i in list(starts) + list(known)) or not set(starts) <= set(known):
                raise ValueError(f"partial annotation of {text[:20]!r}...: starts must be known positions inside "
                                 "the text")
            labels = np.zeros(len(text), dtype=np.float32)
            labels[list(starts)] = 1.0
            known_mask = np.zeros(len(text), dtype=bool)
            known_mask[list(known)] = True
            chars, classes = self._encode(text)
            examples.append((chars, classes, torch.from_numpy(labels),
                             torch.from_numpy(self._decision_mask(text) & known_mask)))
        n_decisions = int(sum(int(e[3].sum()) for e in examples))

        c = self.config
        optimizer = torch.optim.AdamW(self.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        steps_per_epoch = math.ceil(len(examples) / c.batch_size)
        total = max(epochs * steps_per_epoch, 1)
        # Linear decay to 10 % of lr: short runs (1-3 epochs) converge better than at constant lr.
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - 0.9 * step / total)

        result = FitResult(n_sentences=len(examples), n_decisions=n_decisions)
        self._dropout_generator = generator
        self.train()
        try:
            for epoch in range(epochs):
                loss_sum = torch.zeros((), dtype=torch.float64)
                count_sum = 0
                for batch in self._batches(examples, generator):
                    chars, classes, lengths = self._pad([(e[0], e[1]) for e in batch])
                    labels = nn.utils.rnn.pad_sequence([e[2] for e in batch], batch_first=True).to(self.device)
                    free = nn.utils.rnn.pad_sequence([e[3] for e in batch], batch_first=True).to(self.device)
                    n_free = int(free.sum())
                    if n_free == 0:
                        continue
                    logits = self(chars, classes, lengths)
                    losses = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
                    loss = (losses * free).sum() / n_free
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if c.grad_clip > 0:
                        nn.utils.clip_grad_norm_(self.parameters(), c.grad_clip)
                    optimizer.step()
                    schedule.step()
                    loss_sum += loss.detach().double().cpu() * n_free
                    count_sum += n_free
                result.epoch_losses.append(float(loss_sum) / max(count_sum, 1))
                if progress:
                    print(f"epoch {epoch + 1}/{epochs}: loss {result.epoch_losses[-1]:.4f}")
        finally:
            self._dropout_generator = None
            self.eval()
        result.vocab_size = len(self.vocab)
        return result

    def _batches(self, examples: list, generator: torch.Generator):
        """Shuffled batches of similar length (less padding): shuffle, sort within windows of
        50 batches by length, cut into batches, shuffle the batch order."""
        bs = self.config.batch_size
        order = torch.randperm(len(examples), generator=generator).tolist()
        window = 50 * bs
        batches = []
        for w in range(0, len(order), window):
            chunk = sorted(order[w : w + window], key=lambda i: len(examples[i][0]))
            batches.extend(chunk[b : b + bs] for b in range(0, len(chunk), bs))
        for j in torch.randperm(len(batches), generator=generator).tolist():
            yield [examples[i] for i in batches[j]]

    # -- inference --------------------------------------------------------------------------

    def receptive_radius(self) -> int | None:
        """How many characters on each side a position's probability depends on (n-grams and the
        convolutions), or None for ``"bilstm"`` (the whole text)."""
        c = self.config
        if c.arch != "cnn":
            return None
        return (c.kernel // 2) * (2**c.layers - 1) + (NGRAM_PAD if c.ngram_buckets else 0)

    @torch.no_grad()
    def boundary_probs(self, texts: list[str]) -> list[np.ndarray]:
        """Per text, float32 (len(text),) probabilities that a word starts at each character.

        Index 0 is 1.0 (a text always starts with a word); with ``orthographic_constraints``,
        impossible starts are 0.0. Texts are packed into length-sorted batches; results do not
        depend on the batching. With the CNN, a text longer than ``inference_batch_chars`` is cut into
        windows that overlap by ``receptive_radius()`` characters on each side, so memory stays bounded
        whatever the text's length and the probabilities are those of the whole text.
        """
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must be a list of str; for one text use segment(text) or [text]")
        return np.split(probs_flat(self, texts), text_offsets(texts)[1][1:]) if texts else []

    def decision_masks(self, texts: list[str]) -> list[np.ndarray]:
        """Per text, bool (len(text),): True where the model decides a boundary.

        False at index 0 (a text always starts with a word) and, with ``orthographic_constraints``,
        where a word cannot start; ``boundary_probs`` fixes those positions at 1.0 and 0.0. The same
        mask selects the positions the training loss sees, and ``models.al_scorers`` scores a
        sentence over them only."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must be a list of str; for one text use [text]")
        return np.split(self._decisions_flat(texts), text_offsets(texts)[1][1:]) if texts else []

    def _decisions_flat(self, texts: Sequence[str]) -> np.ndarray:
        """``decision_masks`` of all texts, concatenated."""
        cps = codepoints("".join(texts))
        return decisions_from_codepoints(cps, text_offsets(texts)[1], class_ids(cps),
                                         orthographic_constraints=self.config.orthographic_constraints)

    def segment_batch(self, texts: list[str]) -> list[list[str]]:
        """Segment many texts; ``"".join(words) == text`` for each."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must be a list of str; for one text use segment(text) or [text]")
        # Cut the concatenated texts at every word start at once; index 0 of a non-empty text has
        # probability 1, so every text starts with a cut and no word spans two texts.
        lengths, starts = text_offsets(texts)
        offsets = np.append(starts, lengths.sum()) if texts else np.zeros(1, dtype=np.int64)
        cuts = np.flatnonzero(probs_flat(self, texts) >= self.config.threshold)
        joined = "".join(texts)
        bounds = np.append(cuts, len(joined)).tolist()
        words = [joined[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        per_text = np.searchsorted(cuts, offsets).tolist()
        return [words[a:b] for a, b in zip(per_text[:-1], per_text[1:])]

    def segment(self, text: str) -> list[str]:
        """Words of ``text``; ``"".join(segment(text)) == text`` always; ``""`` -> ``[]``."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        return self.segment_batch([text])[0]

    # -- persistence ------------------------------------------------------------------------

    def save(self, directory: str | Path) -> None:
        """Write ``model.safetensors`` (weights) and ``config.json`` (config + vocabulary)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(directory / "model.safetensors"))
        vocab = sorted(self.vocab, key=self.vocab.__getitem__)
        meta = {"format": "thai_segmenter/1", "config": asdict(self.config), "vocab": vocab}
        (directory / "config.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path, *, device: str | torch.device = "cpu") -> "ThaiSegmenter":
        """Inverse of ``save``."""
        from safetensors.torch import load_file

        directory = Path(directory)
        meta_path, weights_path = directory / "config.json", directory / "model.safetensors"
        if not meta_path.is_file() or not weights_path.is_file():
            raise ValueError(f"{directory} has no config.json + model.safetensors; was it written by save()?")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != "thai_segmenter/1":
            raise ValueError(f"{meta_path}: unknown format {meta.get('format')!r}, expected 'thai_segmenter/1'")
        known = {f.name for f in dataclasses.fields(SegmenterConfig)}
        if unknown := sorted(set(meta["config"]) - known):
            raise ValueError(f"{meta_path}: unknown config keys {unknown}; saved by a newer version?")
        # The generator only seeds weights that load_state_dict overwrites.
        model = cls(SegmenterConfig(**meta["config"]), generator=torch.Generator().manual_seed(0))
        model.vocab = {ch: i + 2 for i, ch in enumerate(meta["vocab"])}
        model.load_state_dict(load_file(str(weights_path)))
        model.to(device)
        model.eval()
        return model
