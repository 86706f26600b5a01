"""Speculative decoding (SD) for encoder-decoder (T5) models, in pure torch + transformers: the engine.

A small draft model q proposes ``gamma`` tokens autoregressively; the target model p scores all of
them in one forward pass; a rejection step keeps the longest acceptable prefix and adds one token
from the target, so every target call emits between 1 and gamma + 1 tokens.

The code is in three parts:
- ``models.sd.verify``: the probability maths (closed forms, sampling distributions, the acceptance
  probability and residual distribution), with the papers' references;
- ``models.sd.kv_cache``: the KV-cache adapters (``CachedDecoder``: one prompt, dynamic or static cache,
  optionally compiled; ``BatchedDecoder``: B prompts realigned row by row after each call);
- this module: the verification of one draft block (``greedy_verify``, ``rejection_sample``: Leviathan
  et al. Algorithm 1), and one draft / verify / commit loop (``_decode``) behind a drafter interface
  (``propose`` / ``update``) and a verifier interface (``score`` / ``update``), with a batch-1 and a
  batched implementation of each. ``speculative_generate`` picks the pair; ``target_generate`` is the
  target-only baseline on the same cache.

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

Static cache (``cache_implementation="static"``, batch 1): both caches are preallocated; a rejection
moves a length counter back. With ``compile=True`` the decoders run through ``torch.compile`` (CUDA
graphs on a GPU): the fast path on which a GPU benchmark should time both the baseline and SD.

Batched SD (``input_ids`` with B > 1 rows): one target call verifies every row and each row accepts
its own number of tokens; rows stay right-aligned in the caches (``BatchedDecoder``).

Run the tests: ``OMP_NUM_THREADS=1 python -m pytest tests/models/test_speculative.py -q``;
the benchmark: ``python benchmarks/sd_engine.py --help``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
from torch import nn

from models.sd.feature_draft import FeatureDrafter, FeatureTap, is_feature_draft
from models.sd.lookup import LookupDrafter, is_prompt_lookup
from models.sd.kv_cache import (CACHE_IMPLEMENTATIONS, PREALLOCATED, BatchedDecoder, CachedDecoder,
                              CausalBatchedDecoder, cached_decoder, compiled_forward, is_causal_lm)
from models.sd.verify import (acceptance_probability, check_lenience, check_sampling_args, draft_token,
                              residual_distribution, sample_token, sampling_distribution)

__all__ = [
    "SpeculativeOutput",
    "adapt_block",
    "check_compatible",
    "greedy_verify",
    "pad_id",
    "rejection_sample",
    "speculative_generate",
    "target_generate",
    "token_ids",
]


def _now(device: torch.device) -> float:
    """A wall clock read that means something on an accelerator: CUDA kernels run asynchronously, so
    synchronise first there (a launch-time reading would hide the work). On CPU no sync is added."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


# ----------------------------------------------------------------------------------------------
# Verification of one draft block (Leviathan et al. 2023, Algorithm 1)
# ----------------------------------------------------------------------------------------------


def _check_rejection_shapes(p: torch.Tensor, q: torch.Tensor, draft_tokens: torch.Tensor) -> int:
    """Refuse shapes that do not describe one block of gamma drafts; returns gamma."""
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
    check_lenience(lenience)
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
    return n_matches, sample_token(p_prime, generator)


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
# Generation
# ----------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class SpeculativeOutput:
    """What a generation call returns; the same type for SD and for the target-only baseline."""

    sequences: torch.Tensor
    """As ``target.generate`` lays it out: (B, 1 + new tokens), the decoder start token first, for an
    encoder-decoder model; (B, prompt length + new tokens), the prompt first, for a decoder-only one. Rows that
    stop early are padded with the pad token."""
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
        start = getattr(model.config, "decoder_start_token_id", None)
    if start is None and is_causal_lm(model):
        start = -1  # a decoder-only model starts from each prompt's last token (see _starts)
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
    if target is not None and draft is not None and is_causal_lm(target) != is_causal_lm(draft):
        kinds = {True: "decoder-only", False: "encoder-decoder"}
        raise ValueError(f"draft '{label}' is {kinds[is_causal_lm(draft)]} but the target is "
                         f"{kinds[is_causal_lm(target)]}: speculative decoding needs two models of the same kind")
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
        check_sampling_args(temperature, top_k, top_p)


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
    return cached_decoder(
        model,
        input_ids,
        attention_mask,
        cache_implementation=cache_implementation,
        max_cache_len=max_new_tokens + 1 if cache_implementation in PREALLOCATED else None,
        forward=compiled_forward(model) if compile else None,
    )


