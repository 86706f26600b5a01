"""KV-cache adapters for encoder-decoder (T5) and decoder-only (Llama, SmolLM, ...) decoding: one prompt with a
croppable cache (dynamic or static, optionally through ``torch.compile``, or for T5 the lean decoder of
``models.sd.lean_t5``), and B prompts whose rows are realigned after each call.

For a decoder-only model the prompt but its last token is prefilled once, and the token sequence the engine
feeds starts with the prompt's last token: the role T5's decoder start token plays. Everything after that,
the feeding, cropping and realigning, is the same for both kinds.

The speculative engine (``models.speculative``) drives them: it feeds tokens, reads logits, and cuts
each cache back to the accepted prefix. Nothing here knows about drafts or verification.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["CACHE_IMPLEMENTATIONS", "PREALLOCATED", "BatchedDecoder", "CachedDecoder", "CausalBatchedDecoder",
           "CausalCachedDecoder", "compiled_forward", "generate_cache", "is_causal_lm"]




def _cache_kwarg(model: nn.Module) -> str:
    """transformers 5 renamed ``past_key_values`` to ``cache``; accept either spelling."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


#: dynamic and static: transformers' caches under the model's own forward; lean: ``models.sd.lean_t5``'s
#: decoder step over preallocated tensors (T5 only, one prompt; the same outputs without HF's per-call cost)
CACHE_IMPLEMENTATIONS = ("dynamic", "static", "lean")
#: the implementations whose buffers are sized up front (``max_cache_len``)
PREALLOCATED = ("static", "lean")
#: a static cache's decoder positions (T5's self-attention; a decoder-only model's prompt and new tokens) are
#: allocated rounded up to a multiple of this: calls of different lengths then share its shape, and so a compiled
#: forward's graphs, and a verification padded to a fixed width (``advance(pad_to=...)``) has room
STATIC_BUCKET = 128


