"""Import a decoder-only LM into the model registry: the packaged SmolLM2, a GGUF file, a hub id or a folder.

    python -m flows.import_model --set ref=smollm2 --set register_as=smollm2-135m-instruct
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from prefect import flow

from engine.config.import_model import PRESETS, ImportModelConfig
from flows._cli import build_config, documented, preset_type, run_cli, run_footer


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
