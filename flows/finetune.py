"""Fine-tuning flow: a pretrained T5 (registered model or folder) on a downstream task, on Ray Train workers.

    python -m flows.finetune --preset tiny --set model=models:/t5-tiny-spactor/1 --set task.name=bbc_topic
    python -m flows.finetune --preset tiny --set model=/path/to/save_pretrained --set init=random   # from scratch
    python -m flows.finetune --preset tiny --set 'task={"name": "mytask", "jsonl": {"train": "a.jsonl", "test": "b.jsonl"}}'

Early stopping on validation loss, checkpoints and resume as in pretraining; the test split is evaluated
at the end (ROUGE or accuracy/macro-F1) and the model registered with its task and lineage in tags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from prefect import flow

from engine.config.finetune import PRESETS, FinetuneConfig
from flows._cli import build_config, documented, preset_type, run_cli, run_footer


Preset = preset_type(PRESETS)


@dataclass
class FinetuneResult:
    run_id: str
    model_uri: str
    model_dir: str
    metrics: dict
    task: str

    def summary(self) -> str:
        m = ", ".join(f"{k}={v:.4f}" for k, v in self.metrics.items() if not k.endswith(("examples", "_per_s")))
        return f"finetune {self.task}: {m}\n" + run_footer(self.run_id, model_uri=self.model_uri)


@flow(name="finetune")
@documented()
def finetune_flow(preset: Preset = "tiny", overrides: Optional[dict[str, Any]] = None,
                  config: Optional[FinetuneConfig] = None, parent_run_id: Optional[str] = None,
                  run_name: Optional[str] = None) -> FinetuneResult:
    """Fine-tune, evaluate and register a T5; ``run_name`` names the MLflow run (default ``<task>-<init>``)."""
    from tasks.finetune import finetune, prepare_task, resolve

    cfg = config or build_config(FinetuneConfig, PRESETS, preset, overrides)
    if cfg.model is None:
        raise ValueError("set model (a models:/ URI or a save_pretrained folder): --set model=models:/t5-tiny-spactor/1")
    model_dir = resolve(cfg.model)
    task_dir = prepare_task(cfg.task)
    out = finetune(cfg, model_dir, task_dir, model_ref=cfg.model, parent_run_id=parent_run_id,
                   run_name=run_name)
    return FinetuneResult(**out)


if __name__ == "__main__":
    run_cli(lambda c: finetune_flow(config=c), FinetuneConfig, PRESETS,
            description="Fine-tune a T5 on a downstream task (Ray Train), evaluate it and register it.")
