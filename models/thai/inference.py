"""The segmenter's inference over many texts at once: per-character inputs computed once over the concatenated
texts, then length-sorted batches of pieces through an inference-only forward.

- ``vocab_ids`` / ``flat_inputs``: vocabulary rows, class ids and n-gram rows of every character of the
  concatenated texts, from dense code-point tables (the training encoder pads the same rows);
- ``probs_flat``: the boundary probabilities of all texts, concatenated. Texts are cut into pieces (a text, or
  with the CNN a window of a long one, overlapping its neighbours by the receptive radius), sorted by length
  and packed into batches of at most ``inference_batch_chars`` padded characters; the CNN's forward then runs
  with the input projection folded into one lookup table, padding re-zeroed by index and, on CPU, each
  convolution fused with its GELU (:mod:`models.thai.layers`). It equals ``forward`` in eval mode;
- ``decisions_from_codepoints``: the positions the model decides (the rest are fixed by orthography).

Functions of a ``ThaiSegmenter`` (:mod:`models.thai_segmenter`, whose ``boundary_probs``, ``segment_batch``
and ``decision_masks`` call them); the caches they keep on it (``_vocab_table``, ``_table``) are theirs alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.thai.chars import BMP, class_ids, codepoints, forbidden_from_codepoints, lookup, padded_index, text_offsets
from models.thai.layers import conv_gelu_nwc
from models.thai.ngrams import ngram_ids_flat

__all__ = ["decisions_from_codepoints", "flat_inputs", "probs_flat", "vocab_ids"]


def vocab_ids(model: nn.Module, cps: np.ndarray) -> np.ndarray:
    """Row of ``model.char_embed`` per code point (1 = unknown), via a dense table over the BMP that
    is rebuilt when the vocabulary changes."""
    key = (id(model.vocab), len(model.vocab))
    if getattr(model, "_vocab_table_key", None) != key:
        table = np.ones(BMP, dtype=np.int64)
        for ch, row in model.vocab.items():
            if ord(ch) < BMP:
                table[ord(ch)] = row
        model._vocab_table, model._vocab_table_key = table, key
    return lookup(model._vocab_table, cps, lambda ch: model.vocab.get(ch, 1))


def flat_inputs(model: nn.Module, cps: np.ndarray, classes: np.ndarray, lengths: np.ndarray, *,
                ngrams: bool = True) -> dict:
    """Per character of the concatenated texts (plus one padding entry at the end): vocabulary
    rows, class ids (``classes``: ``class_ids(cps)``) and, with n-grams, each window's n-gram row
    (n-grams stop at text ends)."""
    chars = torch.from_numpy(np.append(vocab_ids(model, cps), 0))
    out = {"chars": chars, "classes": torch.from_numpy(np.append(classes, 0))}
    if ngrams and model.ngram_embed is not None:
        text_id = torch.from_numpy(np.append(np.repeat(np.arange(len(lengths)), lengths), -1))
        out["ngrams"] = ngram_ids_flat(chars, text_id, vocab_capacity=model.config.vocab_capacity,
                                       buckets=model.config.ngram_buckets)
    return out


def decisions_from_codepoints(cps: np.ndarray, starts: np.ndarray, classes: np.ndarray, *,
                              orthographic_constraints: bool) -> np.ndarray:
    """Bool: the positions of texts concatenated (``starts``: each text's first index) whose boundary the
    model decides: not a text's first character and, with ``orthographic_constraints``, not a forbidden
    start."""
    free = np.ones(len(cps), dtype=bool)
    if orthographic_constraints:
        free = ~forbidden_from_codepoints(cps, starts, classes)
    free[starts[starts < len(cps)]] = False
    return free


@torch.no_grad()
def probs_flat(model: nn.Module, texts: Sequence[str]) -> np.ndarray:
    """``model.boundary_probs`` of all texts, concatenated (float32).

    Everything per character is computed once over the concatenated texts (vocabulary rows,
    classes, n-gram rows, forced positions); each batch then only gathers its rows. Texts are cut
    into pieces (a text, or a window of a long one), sorted by length and packed into batches of
    at most ``inference_batch_chars`` padded characters."""
    cps = codepoints("".join(texts))
    classes = class_ids(cps)
    lengths, starts = text_offsets(texts)
    flat = np.zeros(len(cps), dtype=np.float32)
    if len(cps):
        limit = model.config.inference_batch_chars
        lo, hi, keep_lo, keep_hi = _pieces(lengths, starts, limit=limit, radius=model.receptive_radius())
        was_training = model.training
        if was_training:  # train()/eval() walk every module: skip them when already in eval mode
            model.eval()
        try:
            inputs = flat_inputs(model, cps, classes, lengths)
            order = np.argsort(hi - lo, kind="stable").tolist()
            sizes = (hi - lo).tolist()
            first = 0
            for k in range(1, len(order) + 1):  # close a batch when the next piece does not fit
                if k == len(order) or (k - first + 1) * sizes[order[k]] > limit:
                    batch = np.array(order[first:k])
                    _predict_pieces(model, inputs, lo[batch], hi[batch], keep_lo[batch], keep_hi[batch], flat)
                    first = k
        finally:
            if was_training:
                model.train()
    # Forced positions, for all texts in one vectorised pass (the rules look one character back).
    flat[~decisions_from_codepoints(cps, starts, classes,
                                    orthographic_constraints=model.config.orthographic_constraints)] = 0.0
    flat[starts[lengths > 0]] = 1.0
    return flat


def _pieces(lengths: np.ndarray, starts: np.ndarray, *, limit: int, radius: int | None):
    """(lo, hi, keep_lo, keep_hi) int64 arrays, positions in the concatenated texts: each non-empty
    text is one piece, except that with the CNN (``radius``: its receptive radius; None for the BiLSTM) a
    text longer than ``limit`` is cut into windows whose kept cores overlap their neighbours by ``radius``
    characters."""
    short = (lengths > 0) & ((lengths <= limit) | (radius is None))
    parts = [(starts[short], starts[short] + lengths[short], starts[short], starts[short] + lengths[short])]
    core = max(limit - 2 * radius, 256) if radius is not None else 0
    for i in np.flatnonzero(~short & (lengths > 0)).tolist():
        s, n = int(starts[i]), int(lengths[i])
        a = np.arange(0, n, core)
        parts.append((s + np.maximum(0, a - radius), s + np.minimum(n, a + core + radius), s + a,
                      s + np.minimum(a + core, n)))
    return tuple(np.concatenate([p[j] for p in parts]).astype(np.int64) for j in range(4))


def _inference_table(model: nn.Module) -> torch.Tensor:
    """One table for the inference input layer: the character and class tables with the input
    projection folded in, then the n-gram table (rows as in ``flat_inputs``). Cached until a
    parameter changes."""
    params = [model.char_embed.weight, model.class_embed.weight, model.proj.weight]
    if model.ngram_embed is not None:
        params.append(model.ngram_embed.weight)
    key = tuple((p.data_ptr(), p._version) for p in params)
    if getattr(model, "_table_key", None) != key:
        E = model.config.embed_dim
        tables = [model.char_embed.weight @ model.proj.weight[:, :E].T,
                  model.class_embed.weight @ model.proj.weight[:, E:].T]
        if model.ngram_embed is not None:
            tables.append(model.ngram_embed.weight)
        model._table, model._table_key = torch.cat(tables).detach(), key
    return model._table


def _predict_pieces(model: nn.Module, inputs: dict, lo, hi, keep_lo, keep_hi, flat: np.ndarray) -> None:
    """Write the raw probabilities of one batch of pieces into ``flat`` (kept positions only)."""
    n = hi - lo
    index, valid = padded_index(lo, n, pad=len(inputs["chars"]) - 1)
    col = np.arange(index.shape[1])
    index_t = torch.from_numpy(index)
    chars, classes = inputs["chars"][index_t], inputs["classes"][index_t]
    device = model.device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=model.config.inference_dtype == "bfloat16"):
        if model.config.arch == "cnn":
            pad = torch.from_numpy(np.flatnonzero(~valid))
            ngrams = inputs["ngrams"][index_t] if "ngrams" in inputs else None
            logits = _cnn_logits(model, chars.to(device), classes.to(device),
                                 None if ngrams is None else ngrams.to(device), pad.to(device))
        else:
            logits = model(chars.to(device), classes.to(device), torch.from_numpy(n))
    probs = torch.sigmoid(logits.float()).cpu().numpy()
    keep = (col[None, :] >= (keep_lo - lo)[:, None]) & (col[None, :] < (keep_hi - lo)[:, None])
    flat[index[keep]] = probs[keep]


def _cnn_logits(model: nn.Module, chars: torch.Tensor, classes: torch.Tensor, ngrams: torch.Tensor | None,
                pad: torch.Tensor) -> torch.Tensor:
    """Inference forward of the CNN, equal to ``model.forward`` in eval mode: one embedding-bag lookup for
    the input layer (``_inference_table``), the padding re-zeroed by index (``pad``: flat indices
    of padded positions in (B, T)) instead of a multiplication by the mask, and in-place
    activations. (B, T) logits."""
    B, T = chars.shape
    n_chars = model.char_embed.num_embeddings
    ids = [chars.unsqueeze(-1), classes.unsqueeze(-1) + n_chars]
    if ngrams is not None:
        ids.append(ngrams + n_chars + model.class_embed.num_embeddings)
    ids = torch.cat(ids, dim=-1).view(B * T, -1)
    x = F.embedding_bag(ids, _inference_table(model), mode="sum").add_(model.proj.bias)  # (B*T, H)
    x = torch._C._nn.gelu_(x) if x.dtype == torch.float32 else F.gelu(x)

    def zero_padding(t: torch.Tensor) -> torch.Tensor:
        return t.view(B * T, -1).index_fill_(0, pad, 0.0).view(B, T, -1) if len(pad) else t.view(B, T, -1)

    x = zero_padding(x)
    for conv, norm in zip(model.convs, model.norms):
        h = conv_gelu_nwc(conv, x)
        h = h.add_(x) if h.dtype == x.dtype else x + h
        x = zero_padding(norm(h))
    return F.linear(x, model.head.weight, model.head.bias).squeeze(-1)