def _bucket(positions: int) -> int:
    return -(-positions // STATIC_BUCKET) * STATIC_BUCKET


def is_causal_lm(model: nn.Module) -> bool:
    """A decoder-only language model (no encoder): ``config.is_encoder_decoder`` is false."""
    return not getattr(model.config, "is_encoder_decoder", False)


def _decoder_layers(model: nn.Module) -> int:
    config = model.config
    n = getattr(config, "num_decoder_layers", None)
    return int(n if n is not None else config.num_layers)


def generate_cache(model: nn.Module) -> dict:
    """Keyword arguments that let ``model.generate`` (dynamic cache) decode a T5 whose decoder has another number
    of layers than its encoder: transformers 5.24 sizes generate's cache by ``num_layers`` (the encoder's) and
    then fails with an IndexError in the first deeper layer; a cache built without a config grows per layer.
    Empty for every other model, so ``generate(..., **generate_cache(model))`` is always safe."""
    config = getattr(model, "config", None)
    if not getattr(config, "is_encoder_decoder", False) or _decoder_layers(model) == int(config.num_layers):
        return {}
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    return {"cache": EncoderDecoderCache(DynamicCache(), DynamicCache())}


def _static_cache(model: nn.Module, max_cache_len: int, encoder_length: int):
    """An ``EncoderDecoderCache`` of preallocated (static) layers: self-attention holds up to
    ``max_cache_len`` decoder positions, cross-attention exactly the prompt's ``encoder_length``.

    Built from ``StaticLayer`` directly, with the decoder's own layer count (``StaticCache(config)``
    reads ``num_layers``, the encoder's, which differs for models with ``num_decoder_layers``).
    """
    from transformers.cache_utils import Cache, EncoderDecoderCache, StaticLayer

    n = _decoder_layers(model)
    return EncoderDecoderCache(
        Cache(layers=[StaticLayer(max_cache_len=max_cache_len) for _ in range(n)]),
        Cache(layers=[StaticLayer(max_cache_len=encoder_length) for _ in range(n)]),
    )


def _self_attention_layers(cache) -> list:
    inner = getattr(cache, "self_attention_cache", cache)
    return list(inner.layers)


def _crop_cache(cache, remove: int) -> None:
    """Forget the last ``remove`` positions of the self-attention cache, in place.

    Dynamic layers drop the tensors' tail. Static layers only move their length counter back
    (``cumulative_length``, a tensor updated in place so compiled graphs keep their addresses):
    the stale entries beyond it are overwritten by the next update and, until then, lie at
    positions after every query, where the causal mask hides them.
    """
    for layer in _self_attention_layers(cache):
        length = getattr(layer, "cumulative_length", None)
        if isinstance(length, torch.Tensor):  # StaticLayer (transformers 5.x)
            length.sub_(remove)
        elif hasattr(layer, "crop"):  # DynamicLayer: a negative argument removes that many
            layer.crop(-remove)
        elif getattr(layer, "keys", None) is not None:
            layer.keys = layer.keys[..., :-remove, :]
            layer.values = layer.values[..., :-remove, :]
            if isinstance(length, int):
                layer.cumulative_length = length - remove


class CachedDecoder:
    """One encoder-decoder model bound to one prompt: encoder run once, decoder KV cache kept.

    ``advance(tokens)`` takes the *whole* decoder token sequence so far, feeds only the suffix the
    cache has not seen, and returns its logits; ``crop(length)`` forgets cached positions beyond
    ``length`` (rejected draft tokens). The cache is an ``EncoderDecoderCache``: only its
    self-attention part grows with the decoded prefix and is cropped; the cross-attention keys and
    values depend on the prompt alone and are computed once.

    ``cache_implementation="static"`` preallocates the cache for ``max_cache_len`` decoder positions
    (transformers' ``StaticLayer``), so every decoder call sees tensors of fixed shape and address:
    the layout ``torch.compile`` (and CUDA graphs) need. ``forward`` replaces ``model`` for decoder
    calls, e.g. ``torch.compile(model)`` (see ``compiled_forward``).
    """

    def __init__(
        self,
        model: nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        cache_implementation: str = "dynamic",
        max_cache_len: int | None = None,
        forward=None,
    ):
        if cache_implementation not in ("dynamic", "static"):
            raise ValueError(f"cache_implementation={cache_implementation!r}: a CachedDecoder is 'dynamic' or 'static' "
                             "(cached_decoder() builds the lean one)")
        self.model = model
        self.forward = forward if forward is not None else model
        self.attention_mask = attention_mask  # (1, S)
        self.encoder_outputs = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask)
        self.max_cache_len = max_cache_len
        if cache_implementation == "static":
            if max_cache_len is None or max_cache_len < 1:
                raise ValueError("cache_implementation='static' needs max_cache_len >= 1 (decoder positions)")
            self._capacity = _bucket(max_cache_len)
            self.cache = _static_cache(model, self._capacity, input_ids.shape[1])
        else:
            self._capacity = None
            self.cache = None  # created by the first decoder call (use_cache=True)
        self._length = 0  # tracked here: reading a static cache's length would sync the device
        self._cache_kwarg = _cache_kwarg(model)
        self.device = input_ids.device

    @property
    def length(self) -> int:
        """Number of decoder positions held in the self-attention cache."""
        return self._length

    def advance(self, tokens: Sequence[int], *, pad_to: int | None = None) -> torch.Tensor:
        """Feed ``tokens[self.length:]`` and return their next-token logits, shape (k, V).

        ``pad_to`` (static cache): feed fewer new tokens as a call of ``pad_to`` tokens, the last one repeated, and
        forget the padding's positions afterwards; the real tokens' logits are unchanged (a position attends only
        to earlier ones), and a compiled forward runs one graph for every shorter call. Without room for the
        padding in the allocated cache the call is not padded."""
        new = list(tokens[self._length :])
        assert new, "advance() needs at least one token the cache has not seen"
        if self.max_cache_len is not None and self._length + len(new) > self.max_cache_len:
            raise ValueError(
                f"the static KV cache holds {self.max_cache_len} decoder positions; "
                f"{self._length + len(new)} were asked for (raise max_cache_len)"
            )
        pad = 0
        if pad_to is not None and self._capacity is not None and self._length + pad_to <= self._capacity:
            pad = max(0, pad_to - len(new))
        out = self._call(torch.tensor([new + new[-1:] * pad], dtype=torch.long, device=self.device))
        self.cache = out.cache if hasattr(out, "cache") else out.past_key_values
        self._length += len(new) + pad
        if pad:
            self.crop(self._length - pad)
        return out.logits[0, : len(new)]  # (k, V)

    def _call(self, new: torch.Tensor):
        # The first decoder call fills the cross-attention cache (T5 marks it ``is_updated``); it runs the plain
        # model, so a compiled forward only ever sees a filled cache: one graph per token count, not two.
        forward = self.model if self._length == 0 else self.forward
        return forward(encoder_outputs=self.encoder_outputs, attention_mask=self.attention_mask,
                       decoder_input_ids=new, use_cache=True, return_dict=True, **{self._cache_kwarg: self.cache})

    def crop(self, length: int) -> None:
        """Keep only the first ``length`` cached decoder positions."""
        remove = self._length - length
        assert remove >= 0, f"cannot crop a cache of {self._length} positions to {length}"
        if remove:
            _crop_cache(self.cache, remove)
            self._length = length


