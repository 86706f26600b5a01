"""Prefect task: DistillSpec distillation (teacher -> student) on Ray Train workers; register with aliases."""

from __future__ import annotations

import json
from typing import Any

from prefect import task

from engine.config.distill import DistillConfig
from tasks import tracking
from tasks.downstream import example_inputs
from tasks.evaluate import headline
from tasks.runtime.tracked_run import resumable_run


def alias_for(cfg: DistillConfig) -> str:
    if cfg.mode == "target":
        return "target"
    mix = "-".join(f"{k}{int(round(v * 100))}" for k, v in sorted(cfg.data_mix.items()) if v > 0)
    return f"draft-distillspec-{cfg.divergence}-{mix}"


@task(name="distill")
def distill(cfg: DistillConfig, teacher_dir: str, student_dir: str, task_dir: str, *, teacher_ref: str,
            student_ref: str, parent_run_id: str | None = None, experiment: str = "distill",
            run_name: str | None = None) -> dict[str, Any]:
    from engine.distill_worker import check_pair, distill_worker
    from engine.finetune_worker import load_model_and_tokenizer

    t, _ = load_model_and_tokenizer(teacher_dir)
    s, _ = load_model_and_tokenizer(student_dir)
    check_pair(t, s, f"teacher {teacher_ref} vs student {student_ref}")  # before any work
    del t, s
    alias = alias_for(cfg)
    lineage = {"teacher": teacher_ref, "student_init": student_ref, "task": cfg.task.name,
               "divergence": cfg.divergence, "data_mix": json.dumps(cfg.data_mix, sort_keys=True)}
    lineage_tags = {f"lineage.{k}": v for k, v in lineage.items()}
    tags = {"stage": f"distill_{cfg.mode}", "alias": alias, "preset": cfg.preset, **lineage_tags}
    inputs = {"teacher_dir": teacher_dir, "student_dir": student_dir, "task_dir": task_dir}
    with resumable_run("distill", cfg, inputs, worker=distill_worker, experiment=experiment,
                       run_name=run_name or f"{cfg.mode}-{alias}", tags=tags, parent_run_id=parent_run_id,
                       describe=f"distilling {teacher_ref} -> {student_ref} ({cfg.divergence}, "
                                f"data {cfg.data_mix})") as run:
        last = run.state["evals"][-1] if run.state["evals"] else {}
        tracking.log_metrics(run.run_id, {f"final.{k}": v for k, v in last.items() if isinstance(v, (int, float))})
        test = evaluate_test(str(run.model_dir), task_dir, run.run_id, cfg)
        name = cfg.register_as or f"t5-{cfg.preset}-{cfg.task.name}"
        model_uri = tracking.register_model(run.run_id, run.model_dir, name, aliases=[alias],
                                            tags={"stage": f"distill_{cfg.mode}", "alias": alias, **lineage_tags},
                                            input_example=example_inputs(task_dir),
                                            max_new_tokens=cfg.max_target_length,
                                            description=f"{cfg.mode} distilled from {teacher_ref} (student "
                                                        f"{student_ref}; {cfg.divergence}, data "
                                                        f"{cfg.data_mix}, {run.state['step']} steps); "
                                                        + headline(test),
                                            metrics=test)
    return {"run_id": run.run_id, "model_uri": model_uri, "model_dir": str(run.model_dir), "alias": alias,
            "final": last, "metrics": test}


def evaluate_test(model_dir: str, task_dir: str, run_id: str, cfg: DistillConfig) -> dict[str, float]:
    """The student's test-split quality beside the task's trivial baseline, logged as ``test.*`` (decoded with
    ``cfg``'s batch size, lengths, test examples and threads)."""
    from tasks.evaluate import evaluate_and_log

    return evaluate_and_log(model_dir, task_dir, run_id, batch_size=cfg.batch_size,
                            max_input_length=cfg.max_input_length, max_new_tokens=cfg.max_target_length,
                            max_examples=cfg.test_examples, threads=cfg.threads_per_worker or None)