def _batched_decoder(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> BatchedDecoder:
    kind = CausalBatchedDecoder if is_causal_lm(model) else BatchedDecoder
    return kind(model, input_ids, attention_mask)


def _starts(model: nn.Module, start: int, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[int]:
    """Each row's first token of the decoded sequence: the decoder start token of an encoder-decoder model,
    the last real prompt token of a decoder-only one (its cache holds the rest of the prompt)."""
    if not is_causal_lm(model):
        return [start] * input_ids.shape[0]
    return [int(row[mask.bool()][-1]) for row, mask in zip(input_ids, attention_mask)]


def _sequences(model: nn.Module, tokens: list[list[int]], input_ids: torch.Tensor, pad: int) -> torch.Tensor:
    """The decoded rows laid out as ``generate`` lays them out: for a decoder-only model the prompt (as given,
    padding included) then the new tokens; for an encoder-decoder one the decoder start then the new tokens.
    Rows that stop early are filled with ``pad`` up to the longest row."""
    width = max(len(t) for t in tokens)
    rows = torch.tensor([t + [pad] * (width - len(t)) for t in tokens], dtype=torch.long, device=input_ids.device)
    return torch.cat([input_ids[:, :-1], rows], dim=1) if is_causal_lm(model) else rows


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
        tokens = _starts(target, start, input_ids, attention_mask)
        calls = 0
        while len(tokens) - 1 < max_new_tokens:
            logits = dec.advance(tokens)[-1]  # (V,)
            calls += 1
            if do_sample:
                probs = sampling_distribution(logits, temperature=temperature, top_k=top_k, top_p=top_p)
                token = sample_token(probs, generator)
            else:
                token = int(logits.argmax())
            tokens.append(token)
            if token in eos:
                break
    total = _now(input_ids.device) - t_begin
    return SpeculativeOutput(
        sequences=_sequences(target, [tokens], input_ids, pad_id(target, eos)),
        num_target_calls=calls,
        num_draft_calls=0,
        target_time_s=total,
        total_time_s=total,
        new_tokens_per_row=[len(tokens) - 1],
    )


def _check_sd_call(target: nn.Module, draft: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                   *, gamma: int, max_new_tokens: int, do_sample: bool, temperature: float, top_k: int | None,
                   top_p: float | None, lenience: float, eos_token_id: int | Sequence[int] | None,
                   cache_implementation: str, compile: bool) -> tuple[int, frozenset[int], torch.Tensor]:
    """Every check of a ``speculative_generate`` call, in one place: target-only decoding's (budget, sampling,
    prompt) and the ones SD adds (gamma, the pair, lenience, the cache). Returns (decoder start token, EOS ids,
    attention mask) as the checks read them."""
    if isinstance(gamma, bool) or not isinstance(gamma, int) or gamma < 1:
        raise ValueError(f"gamma={gamma!r} must be an int >= 1 (draft tokens per target call)")
    check_compatible(target, draft)
    check_lenience(lenience)
    if not do_sample and lenience != 1.0:
        raise ValueError(
            f"lenience={lenience} only applies with do_sample=True; greedy verification is exact argmax "
            "matching (use lenience=1.0)"
        )
    _check_cache_args(cache_implementation, compile)
    batch = input_ids.shape[0] if input_ids.ndim == 2 else 1
    for kind, check in (("a feature draft (models.sd.feature_draft)", is_feature_draft),
                        ("a prompt-lookup draft (models.sd.lookup)", is_prompt_lookup)):
        if check(draft) and (batch > 1 or not is_causal_lm(target)):
            raise ValueError(f"{kind} speculates for a decoder-only target, one prompt at a time; got batch size "
                             f"{batch} and a {'decoder-only' if is_causal_lm(target) else 'T5'} target")
    if batch > 1 and cache_implementation != "dynamic":
        raise ValueError(
            f"batch size {batch} needs cache_implementation='dynamic': batched SD realigns "
            "the rows of its KV caches after every verification"
        )
    start, eos = token_ids(target, eos_token_id)
    _check_common(max_new_tokens, do_sample, temperature, top_k, top_p)
    attention_mask = _check_prompt(target, input_ids, attention_mask, eos, allow_batch=True)
    return start, eos, attention_mask


def _timed(device: torch.device, fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """``fn(*args)`` and the wall time it took."""
    t0 = _now(device)
    result = fn(*args)
    return result, _now(device) - t0


def _pair(target: nn.Module, draft: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
          out: SpeculativeOutput, *, cache_implementation: str, compile: bool, max_new_tokens: int, do_sample: bool,
          warp: Callable, eos: frozenset[int], generator: torch.Generator | None,
          stack: contextlib.ExitStack, verify_width: int | None = None) -> tuple["Drafter", "Verifier"]:
    """The drafter and verifier for this batch, their decoders' set-up time (encoders, prompt prefill) added to the
    draft's and the target's time in ``out``.

    Batch 1 is the latency path: ``CachedDecoder``s (dynamic or static cache, optionally compiled), and the
    drafter stops a block at EOS. B > 1 is batched SD: ``BatchedDecoder``s, realigned row by row. A feature
    draft (``models.sd.feature_draft``) reads the target's hidden states through a hook that ``stack`` removes; a
    prompt-lookup draft (``models.sd.lookup``) copies, and hands the rounds nothing matches to its feature draft.
    ``verify_width`` (compiled, batch 1, a model draft): every verification is one target call of that many tokens
    (``CachedDecoder.advance(pad_to=...)``), so blocks cut at EOS or at the budget run the same compiled graph."""
    one_row = input_ids.shape[0] == 1
    lookup = draft if is_prompt_lookup(draft) else None
    features = lookup.fallback if lookup is not None else draft
    if lookup is not None or is_feature_draft(draft):
        tap = stack.enter_context(FeatureTap(target)) if features is not None else None  # before the prefill
        target_dec, target_s = _timed(input_ids.device, _decoder, target, input_ids, attention_mask,
                                      cache_implementation, compile, max_new_tokens)
        out.target_time_s += target_s
        prompt = input_ids[0][attention_mask[0].bool()].tolist()
        drafter = None if features is None else FeatureDrafter(features, tap, prompt, do_sample=do_sample, warp=warp,
                                                               eos=eos, generator=generator)
        if lookup is not None:
            drafter = LookupDrafter(lookup, drafter, prompt, do_sample=do_sample, eos=eos, device=input_ids.device)
        return drafter, OneRowVerifier(target_dec)

    def decoder(model: nn.Module) -> CachedDecoder | BatchedDecoder:
        if one_row:
            return _decoder(model, input_ids, attention_mask, cache_implementation, compile, max_new_tokens)
        return _batched_decoder(model, input_ids, attention_mask)

    target_dec, target_s = _timed(input_ids.device, decoder, target)
    draft_dec, draft_s = _timed(input_ids.device, decoder, draft)
    out.target_time_s += target_s
    out.draft_time_s += draft_s
    if one_row:
        return (OneRowDrafter(draft_dec, do_sample=do_sample, warp=warp, eos=eos, generator=generator),
                OneRowVerifier(target_dec, pad_to=verify_width))
    return BatchedDrafter(draft_dec, do_sample=do_sample, warp=warp, generator=generator), BatchedVerifier(target_dec)


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
    """Speculative decoding with a target and a draft: encoder-decoder LMs (e.g. ``T5ForConditionalGeneration``)
    or decoder-only ones (e.g. ``LlamaForCausalLM``: the prompt but its last token is prefilled into each
    model's cache once, see ``models.sd.kv_cache``).

    Args:
        target, draft: two LMs of the same kind with the same vocabulary; they are put in eval mode for
            the call and restored afterwards. For a decoder-only target at batch 1 the draft may also be a
            feature draft (``models.sd.feature_draft``) or a prompt-lookup draft (``models.sd.lookup``).
        input_ids: (B, S) prompts. B = 1 is the latency path. B > 1 is batched SD (each row accepts
            its own number of draft tokens; see ``_decode`` and ``BatchedDecoder``); padded prompts
            need ``attention_mask``, as with ``generate`` (left padding for a decoder-only model).
            attention_mask: (B, S) or None.
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
        cache_implementation: ``"dynamic"`` (default; the cache grows with the output),
            ``"static"`` (preallocated for ``max_new_tokens`` positions; cropping moves a counter) or
            ``"lean"`` (T5 only, batch 1: ``models.sd.lean_t5``'s decoder step over preallocated tensors, the
            same outputs up to rounding without transformers' per-call cost; target and draft both use it).
        compile: run the decoders through ``torch.compile`` (``compiled_forward``); needs
            ``cache_implementation="static"``. The GPU fast path: compile once per model, then every
            call reuses the graphs. Output is the same as eager up to floating-point reordering.

    Returns:
        ``SpeculativeOutput``; ``sequences`` is laid out as ``target.generate`` lays it out (for
        B > 1: rows that stop early are filled with the pad token up to the longest row).
    """
    start, eos, attention_mask = _check_sd_call(
        target, draft, input_ids, attention_mask, gamma=gamma, max_new_tokens=max_new_tokens, do_sample=do_sample,
        temperature=temperature, top_k=top_k, top_p=top_p, lenience=lenience, eos_token_id=eos_token_id,
        cache_implementation=cache_implementation, compile=compile)

    def warp(logits: torch.Tensor) -> torch.Tensor:
        return sampling_distribution(logits, temperature=temperature, top_k=top_k, top_p=top_p)

    out = SpeculativeOutput(sequences=input_ids.new_zeros((input_ids.shape[0], 0)), num_target_calls=0,
                            num_draft_calls=0)
    t_begin = _now(input_ids.device)
    with _eval_mode(target, draft), contextlib.ExitStack() as stack:
        drafter, verifier = _pair(target, draft, input_ids, attention_mask, out,
                                  cache_implementation=cache_implementation, compile=compile,
                                  max_new_tokens=max_new_tokens, do_sample=do_sample, warp=warp, eos=eos,
                                  generator=generator, stack=stack, verify_width=gamma + 1 if compile else None)
        tokens = _decode(drafter, verifier, out, starts=_starts(target, start, input_ids, attention_mask), eos=eos,
                         gamma=gamma, max_new_tokens=max_new_tokens, do_sample=do_sample, warp=warp, lenience=lenience,
                         adaptive_gamma=adaptive_gamma, generator=generator, device=input_ids.device)
    out.sequences = _sequences(target, tokens, input_ids, pad_id(target, eos))
    out.new_tokens_per_row = [len(t) - 1 for t in tokens]
    out.total_time_s = _now(input_ids.device) - t_begin
    return out


# ----------------------------------------------------------------------------------------------
# The draft / verify / commit loop, and its batch-1 and batched drafters and verifiers
# ----------------------------------------------------------------------------------------------


class Drafter(Protocol):
    """Proposes draft tokens for the active rows and forgets what verification rejected."""

    def propose(self, tokens: list[list[int]], n: int) -> tuple[list[list[int]], torch.Tensor | None]:
        """Up to ``n`` draft tokens per active row (``tokens``: each active row's committed tokens), and
        when sampling the draft's distributions, (rows, drafted, V); None when greedy."""

    def update(self, keep: list[int], accepted: list[int], tokens: list[list[int]]) -> None:
        """After the commit: keep the active rows ``keep`` (positions in the last call's rows), row
        ``keep[i]`` having accepted ``accepted[i]`` drafts; ``tokens``: the kept rows' committed tokens."""


class Verifier(Protocol):
    """Scores the last committed token and the drafts of every active row in one target call."""

    def score(self, tokens: list[list[int]], drafted: list[list[int]]) -> torch.Tensor:
        """Target logits (rows, drafted + 1, V)."""

    def update(self, keep: list[int], accepted: list[int], tokens: list[list[int]]) -> None:
        """As ``Drafter.update``."""


class OneRowDrafter:
    """Batch 1 on a ``CachedDecoder``: stops a block at EOS (nothing after it can be emitted). Its cache
    holds every committed token but the last (or one fewer after a fully accepted block)."""

    def __init__(self, dec: CachedDecoder, *, do_sample: bool, warp: Callable, eos: frozenset[int],
                 generator: torch.Generator | None):
        self.dec, self.do_sample, self.warp, self.eos, self.generator = dec, do_sample, warp, eos, generator
        self.calls = 0

    def propose(self, tokens, n):
        seq, drafted, q_rows = tokens[0], [], []
        for _ in range(n):
            logits = self.dec.advance(seq + drafted)[-1]  # (V,)
            self.calls += 1
            token, q_row = draft_token(logits, do_sample=self.do_sample, warp=self.warp, generator=self.generator)
            if q_row is not None:
                q_rows.append(q_row)
            drafted.append(token)
            if token in self.eos:
                break
        if not self.do_sample:
            return [drafted], None
        q = torch.stack(q_rows)[None] if q_rows else None
        return [drafted], q

    def update(self, keep, accepted, tokens):
        self.dec.crop(min(self.dec.length, len(tokens[0]) - 1))


class OneRowVerifier:
    """Batch 1 on a ``CachedDecoder``: its cache holds every committed token but the last."""

    def __init__(self, dec: CachedDecoder, *, pad_to: int | None = None):
        self.dec, self.pad_to = dec, pad_to

    def score(self, tokens, drafted):
        if self.pad_to is None:
            return self.dec.advance(tokens[0] + drafted[0])[None]  # (1, drafted + 1, V)
        return self.dec.advance(tokens[0] + drafted[0], pad_to=self.pad_to)[None]

    def update(self, keep, accepted, tokens):
        self.dec.crop(len(tokens[0]) - 1)


class BatchedDrafter:
    """B rows on a ``BatchedDecoder``: every active row drafts the same number of tokens, one draft call
    per token for all rows. Its cache holds every committed token but the last two: the first call of a
    round re-reads them (one on the first round), which stays one call."""

    def __init__(self, dec: BatchedDecoder, *, do_sample: bool, warp: Callable, generator: torch.Generator | None):
        self.dec, self.do_sample, self.warp, self.generator = dec, do_sample, warp, generator
        self.calls = 0
        self.width_in, self.n = 1, 0

    def propose(self, tokens, n):
        device = self.dec.device
        feed = torch.tensor([t[-self.width_in:] for t in tokens], dtype=torch.long, device=device)
        drafted = torch.zeros((len(tokens), 0), dtype=torch.long, device=device)
        q_rows: list[torch.Tensor] = []
        for _ in range(n):
            logits = self.dec.advance(feed)[:, -1]  # (B', V)
            self.calls += 1
            if self.do_sample:
                q_row = self.warp(logits)
                nxt = torch.multinomial(q_row.float(), 1, generator=self.generator)
                q_rows.append(q_row)
            else:
                nxt = logits.argmax(dim=-1, keepdim=True)
            drafted = torch.cat([drafted, nxt], dim=1)
            feed = nxt
        self.n = n
        q = torch.stack(q_rows, dim=1) if self.do_sample and q_rows else None
        return drafted.tolist(), q

    def update(self, keep, accepted, tokens):
        # Its calls added width_in + n - 1 columns, of which a row keeps width_in + accepted - 1
        # (every committed token but the last two).
        rows = torch.tensor(keep, dtype=torch.long, device=self.dec.device)
        n_t = torch.tensor(accepted, dtype=torch.long, device=self.dec.device)
        self.dec.keep(rows, self.dec.width - (self.width_in + self.n - 1) + self.width_in + n_t - 1)
        self.width_in = 2


class BatchedVerifier:
    """B rows on a ``BatchedDecoder``: one call scores every active row's last token and drafts."""

    def __init__(self, dec: BatchedDecoder):
        self.dec = dec
        self.n = 0

    def score(self, tokens, drafted):
        device = self.dec.device
        self.n = len(drafted[0]) if drafted else 0
        feed = torch.tensor([[t[-1]] + d for t, d in zip(tokens, drafted)], dtype=torch.long, device=device)
        return self.dec.advance(feed)  # (B', n + 1, V)

    def update(self, keep, accepted, tokens):
        # + the last committed token and the accepted drafts
        rows = torch.tensor(keep, dtype=torch.long, device=self.dec.device)
        n_t = torch.tensor(accepted, dtype=torch.long, device=self.dec.device)
        self.dec.keep(rows, self.dec.width - (self.n + 1) + n_t + 1)


def _verify_row(target_logits: torch.Tensor, p: torch.Tensor | None, q: torch.Tensor | None, drafted: list[int], *,
                lenience: float, generator: torch.Generator | None) -> tuple[int, int]:
    """One row's verification, ``(n_matches, next_token)``: greedy prefix match when ``p`` is None (greedy
    decoding), else ``rejection_sample`` of the target's p (drafted + 1, V) against the draft's q (drafted, V)."""
    draft_t = torch.tensor(drafted, dtype=torch.long, device=target_logits.device)
    if p is None:
        return greedy_verify(target_logits, draft_t)
    if q is None:  # nothing drafted
        q = target_logits.new_zeros((0, target_logits.shape[-1]))
    return rejection_sample(p, q, draft_t, lenience=lenience, generator=generator)


def _commit(row: list[int], new_tokens: list[int], eos: frozenset[int], *, budget: int) -> bool:
    """Append ``new_tokens`` (accepted drafts and the target's token) to ``row``, cut after the first EOS and at
    ``budget`` tokens; whether the row goes on (no EOS, budget left)."""
    cut = _first_eos(new_tokens, eos)
    if cut is not None:
        new_tokens = new_tokens[: cut + 1]
    added = new_tokens[:budget]
    row.extend(added)
    return cut is None and len(added) < budget


def _decode(drafter: Drafter, verifier: Verifier, out: SpeculativeOutput, *, starts: list[int],
            eos: frozenset[int], gamma: int, max_new_tokens: int, do_sample: bool, warp: Callable,
            lenience: float, adaptive_gamma: bool, generator: torch.Generator | None,
            device: torch.device) -> list[list[int]]:
    """The draft / verify / commit loop over the active rows; returns every row's tokens (start first).

    Each round: 1. the drafter proposes a block short enough that the accepted drafts and one target
    token fit each row's budget; 2. one target call scores every row's last committed token and its
    drafts; 3. each row is verified on its own (greedy prefix match, or ``rejection_sample``), keeps its
    accepted prefix and one target token, cut at EOS and at the budget; finished rows (EOS or
    ``max_new_tokens``) leave; 4. drafter and verifier cut their caches to what each kept row accepted.
    ``accepted`` / ``drafted`` get one entry per (target call, row verified by it).
    """
    tokens: list[list[int]] = [[s] for s in starts]
    active = list(range(len(starts)))  # original row ids, in the caches' row order
    block = gamma
    while active:
        rows = [tokens[r] for r in active]
        remaining = [max_new_tokens - (len(t) - 1) for t in rows]
        n = min(block, max(remaining) - 1)
        # 1. Draft
        t0 = _now(device)
        calls_before = drafter.calls
        drafted, q = drafter.propose(rows, n)
        out.num_draft_calls += drafter.calls - calls_before
        t1 = _now(device)
        out.draft_time_s += t1 - t0
        # 2. Verify every row in one target call
        target_logits = verifier.score(rows, drafted)  # (B', n + 1, V)
        out.num_target_calls += 1
        out.target_time_s += _now(device) - t1
        p_all = warp(target_logits) if do_sample else None
        # 3. Per row: accepted prefix + one target token, cut at EOS and at the budget
        keep, n_kept, full = [], [], True
        for i, r in enumerate(active):
            n_matches, next_token = _verify_row(target_logits[i], p_all[i] if do_sample else None,
                                                q[i] if q is not None else None, drafted[i], lenience=lenience,
                                                generator=generator)
            out.accepted.append(n_matches)
            out.drafted.append(len(drafted[i]))
            full = full and n_matches == len(drafted[i]) == block
            if _commit(tokens[r], drafted[i][:n_matches] + [next_token], eos, budget=remaining[i]):
                keep.append(i)
                n_kept.append(n_matches)
        if adaptive_gamma:
            block = adapt_block(block, gamma, full=full)
        if not keep:
            break
        # 4. Both caches back to each kept row's accepted prefix
        active = [active[i] for i in keep]
        kept_tokens = [tokens[r] for r in active]
        verifier.update(keep, n_kept, kept_tokens)
        drafter.update(keep, n_kept, kept_tokens)
    return tokens


def pad_id(model: nn.Module, eos: frozenset[int]) -> int:
    """The token that fills rows after EOS: the pad token, else the smallest EOS id, else 0."""
    pad = getattr(getattr(model, "generation_config", None), "pad_token_id", None)
    if pad is None:
        pad = model.config.pad_token_id
    if pad is None:
        pad = min(eos) if eos else 0
    return int(pad)

