"""The decoder-only pipeline's config and presets (``flows.llm_pipeline`` wires the run)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.config import distill as distill_mod
from engine.config import sd_benchmark as sd_mod
from engine.config.base import FlowConfig
from engine.config.task import TaskSpec

__all__ = ["PRESETS", "STAGES", "DraftShape", "FeatureDraftConfig", "LLMPipelineConfig", "Stage", "base", "llm", "small",
           "tiny"]

STAGES = ("import", "drafts", "distill_draft", "feature_draft", "garden", "sd_benchmark")
Stage = Literal["import", "drafts", "distill_draft", "feature_draft", "garden", "sd_benchmark"]


class DraftShape(BaseModel):
    """A model built from the LLM (``models.sd.drafts``): its first ``layers`` layers (``init=target``), or
    a fresh model of ``hidden_size`` (``init=fresh``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    layers: int = Field(2, ge=1, description="decoder layers")
    init: Literal["target", "fresh"] = Field("target", description="copy the LLM's first layers, or fresh weights")
    hidden_size: Optional[int] = Field(None, ge=8, description="init=fresh only: width (default the LLM's)")
    intermediate_size: Optional[int] = Field(None, ge=8, description="init=fresh only: MLP width")
    num_attention_heads: Optional[int] = Field(None, ge=1, description="init=fresh only")
    num_key_value_heads: Optional[int] = Field(None, ge=1, description="init=fresh only")
    head_tokens: int = Field(0, ge=0, description="> 0: an LM head over that many most frequent tokens of the task's "
                                                  "training texts only (FR-Spec); 0: the full vocabulary")

    def sizes(self) -> dict[str, int]:
        return {k: v for k, v in self.model_dump(exclude={"layers", "init", "head_tokens"}).items() if v is not None}


class FeatureDraftConfig(BaseModel):
    """A feature-level draft of the LLM (EAGLE; ``models.sd.feature_draft``), trained on the LLM's own greedy
    responses to the task's training prompts (``engine.feature_draft``): the target runs once over them, then
    every step costs the draft alone."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    layers: int = Field(1, ge=1, description="decoder layers of the draft")
    head_tokens: int = Field(8192, ge=0, description="> 0: its head covers that many most frequent tokens of the "
                                                     "task's training texts (FR-Spec); 0: the whole vocabulary")
    train_prompts: int = Field(512, ge=1, description="training prompts the LLM answers (greedy)")
    response_tokens: int = Field(32, ge=1, description="tokens of each greedy response")
    prompt_tokens: int = Field(64, ge=2, description="tokens of task text per prompt (before the chat template)")
    steps: int = Field(800, ge=1, description="AdamW steps")
    batch_size: int = Field(8, ge=1, description="sequences per step")
    lr: float = Field(1e-3, gt=0)
    unroll: int = Field(2, ge=1, description="drafting steps trained per position (> 1: on its own predictions)")
    feature_noise: float = Field(0.0, ge=0, description="std of noise added to the input features")
    seed: int = 0
    threads: int = Field(2, ge=1, description="torch threads of the training")


class LLMPipelineConfig(FlowConfig):
    preset: str = "llm"
    model: str = Field("smollm2", description="the LLM: smollm2 (packaged), gguf:PATH, hf:ORG/NAME or a folder")
    register_as: str = Field("smollm2-135m-instruct", description="registered name of the imported LLM")
    task: TaskSpec = Field(default_factory=lambda: TaskSpec(name="bbc_headline"),
                           description="the task whose prompts distillation and the SD benchmark use")
    draft: DraftShape = Field(default_factory=DraftShape, description="the draft of the LLM")
    garden_target: DraftShape = Field(default_factory=lambda: DraftShape(layers=8),
                                      description="the model garden's smaller target, distilled from the LLM")
    garden_draft: DraftShape = Field(default_factory=lambda: DraftShape(layers=1),
                                     description="the garden target's draft (built from the garden target)")
    distill_draft: distill_mod.DistillConfig = Field(default_factory=lambda: _distill(200))
    feature_draft: FeatureDraftConfig = Field(default_factory=FeatureDraftConfig,
                                              description="the feature-level draft of the LLM (EAGLE)")
    distill_garden_target: distill_mod.DistillConfig = Field(default_factory=lambda: _distill(100, "target"))
    distill_garden_draft: distill_mod.DistillConfig = Field(default_factory=lambda: _distill(100))
    sd_benchmark: sd_mod.SDBenchmarkConfig = Field(default_factory=lambda: _sd())
    stages: list[Stage] = Field(list(STAGES), description="stages to run (a prefix of the full list)")
    from_stage: Optional[Stage] = Field(None, description="force this stage and all later ones to run even if cached")
    experiment: str = Field("pipeline-llm", description="MLflow experiment of the parent run")

    @field_validator("stages")
    @classmethod
    def _prefix(cls, v: list[str]) -> list[str]:
        if not v or list(v) != list(STAGES[:len(v)]):
            raise ValueError(f"stages must be a non-empty prefix of {list(STAGES)}, got {v}")
        return v


def _distill(steps: int, mode: str = "draft") -> distill_mod.DistillConfig:
    """DistillSpec on 2 cores: batches of 4 task prompts (up to 96 tokens) with on-policy responses of up to 32
    tokens (sampled from the student: drawing them from SmolLM2 costs a 135M-parameter call per token, and made a
    step 4x slower), forward KL, lr 5e-4 (benchmarks/llm_draft.py, 2026-12-06: at lr 1e-4 and 100 on-policy steps
    a 2-layer draft of SmolLM2 did not improve)."""
    mix = {"student": 1.0}
    return distill_mod.DistillConfig(preset="llm", mode=mode, total_steps=steps, batch_size=4, lr=5e-4,
                                     warmup_steps=10, max_input_length=96, max_target_length=32, data_mix=mix,
                                     divergence="fkl", eval_every=steps, eval_examples=16, checkpoint_every=100,
                                     log_every=10, test_examples=32, threads_per_worker=2)


def _sd() -> sd_mod.SDBenchmarkConfig:
    """Batch 1 on one thread, greedy (lossless), 8 task prompts of up to 64 tokens of text, 32 new tokens, gamma
    2-4, fp32 and int8 weights (``--set 'sd_benchmark.precisions=["bf16"]'`` for bfloat16, where verification is
    cheap on a CPU with AVX512-BF16); our prompt-lookup draft (n-grams up to 3) alone and before the feature
    draft; then batched greedy SD at B = 4."""
    return sd_mod.SDBenchmarkConfig(preset="llm", num_prompts=8, prompt_tokens=64, max_new_tokens=32,
                                    gammas=[2, 3, 4], lenience=[1.0], modes=["greedy"], repeats=2, warmup=1,
                                    precisions=["fp32", "int8"], batch_sizes=[4], prompt_lookup=3)


def llm() -> LLMPipelineConfig:
    """SmolLM2-135M-Instruct, a 2-layer draft copied from it, a garden target of its first 8 layers."""
    return LLMPipelineConfig()


def tiny() -> LLMPipelineConfig:
    """Every stage in a few minutes (the checks that the LLM stages run and chain): 1-layer drafts, a 2-layer
    garden target, a handful of steps, fp32 only; its numbers mean nothing."""
    short = dict(total_steps=4, eval_every=4, eval_examples=4, checkpoint_every=0, test_examples=4,
                 max_target_length=8, max_input_length=48, preset="tiny")
    return LLMPipelineConfig(preset="tiny", draft=DraftShape(layers=1), garden_target=DraftShape(layers=2),
                             garden_draft=DraftShape(layers=1),
                             feature_draft=FeatureDraftConfig(head_tokens=64, train_prompts=4, response_tokens=8,
                                                              prompt_tokens=24, steps=4, batch_size=2),
                             distill_draft=_distill(4).model_copy(update=short),
                             distill_garden_target=_distill(4, "target").model_copy(update=short),
                             distill_garden_draft=_distill(4).model_copy(update=short),
                             sd_benchmark=_sd().model_copy(update=dict(preset="tiny", num_prompts=2, prompt_tokens=24,
                                                                       max_new_tokens=8, gammas=[2], repeats=1,
                                                                       warmup=0, precisions=["fp32"],
                                                                       batch_sizes=[])))


def small() -> LLMPipelineConfig:
    """The same models on one GPU: 1,000 distillation steps of 16 sequences of up to 64 new tokens, bf16; the SD
    benchmark on the GPU (50 prompts, bf16 weights; int8 is a CPU path)."""
    gpu = dict(preset="small", total_steps=1000, batch_size=16, max_target_length=64, max_input_length=256,
               eval_every=250, eval_examples=64, checkpoint_every=250, test_examples=200, use_gpu=True,
               threads_per_worker=0)
    return LLMPipelineConfig(preset="small", distill_draft=_distill(1000).model_copy(update=gpu),
                             distill_garden_target=_distill(1000, "target").model_copy(update=gpu),
                             distill_garden_draft=_distill(1000).model_copy(update=gpu),
                             sd_benchmark=_sd().model_copy(update=dict(preset="small", num_prompts=50, prompt_tokens=256,
                                                                       max_new_tokens=128, gammas=[2, 3, 4, 5],
                                                                       repeats=3, device="cuda", dtype="bfloat16",
                                                                       precisions=["fp32"], batch_sizes=[1, 4, 16])))


def base() -> LLMPipelineConfig:
    """SmolLM2-1.7B-Instruct from the hub (it needs HF_HUB_OFFLINE=0 and a GPU), a 4-layer draft and a garden
    target of 12 of its 24 layers; otherwise the ``small`` settings."""
    return small().model_copy(update=dict(preset="base", model="hf:HuggingFaceTB/SmolLM2-1.7B-Instruct",
                                          register_as="smollm2-1.7b-instruct", draft=DraftShape(layers=4),
                                          garden_target=DraftShape(layers=12), garden_draft=DraftShape(layers=2)))


PRESETS = {"llm": llm, "tiny": tiny, "small": small, "base": base}
