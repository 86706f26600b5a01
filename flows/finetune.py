"""Fine-tuning flow: a pretrained T5 (registered model or folder) on a downstream task, on Ray Train workers.

    python -m flows.finetune --preset tiny --set model=models:/t5-tiny-spactor/1 --set task.name=bbc_topic
    python -m flows.finetune --preset tiny --set model=/path/to/save_pretrained --set init=random   # from scratch
    python -m flows.finetune --preset tiny --set 'task={"name": "mytask", "jsonl": {"train": "a.jsonl", "test": "b.jsonl"}}'

Early stopping on validation loss, checkpoints and resume as in pretraining; the test split is evaluated
at the end (ROUGE or accuracy/macro-F1) and the model registered with its task and lineage in tags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

from prefect import flow
from pydantic import Field

from engine.config import TrainRunFields, optimiser_section
from engine.paths import ModelRef
from flows._cli import build_config, documented, preset_type, run_cli, run_footer
from tasks.downstream import TaskSpec


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
    """Text-normalisation fine-tuning on 2 cores: 2,500 steps of 32 short examples at lr 3e-3 (linear decay),
    early stopping on validation loss, every test example decoded.

    Measured 2026-12-06 (docs/results.md): a d96 3+3 model with 6 heads of 16 learns the laptop task at lr
    3e-3 (test exact match 0.20 after 1,500 steps, the loss still falling), while a d128 3+3 one with 4 heads of
    32 reached only 0.025 after 3,000 steps and d256-384 models with 8-9 layers plateau near loss 3."""
    return FinetuneConfig(preset="laptop", total_steps=2500, batch_size=32, lr=3e-3, warmup_steps=50,
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
    task_dir = prepare_task(cfg.task.model_dump())
    out = finetune(cfg.model_dump(), model_dir, task_dir, model_ref=cfg.model, parent_run_id=parent_run_id,
                   run_name=run_name)
    return FinetuneResult(**out)


if __name__ == "__main__":
    run_cli(lambda c: finetune_flow(config=c), FinetuneConfig, PRESETS,
            description="Fine-tune a T5 on a downstream task (Ray Train), evaluate it and register it.")
