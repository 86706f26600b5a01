"""The DistillSpec study's config and presets (``flows.distillspec_study`` wires the run)."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from engine.config import distill as distill_mod
from engine.config import sd_benchmark as sd_mod
from engine.config.base import FlowConfig
from engine.config.paths import ModelRef
from engine.config.task import TaskSpec

__all__ = ["PRESETS", "StudyConfig", "base", "small", "tiny"]


class StudyConfig(FlowConfig):
    preset: str = "tiny"
    target: Optional[ModelRef] = Field(None, description="the target model (URI or folder)")
    draft: Optional[ModelRef] = Field(None, description="the undistilled draft (URI or folder); also the student's init")
    teacher: Optional[ModelRef] = Field(None, description="optional large teacher for the model-garden row")
    task: TaskSpec = Field(default_factory=lambda: TaskSpec(name="bbc_topic"))
    divergences: list[str] = Field(["fkl", "tvd"], min_length=1)
    data_sources: dict[str, dict[str, float]] = Field(
        {"fixed": {"fixed": 1.0}, "onpolicy": {"student": 1.0}}, description="name -> data_mix")
    distill: distill_mod.DistillConfig = Field(default_factory=distill_mod.tiny)
    sd: sd_mod.SDBenchmarkConfig = Field(default_factory=lambda: sd_mod.tiny().model_copy(
        update={"lenience": [1.0], "modes": ["greedy", "sampling"]}))
    experiment: str = "distillspec-study"


def tiny() -> StudyConfig:
    return StudyConfig()


def small() -> StudyConfig:
    return StudyConfig(preset="small", divergences=["fkl", "rkl", "jsd", "tvd"],
                       data_sources={"fixed": {"fixed": 1.0}, "teacher": {"teacher": 1.0},
                                     "onpolicy": {"student": 1.0}, "mixed": {"fixed": 0.5, "student": 0.5}},
                       distill=distill_mod.small(), sd=sd_mod.small())


def base() -> StudyConfig:
    return small().model_copy(update={"preset": "base", "distill": distill_mod.base(), "sd": sd_mod.base()})


PRESETS = {"tiny": tiny, "small": small, "base": base}
