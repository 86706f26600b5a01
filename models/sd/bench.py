"""The speculative-decoding benchmark's pure half: its settings, prompts, columns and small estimators.

The timing harness that uses them (it times our SD engine, our target-only decoder and transformers'
``generate`` and assisted generation, and tabulates the results) is the runtime layer's
:mod:`engine.sd_bench`, whose docstring describes the method. Nothing here reads a clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.sd.quantization import INT8_MIN_WEIGHTS, PRECISIONS
from models.sd.kv_cache import CACHE_IMPLEMENTATIONS

__all__ = [
    "COLUMNS",
    "MODES",
    "BenchPrompt",
    "BenchSettings",
    "check_gammas",
    "check_lenience_grid",
    "estimate_alpha",
    "iqr",
    "prompts_from_texts",
    "rouge_l",
]

MODES = ("greedy", "sampling")

COLUMNS = [
    "mode", "precision", "method", "draft", "gamma", "lenience",
    "ms_per_token", "ms_per_token_iqr", "new_tokens",
    "baseline", "speedup", "speedup_iqr", "speedup_vs_target", "predicted_speedup", "prediction_error",
    "predicted_speedup_verify", "speedup_vs_hf_assisted",
    "alpha", "block_efficiency", "c", "target_step_ms", "draft_step_ms", "verify_ratio",
    "target_calls", "draft_calls", "exact", "rougeL",
]
"""Columns of the results table, in order (see the module docstring for their meaning)."""


def check_gammas(gammas: Sequence[int]) -> tuple[int, ...]:
    """The rule for a benchmark's gammas (draft tokens per target call), in one place: a non-empty list of ints
    >= 1. ``BenchSettings`` and the SD benchmark's config both apply it; the message names the bad entry."""
    if not gammas:
        raise ValueError("gammas=[] must be a non-empty list of ints >= 1")
    for i, g in enumerate(gammas):
        if isinstance(g, bool) or not isinstance(g, int) or g < 1:
            raise ValueError(f"gammas.{i}={g!r} must be an int >= 1 (gammas={list(gammas)})")
    return tuple(gammas)


def check_lenience_grid(lenience: Sequence[float]) -> tuple[float, ...]:
    """The rule for a benchmark's lenience values, in one place: a non-empty list of values in (0, 1]."""
    if not lenience:
        raise ValueError("lenience=[] must be a non-empty list of values in (0, 1]")
    for i, x in enumerate(lenience):
        if not 0.0 < x <= 1.0:
            raise ValueError(f"lenience.{i}={x!r} must lie in (0, 1] (lenience={list(lenience)})")
    return tuple(lenience)


@dataclass(kw_only=True)
class BenchPrompt:
    """One prompt: encoder token ids (EOS included, as the tokenizer emits them) and an optional reference."""

    input_ids: list[int]
    reference: str | None = None
    """Text the output is scored against with ROUGE-L (None: no quality score)."""


@dataclass(kw_only=True)
class BenchSettings:
    """What to measure and how; every field has the meaning of the flow config field of the same name."""

    gammas: tuple[int, ...] = (1, 2, 4)
    """Draft tokens per target call, one SD case per value."""
    lenience: tuple[float, ...] = (1.0,)
    """Sampling mode only. 1 is lossless; < 1 is LOSSY SD (more accepted, output no longer ~ target)."""
    modes: tuple[str, ...] = ("greedy",)
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repeats: int = 3
    """Timed passes over all prompts; medians and IQRs are over passes."""
    warmup: int = 1
    """Untimed passes before the timed ones (allocator, caches, lazy init)."""
    threads: int = 1
    """torch.set_num_threads during the benchmark (restored afterwards)."""
    seed: int = 0
    hf_baselines: bool = True
    """Also time transformers' target.generate and assisted generation."""
    step_probe_tokens: int = 16
    """Decoder steps per prompt timed for the direct measurement of c."""
    cache_implementation: str = "dynamic"
    """KV cache of our engine and of ``target.generate``: ``dynamic``, ``static`` (preallocated) or ``lean`` (T5: our
    engine's own decoder step, ``models.sd.lean_t5``; ``target.generate`` and assisted generation stay dynamic)."""
    compile: bool = False
    """torch.compile our decoders (needs ``static``); the GPU fast path for baseline and SD alike.
    ``target.generate`` then also runs with ``cache_implementation="static"`` (transformers compiles
    that path itself on a GPU). HF assisted generation always uses its dynamic cache."""
    precision: str = "fp32"
    """Weights every decoder of the run uses: ``fp32`` as loaded, ``int8`` (``models.sd.quantization``: int8
    copies of target and drafts, of every linear layer big enough for int8 to pay; CPU eager only) or ``bf16``
    (bfloat16 copies of target and drafts). The target-only baselines decode with the same target as SD."""
    int8_min_weights: int = INT8_MIN_WEIGHTS
    """With ``precision="int8"``: linear layers with fewer weights stay fp32 (int8 does not pay below it)."""
    prompt_lookup: int = 0
    """> 0, decoder-only targets: also time our engine's prompt-lookup draft (``models.sd.lookup``, n-grams of up
    to this many tokens) alone, as ``lookup``, and before each feature draft, as ``lookup-else-<label>`` (batch 1)."""

    def __post_init__(self) -> None:
        self.gammas, self.lenience, self.modes = tuple(self.gammas), tuple(self.lenience), tuple(self.modes)
        check_gammas(self.gammas)
        check_lenience_grid(self.lenience)
        if not self.modes or any(m not in MODES for m in self.modes):
            raise ValueError(f"modes={list(self.modes)} must be a non-empty subset of {list(MODES)}")
        for name in ("max_new_tokens", "repeats", "threads", "step_probe_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.warmup < 0:
            raise ValueError(f"warmup={self.warmup} must be >= 0")
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature} must be > 0")
        if self.cache_implementation not in CACHE_IMPLEMENTATIONS:
            raise ValueError(f"cache_implementation={self.cache_implementation!r} must be one of "
                             f"{list(CACHE_IMPLEMENTATIONS)}")
        if self.compile and self.cache_implementation != "static":
            raise ValueError("compile=True needs cache_implementation='static'")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r} must be one of {list(PRECISIONS)}")
        if self.prompt_lookup < 0:
            raise ValueError(f"prompt_lookup={self.prompt_lookup} must be >= 0 (0: no prompt-lookup drafts)")
        if self.int8_min_weights < 0:
            raise ValueError(f"int8_min_weights={self.int8_min_weights} must be >= 0")
        if self.precision == "int8" and self.compile:
            raise ValueError("precision='int8' is the CPU eager path: it does not combine with compile=True")

    @property
    def engine_cache(self) -> dict[str, Any]:
        return {"cache_implementation": self.cache_implementation, "compile": self.compile}


