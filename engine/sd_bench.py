"""Latency benchmark of speculative decoding (SD): the runtime layer's timing harness (no prefect / mlflow / ray).

For one target and one or more drafts, over a prompt set, it times these decoders per decoding mode
(``greedy`` or ``sampling``), each at batch 1:

  ``target``            models.speculative.target_generate       our target-only decoding
  ``hf_generate``       target.generate(...)                     transformers' target-only decoding
  ``sd``                models.speculative.speculative_generate  per (draft, gamma, lenience)
  ``hf_assisted``       target.generate(assistant_model=draft)   the peer baseline: num_assistant_tokens
                                                                 = gamma, schedule "constant" (lenience 1)
  ``hf_prompt_lookup``  target.generate(prompt_lookup_num_tokens  decoder-only targets: the draft-free method
                        =gamma)                                  (n-grams of the prompt as drafts), per gamma

Targets and drafts are T5s or decoder-only LMs (a pair is of one kind). Token counts and outputs are the new
tokens only: a T5's decoder start token and a decoder-only model's prompt are not counted.

Method (Leviathan et al. 2023, arXiv 2211.17192, Section 5 measure the same quantities):
- Fixed torch threads and seeds: sampling uses ``torch.Generator(seed + prompt index)`` for our
  engine and ``torch.manual_seed(seed + prompt index)`` for transformers (which takes no generator),
  so every repeat decodes the same tokens and the global RNG state is restored afterwards.
- ``warmup`` untimed passes of every case, then ``repeats`` timed passes. Each pass runs every case
  once over all prompts, in an order shuffled per pass, so drift of a shared machine hits all cases
  alike and speedups are *paired* per pass: ``speedup`` is the median over passes of
  ``baseline ms/token / case ms/token`` and ``*_iqr`` is the interquartile range over passes.
- The baseline of a mode is the faster (lower median ms/token) of ``target`` and ``hf_generate``,
  so speedups are never flattered by a slow baseline.
- ``alpha`` is the acceptance rate of Eq. 1: the fraction of *verified* draft positions that were
  accepted. A block stops at its first rejection, so accepted / drafted would underestimate it
  (at alpha 0.6, gamma 4 it gives ~0.29); see :func:`estimate_alpha`.
- ``c`` is measured directly: one-token decoder steps with a KV cache, timed for each model on the
  benchmark prompts (median over steps, prompts and passes); ``c = draft step / target step``.
  ``verify_ratio`` is the cost of the target's (gamma+1)-token verification call over one step:
  the closed form assumes 1, and a larger value is the main reason measured < predicted.
- ``predicted_speedup = expected_speedup(alpha, gamma, c)`` (Theorem 3.8), to compare with
  ``speedup_vs_target`` (both are relative to our own target-only decoding); ``prediction_error`` is
  their ratio minus 1. ``predicted_speedup_verify`` puts the measured verification cost in the
  denominator, ``E[tokens per call] / (gamma c + verify_ratio)``: what is left between it and the
  measurement is per-token overhead (sampling, bookkeeping, cache cropping, the draft's encoder).
- ``exact``: greedy rows only, whether every output equals our target-only output token for token.
- ``rougeL``: mean ROUGE-L F1 (``rouge_score``) of the decoded outputs against the prompts'
  references, when they have references; over lenience it traces lossy SD's quality-vs-latency curve.
- ``precision`` (``BenchSettings.precision``): ``fp32``, ``int8`` or ``bf16``: every decoder of the run (ours,
  HF's, target and drafts) uses int8 or bfloat16 copies of the models (``models.sd.quantization``), so each
  speedup is over the target-only decoding of the same target and greedy SD stays exact with respect to it.

Usage from a plain script::

    from engine.sd_bench import markdown_table, run_benchmark, to_frame
    from models.sd.bench import BenchPrompt, BenchSettings
    rows = run_benchmark(target, {"small": draft}, [BenchPrompt(input_ids=ids)], BenchSettings(gammas=(2, 4)))
    print(markdown_table(to_frame(rows)))
"""

from __future__ import annotations

import contextlib
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from models.sd.feature_draft import FeatureDraft, is_feature_draft
from models.sd.lookup import PromptLookupDraft, is_prompt_lookup
from models.sd.kv_cache import PREALLOCATED, cached_decoder, compiled_forward, generate_cache, is_causal_lm
from models.sd.quantization import at_precision
from models.sd.bench import COLUMNS, BenchPrompt, BenchSettings, estimate_alpha, iqr, rouge_l
from models.sd.verify import expected_block_efficiency, expected_speedup
from models.speculative import (
    SpeculativeOutput,
    check_compatible,
    pad_id,
    speculative_generate,
    target_generate,
    token_ids,
)

