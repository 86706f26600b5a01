"""The model import's config and presets (``flows.import_model`` wires the run)."""

from __future__ import annotations

from pydantic import Field

from engine.config.base import FlowConfig

__all__ = ["PRESETS", "ImportModelConfig", "tiny"]


class ImportModelConfig(FlowConfig):
    ref: str = Field("smollm2", description="smollm2 (packaged), gguf:PATH, hf:ORG/NAME (hub allowed), or a folder")
    register_as: str = Field("smollm2-135m-instruct", description="registered model name")
    experiment: str = "import"


def tiny() -> ImportModelConfig:
    """The packaged SmolLM2-135M-Instruct (offline); every preset imports it unless ``ref`` says otherwise."""
    return ImportModelConfig()


PRESETS = {"tiny": tiny, "small": tiny, "base": tiny}
