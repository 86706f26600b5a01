"""DistillSpec distillation flow, two modes of one flow:

* ``mode=target``: a larger fine-tuned teacher -> the target size (the "model garden" step);
* ``mode=draft``: the target -> a small draft, aligned for speculative decoding (DistillSpec proper).

    python -m flows.distill --preset tiny --set mode=draft --set teacher=models:/t5-tiny-bbc_topic@target \
        --set student=models:/t5-tiny-draft/1 --set divergence=tvd --set 'data_mix={"student": 1.0}'

Data: ``data_mix`` gives the fraction of each source per batch: ``fixed`` (ground truth), ``teacher``
(sampled from the teacher), ``student`` (on-policy samples of the current student); lambda = the
``student`` fraction. Acceptance rate and task quality are logged every ``eval_every`` steps; the final
model is registered under the task's name with an alias that tells the story (``target``,
``draft-distillspec-<divergence>-<data>``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from prefect import flow

from engine.config.distill import PRESETS, DistillConfig
from flows._cli import build_config, documented, preset_type, run_cli, run_footer


Preset = preset_type(PRESETS)


@dataclass
class DistillResult:
    run_id: str
    model_uri: str
    model_dir: str
    alias: str
    final: dict
    metrics: dict = field(default_factory=dict)  # test split, with the trivial baseline beside it

    def summary(self) -> str:
        m = ", ".join(f"{k}={v:.4f}" for k, v in self.final.items() if isinstance(v, float))
        return f"distill ({self.alias}): {m}\n" + run_footer(self.run_id, model_uri=self.model_uri)


@flow(name="distill")
@documented()
def distill_flow(preset: Preset = "tiny", overrides: Optional[dict[str, Any]] = None,
                 config: Optional[DistillConfig] = None, parent_run_id: Optional[str] = None,
                 run_name: Optional[str] = None) -> DistillResult:
    """Distil a student from a teacher and register it; ``run_name`` names the MLflow run (default
    ``<mode>-<alias>``)."""
    from tasks.distill import distill
    from tasks.finetune import prepare_task, resolve

    cfg = config or build_config(DistillConfig, PRESETS, preset, overrides)
    if cfg.teacher is None or cfg.student is None:
        raise ValueError("set teacher and student (models:/ URIs or save_pretrained folders)")
    teacher_dir, student_dir = resolve(cfg.teacher), resolve(cfg.student)
    task_dir = prepare_task(cfg.task)
    out = distill(cfg, teacher_dir, student_dir, task_dir, teacher_ref=cfg.teacher,
                  student_ref=cfg.student, parent_run_id=parent_run_id, run_name=run_name)
    return DistillResult(**out)


if __name__ == "__main__":
    run_cli(lambda c: distill_flow(config=c), DistillConfig, PRESETS,
            description="Distil a teacher into a student (DistillSpec): mode=target or mode=draft.")
