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

Metrics: ``boundary_prf`` scores internal word-start offsets (the text start is not a boundary),
``word_prf`` / ``word_f1`` score words as (start, end) character spans.

Run the tests: ``python -m pytest tests/models/test_thai_segmenter.py -q``.
"""

from __future__ import annotations

from collections.abc import Sequence

import dataclasses
import json
import math
import unicodedata
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "CHAR_CLASSES",
    "SegmenterConfig",
    "FitResult",
    "ThaiSegmenter",
    "char_class",
    "forbidden_starts",
    "word_starts",
    "words_from_starts",
    "boundary_prf",
    "word_prf",
    "word_f1",
]

# ---------------------------------------------------------------------------------------------
# Character classes
# ---------------------------------------------------------------------------------------------

CHAR_CLASSES = (
    "pad",  # 0: padding only
    "consonant",  # U+0E01-U+0E2E
    "vowel_lead",  # U+0E40-U+0E44 เ แ โ ใ ไ: written before the consonant they follow in speech
    "vowel_follow",  # U+0E30-U+0E3A, U+0E45 (ะ ั า ำ ิ ี ึ ื ุ ู ฺ ๅ)
    "tone",  # U+0E48-U+0E4B mai ek, mai tho, mai tri, mai chattawa
    "diacritic",  # U+0E47 maitaikhu, U+0E4C-U+0E4E thanthakhat, nikhahit, yamakkan
    "thai_sign",  # ฯ ๆ ฿ ๏ ๚ ๛
    "digit",  # ASCII and Thai digits
    "latin",  # ASCII letters
    "space",  # any Unicode whitespace
    "punct",  # Unicode punctuation and symbols (categories P*, S*)
    "other",  # everything else: other scripts, emoji, combining marks of other scripts
)
_CLASS_ID = {name: i for i, name in enumerate(CHAR_CLASSES)}
# Classes at which no Thai word can start.
_NO_START_CLASSES = frozenset({_CLASS_ID["vowel_follow"], _CLASS_ID["tone"], _CLASS_ID["diacritic"]})
#: Character n-grams around position i whose embeddings the n-gram features add, as offsets from i:
#: the bigrams ending and starting at i, and the three trigrams that contain i.
NGRAM_WINDOWS = ((-1, 0), (0, 1), (-2, -1, 0), (-1, 0, 1), (0, 1, 2))
_NGRAM_PAD = 2  # the widest reach of a window on either side


@lru_cache(maxsize=65536)
def char_class(ch: str) -> str:
    """The class name of one character (see ``CHAR_CLASSES``)."""
    cp = ord(ch)
    if 0x0E01 <= cp <= 0x0E2E:
        return "consonant"
    if 0x0E40 <= cp <= 0x0E44:
        return "vowel_lead"
    if 0x0E30 <= cp <= 0x0E3A or cp == 0x0E45:
        return "vowel_follow"
    if 0x0E48 <= cp <= 0x0E4B:
        return "tone"
    if cp == 0x0E47 or 0x0E4C <= cp <= 0x0E4E:
        return "diacritic"
    if cp in (0x0E2F, 0x0E46, 0x0E3F, 0x0E4F, 0x0E5A, 0x0E5B):
        return "thai_sign"
    if 0x0E50 <= cp <= 0x0E59 or 0x30 <= cp <= 0x39:
        return "digit"
    if 0x41 <= cp <= 0x5A or 0x61 <= cp <= 0x7A:
        return "latin"
    if ch.isspace():
        return "space"
    category = unicodedata.category(ch)
    if category[0] in "PS":
        return "punct"
    return "other"


@lru_cache(maxsize=65536)
def _class_id(ch: str) -> int:
    return _CLASS_ID[char_class(ch)]


@lru_cache(maxsize=65536)
def _cannot_start(ch: str) -> bool:
    # Any combining mark (category M*) continues the previous character's cluster, in any script.
    return _class_id(ch) in _NO_START_CLASSES or unicodedata.category(ch)[0] == "M"


def forbidden_starts(text: str) -> np.ndarray:
    """Bool (len(text),): True where orthography rules out a word start (never at index 0)."""
    cps = _codepoints(text)
    return _forbidden_from_codepoints(cps, np.zeros(1, dtype=np.int64), _class_ids(cps))


# Vectorised forms of the rules above, over code points: per-character Python calls cost more than
# the model itself at inference (the segmenter's target rate is 1M characters/s). The tables cover the
# Basic Multilingual Plane; characters above it (emoji, rare CJK) take the per-character path.
_BMP = 0x10000
_THAI_BLOCK = (0x0E00, 0x0E7F)


@lru_cache(maxsize=1)
def _bmp_tables() -> tuple[np.ndarray, np.ndarray]:
    """(class id per BMP code point, int64), (True where no word can start there, bool)."""
    classes = np.empty(_BMP, dtype=np.int64)
    cannot = np.empty(_BMP, dtype=bool)
    for cp in range(_BMP):
        ch = chr(cp)
        classes[cp] = _CLASS_ID[char_class.__wrapped__(ch)]
        cannot[cp] = classes[cp] in _NO_START_CLASSES or unicodedata.category(ch)[0] == "M"
    return classes, cannot


def _codepoints(text: str) -> np.ndarray:
    """Code points of ``text`` as uint32 (lone surrogates kept, as Python strings allow them)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def _lookup(table: np.ndarray, cps: np.ndarray, fallback) -> np.ndarray:
    """``table[cp]`` for every BMP code point, ``fallback(ch)`` for the (rare) characters above it."""
    out = table[np.minimum(cps, _BMP - 1)]
    for i in np.flatnonzero(cps >= _BMP):
        out[i] = fallback(chr(int(cps[i])))
    return out


