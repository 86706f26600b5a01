"""Prefect tasks: build a downstream task's data, fine-tune on Ray Train workers, register with lineage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from tasks import tracking
from tasks.env import state_dir
from tasks.pretrain import mark_interrupted_runs, run_key


@task(name="prepare-task-data", retries=1, retry_delay_seconds=1)
def prepare_task(spec: dict[str, Any]) -> str:
    from tasks.downstream import TaskSpec, task_dir

    return str(task_dir(TaskSpec(**spec)))


@task(name="resolve-model", retries=2, retry_delay_seconds=2)
def resolve(ref: str) -> str:
    return str(tracking.resolve_model(ref))


@task(name="finetune")
def finetune(cfg: dict[str, Any], model_dir: str, task_dir: str, *, model_ref: str, parent_run_id: str | None = None,
             experiment: str = "finetune") -> dict[str, Any]:
    from tasks.finetune_worker import finetune_worker, load_model_and_tokenizer
    from tasks.ray_train import fit

    logger = get_run_logger()
    load_model_and_tokenizer(model_dir, cfg["init"])  # refuse a mismatched tokenizer before any work
    task_name = cfg["task"]["name"]
    key = run_key("finetune", cfg, model_dir, task_dir)
    root = Path(cfg.get("output_root") or state_dir() / "runs") / key
    final = root / "checkpoints" / "final"
    worker_cfg = {**cfg, "model_dir": model_dir, "task_dir": task_dir, "checkpoint_dir": str(root / "checkpoints")}
    previous = mark_interrupted_runs(experiment, key)
    lineage = {"pretrained_model": model_ref, "init": cfg["init"], "task": task_name, "task_data": task_dir,
               "pretrain_run_id": _source_run(model_ref)}
    tags = {"stage": "finetune", "task": task_name, "run_key": key, "preset": cfg["preset"],
            **{f"lineage.{k}": v for k, v in lineage.items() if v}}
    if previous:
        tags["resumed_from"] = previous
    with tracking.start_run(experiment, f"{task_name}-{cfg['init']}", params=cfg, tags=tags,
                            parent_run_id=parent_run_id) as run_id:
        worker_cfg["mlflow_run_id"] = run_id
        if not (final / "trainer_state.json").exists():
            logger.info("fine-tuning %s on %s (%s init) on %d Ray worker(s)", model_ref, task_name, cfg["init"],
                        cfg["num_workers"])
            fit(finetune_worker, worker_cfg, name=key, storage_path=root / "ray", num_workers=cfg["num_workers"],
                use_gpu=cfg["use_gpu"], max_failures=cfg["max_failures"])
        state = json.loads((final / "trainer_state.json").read_text())
        tracking.log_metrics(run_id, {"steps_trained": state["step"], "stopped_early": float(state["stopped_early"])})
        metrics = _evaluate_final(str(final / "model"), task_dir, run_id, cfg)
        name = cfg["register_as"] or f"t5-{cfg['preset']}-{task_name}" + ("" if cfg["init"] == "pretrained" else "-scratch")
        model_uri = tracking.register_model(run_id, final / "model", name,
                                            tags={"task": task_name, "stage": "finetune", "preset": cfg["preset"],
                                                  **{f"lineage.{k}": v for k, v in lineage.items() if v}})
    return {"run_id": run_id, "model_uri": model_uri, "model_dir": str(final / "model"), "metrics": metrics,
            "task": task_name}


def _evaluate_final(model_dir: str, task_dir: str, run_id: str, cfg: dict[str, Any]) -> dict[str, float]:
    from tasks.evaluate import evaluate_and_log

    return evaluate_and_log(model_dir, task_dir, run_id, batch_size=cfg["eval_batch_size"], num_beams=cfg["num_beams"],
                            max_input_length=cfg["max_input_length"], max_new_tokens=cfg["max_target_length"],
                            max_examples=cfg["test_examples"], threads=cfg.get("threads_per_worker") or None)


def _source_run(model_ref: str) -> str | None:
    """The MLflow run that produced a registered model (lineage), or None for plain folders."""
    info = tracking.model_version_info(model_ref)
    return info["run_id"] if info else None