def compiled_forward(model: nn.Module, **compile_kwargs):
    """``torch.compile(model)`` for decoder steps on a static cache, built once per model.

    The compiled callable is kept on the model (``_spactor_compiled``), so repeated calls reuse its
    graphs: one per distinct number of new decoder tokens (1 for a step, gamma + 1 for a
    verification, 2 for a draft resuming after a fully accepted block). Defaults to
    ``mode="reduce-overhead"`` (CUDA graphs) on a GPU and the default mode elsewhere.
    """
    cached = getattr(model, "_spactor_compiled", None)
    if cached is not None:
        return cached
    # Target and draft share T5's forward code, and so one dynamo cache: (target, draft) x (first
    # call, later calls) x (1, 2, ..., gamma + 1 new tokens) x generate's own compiled calls exceeds
    # the default limit of 8 graphs, past which dynamo silently falls back to eager.
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), 64))
            break
    device = next(model.parameters()).device
    compile_kwargs.setdefault("mode", "reduce-overhead" if device.type == "cuda" else "default")
    compile_kwargs.setdefault("dynamic", False)
    compiled = torch.compile(model, **compile_kwargs)
    object.__setattr__(model, "_spactor_compiled", compiled)  # not a submodule: keep state_dict clean
    return compiled




class BatchedDecoder:
    """A decoder over B prompts whose rows hold different numbers of decoded positions.

    Rows are kept *right-aligned* in a common cache of ``width`` columns: row r's ``valid[r]``
    positions are its last columns and the columns on their left are masked out (``mask``), exactly
    like left-padded batched generation. T5's attention bias depends only on the distance between
    query and key positions, so a contiguous, right-aligned row computes what it would compute
    alone. After a call each row keeps a different number of the new columns; ``keep`` moves every
    row so that its kept columns end at the same place again (a gather per layer, no recomputation;
    a plain slice when every row moves alike), trims the columns no row uses and drops finished rows.
    """

    def __init__(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        self.model = model
        self.device = input_ids.device
        self.encoder_outputs = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask)
        self.attention_mask = attention_mask  # (B, S)
        self.cache = None
        self.valid = torch.zeros(input_ids.shape[0], dtype=torch.long, device=self.device)  # (B,)
        self.width = 0
        self._cache_kwarg = _cache_kwarg(model)

    @property
    def mask(self) -> torch.Tensor:
        """(B, width) decoder attention mask: 1 on each row's last ``valid[r]`` columns."""
        columns = torch.arange(self.width, device=self.device)[None, :]
        return (columns >= (self.width - self.valid)[:, None]).long()

    def advance(self, new_tokens: torch.Tensor) -> torch.Tensor:
        """Feed (B, k) tokens after each row's cached positions; returns their logits (B, k, V)."""
        self.width += new_tokens.shape[1]
        self.valid = self.valid + new_tokens.shape[1]
        out = self.model(
            encoder_outputs=self.encoder_outputs,
            attention_mask=self.attention_mask,
            decoder_input_ids=new_tokens,
            decoder_attention_mask=self.mask,
            use_cache=True,
            return_dict=True,
            **{self._cache_kwarg: self.cache},
        )
        self.cache = out.cache if hasattr(out, "cache") else out.past_key_values
        return out.logits

    def keep(self, rows: torch.Tensor, ends: torch.Tensor) -> None:
        """Keep batch rows ``rows`` (in this order); row i keeps its columns before ``ends[i]``.

        The kept columns of every row end at column ``max`` of the kept lengths; columns at or after
        ``ends[i]`` (rejected tokens) go, and so do columns on the left that no row uses any more.
        """
        valid = self.valid[rows] - (self.width - ends)  # (B',)
        width = int(valid.max()) if len(valid) else 0
        offset = ends - width  # new column j of row i is old column j + offset[i]
        uniform = bool((offset == offset[0]).all()) if len(offset) else True
        if self.cache is not None:
            if uniform:
                start = int(offset[0]) if len(offset) else 0
            else:
                src = (torch.arange(width, device=self.device)[None, :] + offset[:, None]).clamp_min(0)
            for layer in _self_attention_layers(self.cache):
                if getattr(layer, "keys", None) is None:
                    continue
                if uniform:  # every row moves alike: a slice, no copy
                    layer.keys = layer.keys[rows, :, start : start + width]
                    layer.values = layer.values[rows, :, start : start + width]
                else:
                    idx = src[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[-1])
                    layer.keys = layer.keys[rows].gather(2, idx)
                    layer.values = layer.values[rows].gather(2, idx)
            cross = getattr(self.cache, "cross_attention_cache", None)
            if cross is not None and len(rows) != len(self.valid):
                for layer in cross.layers:
                    if getattr(layer, "keys", None) is not None:
                        layer.keys, layer.values = layer.keys[rows], layer.values[rows]
        if self.encoder_outputs is not None and len(rows) != len(self.valid):
            self.attention_mask = self.attention_mask[rows]
            self.encoder_outputs.last_hidden_state = self.encoder_outputs.last_hidden_state[rows]
        self.valid, self.width = valid, width



