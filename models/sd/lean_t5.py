"""A lean KV-cached decoder step for Hugging Face T5 models: the same weights and the same maths as
``T5ForConditionalGeneration``'s decoder, without its per-call machinery.

At batch 1 on a CPU, a small T5's decoder call is mostly fixed cost: transformers builds causal and
cross-attention masks, looks up and updates an ``EncoderDecoderCache`` layer by layer, recomputes the relative
position bias and wraps the result in output objects, which costs about 0.3 ms a call whatever the model's width
(benchmarks/verify_cost.py). A draft of one layer pays that on every token it proposes, so it costs half of a
small target's step and speculative decoding cannot pay. :class:`LeanT5Decoder` reads the model's modules once
and then runs each call as a short list of tensor operations over preallocated key/value buffers:

- the self-attention keys and values of every decoder layer live in one tensor of ``capacity`` positions
  (grown by doubling if a call needs more); ``crop`` only moves the length back;
- the cross-attention keys and values are computed once from the encoder's output;
- the relative position bias of the first layer, with the causal mask folded in, is computed once for
  ``capacity`` positions and sliced per call.

The linear layers are the model's own modules (so ``models.sd.quantization``'s int8 layers work unchanged);
fp32 query/key/value projections of one layer are fused into one matrix product. The outputs equal
``T5ForConditionalGeneration``'s up to floating-point rounding (``tests/models/test_lean_t5.py``): speculative
decoding with it is exact with respect to it, as with any other decoder, because draft, verification and the
target-only baseline all use it.

It has :class:`models.sd.kv_cache.CachedDecoder`'s interface (``advance``, ``crop``, ``length``); the engine
picks it with ``cache_implementation="lean"``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["LeanT5Decoder", "supports_lean"]


def supports_lean(model: nn.Module) -> bool:
    """A T5-family encoder-decoder (``T5ForConditionalGeneration``, MT5...): a ``decoder`` T5 stack with ``block``
    layers and an ``lm_head``."""
    decoder = getattr(model, "decoder", None)
    if not (getattr(model.config, "is_encoder_decoder", False) and decoder is not None
            and hasattr(decoder, "block") and hasattr(model, "lm_head")):
        return False
    # T5's one relative position bias, in the first layer (UMT5's per-layer biases are another model)
    bias = [getattr(b.layer[0].SelfAttention, "has_relative_attention_bias", None) for b in decoder.block]
    return bool(bias) and bias[0] is True and not any(bias[1:])


def _fused(*linears: nn.Module) -> torch.Tensor | None:
    """One weight for several bias-free ``nn.Linear`` of the same input (None when any is something else, e.g. an
    int8 layer, which is then called on its own)."""
    if all(type(m) is nn.Linear and m.bias is None for m in linears):
        return torch.cat([m.weight for m in linears], dim=0)
    return None


class _Layer:
    """One decoder block's modules and weights, read once."""

    def __init__(self, block: nn.Module):
        sa, ca, ff = block.layer[0], block.layer[1], block.layer[2]
        self.sa_norm = (sa.layer_norm.weight, sa.layer_norm.variance_epsilon)
        self.ca_norm = (ca.layer_norm.weight, ca.layer_norm.variance_epsilon)
        self.ff_norm = (ff.layer_norm.weight, ff.layer_norm.variance_epsilon)
        att = sa.SelfAttention
        self.q, self.k, self.v, self.o = att.q, att.k, att.v, att.o
        self.qkv = _fused(att.q, att.k, att.v)
        cross = ca.EncDecAttention
        self.cq, self.ck, self.cv, self.co = cross.q, cross.k, cross.v, cross.o
        dense = ff.DenseReluDense
        plain = (type(dense).__name__ == "T5DenseActDense" and isinstance(dense.act, nn.ReLU)
                 and all(type(m) is nn.Linear for m in (dense.wi, dense.wo)))
        self.ff = (lambda h: dense.wo(F.relu(dense.wi(h)))) if plain else dense  # ReLU FF inline, else the module


def _norm(x: torch.Tensor, weight_eps: tuple[torch.Tensor, float]) -> torch.Tensor:
    """T5's RMS norm (no mean, no bias; variance in fp32): torch's fused ``rms_norm`` for fp32, T5's own
    formula for half precisions (which casts back to the weight's dtype)."""
    weight, eps = weight_eps
    if x.dtype == torch.float32 and weight.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
    x = x * torch.rsqrt(variance + eps)
    if weight.dtype in (torch.float16, torch.bfloat16):
        x = x.to(weight.dtype)
    return weight * x


