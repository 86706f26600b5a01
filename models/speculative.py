"""Speculative decoding (SD) for encoder-decoder (T5) models, in pure torch + transformers.

A small draft model q proposes ``gamma`` tokens autoregressively; the target model p scores all of
them in one forward pass; a rejection step keeps the longest acceptable prefix and adds one token
from the target, so every target call emits between 1 and gamma + 1 tokens.

References
- Leviathan, Kalman, Matias 2023, "Fast Inference from Transformers via Speculative Decoding"
  (arXiv 2211.17192): Algorithm 1 (verification, residual ``norm(max(0, p - q))``), Eq. 1
  (``expected_block_efficiency``), Theorem 3.8 (``expected_speedup``), Appendix A.5 (lenience).
- Chen et al. 2023, "Accelerating LLM Decoding with Speculative Sampling" (arXiv 2302.01318).
- Zhou et al. 2023, "DistillSpec" (arXiv 2310.08461), Section 5.3 / Appendix: lossy SD with a
  lenience function ``f(p, lenience) = p / lenience``.
- The verification function follows the variable names of transformers'
  ``generation/utils.py::_speculative_sampling`` (p, q, n_matches, p_prime); the engine is our own.

Exactness contract
- Greedy (``do_sample=False``): the output equals greedy target decoding token for token, whatever
  the draft (accept the longest prefix equal to the target argmax, then the target's own argmax).
- Sampling with ``lenience=1``: each emitted token is distributed exactly as the target's
  (temperature / top-k / top-p-warped) distribution.
- ``lenience < 1`` is LOSSY: faster, but the output no longer follows the target distribution.

Fast path: each model runs its encoder once per prompt; both decoders keep a KV cache
(``EncoderDecoderCache``) whose self-attention part is cropped back to the accepted prefix after each
verification (the cross-attention part depends only on the prompt and is kept). No prefix is ever
recomputed.

Static cache (``cache_implementation="static"``): both caches are preallocated; a rejection moves a
length counter back. With ``compile=True`` the decoders run through ``torch.compile`` (CUDA graphs on
a GPU): the fast path on which a GPU benchmark should time both the baseline and SD.

Batched SD (``input_ids`` with B > 1 rows): one target call verifies every row and each row accepts
its own number of tokens; rows stay right-aligned in the caches (``_BatchedDecoder``).

Run the tests: ``OMP_NUM_THREADS=1 python -m pytest tests/models/test_speculative.py -q``;
the benchmark: ``python benchmarks/sd_engine.py --help``.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = [
    "CACHE_IMPLEMENTATIONS",
    "CachedDecoder",
    "SpeculativeOutput",
    "acceptance_probability",
    "compiled_forward",
    "expected_block_efficiency",
    "expected_speedup",
    "greedy_verify",
    "pad_id",
    "rejection_sample",
    "residual_distribution",
    "sampling_distribution",
    "speculative_generate",
    "target_generate",
    "token_ids",
]


# ----------------------------------------------------------------------------------------------
# Closed forms (Leviathan et al. 2023)
# ----------------------------------------------------------------------------------------------


def _check_alpha_gamma(alpha: float, gamma: int) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must be an acceptance rate in [0, 1]")
    if isinstance(gamma, bool) or not isinstance(gamma, int) or gamma < 0:
        raise ValueError(f"gamma={gamma!r} must be an int >= 0 (draft tokens per target call)")


def _now(device: torch.device) -> float:
    """A wall clock read that means something on an accelerator: CUDA kernels run asynchronously, so
    synchronise first there (a launch-time reading would hide the work). On CPU no sync is added."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def expected_block_efficiency(alpha: float, gamma: int) -> float:
    """Expected tokens emitted per target call, ``(1 - alpha^(gamma+1)) / (1 - alpha)`` (Eq. 1).

    ``alpha`` is the per-token acceptance rate (assumed i.i.d.); the ``alpha == 1`` limit is
    ``gamma + 1`` (every draft accepted plus the bonus token).
    """
    _check_alpha_gamma(alpha, gamma)
    if alpha == 1.0:
        return float(gamma + 1)
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


def expected_speedup(alpha: float, gamma: int, c: float) -> float:
    """Expected walltime improvement over target-only decoding (Theorem 3.8).

    ``(1 - alpha^(gamma+1)) / ((1 - alpha) (gamma c + 1))`` where ``c`` is the cost of one draft
    call relative to one target call. ``alpha == 1`` gives ``(gamma + 1) / (gamma c + 1)``.
    """
    if c < 0:
        raise ValueError(f"c={c} must be >= 0 (draft-call cost / target-call cost)")
    return expected_block_efficiency(alpha, gamma) / (gamma * c + 1.0)


# ----------------------------------------------------------------------------------------------
# Distributions and the verification step
# ----------------------------------------------------------------------------------------------