class CausalCachedDecoder(CachedDecoder):
    """One decoder-only model bound to one prompt: the prompt's real tokens but the last are prefilled once;
    ``advance(tokens)`` then takes the sequence that starts with the prompt's last token (see the module
    docstring) and ``crop`` forgets positions of it, exactly as :class:`CachedDecoder` does for T5. Positions
    follow from the cache's length (the prefix is contiguous: padding is dropped)."""

    def __init__(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                 cache_implementation: str = "dynamic", max_cache_len: int | None = None, forward=None):
        if cache_implementation not in ("dynamic", "static"):
            raise ValueError(f"cache_implementation={cache_implementation!r}: a CachedDecoder is 'dynamic' or 'static' "
                             "(cached_decoder() builds the lean one)")
        self.model = model
        self.forward = forward if forward is not None else model
        self.device = input_ids.device
        self._cache_kwarg = _cache_kwarg(model)
        if not bool(attention_mask[0, -1]):
            raise ValueError("a decoder-only model needs left-padded prompts (attention_mask 0...0 1...1, as with "
                             "tokenizer.padding_side='left')")
        prefix = input_ids[0][attention_mask[0].bool()][:-1]
        self.max_cache_len = max_cache_len
        self.encoder_outputs = None
        if cache_implementation == "static":
            if max_cache_len is None or max_cache_len < 1:
                raise ValueError("cache_implementation='static' needs max_cache_len >= 1 (decoder positions)")
            from transformers.cache_utils import Cache, StaticLayer

            # Sized in steps of STATIC_BUCKET positions: prompts of different lengths share one cache shape, and
            # so a compiled forward's graphs, instead of compiling anew for every prompt length.
            total = _bucket(max_cache_len + len(prefix))
            self._capacity = total - len(prefix)
            self.cache = Cache(layers=[StaticLayer(max_cache_len=total) for _ in range(model.config.num_hidden_layers)])
        else:
            self._capacity = None
            self.cache = None
        if len(prefix):  # the prefill runs the plain model: its length is the prompt's, so a graph would serve one
            out = self.model(input_ids=prefix[None], use_cache=True, return_dict=True,
                             **{self._cache_kwarg: self.cache})
            self.cache = out.cache if hasattr(out, "cache") else out.past_key_values
        self._length = 0

    def _call(self, new: torch.Tensor):
        return self.forward(input_ids=new, use_cache=True, return_dict=True, **{self._cache_kwarg: self.cache})