def _offsets(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(lengths, start of each text in their concatenation), int64."""
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    return lengths, np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)


def _class_ids(cps: np.ndarray) -> np.ndarray:
    return _lookup(_bmp_tables()[0], cps, _class_id)


def _forbidden_from_codepoints(cps: np.ndarray, starts: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """``forbidden_starts`` of several texts concatenated: ``starts`` are each text's first index
    (never forbidden, and the character before it belongs to another text); ``classes`` are
    ``_class_ids(cps)``."""
    forbidden = _lookup(_bmp_tables()[1], cps, _cannot_start)
    if len(cps) > 1:
        lead = classes[:-1] == _CLASS_ID["vowel_lead"]
        thai = (cps[1:] >= _THAI_BLOCK[0]) & (cps[1:] <= _THAI_BLOCK[1])
        forbidden[1:] |= lead & thai
    forbidden[starts[starts < len(cps)]] = False
    return forbidden


def _padded_index(lo: np.ndarray, n: np.ndarray, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """(index (B, T), valid (B, T)): row b holds positions ``lo[b] .. lo[b] + n[b] - 1`` of a flat
    per-character array, then ``pad`` (the index of its padding entry); ``valid`` marks the real ones."""
    col = np.arange(int(n.max()))
    valid = col[None, :] < n[:, None]
    return np.where(valid, lo[:, None] + col[None, :], pad), valid


def _conv_nwc(conv: nn.Conv1d, x: torch.Tensor, *, fused_gelu=None) -> torch.Tensor:
    """``conv`` over (B, T, H) activations without transposing them: (B, T, H) in memory is the
    channels-last layout of a (B, H, 1, T) image, so the 1-D convolution runs as a 1 x kernel 2-D one
    on that view (oneDNN's channels-last kernels; about 1.7x faster on CPU than conv1d on transposed
    activations, which copies them twice per layer). With ``fused_gelu`` (``_fused_conv_gelu_op()``)
    the GELU after it runs in the same kernel. Returns (B, T, H), contiguous."""
    image, weight = x.permute(0, 2, 1).unsqueeze(2), conv.weight.unsqueeze(2)
    padding, dilation = [0, conv.padding[0]], [1, conv.dilation[0]]
    if fused_gelu is None:
        y = F.conv2d(image, weight, conv.bias, padding=padding, dilation=dilation)
    else:
        y = fused_gelu(image, weight, conv.bias, padding, [1, 1], dilation, 1, "gelu", [], "none")
    return y.squeeze(2).permute(0, 2, 1).contiguous()


@lru_cache(maxsize=1)
def _fused_conv_gelu_op():
    """oneDNN's convolution with a GELU (erf) post-op, the kernel torch.compile's CPU backend fuses
    ``gelu(conv(x))`` into, or None where this torch build lacks it."""
    try:
        op = torch.ops.mkldnn._convolution_pointwise.default
    except (AttributeError, RuntimeError):
        return None
    return op if torch.backends.mkldnn.is_available() else None


_FUSED_CONV_GELU_FAILED = False  # the fused kernel raised once in this process (an unsupported CPU or build)


def _conv_gelu_nwc(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """``F.gelu(_conv_nwc(conv, x))`` in one pass over the output on CPU in float32 (oneDNN's GELU
    post-op: about 2.5x faster than a convolution and then a GELU, and the same numbers); elsewhere,
    or if the fused kernel raises, the two steps. (B, T, H) in and out, contiguous."""
    global _FUSED_CONV_GELU_FAILED
    op = _fused_conv_gelu_op() if x.device.type == "cpu" and x.dtype == torch.float32 else None
    if not (op is None or _FUSED_CONV_GELU_FAILED or torch.is_autocast_enabled("cpu") or torch.is_grad_enabled()):
        try:
            return _conv_nwc(conv, x, fused_gelu=op)
        except RuntimeError:
            _FUSED_CONV_GELU_FAILED = True
    h = _conv_nwc(conv, x)
    return torch._C._nn.gelu_(h) if h.dtype == torch.float32 else F.gelu(h)


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
# Segmentation helpers and metrics
# ---------------------------------------------------------------------------------------------


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

    def _vocab_ids(self, cps: np.ndarray) -> np.ndarray:
        """Row of ``char_embed`` per code point (1 = unknown), via a dense table over the BMP that
        is rebuilt when the vocabulary changes."""
        key = (id(self.vocab), len(self.vocab))
        if getattr(self, "_vocab_table_key", None) != key:
            table = np.ones(_BMP, dtype=np.int64)
            for ch, row in self.vocab.items():
                if ord(ch) < _BMP:
                    table[ord(ch)] = row
            self._vocab_table, self._vocab_table_key = table, key
        return _lookup(self._vocab_table, cps, lambda ch: self.vocab.get(ch, 1))

    def _encode(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        cps = _codepoints(text)
        return torch.from_numpy(self._vocab_ids(cps)), torch.from_numpy(_class_ids(cps))

    def _encode_batch(self, texts: list[str]):
        """Padded inputs of non-empty ``texts`` in one vectorised pass: (chars (B, T), classes (B, T),
        lengths (B,)) tensors, plus (row, column) of every character in text order."""
        cps = _codepoints("".join(texts))
        lengths, starts = _offsets(texts)
        inputs = self._flat_inputs(cps, _class_ids(cps), lengths, ngrams=False)
        index, valid = _padded_index(starts, lengths, pad=len(cps))
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
        T = chars.shape[1]
        padded = F.pad(chars, (_NGRAM_PAD, _NGRAM_PAD))
        return self._hash_ngrams(lambda offset: padded[:, _NGRAM_PAD + offset : _NGRAM_PAD + offset + T], chars)

    def _hash_ngrams(self, shifted, chars: torch.Tensor) -> torch.Tensor:
        """Each window's character rows (``shifted(offset)``: the row ``offset`` characters away,
        shaped like ``chars``) combined into one integer, mixed, and reduced modulo ``ngram_buckets``,
        into window j's block of rows. Shape ``chars.shape + (len(NGRAM_WINDOWS),)``."""
        c = self.config
        neighbours = {offset: shifted(offset) for offset in range(-_NGRAM_PAD, _NGRAM_PAD + 1)}
        ids = []
        for j, window in enumerate(NGRAM_WINDOWS):
            key = torch.zeros_like(chars)
            for offset in window:  # < vocab_capacity ** 3 <= 2**36 for the default capacity
                key = key * c.vocab_capacity + neighbours[offset]
            key = (key + j) * 0x2545F49  # odd, < 2**26: the product stays below 2**63
            key = key ^ (key >> 29)  # fold the high bits into the low ones before the modulo
            ids.append(key % c.ngram_buckets + j * c.ngram_buckets)
        return torch.stack(ids, dim=-1)

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
                h = F.gelu(_conv_nwc(conv, x))  # (B, T, H)
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
        return (c.kernel // 2) * (2**c.layers - 1) + (_NGRAM_PAD if c.ngram_buckets else 0)

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
        return np.split(self._probs_flat(texts), _offsets(texts)[1][1:]) if texts else []

    @torch.no_grad()
    def _probs_flat(self, texts: Sequence[str]) -> np.ndarray:
        """``boundary_probs`` of all texts, concatenated (float32).

        Everything per character is computed once over the concatenated texts (vocabulary rows,
        classes, n-gram rows, forced positions); each batch then only gathers its rows. Texts are cut
        into pieces (a text, or a window of a long one), sorted by length and packed into batches of
        at most ``inference_batch_chars`` padded characters."""
        cps = _codepoints("".join(texts))
        classes = _class_ids(cps)
        lengths, starts = _offsets(texts)
        flat = np.zeros(len(cps), dtype=np.float32)
        if len(cps):
            lo, hi, keep_lo, keep_hi = self._pieces(lengths, starts)
            was_training = self.training
            if was_training:  # train()/eval() walk every module: skip them when already in eval mode
                self.eval()
            try:
                inputs = self._flat_inputs(cps, classes, lengths)
                limit = self.config.inference_batch_chars
                order = np.argsort(hi - lo, kind="stable").tolist()
                sizes = (hi - lo).tolist()
                first = 0
                for k in range(1, len(order) + 1):  # close a batch when the next piece does not fit
                    if k == len(order) or (k - first + 1) * sizes[order[k]] > limit:
                        batch = np.array(order[first:k])
                        self._predict_pieces(inputs, lo[batch], hi[batch], keep_lo[batch], keep_hi[batch], flat)
                        first = k
            finally:
                if was_training:
                    self.train()
        # Forced positions, for all texts in one vectorised pass (the rules look one character back).
        flat[~self._decisions_from_codepoints(cps, starts, classes)] = 0.0
        flat[starts[lengths > 0]] = 1.0
        return flat

    def _pieces(self, lengths: np.ndarray, starts: np.ndarray):
        """(lo, hi, keep_lo, keep_hi) int64 arrays, positions in the concatenated texts: each non-empty
        text is one piece, except that with the CNN a text longer than ``inference_batch_chars`` is cut
        into windows whose kept cores overlap their neighbours by ``receptive_radius()`` characters."""
        limit, radius = self.config.inference_batch_chars, self.receptive_radius()
        short = (lengths > 0) & ((lengths <= limit) | (radius is None))
        parts = [(starts[short], starts[short] + lengths[short], starts[short], starts[short] + lengths[short])]
        core = max(limit - 2 * radius, 256) if radius is not None else 0
        for i in np.flatnonzero(~short & (lengths > 0)).tolist():
            s, n = int(starts[i]), int(lengths[i])
            a = np.arange(0, n, core)
            parts.append((s + np.maximum(0, a - radius), s + np.minimum(n, a + core + radius), s + a,
                          s + np.minimum(a + core, n)))
        return tuple(np.concatenate([p[j] for p in parts]).astype(np.int64) for j in range(4))

    def _flat_inputs(self, cps: np.ndarray, classes: np.ndarray, lengths: np.ndarray, *, ngrams: bool = True) -> dict:
        """Per character of the concatenated texts (plus one padding entry at the end): vocabulary
        rows, class ids (``classes``: ``_class_ids(cps)``) and, with n-grams, each window's n-gram row
        (n-grams stop at text ends)."""
        chars = torch.from_numpy(np.append(self._vocab_ids(cps), 0))
        out = {"chars": chars, "classes": torch.from_numpy(np.append(classes, 0))}
        if ngrams and self.ngram_embed is not None:
            text_id = torch.from_numpy(np.append(np.repeat(np.arange(len(lengths)), lengths), -1))
            out["ngrams"] = self._ngram_ids_flat(chars, text_id)
        return out

    def _ngram_ids_flat(self, chars: torch.Tensor, text_id: torch.Tensor) -> torch.Tensor:
        """``_ngram_ids`` of texts concatenated in one row: a neighbour in another text counts as
        padding (row 0), so every text gets the rows it gets alone. (N, len(NGRAM_WINDOWS))."""
        N = chars.shape[0]
        pad_chars = F.pad(chars, (_NGRAM_PAD, _NGRAM_PAD))
        pad_ids = F.pad(text_id, (_NGRAM_PAD, _NGRAM_PAD), value=-2)

        def shifted(offset: int) -> torch.Tensor:
            window = slice(_NGRAM_PAD + offset, _NGRAM_PAD + offset + N)
            return torch.where(pad_ids[window] == text_id, pad_chars[window], 0)

        return self._hash_ngrams(shifted, chars)

    def _inference_table(self) -> torch.Tensor:
        """One table for the inference input layer: the character and class tables with the input
        projection folded in, then the n-gram table (rows as in ``_flat_inputs``). Cached until a
        parameter changes."""
        params = [self.char_embed.weight, self.class_embed.weight, self.proj.weight]
        if self.ngram_embed is not None:
            params.append(self.ngram_embed.weight)
        key = tuple((p.data_ptr(), p._version) for p in params)
        if getattr(self, "_table_key", None) != key:
            E = self.config.embed_dim
            tables = [self.char_embed.weight @ self.proj.weight[:, :E].T,
                      self.class_embed.weight @ self.proj.weight[:, E:].T]
            if self.ngram_embed is not None:
                tables.append(self.ngram_embed.weight)
            self._table, self._table_key = torch.cat(tables).detach(), key
        return self._table

    def _predict_pieces(self, inputs: dict, lo, hi, keep_lo, keep_hi, flat: np.ndarray) -> None:
        """Write the raw probabilities of one batch of pieces into ``flat`` (kept positions only)."""
        n = hi - lo
        index, valid = _padded_index(lo, n, pad=len(inputs["chars"]) - 1)
        col = np.arange(index.shape[1])
        index_t = torch.from_numpy(index)
        chars, classes = inputs["chars"][index_t], inputs["classes"][index_t]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.inference_dtype == "bfloat16"):
            if self.config.arch == "cnn":
                pad = torch.from_numpy(np.flatnonzero(~valid))
                ngrams = inputs["ngrams"][index_t] if "ngrams" in inputs else None
                logits = self._cnn_logits(chars.to(self.device), classes.to(self.device),
                                          None if ngrams is None else ngrams.to(self.device), pad.to(self.device))
            else:
                logits = self(chars.to(self.device), classes.to(self.device), torch.from_numpy(n))
        probs = torch.sigmoid(logits.float()).cpu().numpy()
        keep = (col[None, :] >= (keep_lo - lo)[:, None]) & (col[None, :] < (keep_hi - lo)[:, None])
        flat[index[keep]] = probs[keep]

    def _cnn_logits(self, chars: torch.Tensor, classes: torch.Tensor, ngrams: torch.Tensor | None,
                    pad: torch.Tensor) -> torch.Tensor:
        """Inference forward of the CNN, equal to ``forward`` in eval mode: one embedding-bag lookup for
        the input layer (``_inference_table``), the padding re-zeroed by index (``pad``: flat indices
        of padded positions in (B, T)) instead of a multiplication by the mask, and in-place
        activations. (B, T) logits."""
        c, (B, T) = self.config, chars.shape
        n_chars = self.char_embed.num_embeddings
        ids = [chars.unsqueeze(-1), classes.unsqueeze(-1) + n_chars]
        if ngrams is not None:
            ids.append(ngrams + n_chars + self.class_embed.num_embeddings)
        ids = torch.cat(ids, dim=-1).view(B * T, -1)
        x = F.embedding_bag(ids, self._inference_table(), mode="sum").add_(self.proj.bias)  # (B*T, H)
        x = torch._C._nn.gelu_(x) if x.dtype == torch.float32 else F.gelu(x)

        def zero_padding(t: torch.Tensor) -> torch.Tensor:
            return t.view(B * T, -1).index_fill_(0, pad, 0.0).view(B, T, -1) if len(pad) else t.view(B, T, -1)

        x = zero_padding(x)
        for conv, norm in zip(self.convs, self.norms):
            h = _conv_gelu_nwc(conv, x)
            h = h.add_(x) if h.dtype == x.dtype else x + h
            x = zero_padding(norm(h))
        return F.linear(x, self.head.weight, self.head.bias).squeeze(-1)

    def decision_masks(self, texts: list[str]) -> list[np.ndarray]:
        """Per text, bool (len(text),): True where the model decides a boundary.

        False at index 0 (a text always starts with a word) and, with ``orthographic_constraints``,
        where a word cannot start; ``boundary_probs`` fixes those positions at 1.0 and 0.0. The same
        mask selects the positions the training loss sees, and ``models.al_scorers`` scores a
        sentence over them only."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must be a list of str; for one text use [text]")
        return np.split(self._decisions_flat(texts), _offsets(texts)[1][1:]) if texts else []

    def _decisions_flat(self, texts: Sequence[str]) -> np.ndarray:
        """``decision_masks`` of all texts, concatenated."""
        cps = _codepoints("".join(texts))
        return self._decisions_from_codepoints(cps, _offsets(texts)[1], _class_ids(cps))

    def _decisions_from_codepoints(self, cps: np.ndarray, starts: np.ndarray, classes: np.ndarray) -> np.ndarray:
        free = np.ones(len(cps), dtype=bool)
        if self.config.orthographic_constraints:
            free = ~_forbidden_from_codepoints(cps, starts, classes)
        free[starts[starts < len(cps)]] = False
        return free

    def segment_batch(self, texts: list[str]) -> list[list[str]]:
        """Segment many texts; ``"".join(words) == text`` for each."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must be a list of str; for one text use segment(text) or [text]")
        # Cut the concatenated texts at every word start at once; index 0 of a non-empty text has
        # probability 1, so every text starts with a cut and no word spans two texts.
        lengths, starts = _offsets(texts)
        offsets = np.append(starts, lengths.sum()) if texts else np.zeros(1, dtype=np.int64)
        cuts = np.flatnonzero(self._probs_flat(texts) >= self.config.threshold)
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