def _check_sampling_args(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be > 0 (use do_sample=False for greedy)")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k={top_k!r} must be None or an int >= 1")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p} must be None or in (0, 1]")


def sampling_distribution(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """Logits (..., V) -> probabilities (..., V) after temperature, then top-k, then top-p.

    The one function that turns logits into a sampling distribution: SD applies it to the target
    logits (p) and the draft logits (q) alike, and the draft samples from exactly this q, which the
    lossless guarantee needs. Top-p keeps the smallest set of most likely tokens whose mass reaches
    ``top_p`` (at least one token).
    """
    _check_sampling_args(temperature, top_k, top_p)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of strictly likelier tokens
        drop_sorted = mass_before >= top_p  # never drops the first (most likely) token
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(dim=-1)


def _check_lenience(lenience: float) -> None:
    if not 0.0 < lenience <= 1.0:
        raise ValueError(
            f"lenience={lenience} must be in (0, 1]; 1 is lossless SD, smaller values accept more "
            "draft tokens at the price of exactness"
        )


def acceptance_probability(
    p: torch.Tensor, q: torch.Tensor, draft_tokens: torch.Tensor, *, lenience: float = 1.0
) -> torch.Tensor:
    """Probability of accepting each draft token given the ones before it were accepted.

    ``min(1, p_i(x_i) / (lenience * q_i(x_i)))`` for i < gamma; p may carry the extra bonus row.
    Returns (gamma,). A token with ``q_i(x_i) == 0`` cannot have been sampled; it gets 1 if
    ``p_i(x_i) > 0`` (the ratio's limit) and 0 otherwise.
    """
    _check_lenience(lenience)
    gamma = draft_tokens.shape[0]
    idx = torch.arange(gamma, device=p.device)
    p_i = p[idx, draft_tokens].double()  # (gamma,)
    q_i = q[idx, draft_tokens].double()  # (gamma,)
    ratio = torch.where(q_i > 0, p_i / (lenience * q_i).clamp_min(1e-300), (p_i > 0).double())
    return ratio.clamp(max=1.0)


def residual_distribution(p_row: torch.Tensor, q_row: torch.Tensor, *, lenience: float = 1.0) -> torch.Tensor:
    """Distribution of the replacement token after a rejection: ``norm(max(0, p - lenience * q))``.

    lenience = 1 is Leviathan et al.'s ``p'``. For lenience < 1 we follow Leviathan et al. App. A.5
    and DistillSpec's lossy SD (lenience function ``f(p) = p / lenience``, residual
    ``norm(max(0, f(p) - q))``); dividing by lenience does not change the normalised result, so it
    equals ``norm(max(0, p - lenience * q))``. A rejection can only happen where
    ``p < lenience * q``, so the residual has mass whenever a rejection has positive probability;
    if rounding still leaves it all zero (p == q numerically), we fall back to p.
    """
    _check_lenience(lenience)
    p_prime = (p_row.double() - lenience * q_row.double()).clamp_min(0.0)  # (V,)
    total = p_prime.sum()
    if total <= torch.finfo(torch.float32).tiny:
        return p_row.double() / p_row.double().sum()
    return p_prime / total


def _sample(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    return int(torch.multinomial(probs.float(), 1, generator=generator))


def _check_rejection_shapes(p: torch.Tensor, q: torch.Tensor, draft_tokens: torch.Tensor) -> int:
    if draft_tokens.ndim != 1:
        raise ValueError(f"draft_tokens must be 1-D (gamma,), got shape {tuple(draft_tokens.shape)}")
    gamma = draft_tokens.shape[0]
    if p.ndim != 2 or p.shape[0] != gamma + 1:
        raise ValueError(
            f"p must have shape (gamma+1, V) = ({gamma + 1}, V) for {gamma} draft tokens, got {tuple(p.shape)}"
        )
    if q.ndim != 2 or q.shape != (gamma, p.shape[1]):
        raise ValueError(f"q must have shape (gamma, V) = ({gamma}, {p.shape[1]}), got {tuple(q.shape)}")
    if gamma and (int(draft_tokens.min()) < 0 or int(draft_tokens.max()) >= p.shape[1]):
        raise ValueError(f"draft_tokens {draft_tokens.tolist()} must lie in [0, V={p.shape[1]})")
    return gamma


def rejection_sample(
    p: torch.Tensor,
    q: torch.Tensor,
    draft_tokens: torch.Tensor,
    *,
    lenience: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[int, int]:
    """Speculative-sampling verification of one draft block (Leviathan et al. Algorithm 1).

    Args:
        p: (gamma+1, V) target probabilities at the gamma+1 positions (row gamma is the bonus).
        q: (gamma, V) draft probabilities, exactly the distributions ``draft_tokens`` were drawn from.
        draft_tokens: (gamma,) the drafted token ids.
        lenience: draft token i is accepted with probability ``min(1, p_i(x)/(lenience q_i(x)))``.
            **lenience = 1 (default) is lossless: every emitted token follows p exactly.
            lenience < 1 is LOSSY speculative decoding (Leviathan et al. A.5, DistillSpec 5.3):
            more draft tokens are accepted, and the output distribution is no longer p.**
        generator: the random source (None uses torch's global generator).

    Returns:
        ``(n_accepted, next_token)`` as python ints: the first ``n_accepted`` draft tokens are kept
        and ``next_token`` follows them. It is drawn from ``residual_distribution(p[n], q[n])`` after
        a rejection, and from ``p[gamma]`` when all gamma tokens were accepted.
    """
    _check_lenience(lenience)
    draft_tokens = torch.as_tensor(draft_tokens, dtype=torch.long, device=p.device)
    gamma = _check_rejection_shapes(p, q, draft_tokens)
    accept_prob = acceptance_probability(p, q, draft_tokens, lenience=lenience)  # (gamma,)
    r = torch.rand(gamma, generator=generator, device=p.device, dtype=torch.float64)
    # Strict '<': with r ~ U[0, 1) this accepts with probability exactly accept_prob (0 stays 0).
    is_accepted = r < accept_prob
    n_matches = int(torch.cumprod(is_accepted.long(), dim=0).sum()) if gamma else 0
    if n_matches < gamma:
        p_prime = residual_distribution(p[n_matches], q[n_matches], lenience=lenience)
    else:
        p_prime = p[gamma]
    return n_matches, _sample(p_prime, generator)


def greedy_verify(target_logits: torch.Tensor, draft_tokens: torch.Tensor) -> tuple[int, int]:
    """Greedy verification: the longest draft prefix equal to the target argmax, then one argmax.

    ``target_logits`` is (gamma+1, V). The emitted tokens are exactly what greedy target decoding
    produces, whatever the draft proposed.
    """
    _check_rejection_shapes(target_logits, target_logits[:-1], draft_tokens)
    greedy = target_logits.argmax(dim=-1)  # (gamma+1,)
    gamma = draft_tokens.shape[0]
    matches = (greedy[:gamma] == draft_tokens).long()
    n_matches = int(torch.cumprod(matches, dim=0).sum()) if gamma else 0
    return n_matches, int(greedy[n_matches])


# ----------------------------------------------------------------------------------------------
# A decoder with a croppable KV cache
# ----------------------------------------------------------------------------------------------


def _cache_kwarg(model: nn.Module) -> str:
    """transformers 5 renamed ``past_key_values`` to ``cache``; accept either spelling."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


CACHE_IMPLEMENTATIONS = ("dynamic", "static")


def _decoder_layers(model: nn.Module) -> int:
    config = model.config
    n = getattr(config, "num_decoder_layers", None)
    return int(n if n is not None else config.num_layers)


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
        if cache_implementation not in CACHE_IMPLEMENTATIONS:
            raise ValueError(f"cache_implementation={cache_implementation!r} must be one of {CACHE_IMPLEMENTATIONS}")
        self.model = model
        self.forward = forward if forward is not None else model
        self.attention_mask = attention_mask  # (1, S)
        self.encoder_outputs = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask)
        self.max_cache_len = max_cache_len
        if cache_implementation == "static":
            if max_cache_len is None or max_cache_len < 1:
                raise ValueError("cache_implementation='static' needs max_cache_len >= 1 (decoder positions)")
            self.cache = _static_cache(model, max_cache_len, input_ids.shape[1])
        else:
            self.cache = None  # created by the first decoder call (use_cache=True)
        self._length = 0  # tracked here: reading a static cache's length would sync the device
        self._cache_kwarg = _cache_kwarg(model)
        self.device = input_ids.device

    @property
    def length(self) -> int:
        """Number of decoder positions held in the self-attention cache."""
        return self._length

    def advance(self, tokens: Sequence[int]) -> torch.Tensor:
        """Feed ``tokens[self.length:]`` and return their next-token logits, shape (k, V)."""
        new = list(tokens[self._length :])
        assert new, "advance() needs at least one token the cache has not seen"
        if self.max_cache_len is not None and self._length + len(new) > self.max_cache_len:
            raise ValueError(
                f"the static KV cache holds {self.max_cache_len} decoder positions; "
                f"{self._length + len(new)} were asked for (raise max_cache_len)"
            )
        out = self.forward(
            encoder_outputs=self.encoder_outputs,
            attention_mask=self.attention_mask,
            decoder_input_ids=torch.tensor([new], dtype=torch.long, device=self.device),
            use_cache=True,
            return_dict=True,
            **{self._cache_kwarg: self.cache},
        )
        self.cache = out.cache if hasattr(out, "cache") else out.past_key_values
        self._length += len(new)
        return out.logits[0]  # (k, V)

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


# ----------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class SpeculativeOutput:
    """What a generation call returns; the same type for SD and for the target-only baseline."""

    sequences: torch.Tensor
    """(B, 1 + new tokens): decoder start token first, as ``target.generate`` lays it out (rows that
    stop early are padded with the pad token)."""
    num_target_calls: int
    """Target decoder forward passes (the encoder pass is not counted)."""
    num_draft_calls: int
    """Draft decoder forward passes (the encoder pass is not counted)."""
    accepted: list[int] = field(default_factory=list)
    """Draft tokens accepted by each target call's verification (before EOS / length truncation)."""
    drafted: list[int] = field(default_factory=list)
    """Draft tokens proposed for each target call (differs from gamma when adaptive or near the end)."""
    draft_time_s: float = 0.0
    """Wall time in the draft model, encoder included."""
    target_time_s: float = 0.0
    """Wall time in the target model, encoder included."""
    total_time_s: float = 0.0
    """Wall time of the whole call; the rest is verification and bookkeeping."""

    new_tokens_per_row: list[int] = field(default_factory=list)
    """Tokens generated for each row (EOS included, padding excluded)."""

    @property
    def num_new_tokens(self) -> int:
        """Tokens generated over all rows."""
        if self.new_tokens_per_row:
            return sum(self.new_tokens_per_row)
        return int(self.sequences.shape[1]) - 1

    @property
    def block_efficiency(self) -> float:
        """Emitted tokens per target call and row (1.0 for target-only decoding)."""
        return self.num_new_tokens / max(len(self.accepted) or self.num_target_calls, 1)

    @property
    def acceptance_rate(self) -> float:
        """The empirical alpha of Eq. 1: accepted / *verified* draft positions (nan if none verified).

        Verification stops at the first rejection, so a rejected block verified ``accepted + 1``
        positions and a fully accepted one ``drafted``. Accepted / drafted would be biased low
        (alpha 0.6, gamma 4 gives ~0.29), and plugging it into ``expected_speedup`` mispredicts.
        """
        trials = sum(a + (1 if a < d else 0) for a, d in zip(self.accepted, self.drafted))
        return sum(self.accepted) / trials if trials else float("nan")


def token_ids(model: nn.Module, eos_token_id: int | Sequence[int] | None = None) -> tuple[int, frozenset[int]]:
    """(decoder start token, EOS ids) as ``generate`` reads them; ``eos_token_id`` overrides the model's."""
    gen = getattr(model, "generation_config", None)
    start = getattr(gen, "decoder_start_token_id", None)
    if start is None:
        start = model.config.decoder_start_token_id
    if start is None:
        raise ValueError(
            "the target has no decoder_start_token_id; set target.generation_config.decoder_start_token_id"
        )
    if eos_token_id is None:
        eos_token_id = getattr(gen, "eos_token_id", None)
        if eos_token_id is None:
            eos_token_id = model.config.eos_token_id
    if eos_token_id is None:
        eos = frozenset()
    elif isinstance(eos_token_id, int):
        eos = frozenset([eos_token_id])
    else:
        eos = frozenset(int(t) for t in eos_token_id)
    return int(start), eos


def _check_prompt(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    eos: frozenset[int],
    *,
    allow_batch: bool = False,
) -> torch.Tensor:
    if input_ids.ndim != 2 or input_ids.shape[1] == 0 or input_ids.shape[0] == 0:
        raise ValueError(f"input_ids must be (batch>0, length>0), got shape {tuple(input_ids.shape)}")
    if input_ids.shape[0] != 1 and not allow_batch:
        raise ValueError(
            f"batch size {input_ids.shape[0]} is not supported: target_generate decodes one prompt (the latency "
            "baseline); loop over the prompts, or use speculative_generate, which takes B > 1"
        )
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} must equal "
                f"input_ids shape {tuple(input_ids.shape)}"
            )
        return attention_mask
    # Same default as transformers' generate: mask pad tokens if the prompt has any (and pad != eos).
    pad = getattr(getattr(model, "generation_config", None), "pad_token_id", None)
    if pad is not None and bool((input_ids == pad).any()) and pad not in eos:
        return input_ids.ne(pad).long()
    return torch.ones_like(input_ids)


def _vocab_size(model: nn.Module) -> int:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return int(head.out_features) if isinstance(head, nn.Linear) else int(model.config.vocab_size)


def check_compatible(
    target: nn.Module | None,
    draft: nn.Module | None,
    *,
    label: str = "draft",
    target_vocab_size: int | None = None,
    draft_vocab_size: int | None = None,
    target_tokenizer: Any = None,
    draft_tokenizer: Any = None,
) -> None:
    """Refuse a draft that cannot speculate for the target: another vocabulary size or tokenizer. The one
    vocabulary check of the project (the SD engine, the SD benchmark and distillation's teacher/student pair).

    Pass models, or their vocabulary sizes (from their configs, before loading them). Tokenizers,
    when both are given, must map the same strings to the same ids. Raises ValueError naming the draft.
    """
    tv = target_vocab_size if target_vocab_size is not None else _vocab_size(target)
    dv = draft_vocab_size if draft_vocab_size is not None else _vocab_size(draft)
    if tv != dv:
        raise ValueError(
            f"draft '{label}' has vocab size {dv} but the target has {tv}: speculative decoding needs a draft "
            "trained with the target's tokenizer (same vocabulary)"
        )
    if target_tokenizer is not None and draft_tokenizer is not None:
        if target_tokenizer.get_vocab() != draft_tokenizer.get_vocab():
            raise ValueError(
                f"draft '{label}' has a tokenizer with another vocabulary than the target's (same size {tv}, "
                "different token ids): use a draft trained with the target's tokenizer"
            )


@contextlib.contextmanager
def _eval_mode(*models: nn.Module) -> Iterator[None]:
    """Dropout would make decoding random; switch to eval for the call and restore afterwards."""
    training = [m for m in models if m.training]  # eval() is not free in transformers: skip if set
    for m in training:
        m.eval()
    try:
        yield
    finally:
        for m in training:
            m.train()


def _check_common(max_new_tokens: int, do_sample: bool, temperature: float, top_k, top_p) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be an int >= 1")
    if do_sample:
        _check_sampling_args(temperature, top_k, top_p)


def _first_eos(tokens: Sequence[int], eos: frozenset[int]) -> int | None:
    for i, t in enumerate(tokens):
        if t in eos:
            return i
    return None


def adapt_block(block: int, gamma: int, *, full: bool) -> int:
    """``adaptive_gamma``'s rule, shared by the batch-1 and batched loops: after a fully accepted block, draft
    one more token next time (at most ``2 * gamma``); after any rejection, one fewer (at least 1)."""
    return min(block + 1, 2 * gamma) if full else max(block - 1, 1)


def _check_cache_args(cache_implementation: str, compile: bool) -> None:
    if cache_implementation not in CACHE_IMPLEMENTATIONS:
        raise ValueError(f"cache_implementation={cache_implementation!r} must be one of {CACHE_IMPLEMENTATIONS}")
    if compile and cache_implementation != "static":
        raise ValueError("compile=True needs cache_implementation='static' (fixed shapes for the compiled graphs)")


def _decoder(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    cache_implementation: str,
    compile: bool,
    max_new_tokens: int,
) -> CachedDecoder:
    # A cache never holds more than max_new_tokens positions: it keeps every committed token but the
    # last, and a block is cut so that what it adds fits the remaining budget.
    return CachedDecoder(
        model,
        input_ids,
        attention_mask,
        cache_implementation=cache_implementation,
        max_cache_len=max_new_tokens + 1 if cache_implementation == "static" else None,
        forward=compiled_forward(model) if compile else None,
    )


@torch.inference_mode()
def target_generate(
    target: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    cache_implementation: str = "dynamic",
    compile: bool = False,
) -> SpeculativeOutput:
    """Plain autoregressive decoding with the same engine (one target call per token, KV cached).

    The baseline for speedup measurements: same encoder handling, cache and sampling function as
    ``speculative_generate``, no draft. Greedy output equals ``target.generate(..., do_sample=False)``.
    ``cache_implementation`` and ``compile`` are as in ``speculative_generate``.
    """
    start, eos = token_ids(target, eos_token_id)
    _check_common(max_new_tokens, do_sample, temperature, top_k, top_p)
    _check_cache_args(cache_implementation, compile)
    attention_mask = _check_prompt(target, input_ids, attention_mask, eos)
    t_begin = _now(input_ids.device)
    with _eval_mode(target):
        dec = _decoder(target, input_ids, attention_mask, cache_implementation, compile, max_new_tokens)
        tokens = [start]
        calls = 0
        while len(tokens) - 1 < max_new_tokens:
            logits = dec.advance(tokens)[-1]  # (V,)
            calls += 1
            if do_sample:
                probs = sampling_distribution(logits, temperature=temperature, top_k=top_k, top_p=top_p)
                token = _sample(probs, generator)
            else:
                token = int(logits.argmax())
            tokens.append(token)
            if token in eos:
                break
    total = _now(input_ids.device) - t_begin
    return SpeculativeOutput(
        sequences=torch.tensor([tokens], dtype=torch.long, device=input_ids.device),
        num_target_calls=calls,
        num_draft_calls=0,
        target_time_s=total,
        total_time_s=total,
    )


@torch.inference_mode()
def speculative_generate(
    target: nn.Module,
    draft: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    gamma: int,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    lenience: float = 1.0,
    adaptive_gamma: bool = False,
    eos_token_id: int | Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    cache_implementation: str = "dynamic",
    compile: bool = False,
) -> SpeculativeOutput:
    """Speculative decoding of one prompt with an encoder-decoder target and draft.

    Args:
        target, draft: encoder-decoder LMs (e.g. ``T5ForConditionalGeneration``) with the same
            vocabulary; they are put in eval mode for the call and restored afterwards.
        input_ids: (B, S) prompts. B = 1 is the latency path. B > 1 is batched SD (each row accepts
            its own number of draft tokens; see ``_speculative_generate_batched``); padded prompts
            need ``attention_mask``, as with ``generate``. attention_mask: (B, S) or None.
        gamma: draft tokens per target call (>= 1); the starting value when ``adaptive_gamma``.
        max_new_tokens: tokens to generate after the decoder start token, EOS included.
        do_sample: False = greedy, output equal to greedy target decoding token for token.
            True = speculative sampling from ``sampling_distribution(logits, temperature, top_k,
            top_p)``, applied identically to target and draft.
        lenience: sampling only. 1 is lossless. **< 1 is LOSSY SD (see ``rejection_sample``): the
            output no longer follows the target distribution.**
        adaptive_gamma: grow the block by 1 after a fully accepted block (up to ``2 * gamma``),
            shrink it by 1 after a rejection (down to 1). A heuristic like transformers'
            assistant schedule; it changes speed only, never the output distribution.
        eos_token_id: overrides ``target.generation_config.eos_token_id``.
        generator: random source for drafting and verification (None = torch's global one).
        cache_implementation: ``"dynamic"`` (default; the cache grows with the output) or
            ``"static"`` (preallocated for ``max_new_tokens`` positions; cropping moves a counter).
        compile: run the decoders through ``torch.compile`` (``compiled_forward``); needs
            ``cache_implementation="static"``. The GPU fast path: compile once per model, then every
            call reuses the graphs. Output is the same as eager up to floating-point reordering.

    Returns:
        ``SpeculativeOutput``; ``sequences`` is laid out as ``target.generate`` lays it out (for
        B > 1: rows that stop early are filled with the pad token up to the longest row).
    """
    if isinstance(gamma, bool) or not isinstance(gamma, int) or gamma < 1:
        raise ValueError(f"gamma={gamma!r} must be an int >= 1 (draft tokens per target call)")
    check_compatible(target, draft)
    _check_lenience(lenience)
    if not do_sample and lenience != 1.0:
        raise ValueError(
            f"lenience={lenience} only applies with do_sample=True; greedy verification is exact argmax "
            "matching (use lenience=1.0)"
        )
    start, eos = token_ids(target, eos_token_id)
    _check_common(max_new_tokens, do_sample, temperature, top_k, top_p)
    _check_cache_args(cache_implementation, compile)
    attention_mask = _check_prompt(target, input_ids, attention_mask, eos, allow_batch=True)

    def warp(logits: torch.Tensor) -> torch.Tensor:
        return sampling_distribution(logits, temperature=temperature, top_k=top_k, top_p=top_p)

    if input_ids.shape[0] > 1:
        if cache_implementation != "dynamic":
            raise ValueError(
                f"batch size {input_ids.shape[0]} needs cache_implementation='dynamic': batched SD realigns "
                "the rows of its KV caches after every verification"
            )
        return _speculative_generate_batched(
            target, draft, input_ids, attention_mask, gamma=gamma, max_new_tokens=max_new_tokens,
            do_sample=do_sample, warp=warp, lenience=lenience, adaptive_gamma=adaptive_gamma,
            start=start, eos=eos, generator=generator,
        )

    out = SpeculativeOutput(sequences=input_ids.new_zeros((1, 0)), num_target_calls=0, num_draft_calls=0)
    t_begin = _now(input_ids.device)
    with _eval_mode(target, draft):
        t0 = _now(input_ids.device)
        target_dec = _decoder(target, input_ids, attention_mask, cache_implementation, compile, max_new_tokens)
        t1 = _now(input_ids.device)
        draft_dec = _decoder(draft, input_ids, attention_mask, cache_implementation, compile, max_new_tokens)
        out.target_time_s += t1 - t0
        out.draft_time_s += _now(input_ids.device) - t1

        tokens = [start]
        block = gamma
        done = False
        while not done:
            remaining = max_new_tokens - (len(tokens) - 1)
            # 1. Draft: a block short enough that accepted + 1 target token fit in the budget;
            #    stop drafting at EOS (nothing after it can be emitted).
            t0 = _now(input_ids.device)
            draft_tokens: list[int] = []
            q_rows: list[torch.Tensor] = []
            for _ in range(min(block, remaining - 1)):
                logits = draft_dec.advance(tokens + draft_tokens)[-1]  # (V,)
                out.num_draft_calls += 1
                if do_sample:
                    q_row = warp(logits)
                    token = _sample(q_row, generator)
                    q_rows.append(q_row)
                else:
                    token = int(logits.argmax())
                draft_tokens.append(token)
                if token in eos:
                    break
            t1 = _now(input_ids.device)
            out.draft_time_s += t1 - t0

            # 2. Verify: one target call scores the last committed token and every draft token.
            target_logits = target_dec.advance(tokens + draft_tokens)  # (len(draft)+1, V)
            out.num_target_calls += 1
            t2 = _now(input_ids.device)
            out.target_time_s += t2 - t1
            assert target_logits.shape[0] == len(draft_tokens) + 1
            draft_t = torch.tensor(draft_tokens, dtype=torch.long, device=target_logits.device)
            if do_sample:
                q = torch.stack(q_rows) if q_rows else target_logits.new_zeros((0, target_logits.shape[-1]))
                n_matches, next_token = rejection_sample(
                    warp(target_logits), q, draft_t, lenience=lenience, generator=generator
                )
            else:
                n_matches, next_token = greedy_verify(target_logits, draft_t)
            out.accepted.append(n_matches)
            out.drafted.append(len(draft_tokens))

            # 3. Commit, then crop both caches back to the accepted prefix. The invariant: a
            #    cache holds every committed token but the last one.
            new_tokens = draft_tokens[:n_matches] + [next_token]
            cut = _first_eos(new_tokens, eos)
            if cut is not None:
                new_tokens = new_tokens[: cut + 1]
                done = True
            tokens.extend(new_tokens)
            if len(tokens) - 1 >= max_new_tokens:
                done = True
            if not done:
                target_dec.crop(len(tokens) - 1)
                draft_dec.crop(min(draft_dec.length, len(tokens) - 1))
            if adaptive_gamma:
                block = adapt_block(block, gamma, full=n_matches == len(draft_tokens) == block)

    out.sequences = torch.tensor([tokens], dtype=torch.long, device=input_ids.device)
    out.total_time_s = _now(input_ids.device) - t_begin
    return out


# ----------------------------------------------------------------------------------------------
# Batched speculative decoding
# ----------------------------------------------------------------------------------------------


class _BatchedDecoder:
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
            if cross is not None and len(rows) != self.attention_mask.shape[0]:
                for layer in cross.layers:
                    if getattr(layer, "keys", None) is not None:
                        layer.keys, layer.values = layer.keys[rows], layer.values[rows]
        if len(rows) != self.attention_mask.shape[0]:
            self.attention_mask = self.attention_mask[rows]
            self.encoder_outputs.last_hidden_state = self.encoder_outputs.last_hidden_state[rows]
        self.valid, self.width = valid, width


def pad_id(model: nn.Module, eos: frozenset[int]) -> int:
    """The token that fills rows after EOS: the pad token, else the smallest EOS id, else 0."""
    pad = getattr(getattr(model, "generation_config", None), "pad_token_id", None)
    if pad is None:
        pad = model.config.pad_token_id
    if pad is None:
        pad = min(eos) if eos else 0
    return int(pad)


def _speculative_generate_batched(
    target: nn.Module,
    draft: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    gamma: int,
    max_new_tokens: int,
    do_sample: bool,
    warp,
    lenience: float,
    adaptive_gamma: bool,
    start: int,
    eos: frozenset[int],
    generator: torch.Generator | None,
) -> SpeculativeOutput:
    """Speculative decoding of B prompts at once; every row accepts its own number of tokens.

    Transformers' assisted generation is batch-1 only. Here one draft call extends every unfinished
    row by one token and one target call verifies ``block + 1`` tokens of every row; each row is then
    verified on its own (greedy prefix match, or ``rejection_sample``), keeps its accepted prefix and
    one target token, and both caches are realigned per row (``_BatchedDecoder.keep``). Finished rows
    (EOS or ``max_new_tokens``) leave the batch. The invariants of the batch-1 engine hold per row:
    the target cache holds every committed token but the last; the draft cache holds every committed
    token but the last two (it re-reads them in its first call of a round, which stays one call),
    so nothing is recomputed beyond one draft position. Greedy rows equal greedy target decoding;
    sampled rows follow the target's distribution (lenience 1).

    ``accepted`` / ``drafted`` hold one entry per (target call, row verified by it), so
    ``acceptance_rate`` is the alpha over all rows; ``num_target_calls`` counts batched calls.
    """
    batch = input_ids.shape[0]
    pad = pad_id(target, eos)
    out = SpeculativeOutput(sequences=input_ids.new_zeros((batch, 0)), num_target_calls=0, num_draft_calls=0)
    t_begin = _now(input_ids.device)
    device = input_ids.device
    with _eval_mode(target, draft):
        t0 = _now(input_ids.device)
        target_dec = _BatchedDecoder(target, input_ids, attention_mask)
        t1 = _now(input_ids.device)
        draft_dec = _BatchedDecoder(draft, input_ids, attention_mask)
        out.target_time_s += t1 - t0
        out.draft_time_s += _now(input_ids.device) - t1

        tokens: list[list[int]] = [[start] for _ in range(batch)]
        active = list(range(batch))  # original row ids, in the caches' row order
        block = gamma
        first_round = True
        while active:
            remaining = [max_new_tokens - (len(tokens[r]) - 1) for r in active]
            n_draft = min(block, max(remaining) - 1)
            # 1. Draft n_draft tokens for every active row. The first call re-reads the last two
            #    committed tokens (one on the first round).
            t0 = _now(input_ids.device)
            width_in = 1 if first_round else 2
            feed = torch.tensor([tokens[r][-width_in:] for r in active], dtype=torch.long, device=device)
            drafted = torch.zeros((len(active), 0), dtype=torch.long, device=device)
            q_rows: list[torch.Tensor] = []
            for _ in range(n_draft):
                logits = draft_dec.advance(feed)[:, -1]  # (B', V)
                out.num_draft_calls += 1
                if do_sample:
                    q_row = warp(logits)
                    nxt = torch.multinomial(q_row.float(), 1, generator=generator)
                    q_rows.append(q_row)
                else:
                    nxt = logits.argmax(dim=-1, keepdim=True)
                drafted = torch.cat([drafted, nxt], dim=1)
                feed = nxt
            t1 = _now(input_ids.device)
            out.draft_time_s += t1 - t0

            # 2. Verify every row in one target call: the last committed token, then the block.
            last = torch.tensor([[tokens[r][-1]] for r in active], dtype=torch.long, device=device)
            target_logits = target_dec.advance(torch.cat([last, drafted], dim=1))  # (B', n+1, V)
            out.num_target_calls += 1
            t2 = _now(input_ids.device)
            out.target_time_s += t2 - t1

            # 3. Per row: accepted prefix + one target token, cut at EOS and at the budget.
            drafted_list = drafted.tolist()
            if do_sample:
                p_all = warp(target_logits)
                q_all = torch.stack(q_rows, dim=1) if q_rows else p_all.new_zeros((len(active), 0, p_all.shape[-1]))
            else:
                greedy = target_logits.argmax(dim=-1)  # (B', n+1)
                matches = (greedy[:, :n_draft] == drafted).long().cumprod(dim=1).sum(dim=1).tolist()
                greedy = greedy.tolist()
            keep_rows, n_kept = [], []
            for i, r in enumerate(active):
                if do_sample:
                    n, nxt = rejection_sample(p_all[i], q_all[i], drafted[i], lenience=lenience, generator=generator)
                else:
                    n, nxt = matches[i], greedy[i][matches[i]]
                out.accepted.append(n)
                out.drafted.append(n_draft)
                new_tokens = drafted_list[i][:n] + [nxt]
                cut = _first_eos(new_tokens, eos)
                finished = cut is not None
                if finished:
                    new_tokens = new_tokens[: cut + 1]
                new_tokens = new_tokens[: remaining[i]]
                tokens[r].extend(new_tokens)
                if not finished and len(tokens[r]) - 1 < max_new_tokens:
                    keep_rows.append(i)
                    n_kept.append(n)
            if adaptive_gamma:
                block = adapt_block(block, gamma, full=all(a == n_draft == block for a in out.accepted[-len(active):]))
            if not keep_rows:
                break
            assert n_draft > 0, "a round without draft tokens ends every row"
            # 4. Realign both caches on the kept rows. Target: + the last committed token and the n
            #    accepted drafts. Draft: its calls added width_in + n_draft - 1 columns, of which a
            #    row keeps width_in + n - 1 (every committed token but the last two).
            rows = torch.tensor(keep_rows, dtype=torch.long, device=device)
            n_t = torch.tensor(n_kept, dtype=torch.long, device=device)
            target_dec.keep(rows, target_dec.width - (n_draft + 1) + n_t + 1)
            draft_dec.keep(rows, draft_dec.width - (width_in + n_draft - 1) + width_in + n_t - 1)
            active = [active[i] for i in keep_rows]
            first_round = False

    width = max(len(t) for t in tokens)
    out.sequences = torch.tensor([t + [pad] * (width - len(t)) for t in tokens], dtype=torch.long, device=device)
    out.new_tokens_per_row = [len(t) - 1 for t in tokens]
    out.total_time_s = _now(input_ids.device) - t_begin
    return out
