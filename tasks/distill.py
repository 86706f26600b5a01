"""Prefect task: DistillSpec distillation (teacher -> student) on Ray Train workers; register with aliases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from tasks import tracking
from tasks.env import state_dir
from tasks.pretrain import mark_interrupted_runs, run_key


def alias_for(cfg: dict[str, Any]) -> str:
    if cfg["mode"] == "target":
        return "target"
    mix = "-".join(f"{k}{int(round(v * 100))}" for k, v in sorted(cfg["data_mix"].items()) if v > 0)
    return f"draft-distillspec-{cfg['divergence']}-{mix}"


@task(name="distill")
def distill(cfg: dict[str, Any], teacher_dir: str, student_dir: str, task_dir: str, *, teacher_ref: str,
            student_ref: str, parent_run_id: str | None = None, experiment: str = "distill") -> dict[str, Any]:
    from tasks.distill_worker import check_pair, distill_worker
    from tasks.finetune_worker import load_model_and_tokenizer
    from tasks.ray_train import fit

    logger = get_run_logger()
    t, _ = load_model_and_tokenizer(teacher_dir)
    s, _ = load_model_and_tokenizer(student_dir)
    check_pair(t, s, f"teacher {teacher_ref} vs student {student_ref}")  # before any work
    del t, s
    key = run_key("distill", cfg, teacher_dir, student_dir, task_dir)
    root = Path(cfg.get("output_root") or state_dir() / "runs") / key
    final = root / "checkpoints" / "final"
    alias = alias_for(cfg)
    lineage = {"teacher": teacher_ref, "student_init": student_ref, "task": cfg["task"]["name"],
               "divergence": cfg["divergence"], "data_mix": json.dumps(cfg["data_mix"], sort_keys=True)}
    tags = {"stage": f"distill_{cfg['mode']}", "run_key": key, "alias": alias, "preset": cfg["preset"],
            **{f"lineage.{k}": v for k, v in lineage.items()}}
    previous = mark_interrupted_runs(experiment, key)
    if previous:
        tags["resumed_from"] = previous
    with tracking.start_run(experiment, f"{cfg['mode']}-{alias}", params=cfg, tags=tags,
                            parent_run_id=parent_run_id) as run_id:
        if not (final / "trainer_state.json").exists():
            logger.info("distilling %s -> %s (%s, data %s) on %d Ray worker(s)", teacher_ref, student_ref,
                        cfg["divergence"], cfg["data_mix"], cfg["num_workers"])
            worker_cfg = {**cfg, "teacher_dir": teacher_dir, "student_dir": student_dir, "task_dir": task_dir,
                          "checkpoint_dir": str(root / "checkpoints"), "mlflow_run_id": run_id}
            fit(distill_worker, worker_cfg, name=key, storage_path=root / "ray", num_workers=cfg["num_workers"],
                use_gpu=cfg["use_gpu"], max_failures=cfg["max_failures"])
        state = json.loads((final / "trainer_state.json").read_text())
        last = state["evals"][-1] if state["evals"] else {}
        tracking.log_metrics(run_id, {f"final.{k}": v for k, v in last.items() if isinstance(v, (int, float))})
        test = evaluate_test(str(final / "model"), task_dir, run_id, cfg)
        name = cfg["register_as"] or f"t5-{cfg['preset']}-{cfg['task']['name']}"
        model_uri = tracking.register_model(run_id, final / "model", name, aliases=[alias],
                                            tags={"stage": f"distill_{cfg['mode']}", "alias": alias,
                                                  **{f"lineage.{k}": v for k, v in lineage.items()}})
    return {"run_id": run_id, "model_uri": model_uri, "model_dir": str(final / "model"), "alias": alias,
            "final": last, "metrics": test}


def evaluate_test(model_dir: str, task_dir: str, run_id: str, cfg: dict[str, Any]) -> dict[str, float]:
    """The student's test-split quality beside the task's trivial baseline, logged as ``test.*``."""
    from tasks.evaluate import evaluate_and_log

    return evaluate_and_log(model_dir, task_dir, run_id, batch_size=cfg["batch_size"],
                            max_input_length=cfg["max_input_length"], max_new_tokens=cfg["max_target_length"],
                            max_examples=cfg.get("test_examples"), threads=cfg.get("threads_per_worker") or None)
