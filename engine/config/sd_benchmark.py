"""The SD benchmark's config and presets (``flows.sd_benchmark`` wires the run); its measurement settings are
``models.sd.bench.BenchSettings``, built from this config by :meth:`SDBenchmarkConfig.settings`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.config.base import FlowConfig
from engine.config.paths import FolderOrS3, LocalPath, ModelRef
from models.sd.bench import BenchSettings, check_gammas, check_lenience_grid

__all__ = ["PRESETS", "DraftRef", "SDBenchmarkConfig", "base", "laptop", "small", "tiny"]


class DraftRef(BaseModel):
    """One draft: a label for the table and a model reference (models:/ or runs:/ URI, or a folder)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    label: str = Field(..., min_length=1)
    model: ModelRef = Field(..., min_length=1)


class SDBenchmarkConfig(FlowConfig):
    preset: str = Field("tiny", description="name recorded in tags and the run name")
    target: Optional[ModelRef] = Field(None, description="target model: models:/name/version, models:/name@alias, "
                                                    "runs:/id/path or a save_pretrained folder (required)")
    drafts: list[DraftRef] = Field([], description='drafts: [{"label": ..., "model": ...}] or ["label=ref" | "ref"]')
    tokenizer: Optional[LocalPath] = Field(None, description="tokenizer folder (default: the target's folder)")
    prompts_jsonl: Optional[LocalPath] = Field(None, description="jsonl prompts with input_field (+ target_field reference)")
    prompts_task: Optional[str] = Field(None, description="a built-in downstream task (e.g. bbc_headline) whose test "
                                                          "inputs become the prompts, as in the pipeline")
    input_field: str = "input"
    target_field: str = "target"
    corpus_dir: Optional[FolderOrS3] = Field(None, description="corpus-prep output folder (or the s3:// URI it was "
                                             "published to): prompts from docs/<split>")
    split: str = Field("validation", description="corpus split whose documents become prompts")
    continuation_reference: bool = Field(True, description="corpus prompts: score outputs against the document's "
                                                           "next max_new_tokens tokens (a proxy reference)")
    num_prompts: int = Field(8, ge=1, description="first N prompts / documents")
    prompt_tokens: int = Field(64, ge=2, description="prompts are truncated to this many tokens (EOS included)")
    # the measurement's rules (gammas >= 1, lenience in (0, 1], modes, counts, compile needs the static cache...)
    # are models.sd.bench's, checked there once: gammas and lenience by its check_* functions (field validators
    # below, so an error names the field), the rest when _check builds the BenchSettings
    gammas: list[int] = Field([1, 2, 4], description="draft tokens per target call (each >= 1)")
    lenience: list[float] = Field([1.0, 0.5, 0.2], description="sampling only, each in (0, 1]; < 1 is LOSSY SD "
                                                                "(faster, no longer the target's distribution)")
    modes: list[Literal["greedy", "sampling"]] = Field(["greedy", "sampling"])
    temperature: float = 1.0
    top_k: Optional[int] = Field(None, ge=1)
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    max_new_tokens: int = 32
    repeats: int = Field(3, description="timed passes; medians and IQRs are over passes")
    warmup: int = Field(1, description="untimed passes first")
    threads: int = Field(1, description="torch threads during the measurement")
    seed: int = 0
    hf_baselines: bool = Field(True, description="also time target.generate and assisted generation")
    device: str = Field("cpu", description="cpu or cuda[:N]")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    cache_implementation: Literal["dynamic", "static", "lean"] = Field(
        "dynamic", description="KV cache of our decoders and target.generate; static = preallocated (GPU fast path); "
        "lean = T5 only: our own decoder step over preallocated tensors (models.sd.lean_t5), the same outputs "
        "without transformers' per-call cost (CPU fast path; target.generate stays dynamic)")
    compile: bool = Field(False, description="torch.compile our decoders (needs cache_implementation=static); "
                          "target.generate then also uses its static cache")
    precisions: list[Literal["fp32", "int8", "bf16"]] = Field(
        ["fp32"], min_length=1, description="weights to decode with, one full table each: fp32 as loaded, int8 = "
        "int8 linear layers for target and drafts alike (CPU; per-token activation scales keep SD exact), bf16 = "
        "bfloat16 copies of target and drafts (on a CPU with AVX512-BF16, k new tokens cost one step)")
    int8_min_weights: int = Field(1 << 17, description="int8: linear layers with fewer weights stay fp32 "
                                  "(at d_model 64-128 int8 is slower than fp32 on a CPU)")
    prompt_lookup: int = Field(0, ge=0, description="> 0, decoder-only target: also time our prompt-lookup draft "
                               "(n-grams up to this size; models.sd.lookup) alone and before each feature draft")
    batch_sizes: list[Annotated[int, Field(ge=1)]] = Field(
        [], description="also time batched greedy SD against batched target.generate at these batch sizes "
        "(prompts taken B at a time); [] skips it")
    experiment: str = "sd-benchmark"

    @field_validator("drafts", mode="before")
    @classmethod
    def _draft_strings(cls, v: Any) -> Any:
        def one(d: Any) -> Any:
            if not isinstance(d, str):
                return d
            label, _, ref = d.partition("=") if "=" in d and not d.startswith(("models:/", "runs:/")) else ("", "", d)
            if not label:  # models:/name/1 -> "name/1"; a folder -> its name
                label = ref.split(":/", 1)[1] if ref.startswith(("models:/", "runs:/")) else Path(ref).name or ref
            return {"label": label, "model": ref}

        return [one(d) for d in v] if isinstance(v, list) else v

    @field_validator("gammas")
    @classmethod
    def _gammas(cls, v: list[int]) -> list[int]:
        check_gammas(v)
        return v

    @field_validator("lenience")
    @classmethod
    def _lenience(cls, v: list[float]) -> list[float]:
        check_lenience_grid(v)
        return v

    def settings(self) -> BenchSettings:
        """The measurement settings, whole: each ``BenchSettings`` field this config has, by name (the others,
        like ``step_probe_tokens``, keep the engine's defaults)."""
        return BenchSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(BenchSettings)
                                if f.name in type(self).model_fields})

    @model_validator(mode="after")
    def _check(self):
        self.settings()  # the measurement rules (gammas, lenience, modes, compile needs static...) live there
        if "int8" in self.precisions and (self.device != "cpu" or self.dtype != "float32" or self.compile):
            raise ValueError("precisions int8 is the CPU path: it needs device=cpu, dtype=float32 and compile=false")
        if "bf16" in self.precisions and self.dtype != "float32":
            raise ValueError(f"precisions bf16 makes bfloat16 copies of float32 models: it needs dtype=float32 "
                             f"(got {self.dtype}; dtype={self.dtype} alone already decodes in it)")
        if len(set(self.precisions)) != len(self.precisions):
            raise ValueError(f"precisions {self.precisions} must not repeat")
        sources = [k for k in ("prompts_task", "prompts_jsonl", "corpus_dir") if getattr(self, k) is not None]
        if len(sources) > 1:
            raise ValueError(f"set one prompt source, not both ({', '.join(sources)}): prompts_task=TASK, "
                             "prompts_jsonl=FILE.jsonl or corpus_dir=CORPUS_FOLDER")
        labels = [d.label for d in self.drafts]
        if len(set(labels)) != len(labels):
            raise ValueError(f"draft labels {labels} must be unique")
        return self


