"""The distillation run's config and presets, both modes (``flows.distill`` wires the run)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator

from engine.config.base import TrainRunFields, optimiser_section
from engine.config.paths import ModelRef
from engine.config.task import TaskSpec

__all__ = ["PRESETS", "DistillConfig", "base", "laptop", "small", "tiny"]


class DistillConfig(TrainRunFields, optimiser_section(total_steps=100, lr=1e-3, warmup_steps=5, schedule="linear",
                                                     weight_decay=None)):
    preset: str = "tiny"
    mode: Literal["target", "draft"] = "draft"
    teacher: Optional[ModelRef] = Field(None, description="teacher model (URI or folder): the big model, or the target")
    student: Optional[ModelRef] = Field(None, description="student initialisation (URI or folder)")
    task: TaskSpec = Field(default_factory=TaskSpec)
    divergence: Literal["fkl", "rkl", "jsd", "tvd"] = "fkl"
    beta: float = Field(0.5, gt=0.0, lt=1.0, description="JSD weight")
    temperature: float = Field(1.0, gt=0.0, description="softmax temperature of the divergence")
    reduction: Literal["token", "sequence"] = Field(
        "token", description="average the divergence per token (default) or per sequence first (DistillSpec's)")
    data_mix: dict[str, float] = Field({"student": 1.0}, description="fractions of fixed / teacher / student data")
    sample_temperature: float = Field(1.0, gt=0.0, description="sampling temperature of generated data (deployment's)")
    batch_size: int = Field(16, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_input_length: int = Field(128, ge=4)
    max_target_length: int = Field(24, ge=2)
    eval_every: int = Field(25, ge=0)
    eval_examples: int = Field(32, ge=1)
    checkpoint_every: int = Field(50, ge=0)
    log_every: int = Field(10, ge=1)
    test_examples: Optional[int] = Field(200, ge=1, description="test examples the final student decodes (None = all)")

    @field_validator("data_mix")
    @classmethod
    def _mix(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = set(v) - {"fixed", "teacher", "student"}
        if unknown:
            raise ValueError(f"unknown data sources {sorted(unknown)}; use fixed, teacher, student")
        if any(x < 0 for x in v.values()) or sum(v.values()) <= 0:
            raise ValueError("data_mix fractions must be >= 0 and not all zero")
        return v


def tiny() -> DistillConfig:
    return DistillConfig(threads_per_worker=1)  # tiny models: one thread is faster than two


def laptop() -> DistillConfig:
    """Distillation on 2 cores: 1,500 steps of 32 on-policy sequences of the short text-normalisation examples at
    lr 3e-3 (the rate the small shapes learn at), acceptance measured every 500 (the target's distillation is set
    in engine.config.pipeline). Samples stop at 48 tokens: the laptop task's longest label is 44."""
    return DistillConfig(preset="laptop", total_steps=1500, batch_size=32, lr=3e-3, warmup_steps=50,
                         max_input_length=64, max_target_length=48, eval_every=500, eval_examples=64,
                         checkpoint_every=500, test_examples=None)


def small() -> DistillConfig:
    return DistillConfig(preset="small", total_steps=5000, batch_size=64, lr=5e-4, max_input_length=512,
                         max_target_length=64, eval_every=500, eval_examples=256, checkpoint_every=500, use_gpu=True)


def base() -> DistillConfig:
    return DistillConfig(preset="base", total_steps=30000, batch_size=128, lr=3e-4, max_input_length=512,
                         max_target_length=64, eval_every=2000, eval_examples=512, checkpoint_every=2000,
                         use_gpu=True, num_workers=8)


PRESETS = {"tiny": tiny, "laptop": laptop, "small": small, "base": base}
