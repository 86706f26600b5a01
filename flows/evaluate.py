"""Evaluation flow: decode a task split with a T5 and log ROUGE / accuracy / macro-F1 to MLflow.

    python -m flows.evaluate --preset tiny --set model=models:/t5-tiny-bbc_topic/1 --set task.name=bbc_topic
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from prefect import flow

from engine.config.evaluate import PRESETS, EvaluateConfig
from flows._cli import build_config, documented, preset_type, run_cli, run_footer


Preset = preset_type(PRESETS)


@dataclass
class EvaluateResult:
    run_id: str
    metrics: dict

    def summary(self) -> str:
        m = "\n".join(f"  {k}: {v:.4f}" for k, v in self.metrics.items())
        return f"evaluation:\n{m}\n" + run_footer(self.run_id)


@flow(name="evaluate")
@documented()
def evaluate_flow(preset: Preset = "tiny", overrides: Optional[dict[str, Any]] = None,
                  config: Optional[EvaluateConfig] = None, parent_run_id: Optional[str] = None) -> EvaluateResult:
    from tasks import tracking
    from tasks.evaluate import evaluate
    from tasks.finetune import prepare_task, resolve

    cfg = config or build_config(EvaluateConfig, PRESETS, preset, overrides)
    if cfg.model is None:
        raise ValueError("set model (a models:/ URI or a save_pretrained folder)")
    model_dir = resolve(cfg.model)
    task_dir = prepare_task(cfg.task)
    with tracking.start_run(cfg.experiment, f"{cfg.task.name}-{cfg.split}", params=cfg.model_dump(),
                            tags={"stage": "evaluate", "task": cfg.task.name, "model": cfg.model},
                            parent_run_id=parent_run_id) as run_id:
        metrics = evaluate(model_dir, task_dir, run_id, split=cfg.split, batch_size=cfg.batch_size,
                           num_beams=cfg.num_beams, max_input_length=cfg.max_input_length,
                           max_new_tokens=cfg.max_new_tokens, max_examples=cfg.max_examples)
    return EvaluateResult(run_id, metrics)


if __name__ == "__main__":
    run_cli(lambda c: evaluate_flow(config=c), EvaluateConfig, PRESETS,
            description="Evaluate a T5 on a downstream task split (batched generation, ROUGE or accuracy/macro-F1).")
