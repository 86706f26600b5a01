"""Import a decoder-only LM into the model registry: the packaged SmolLM2, a GGUF file, a hub id or a folder.

    python -m flows.import_model --set ref=smollm2 --set register_as=smollm2-135m-instruct
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from prefect import flow
from pydantic import Field

from engine.config import FlowConfig
from flows._cli import build_config, documented, preset_type, run_cli, run_footer


class ImportModelConfig(FlowConfig):
    ref: str = Field("smollm2", description="smollm2 (packaged), gguf:PATH, hf:ORG/NAME (hub allowed), or a folder")
    register_as: str = Field("smollm2-135m-instruct", description="registered model name")
    experiment: str = "import"


def tiny() -> ImportModelConfig:
    """The packaged SmolLM2-135M-Instruct (offline); every preset imports it unless ``ref`` says otherwise."""
    return ImportModelConfig()


PRESETS = {"tiny": tiny, "small": tiny, "base": tiny}
Preset = preset_type(PRESETS)


@dataclass
class ImportModelResult:
    run_id: str
    model_uri: str

    def summary(self) -> str:
        return "imported\n" + run_footer(self.run_id, model_uri=self.model_uri)


@flow(name="import-model")
@documented()
def import_model_flow(preset: Preset = "tiny", overrides: Optional[dict[str, Any]] = None,
                      config: Optional[ImportModelConfig] = None, parent_run_id: Optional[str] = None,
                      run_name: Optional[str] = None) -> ImportModelResult:
    """Register a decoder-only LM once, so later stages take it as models:/NAME/VERSION."""
    from tasks.import_model import import_model

    cfg = config or build_config(ImportModelConfig, PRESETS, preset, overrides)
    out = import_model(cfg.ref, cfg.register_as, experiment=cfg.experiment, parent_run_id=parent_run_id,
                       run_name=run_name)
    return ImportModelResult(**out)


if __name__ == "__main__":
    run_cli(lambda c: import_model_flow(config=c), ImportModelConfig, PRESETS,
            description="Import a decoder-only LM (packaged SmolLM2, gguf: file, hub id, folder) into the registry.")
