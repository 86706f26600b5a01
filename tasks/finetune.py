"""Prefect tasks: build a downstream task's data, fine-tune on Ray Train workers, register with lineage."""

from __future__ import annotations

from typing import Any

from prefect import task

from engine.config.finetune import FinetuneConfig
from engine.config.task import TaskSpec
from tasks import tracking
from tasks.downstream import example_inputs
from tasks.evaluate import headline
from tasks.runtime.tracked_run import resumable_run
from tasks.runtime.orchestration import retry_transient


@task(name="prepare-task-data", retries=1, retry_condition_fn=retry_transient, retry_delay_seconds=1)
def prepare_task(spec: TaskSpec) -> str:
    from tasks.downstream import task_dir

    return str(task_dir(spec))


@task(name="resolve-model", retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=2)
def resolve(ref: str) -> str:
    """A local folder for a T5 reference (folder, models:/ or runs:/ URI); refuses a folder that is not a model."""
    folder = tracking.resolve_model(ref)
    if folder.is_dir() and not (folder / "config.json").exists():
        raise FileNotFoundError(f"'{ref}' is a folder but not a model: no config.json (pass a save_pretrained "
                                "folder or a models:/ URI)")
    return str(folder)


@task(name="finetune")
def finetune(cfg: FinetuneConfig, model_dir: str, task_dir: str, *, model_ref: str, parent_run_id: str | None = None,
             experiment: str = "finetune", run_name: str | None = None) -> dict[str, Any]:
    from engine.finetune_worker import finetune_worker, load_model_and_tokenizer

    load_model_and_tokenizer(model_dir, cfg.init)  # refuse a mismatched tokenizer before any work
    task_name = cfg.task.name
    lineage = {"pretrained_model": model_ref, "init": cfg.init, "task": task_name, "task_data": task_dir,
               "pretrain_run_id": _source_run(model_ref)}
    lineage_tags = {f"lineage.{k}": v for k, v in lineage.items() if v}
    tags = {"stage": "finetune", "task": task_name, "preset": cfg.preset, **lineage_tags}
    with resumable_run("finetune", cfg, {"model_dir": model_dir, "task_dir": task_dir}, worker=finetune_worker,
                       experiment=experiment, run_name=run_name or f"{task_name}-{cfg.init}", tags=tags,
                       parent_run_id=parent_run_id,
                       describe=f"fine-tuning {model_ref} on {task_name} ({cfg.init} init)") as run:
        tracking.log_metrics(run.run_id, {"steps_trained": run.state["step"],
                                          "stopped_early": float(run.state["stopped_early"])})
        metrics = _evaluate_final(str(run.model_dir), task_dir, run.run_id, cfg)
        name = cfg.register_as or f"t5-{cfg.preset}-{task_name}" + ("" if cfg.init == "pretrained" else "-scratch")
        model_uri = tracking.register_model(run.run_id, run.model_dir, name,
                                            tags={"task": task_name, "stage": "finetune", "preset": cfg.preset,
                                                  **lineage_tags},
                                            input_example=example_inputs(task_dir),
                                            max_new_tokens=cfg.max_target_length,
                                            description=f"{model_ref} fine-tuned on {task_name} for "
                                                        f"{run.state['step']} steps ({cfg.preset} preset); "
                                                        + headline(metrics),
                                            metrics=metrics)
    return {"run_id": run.run_id, "model_uri": model_uri, "model_dir": str(run.model_dir), "metrics": metrics,
            "task": task_name}


def _evaluate_final(model_dir: str, task_dir: str, run_id: str, cfg: FinetuneConfig) -> dict[str, float]:
    from tasks.evaluate import evaluate_and_log

    return evaluate_and_log(model_dir, task_dir, run_id, batch_size=cfg.eval_batch_size, num_beams=cfg.num_beams,
                            max_input_length=cfg.max_input_length, max_new_tokens=cfg.max_target_length,
                            max_examples=cfg.test_examples, threads=cfg.threads_per_worker or None)


def _source_run(model_ref: str) -> str | None:
    """The MLflow run that produced a registered model (lineage), or None for plain folders."""
    info = tracking.model_version_info(model_ref)
    return info["run_id"] if info else None