__all__ = [
    "BATCH_COLUMNS",
    "BATCH_SUMMARY",
    "SUMMARY",
    "markdown_table",
    "measure_step_costs",
    "run_batched_benchmark",
    "run_benchmark",
    "sync",
    "to_batched_frame",
    "to_frame",
    "with_lookup_drafts",
]


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    """Wait for the device's queued kernels (CUDA runs asynchronously), so a clock read after it means something."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _bench_environment(threads: int, models: Sequence[nn.Module]) -> Iterator[None]:
    """Fixed thread count, eval mode, quiet transformers and a restored global RNG for the benchmark."""
    from transformers.utils import logging as hf_logging

    old_threads, old_verbosity = torch.get_num_threads(), hf_logging.get_verbosity()
    training = [m for m in models if m.training]
    torch.set_num_threads(threads)
    hf_logging.set_verbosity_error()  # assisted generation warns about its own internal kwargs
    for m in training:
        m.eval()
    devices = [d.index for d in {p.device for m in models for p in m.parameters()} if d.type == "cuda"]
    try:
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            yield
    finally:
        torch.set_num_threads(old_threads)
        hf_logging.set_verbosity(old_verbosity)
        for m in training:
            m.train()


def measure_step_costs(
    target: nn.Module,
    drafts: Mapping[str, nn.Module],
    prompts: Sequence[torch.Tensor],
    *,
    steps: int,
    gammas: Sequence[int],
    repeats: int,
    warmup: int,
    cache_implementation: str = "dynamic",
    compile: bool = False,
    max_cache_len: int | None = None,
) -> dict[str, Any]:
    """Directly time one-token KV-cached decoder steps of every model and the target's verify calls.

    Returns ``{"target_step_ms", "draft_step_ms": {label: ms}, "verify_ratio": {gamma: ratio}}``,
    medians over steps, prompts and passes. ``verify_ratio[g]`` = (target call scoring g + 1 new
    tokens) / (target call scoring 1). Token identities do not change dense compute time, so the
    decoder is fed the prompt's own ids. ``max_cache_len``: a preallocated cache holds at least this many
    positions (and at least what the probe needs); give the decoding's own (``max_new_tokens + 1``) so a compiled
    forward reuses the decoding's graphs.
    """
    models = {"target": target, **{f"draft:{k}": m for k, m in drafts.items()}}
    step_ms: dict[str, list[float]] = {k: [] for k in models}
    verify_ms: dict[int, list[float]] = {g: [] for g in gammas}
    device = next(target.parameters()).device

    def timed(fn: Callable[[], object]) -> float:
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        return 1e3 * (time.perf_counter() - t0)

    causal = is_causal_lm(target)
    for r in range(warmup + repeats):
        for ids in prompts:
            start = int(ids[0, -1]) if causal else 0  # what a decoded sequence starts with (see CachedDecoder)
            feed = [start] + (ids[0].tolist() * (steps // ids.shape[1] + 2))[: steps + max(gammas) + 1]
            mask = torch.ones_like(ids)
            need = max(steps + max(gammas) + 2, max_cache_len or 0)
            max_len = need if cache_implementation in PREALLOCATED else None
            decoders = {
                name: _FeatureSteps(model, ids) if is_feature_draft(model) else
                _lookup_steps(model, ids) if is_prompt_lookup(model) else
                cached_decoder(model, ids, mask, cache_implementation=cache_implementation,
                               max_cache_len=max_len, forward=compiled_forward(model) if compile else None)
                for name, model in models.items()
            }
            # Models alternate step by step, so drift of a shared machine hits them alike.
            for j in range(1, steps + 1):
                for name, dec in decoders.items():
                    ms = timed(lambda: dec.advance(feed[:j]))
                    if r >= warmup:
                        step_ms[name].append(ms)
            dec = decoders["target"]
            for g in gammas:  # verifying g draft tokens = one target call scoring g + 1 tokens
                ms = timed(lambda: dec.advance(feed[: steps + g + 1]))
                if r >= warmup:
                    verify_ms[g].append(ms)
                dec.crop(steps)
    target_ms = statistics.median(step_ms["target"])
    return {
        "target_step_ms": target_ms,
        "draft_step_ms": {k: statistics.median(step_ms[f"draft:{k}"]) for k in drafts},
        "verify_ratio": {g: statistics.median(v) / target_ms for g, v in verify_ms.items()},
    }


class _FeatureSteps:
    """A feature draft's decoder step as ``FeatureDrafter`` takes it while drafting: one (feature, token) pair
    after the cached ones (the prompt's pairs, read first). ``advance`` takes the growing token sequence, like
    a ``CachedDecoder``'s, and feeds its last token; feature values do not change dense compute time."""

    def __init__(self, draft: FeatureDraft, ids: torch.Tensor):
        self.draft, self.cache = draft, draft.new_cache()
        self.zero = torch.zeros((1, 1, draft.config.hidden_size), device=ids.device)
        prompt = ids[:, 1:] if ids.shape[1] > 1 else ids
        draft(self.zero.expand(1, prompt.shape[1], -1), prompt, cache=self.cache)

    def advance(self, tokens: list[int]) -> torch.Tensor:
        x = torch.tensor([[tokens[-1]]], dtype=torch.long, device=self.zero.device)
        return self.draft(self.zero, x, cache=self.cache)[1]


def _is_lm(draft: nn.Module) -> bool:
    """A draft that is a language model of its own (transformers can use it as an assistant, batched SD too)."""
    return not (is_feature_draft(draft) or is_prompt_lookup(draft))


class _NoSteps:
    """Prompt lookup alone drafts without a model: a step costs nothing but the lookup itself."""

    def advance(self, tokens: list[int]) -> None:
        return None


def _lookup_steps(draft: PromptLookupDraft, ids: torch.Tensor) -> _FeatureSteps | _NoSteps:
    """A prompt-lookup draft's drafting step as timed for c: its fallback feature draft's, else none."""
    return _FeatureSteps(draft.fallback, ids) if draft.fallback is not None else _NoSteps()


@dataclass
class _Case:
    mode: str
    method: str
    draft: str | None
    gamma: int | None
    lenience: float | None
    call: Callable[[int], tuple[list[int], SpeculativeOutput | None]]
    ms_per_token: list[float] = field(default_factory=list)  # one per timed pass
    outputs: list[list[int]] = field(default_factory=list)  # last pass, one per prompt: the new tokens
    stats: list[SpeculativeOutput] = field(default_factory=list)  # last pass (our engine only)


def _build_cases(
    target: nn.Module, drafts: Mapping[str, nn.Module], prompts: Sequence[torch.Tensor], s: BenchSettings
) -> list[_Case]:
    n = s.max_new_tokens
    top_k, top_p = s.top_k, s.top_p

    def engine_kwargs(mode: str, i: int) -> dict[str, Any]:
        if mode == "greedy":
            return {"do_sample": False}
        generator = torch.Generator(device=prompts[i].device).manual_seed(s.seed + i)
        return {"do_sample": True, "temperature": s.temperature, "top_k": top_k, "top_p": top_p,
                "generator": generator}

    def hf_kwargs(mode: str, i: int) -> dict[str, Any]:
        if mode == "greedy":
            return {"do_sample": False}
        torch.manual_seed(s.seed + i)  # generate() draws from the global RNG (restored after the run)
        # Explicit top_k=0 / top_p=1: generation_config defaults must not add a warper we do not apply.
        return {"do_sample": True, "temperature": s.temperature, "top_k": top_k or 0, "top_p": top_p or 1.0}

    def hf_call(i: int, mode: str, assistant: nn.Module | None = None, gamma: int | None = None,
                lookup: int | None = None):
        extra = {}
        if lookup is not None:
            extra["prompt_lookup_num_tokens"] = lookup
        elif assistant is None and s.cache_implementation == "static":
            extra["cache_implementation"] = "static"
        else:
            extra.update(generate_cache(target))  # a decoder deeper than the encoder needs its own cache
        if assistant is not None:
            gc = assistant.generation_config
            gc.num_assistant_tokens, gc.num_assistant_tokens_schedule = gamma, "constant"
            gc.assistant_confidence_threshold = 0.0  # no early stop of a block: exactly gamma drafted
            extra["assistant_model"] = assistant
        seq = target.generate(prompts[i], attention_mask=torch.ones_like(prompts[i]), max_new_tokens=n,
                              **hf_kwargs(mode, i), **extra)
        return seq[0].tolist(), None

    def target_call(i: int, mode: str):
        out = target_generate(target, prompts[i], max_new_tokens=n, **engine_kwargs(mode, i), **s.engine_cache)
        return out.sequences[0].tolist(), out

    def sd_call(i: int, mode: str, draft: nn.Module, gamma: int, lenience: float):
        out = speculative_generate(target, draft, prompts[i], gamma=gamma, max_new_tokens=n, lenience=lenience,
                                   **engine_kwargs(mode, i), **s.engine_cache)
        return out.sequences[0].tolist(), out

    cases: list[_Case] = []
    for mode in s.modes:
        cases.append(_Case(mode, "target", None, None, None, partial(target_call, mode=mode)))
        if s.hf_baselines:
            cases.append(_Case(mode, "hf_generate", None, None, None, partial(hf_call, mode=mode)))
        for label, draft in drafts.items():
            for gamma in s.gammas:
                for lenience in s.lenience if mode == "sampling" else (1.0,):
                    cases.append(_Case(mode, "sd", label, gamma, lenience,
                                       partial(sd_call, mode=mode, draft=draft, gamma=gamma, lenience=lenience)))
                if s.hf_baselines and _is_lm(draft):  # transformers' assistant must be an LM
                    cases.append(_Case(mode, "hf_assisted", label, gamma, 1.0,
                                       partial(hf_call, mode=mode, assistant=draft, gamma=gamma)))
        if s.hf_baselines and is_causal_lm(target):
            for gamma in s.gammas:
                cases.append(_Case(mode, "hf_prompt_lookup", None, gamma, 1.0,
                                   partial(hf_call, mode=mode, lookup=gamma)))
    return cases


def _timed_pass(case: _Case, skip: Sequence[int], device: torch.device, keep: bool) -> float:
    """Run a case over all prompts; returns ms per generated token. ``skip[i]``: how many leading positions of
    prompt i's output are not new tokens (the decoder start token, or a decoder-only model's prompt)."""
    seconds, tokens = 0.0, 0
    outputs, stats = [], []
    for i, lead in enumerate(skip):
        sync(device)
        t0 = time.perf_counter()
        seq, out = case.call(i)
        sync(device)
        seconds += time.perf_counter() - t0
        tokens += len(seq) - lead
        outputs.append(seq[lead:])
        if out is not None:
            stats.append(out)
    if keep:
        case.outputs, case.stats = outputs, stats
    return 1e3 * seconds / max(tokens, 1)


# ----------------------------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------------------------


def _check_inputs(target: nn.Module, drafts: Mapping[str, nn.Module], prompts: Sequence[BenchPrompt],
                  log: Callable[[str], None] | None) -> tuple[Callable[[str], None], torch.device]:
    """Refuse an empty prompt set, no drafts or a mismatched vocabulary; (progress logger, model device)."""
    if not prompts:
        raise ValueError("no prompts to benchmark: the prompt set is empty")
    if not drafts:
        raise ValueError("no drafts to benchmark: give at least one draft model")
    for label, draft in drafts.items():
        check_compatible(target, draft, label=label)
    return log or (lambda _msg: None), next(target.parameters()).device


def run_benchmark(
    target: nn.Module,
    drafts: Mapping[str, nn.Module],
    prompts: Sequence[BenchPrompt],
    settings: BenchSettings,
    *,
    decode: Callable[[list[int]], str] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Time every (mode, method, draft, gamma, lenience) case; one result row (a dict of COLUMNS) each.

    ``decode`` turns output token ids (decoder start token excluded) into text for ROUGE-L and for each row's
    ``outputs`` (the last pass's texts, one per prompt); without it, or when no prompt has a reference,
    ``rougeL`` is nan. ``log`` receives progress lines.
    Models must live on one device; the prompts are moved there.
    """
    s = settings
    say, device = _check_inputs(target, drafts, prompts, log)
    target, drafts = _at_precision(target, drafts, s, say)
    drafts = with_lookup_drafts(target, drafts, s.prompt_lookup)
    ids = [torch.tensor([p.input_ids], dtype=torch.long, device=device) for p in prompts]
    rng = np.random.default_rng(s.seed)
    with _bench_environment(s.threads, [target, *drafts.values()]):
        say(f"timing decoder steps of target and {len(drafts)} draft(s) for c")
        # compiled: the decoding's cache size, so the probe runs the decoding's graphs
        costs = measure_step_costs(target, drafts, ids, steps=min(s.step_probe_tokens, s.max_new_tokens),
                                   gammas=s.gammas, repeats=s.repeats, warmup=min(s.warmup, 1),
                                   max_cache_len=s.max_new_tokens + 1 if s.compile else None, **s.engine_cache)
        cases = _build_cases(target, drafts, ids, s)
        skip = [x.shape[1] if is_causal_lm(target) else 1 for x in ids]
        for r in range(s.warmup + s.repeats):
            timed = r >= s.warmup
            say(f"{'timed' if timed else 'warm-up'} pass {r + 1 - s.warmup * timed} of "
                f"{s.repeats if timed else s.warmup}: {len(cases)} cases x {len(ids)} prompts")
            for k in rng.permutation(len(cases)):
                ms = _timed_pass(cases[k], skip, device, keep=r == s.warmup + s.repeats - 1)
                if timed:
                    cases[k].ms_per_token.append(ms)
    return _rows(cases, costs, prompts, s, decode)


def with_lookup_drafts(target: nn.Module, drafts: Mapping[str, nn.Module], max_ngram: int) -> dict[str, nn.Module]:
    """``drafts`` plus, for a decoder-only target and ``max_ngram`` > 0, our prompt-lookup draft alone
    (``lookup``) and before each feature draft (``lookup-else-<label>``); the same drafts otherwise."""
    out = dict(drafts)
    if max_ngram < 1 or not is_causal_lm(target):
        return out
    vocab = int(target.config.vocab_size)
    out["lookup"] = PromptLookupDraft(vocab, max_ngram=max_ngram)
    for label, draft in drafts.items():
        if is_feature_draft(draft):
            out[f"lookup-else-{label}"] = PromptLookupDraft(vocab, max_ngram=max_ngram, fallback=draft)
    return out


def _at_precision(target: nn.Module, drafts: Mapping[str, nn.Module], s: BenchSettings,
                  say: Callable[[str], None]) -> tuple[nn.Module, dict[str, nn.Module]]:
    """The models the run decodes with: as given (fp32), int8 copies (every linear layer of at least
    ``s.int8_min_weights`` weights, in target and drafts alike: below that int8 is slower on a CPU) or bfloat16
    copies."""
    if s.precision == "fp32":
        return target, dict(drafts)
    say(f"converting target and {len(drafts)} draft(s) to {s.precision}")
    n = s.int8_min_weights
    return at_precision(target, s.precision, n), {k: at_precision(m, s.precision, n) for k, m in drafts.items()}


def _paired(numer: _Case, denom: _Case) -> tuple[float, float]:
    """Median and IQR over passes of numer ms/token / denom ms/token (a speedup of denom over numer)."""
    ratios = [a / b for a, b in zip(numer.ms_per_token, denom.ms_per_token, strict=True)]
    return statistics.median(ratios), iqr(ratios)


def _rows(cases: list[_Case], costs: dict[str, Any], prompts: Sequence[BenchPrompt], s: BenchSettings,
          decode: Callable[[list[int]], str] | None) -> list[dict[str, Any]]:
    by_key = {(c.mode, c.method, c.draft, c.gamma, c.lenience): c for c in cases}
    refs = [p.reference for p in prompts]
    scored = [i for i, ref in enumerate(refs) if ref is not None]
    rows = []
    for case in cases:
        own = by_key[(case.mode, "target", None, None, None)]
        candidates = [c for c in (own, by_key.get((case.mode, "hf_generate", None, None, None))) if c is not None]
        base = min(candidates, key=lambda c: statistics.median(c.ms_per_token))
        speedup, speedup_iqr = _paired(base, case)
        row: dict[str, Any] = dict.fromkeys(COLUMNS, float("nan"))
        row.update(
            mode=case.mode, precision=s.precision, method=case.method, draft=case.draft, gamma=case.gamma,
            lenience=case.lenience,
            ms_per_token=statistics.median(case.ms_per_token), ms_per_token_iqr=iqr(case.ms_per_token),
            new_tokens=sum(len(o) for o in case.outputs), baseline=base.method,
            speedup=speedup, speedup_iqr=speedup_iqr, speedup_vs_target=_paired(own, case)[0],
            target_step_ms=costs["target_step_ms"], exact=None,
        )
        if case.mode == "greedy":
            row["exact"] = case.outputs == own.outputs
        if case.stats:
            row["target_calls"] = sum(o.num_target_calls for o in case.stats)
            row["draft_calls"] = sum(o.num_draft_calls for o in case.stats)
        if case.draft is not None:
            c = costs["draft_step_ms"][case.draft] / costs["target_step_ms"]
            row.update(c=c, draft_step_ms=costs["draft_step_ms"][case.draft],
                       verify_ratio=costs["verify_ratio"][case.gamma])
        if case.method == "sd":
            alpha = estimate_alpha([a for o in case.stats for a in o.accepted],
                                   [d for o in case.stats for d in o.drafted])
            row.update(alpha=alpha, block_efficiency=row["new_tokens"] / row["target_calls"])
            if not math.isnan(alpha):
                row["predicted_speedup"] = expected_speedup(alpha, case.gamma, row["c"])
                row["prediction_error"] = row["speedup_vs_target"] / row["predicted_speedup"] - 1.0
                # The same model with the measured cost of the (gamma+1)-token verification call.
                row["predicted_speedup_verify"] = expected_block_efficiency(alpha, case.gamma) / (
                    case.gamma * row["c"] + row["verify_ratio"])
            peer = by_key.get((case.mode, "hf_assisted", case.draft, case.gamma, 1.0))
            if peer is not None and case.lenience == 1.0:
                row["speedup_vs_hf_assisted"] = _paired(peer, case)[0]
        if decode is not None:
            row["outputs"] = [decode(o) for o in case.outputs]  # per prompt (not a table column: outputs.json)
            if scored:
                row["rougeL"] = rouge_l([row["outputs"][i] for i in scored], [refs[i] for i in scored])
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------
# Batched SD
# ----------------------------------------------------------------------------------------------

BATCH_COLUMNS = ["batch", "precision", "method", "draft", "gamma", "tokens_per_s", "tokens_per_s_iqr", "speedup",
                 "speedup_iqr", "alpha", "block_efficiency", "exact"]
"""Columns of the batched table: one row per (batch size, method[, draft, gamma]); greedy decoding."""


def _generated(body: list[int], eos: frozenset[int]) -> list[int]:
    """A row's new tokens without the padding after its first EOS."""
    cut = next((i for i, t in enumerate(body) if t in eos), None)
    return body if cut is None else body[: cut + 1]


def run_batched_benchmark(
    target: nn.Module,
    drafts: Mapping[str, nn.Module],
    prompts: Sequence[BenchPrompt],
    settings: BenchSettings,
    *,
    batch_sizes: Sequence[int],
    include_unbatched: bool = False,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Greedy throughput of batched SD against batched ``target.generate``, per batch size B.

    Prompts are taken B at a time in order (padded with an attention mask: on the right for a T5, on the left
    for a decoder-only model); each case decodes
    every batch once per pass. ``warmup`` untimed then ``repeats`` timed passes in a shuffled case
    order, as in ``run_benchmark``. ``tokens_per_s`` counts generated tokens (EOS included, padding
    excluded) over wall time; ``speedup`` is the median over passes of the case's tokens/s over
    ``hf_generate``'s in the same pass. ``exact``: every output equals ``hf_generate``'s. Batched SD
    uses the dynamic cache (see ``speculative_generate``); transformers' assisted generation has no
    batched mode, so it has no row here. ``include_unbatched`` adds ``sd_b1`` rows: batch-1 SD over the
    same prompts, one at a time (what batching saves over a loop).
    """
    s = settings
    if any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise ValueError(f"batch_sizes={list(batch_sizes)} must be ints >= 1")
    say, device = _check_inputs(target, drafts, prompts, log)
    target, drafts = _at_precision(target, drafts, s, say)
    _, eos = token_ids(target)  # the engine's own reading of EOS and pad
    pad = pad_id(target, eos)
    rng = np.random.default_rng(s.seed)
    rows: list[dict[str, Any]] = []
    with _bench_environment(s.threads, [target, *drafts.values()]):
        for b in batch_sizes:
            batches = _batches(prompts, b, pad=pad, causal=is_causal_lm(target), device=device)
            cases = _batched_cases(target, drafts, s, pad=pad, include_unbatched=include_unbatched)
            rates, outputs, stats = _time_batched_cases(cases, batches, s, rng, eos=eos, device=device,
                                                        say=lambda msg: say(f"batch {b}: {msg}"))
            rows.extend(_batched_rows(cases, rates, outputs, stats, batch=b, precision=s.precision))
    return rows


def _batches(prompts: Sequence[BenchPrompt], b: int, *, pad: int, causal: bool,
             device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The prompts B at a time in order, as (input_ids, attention_mask) padded with ``pad``: on the left for a
    decoder-only model, on the right for an encoder-decoder one."""
    batches = []
    for i in range(0, len(prompts), b):
        group = [p.input_ids for p in prompts[i : i + b]]
        ids = torch.full((len(group), max(map(len, group))), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, toks in enumerate(group):
            cols = slice(ids.shape[1] - len(toks), None) if causal else slice(0, len(toks))
            ids[r, cols], mask[r, cols] = torch.tensor(toks), 1
        batches.append((ids.to(device), mask.to(device)))
    return batches


def _batched_cases(target: nn.Module, drafts: Mapping[str, nn.Module], s: BenchSettings, *, pad: int,
                   include_unbatched: bool) -> list[tuple[str, str | None, int | None, Callable]]:
    """The cases of one batch size, ``(method, draft, gamma, decode)``; ``decode(ids, mask)`` returns each row's
    new tokens and the engine's outputs (None for ``hf_generate``). ``hf_generate`` is first: the reference."""
    causal, n = is_causal_lm(target), s.max_new_tokens

    def new_tokens(seqs: torch.Tensor, ids: torch.Tensor) -> list[list[int]]:
        return seqs[:, ids.shape[1] if causal else 1:].tolist()

    def hf(ids, mask):
        seqs = target.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=pad,
                               **generate_cache(target))
        return new_tokens(seqs, ids), None

    def sd_b1(ids, mask, draft, gamma):
        seqs, outs = [], []
        for row, keep in zip(ids, mask.bool()):
            seq, out = sd(row[keep][None], None, draft, gamma)
            seqs.extend(seq)
            outs.extend(out)
        return seqs, outs

    def sd(ids, mask, draft, gamma):
        out = speculative_generate(target, draft, ids, mask, gamma=gamma, max_new_tokens=n)
        return new_tokens(out.sequences, ids), [out]

    methods = [("sd", sd)] + ([("sd_b1", sd_b1)] if include_unbatched else [])
    return [("hf_generate", None, None, hf)] + [
        (method, label, g, partial(fn, draft=draft, gamma=g))
        for label, draft in drafts.items() if _is_lm(draft)  # feature and lookup drafts decode batch 1
        for g in s.gammas for method, fn in methods
    ]


def _time_batched_cases(cases: list[tuple], batches: list[tuple[torch.Tensor, torch.Tensor]], s: BenchSettings,
                        rng: np.random.Generator, *, eos: frozenset[int], device: torch.device,
                        say: Callable[[str], None]) -> tuple[dict[int, list[float]], dict[int, list[list[int]]],
                                                             dict[int, list[SpeculativeOutput]]]:
    """``warmup`` untimed then ``repeats`` timed passes over every batch, cases in a shuffled order. Per case:
    its tokens/s of each timed pass, its outputs and the engine's outputs of the last pass."""
    rates: dict[int, list[float]] = {k: [] for k in range(len(cases))}
    outputs: dict[int, list[list[int]]] = {}
    stats: dict[int, list[SpeculativeOutput]] = {}
    for r in range(s.warmup + s.repeats):
        say(f"{'timed' if r >= s.warmup else 'warm-up'} pass, {len(cases)} cases x {len(batches)} batches")
        for k in rng.permutation(len(cases)):
            decoded, outs, seconds = _decode_batches(cases[k][3], batches, eos=eos, device=device)
            if r >= s.warmup:
                rates[k].append(sum(map(len, decoded)) / seconds)
            outputs[k], stats[k] = decoded, outs
    return rates, outputs, stats


def _decode_batches(fn: Callable, batches: list[tuple[torch.Tensor, torch.Tensor]], *, eos: frozenset[int],
                    device: torch.device) -> tuple[list[list[int]], list[SpeculativeOutput], float]:
    """One case over every batch: each row's new tokens (cut after EOS), the engine's outputs, the wall time."""
    decoded, outs = [], []
    sync(device)
    t0 = time.perf_counter()
    for ids, mask in batches:
        seqs, out = fn(ids, mask)
        decoded.extend(seqs)
        outs.extend(out or [])
    sync(device)
    seconds = time.perf_counter() - t0
    return [_generated(row, eos) for row in decoded], outs, seconds


def _batched_rows(cases: list[tuple], rates: dict[int, list[float]], outputs: dict[int, list[list[int]]],
                  stats: dict[int, list[SpeculativeOutput]], *, batch: int, precision: str) -> list[dict[str, Any]]:
    """One row of BATCH_COLUMNS per case; speedup and exactness against the first case (``hf_generate``)."""
    rows = []
    for k, (method, label, gamma, _) in enumerate(cases):
        ratios = [a / h for a, h in zip(rates[k], rates[0], strict=True)]
        row = dict.fromkeys(BATCH_COLUMNS, float("nan"))
        row.update(batch=batch, precision=precision, method=method, draft=label, gamma=gamma,
                   tokens_per_s=statistics.median(rates[k]), tokens_per_s_iqr=iqr(rates[k]),
                   speedup=statistics.median(ratios), speedup_iqr=iqr(ratios),
                   exact=outputs[k] == outputs[0])
        if stats[k]:
            accepted = [a for o in stats[k] for a in o.accepted]
            row.update(alpha=estimate_alpha(accepted, [d for o in stats[k] for d in o.drafted]),
                       block_efficiency=sum(o.num_new_tokens for o in stats[k]) / max(len(accepted), 1))
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------
# Presentation
# ----------------------------------------------------------------------------------------------


def _frame(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], int_columns: Sequence[str]):
    """Rows -> a pandas DataFrame with ``columns`` in order and nullable dtypes (Parquet-safe)."""
    import pandas as pd

    df = pd.DataFrame(list(rows), columns=list(columns))
    for col in int_columns:
        df[col] = df[col].astype("Int64")
    df["exact"] = df["exact"].astype("boolean")
    df["draft"] = df["draft"].astype("string")
    return df


def to_frame(rows: Sequence[Mapping[str, Any]]):
    """Rows -> a pandas DataFrame with COLUMNS in order and nullable dtypes (Parquet-safe)."""
    return _frame(rows, COLUMNS, ("gamma", "target_calls", "draft_calls", "new_tokens"))


SUMMARY = [
    ("mode", "mode", "{}"), ("method", "method", "{}"), ("draft", "draft", "{}"), ("gamma", "gamma", "{}"),
    ("lenience", "lenience", "{:g}"), ("precision", "weights", "{}"), ("ms_per_token", "ms/token", "{:.2f}"),
    ("ms_per_token_iqr", "IQR", "{:.2f}"),
    ("speedup", "speedup", "{:.2f}x"), ("speedup_iqr", "IQR", "{:.2f}"), ("predicted_speedup", "predicted", "{:.2f}x"),
    ("predicted_speedup_verify", "pred. w/ verify", "{:.2f}x"),
    ("speedup_vs_hf_assisted", "vs HF assisted", "{:.2f}x"), ("alpha", "alpha", "{:.3f}"),
    ("block_efficiency", "tokens/call", "{:.2f}"), ("c", "c", "{:.3f}"), ("verify_ratio", "verify/step", "{:.2f}"),
    ("exact", "exact", "{}"), ("rougeL", "ROUGE-L", "{:.3f}"),
]


def to_batched_frame(rows: Sequence[Mapping[str, Any]]):
    """Batched rows -> a DataFrame with BATCH_COLUMNS in order and nullable dtypes."""
    return _frame(rows, BATCH_COLUMNS, ("batch", "gamma"))


BATCH_SUMMARY = [
    ("batch", "B", "{}"), ("method", "method", "{}"), ("draft", "draft", "{}"), ("gamma", "gamma", "{}"),
    ("precision", "weights", "{}"),
    ("tokens_per_s", "tokens/s", "{:,.1f}"), ("tokens_per_s_iqr", "IQR", "{:,.1f}"), ("speedup", "speedup", "{:.2f}x"),
    ("speedup_iqr", "IQR", "{:.2f}"), ("alpha", "alpha", "{:.3f}"), ("block_efficiency", "tokens/call/row", "{:.2f}"),
    ("exact", "exact", "{}"),
]


def markdown_table(df, columns: Sequence[tuple[str, str, str]] = SUMMARY) -> str:
    """A GitHub markdown table of the results (blank cells for missing values).

    ``df`` is a DataFrame or the plain list of row dicts (no pandas needed then, e.g. on a bare GPU box).
    """
    records = df.to_dict("records") if hasattr(df, "to_dict") else list(df)
    pandas = sys.modules.get("pandas")
    na = pandas.NA if pandas is not None else object()

    def cell(value: Any, fmt: str) -> str:
        if value is None or value is na or (isinstance(value, float) and math.isnan(value)):
            return ""
        return fmt.format(value)

    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for rec in records:
        lines.append("| " + " | ".join(cell(rec[k], f) for k, _, f in columns) + " |")
    return "\n".join(lines) + "\n"