def tiny() -> SDBenchmarkConfig:
    """A few short prompts, 3 passes, 1 thread: a minute or two on a laptop for a tiny pair."""
    return SDBenchmarkConfig(num_prompts=4, prompt_tokens=64, max_new_tokens=32, gammas=[1, 2, 4],
                             lenience=[1.0, 0.5, 0.2])


def laptop() -> SDBenchmarkConfig:
    """The task's test prompts on one CPU thread: 24 prompts of up to 64 tokens, 3 gammas, lossy lenience, fp32
    and int8 weights (each its own table, each against its own target-only decoders), T5 decoders run by the lean
    step (``models.sd.lean_t5``: 2-3x less per call than transformers' forward at these sizes; a T5 pair only)."""
    return tiny().model_copy(update=dict(preset="laptop", num_prompts=24, prompt_tokens=64, max_new_tokens=48,
                                         gammas=[2, 3, 4], lenience=[1.0, 0.5], repeats=3,
                                         precisions=["fp32", "int8"], cache_implementation="lean"))


def small() -> SDBenchmarkConfig:
    """T5-small-class pair on one GPU: 50 prompts of 256 tokens, static cache + torch.compile for every decoder."""
    return tiny().model_copy(update=dict(preset="small", num_prompts=50, prompt_tokens=256, max_new_tokens=128,
                                         gammas=[1, 2, 3, 4, 5, 7], lenience=[1.0, 0.5, 0.3, 0.1], repeats=5,
                                         warmup=2, device="cuda", dtype="bfloat16",
                                         cache_implementation="static", compile=True, batch_sizes=[1, 4, 16]))


def base() -> SDBenchmarkConfig:
    """T5-base/XL-class pair on one GPU: 100 prompts of 512 tokens (the issue's latency setting)."""
    return small().model_copy(update=dict(preset="base", num_prompts=100, prompt_tokens=512))


PRESETS = {"tiny": tiny, "laptop": laptop, "small": small, "base": base}