# ----------------------------------------------------------------------------------------------
# Small pure helpers
# ----------------------------------------------------------------------------------------------


def estimate_alpha(accepted: Sequence[int], drafted: Sequence[int]) -> float:
    """Acceptance rate alpha from per-block (accepted, drafted) counts: accepted / verified positions.

    Verification stops at the first rejection, so a block with ``accepted < drafted`` verified
    ``accepted + 1`` positions and a fully accepted block verified ``drafted``. Each verified position
    is one Bernoulli(alpha) trial (the i.i.d. model behind Eq. 1), which makes this the maximum
    likelihood estimate. nan when nothing was verified.
    """
    trials = sum(a + (1 if a < d else 0) for a, d in zip(accepted, drafted, strict=True))
    return sum(accepted) / trials if trials else float("nan")


def iqr(values: Sequence[float]) -> float:
    """Interquartile range (linear interpolation); 0 for a single value."""
    if len(values) < 2:
        return 0.0
    q1, q3 = np.percentile(np.asarray(values, dtype=float), [25, 75])
    return float(q3 - q1)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F1: the one ROUGE-L of the project (``models.metrics.rouge``, Porter-stemmed), so the SD
    table's quality column and the evaluation's ``test.rougeL`` mean the same thing."""
    from models.metrics import rouge

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    return float(rouge(predictions, references)["rougeL"]) if predictions else float("nan")


def prompts_from_texts(
    texts: Sequence[str],
    tokenizer: Any,
    *,
    prompt_tokens: int,
    references: Sequence[str | None] | None = None,
    continuation_tokens: int = 0,
    causal: bool = False,
) -> list[BenchPrompt]:
    """Tokenize texts into prompts of at most ``prompt_tokens`` tokens of text, EOS last (as T5 inputs end).

    With ``references`` given they are kept as they are. Otherwise, with ``continuation_tokens > 0``,
    the reference is the text of the next ``continuation_tokens`` tokens after the prompt (a proxy
    reference for documents without a task target); texts too short to leave a continuation get none.
    ``causal``: prompts for a decoder-only model: no EOS; a text to answer (no continuation reference) goes
    through the tokenizer's chat template when it has one (``models.text_io.CausalIO``), whose tokens come on
    top of the ``prompt_tokens`` of text.
    """
    if prompt_tokens < 2:
        raise ValueError(f"prompt_tokens={prompt_tokens} must be >= 2 (at least one token and EOS)")
    eos = None if causal else tokenizer.eos_token_id
    chat = causal and continuation_tokens == 0 and bool(getattr(tokenizer, "chat_template", None))
    out = []
    for i, text in enumerate(texts):
        ids = tokenizer(text, add_special_tokens=False).input_ids
        body = ids[: prompt_tokens - 1] if eos is not None else ids[:prompt_tokens]
        if not body:
            raise ValueError(f"prompt {i} is empty after tokenization: {text[:60]!r}")
        reference = references[i] if references is not None else None
        if references is None and continuation_tokens > 0:
            rest = ids[len(body) : len(body) + continuation_tokens]
            reference = tokenizer.decode(rest, skip_special_tokens=True) if rest else None
        if chat:
            from models.text_io import CausalIO

            body = CausalIO(tokenizer).prompts([tokenizer.decode(body)], 1 << 30)[0]
        out.append(BenchPrompt(input_ids=body + ([eos] if eos is not None else []), reference=reference))
    return out

