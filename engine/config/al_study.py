"""The active-learning study's config and presets (``flows.al_study`` wires the run)."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from engine.config import active_learning as al_mod
from engine.config.base import FlowConfig

__all__ = ["PRESETS", "ALStudyConfig"]


class ALStudyConfig(FlowConfig):
    preset: str = "tiny"
    experiment: str = "thai-active-learning"
    name: Optional[str] = Field(None, description="study name: seeds run in folders <name>-seed<seed> "
                                "(default al-study-<preset>); a rerun reuses finished seeds")
    active_learning: al_mod.ActiveLearningConfig = Field(default_factory=al_mod.tiny)
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="one active-learning run per seed")
    full_pool: bool = Field(True, description="train one segmenter on the whole gold pool (the curves' ceiling)")
    goal_fraction: float = Field(0.7, gt=0.0, le=1.0, description="goal: reach random's final F1 with at most "
                                 "this fraction of its characters")


def _preset(name: str):
    def make() -> ALStudyConfig:
        return ALStudyConfig(preset=name, active_learning=al_mod.PRESETS[name]())

    make.__name__ = name
    return make


PRESETS = {name: _preset(name) for name in al_mod.PRESETS}
