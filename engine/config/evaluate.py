"""The evaluation run's config and presets (``flows.evaluate`` wires the run)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from engine.config.base import FlowConfig
from engine.config.paths import ModelRef
from engine.config.task import TaskSpec

__all__ = ["PRESETS", "EvaluateConfig", "base", "small", "tiny"]


class EvaluateConfig(FlowConfig):
    preset: str = "tiny"
    model: Optional[ModelRef] = Field(None, description="models:/name/version, models:/name@alias, or a folder")
    task: TaskSpec = Field(default_factory=TaskSpec)
    split: Literal["test", "validation", "train"] = "test"
    batch_size: int = Field(32, ge=1)
    num_beams: int = Field(1, ge=1)
    max_input_length: int = Field(128, ge=4)
    max_new_tokens: int = Field(24, ge=1)
    max_examples: Optional[int] = Field(200, ge=1)
    experiment: str = "evaluate"


def tiny() -> EvaluateConfig:
    return EvaluateConfig()


def small() -> EvaluateConfig:
    return EvaluateConfig(preset="small", max_input_length=512, max_new_tokens=32, num_beams=4, max_examples=None)


def base() -> EvaluateConfig:
    return EvaluateConfig(preset="base", max_input_length=512, max_new_tokens=64, num_beams=4, max_examples=None,
                          batch_size=64)


PRESETS = {"tiny": tiny, "small": small, "base": base}