class CausalBatchedDecoder(BatchedDecoder):
    """A decoder-only model over B left-padded prompts whose rows hold different numbers of positions.

    The prompts but their last column are prefilled; rows stay right-aligned in the common cache, as in
    :class:`BatchedDecoder`, and every call passes each row's own position ids (its count of real tokens so
    far), so a rotary or learned position embedding sees what the row would see alone; the left columns a row
    does not use are masked out."""

    def __init__(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        mask = attention_mask.long()
        if not bool(mask[:, -1].all()) or bool((mask[:, 1:] < mask[:, :-1]).any()):
            raise ValueError("a decoder-only model needs left-padded prompts (attention_mask 0...0 1...1 per row, "
                             "as with tokenizer.padding_side='left')")
        self.model = model
        self.device = input_ids.device
        self.encoder_outputs = None
        self._cache_kwarg = _cache_kwarg(model)
        self.cache = None
        self.width = input_ids.shape[1] - 1
        self.valid = mask[:, :-1].sum(dim=1)
        if self.width:
            out = model(input_ids=input_ids[:, :-1], attention_mask=mask[:, :-1],
                        position_ids=(mask[:, :-1].cumsum(dim=1) - 1).clamp_min(0), use_cache=True, return_dict=True)
            self.cache = out.cache if hasattr(out, "cache") else out.past_key_values

    def advance(self, new_tokens: torch.Tensor) -> torch.Tensor:
        """Feed (B, k) tokens after each row's cached positions; returns their logits (B, k, V)."""
        k = new_tokens.shape[1]
        positions = self.valid[:, None] + torch.arange(k, device=self.device)[None, :]
        self.width += k
        self.valid = self.valid + k
        out = self.model(input_ids=new_tokens, attention_mask=self.mask, position_ids=positions, use_cache=True,
                         return_dict=True, **{self._cache_kwarg: self.cache})
        self.cache = out.cache if hasattr(out, "cache") else out.past_key_values
        return out.logits


def cached_decoder(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs) -> CachedDecoder:
    """The :class:`CachedDecoder` of ``model``'s kind (:class:`CausalCachedDecoder` for a decoder-only model, a
    ``models.sd.lean_t5.LeanT5Decoder`` for ``cache_implementation="lean"``); ``kwargs`` as theirs
    (``cache_implementation``, ``max_cache_len``, ``forward``)."""
    if kwargs.get("cache_implementation") == "lean":
        from models.sd.lean_t5 import LeanT5Decoder

        if kwargs.get("forward") is not None:
            raise ValueError("cache_implementation='lean' runs its own decoder step: it takes no compiled forward")
        return LeanT5Decoder(model, input_ids, attention_mask, max_cache_len=kwargs.get("max_cache_len"))
    kind = CausalCachedDecoder if is_causal_lm(model) else CachedDecoder
    return kind(model, input_ids, attention_mask, **kwargs)