class LeanT5Decoder:
    """One T5 model bound to one prompt (batch 1): encoder run once, decoder steps over preallocated KV buffers.

    ``advance(tokens)`` feeds ``tokens[self.length:]`` and returns their next-token logits (k, V);
    ``crop(length)`` forgets the positions beyond ``length``. ``max_cache_len`` is the initial capacity in decoder
    positions (grown by doubling when exceeded).
    """

    @torch.inference_mode()
    def __init__(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                 max_cache_len: int | None = None):
        if not supports_lean(model):
            raise ValueError(f"cache_implementation='lean' needs a T5 encoder-decoder model, got {type(model).__name__}")
        if input_ids.shape[0] != 1:
            raise ValueError(f"LeanT5Decoder decodes one prompt; got a batch of {input_ids.shape[0]}")
        config = model.config
        stack = model.decoder
        self.device = input_ids.device
        self.heads, self.d_kv = int(config.num_heads), int(config.d_kv)
        self.embed = stack.embed_tokens
        self.layers = [_Layer(block) for block in stack.block]
        self.final_norm = (stack.final_layer_norm.weight, stack.final_layer_norm.variance_epsilon)
        self.lm_head = model.lm_head
        # transformers 5 keeps the "scale the decoder output by d_model^-0.5" switch apart from tying
        scaled = getattr(config, "scale_decoder_outputs", config.tie_word_embeddings)
        self.scale = float(config.d_model) ** -0.5 if scaled else None
        self.bias_module = stack.block[0].layer[0].SelfAttention
        encoded = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[0]
        self.dtype = encoded.dtype
        self.cross = [(self._heads_of(layer.ck(encoded)), self._heads_of(layer.cv(encoded))) for layer in self.layers]
        mask = attention_mask[0].to(self.dtype)
        self.cross_bias = None if bool(attention_mask.all()) else ((1.0 - mask) * torch.finfo(self.dtype).min)[None, None, :]
        self._length = 0
        self._allocate(max(int(max_cache_len or 0), 16))

    def _heads_of(self, x: torch.Tensor) -> torch.Tensor:
        """(n, H*d_kv) -> (H, n, d_kv)"""
        return x.view(x.shape[0], self.heads, self.d_kv).transpose(0, 1)

    def _allocate(self, capacity: int) -> None:
        shape = (len(self.layers), self.heads, capacity, self.d_kv)
        keys = torch.zeros(shape, dtype=self.dtype, device=self.device)
        values = torch.zeros(shape, dtype=self.dtype, device=self.device)
        if self._length:
            keys[:, :, : self._length] = self.keys[:, :, : self._length]
            values[:, :, : self._length] = self.values[:, :, : self._length]
        self.keys, self.values, self.capacity = keys, values, capacity
        bias = self.bias_module.compute_bias(capacity, capacity, device=self.device)[0].to(self.dtype)  # (H, C, C)
        causal = torch.ones(capacity, capacity, dtype=torch.bool, device=self.device).triu(1)
        self.self_bias = bias.masked_fill(causal, torch.finfo(self.dtype).min)

    @property
    def length(self) -> int:
        """Number of decoder positions held in the self-attention cache."""
        return self._length

    @torch.inference_mode()
    def advance(self, tokens: Sequence[int]) -> torch.Tensor:
        """Feed ``tokens[self.length:]`` and return their next-token logits, shape (k, V)."""
        new = list(tokens[self._length :])
        assert new, "advance() needs at least one token the cache has not seen"
        start, k = self._length, len(new)
        end = start + k
        if end > self.capacity:
            self._allocate(max(2 * self.capacity, end))
        x = self.embed(torch.tensor(new, dtype=torch.long, device=self.device))  # (k, d)
        bias = self.self_bias[:, start:end, :end]
        for i, layer in enumerate(self.layers):
            h = _norm(x, layer.sa_norm)
            if layer.qkv is not None:
                q, key, value = F.linear(h, layer.qkv).split(self.heads * self.d_kv, dim=-1)
            else:
                q, key, value = layer.q(h), layer.k(h), layer.v(h)
            self.keys[i, :, start:end] = self._heads_of(key)
            self.values[i, :, start:end] = self._heads_of(value)
            x = x + layer.o(self._attend(self._heads_of(q), self.keys[i, :, :end], self.values[i, :, :end], bias))
            h = _norm(x, layer.ca_norm)
            cross_k, cross_v = self.cross[i]
            x = x + layer.co(self._attend(self._heads_of(layer.cq(h)), cross_k, cross_v, self.cross_bias))
            x = x + layer.ff(_norm(x, layer.ff_norm))
        x = _norm(x, self.final_norm)
        if self.scale is not None:
            x = x * self.scale
        self._length = end
        return self.lm_head(x)

    def _attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """T5 attention of (H, k, d_kv) queries: no 1/sqrt(d) scaling, the bias added to the scores; (k, H*d_kv)."""
        scores = torch.matmul(q, keys.transpose(1, 2))
        if bias is not None:
            scores = scores + bias
        out = torch.matmul(torch.softmax(scores, dim=-1), values)  # (H, k, d_kv)
        return out.transpose(0, 1).reshape(q.shape[1], self.heads * self.d_kv)

    def crop(self, length: int) -> None:
        """Keep only the first ``length`` cached decoder positions (the rest is overwritten by later calls and, until
        then, lies after every query, where the causal bias hides it)."""
        assert 0 <= length <= self._length, f"cannot crop a cache of {self._length} positions to {length}"
        self._length = length
