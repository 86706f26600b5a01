"""The fine-tuning run's config and presets (``flows.finetune`` wires the run)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from engine.config.base import TrainRunFields, optimiser_section
from engine.config.paths import ModelRef
from engine.config.task import TaskSpec

__all__ = ["PRESETS", "FinetuneConfig", "base", "laptop", "small", "tiny"]


class FinetuneConfig(TrainRunFields, optimiser_section(total_steps=150, lr=1e-3, warmup_steps=10, schedule="linear")):
    preset: str = "tiny"
    model: Optional[ModelRef] = Field(None, description="models:/name/version, models:/name@alias, or a save_pretrained folder")
    init: Literal["pretrained", "random"] = Field("pretrained", description="random = same architecture, no pretraining")
    task: TaskSpec = Field(default_factory=TaskSpec)
    batch_size: int = Field(16, ge=1)
    grad_accum: int = Field(1, ge=1)
    dropout_rate: float = Field(0.1, ge=0.0, lt=1.0)
    max_input_length: int = Field(128, ge=4)
    max_target_length: int = Field(24, ge=2)
    eval_every: int = Field(25, ge=0)
    eval_examples: int = Field(128, ge=1, description="validation examples for the early-stopping loss")
    early_stop_patience: int = Field(3, ge=0, description="stop after this many evaluations without improvement")
    checkpoint_every: int = Field(50, ge=0)
    log_every: int = Field(10, ge=1)
    test_examples: Optional[int] = Field(200, ge=1, description="test examples to decode (None = all)")
    eval_batch_size: int = Field(32, ge=1)
    num_beams: int = Field(1, ge=1)


def tiny() -> FinetuneConfig:
    return FinetuneConfig(threads_per_worker=1)  # tiny models: one thread is faster than two


def laptop() -> FinetuneConfig:
    """Text-normalisation fine-tuning on 2 cores: 4,000 steps of 32 short examples at lr 3e-3 (linear decay),
    early stopping on validation loss, every test example decoded.

    Measured (docs/results.md): a d96 model with 6 heads of 16 learns the laptop task at lr 3e-3, while d128 with
    heads of 32 and d256-384 models plateau; with the synthetic digit copies of the laptop task a d96 3+9 teacher
    reached test exact match 0.64 after 3,000 steps (0.3 s a step) with its validation loss still falling."""
    return FinetuneConfig(preset="laptop", total_steps=4000, batch_size=32, lr=3e-3, warmup_steps=50,
                          max_input_length=64, max_target_length=64, eval_every=500, eval_examples=128,
                          checkpoint_every=500, test_examples=None)


def small() -> FinetuneConfig:
    return FinetuneConfig(preset="small", total_steps=3000, batch_size=64, lr=5e-4, max_input_length=512,
                          max_target_length=32, eval_every=250, eval_examples=1000, checkpoint_every=500,
                          test_examples=None, num_beams=4, use_gpu=True)


def base() -> FinetuneConfig:
    return FinetuneConfig(preset="base", total_steps=20000, batch_size=128, lr=3e-4, max_input_length=512,
                          max_target_length=64, eval_every=1000, eval_examples=2000, checkpoint_every=1000,
                          test_examples=None, num_beams=4, use_gpu=True, num_workers=8)


PRESETS = {"tiny": tiny, "laptop": laptop, "small": small, "base": base}
