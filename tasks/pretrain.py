"""Prefect task: SpacTor / SC pretraining on Ray Train workers, tracked in MLflow, model registered.

The checkpoint folder is keyed on (config, corpus), so rerunning the same stage after a crash resumes
from its last valid checkpoint; a run of another config never touches it. The MLflow run of a killed
attempt is marked KILLED and the new run is tagged ``resumed_from`` with its id.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from tasks import tracking
from tasks.env import state_dir


#: the worker module whose import closure (project code) a training kind depends on
WORKERS = {"pretrain": "tasks.pretrain_worker", "finetune": "tasks.finetune_worker", "distill": "tasks.distill_worker"}


def run_key(kind: str, cfg: dict[str, Any], *inputs: str) -> str:
    """The checkpoint folder's key: the config, the inputs and the fingerprint of the code the worker runs
    (its import closure), so a fix in ``models/`` or the loop retrains instead of re-registering old weights."""
    from tasks.stages import code_version

    payload = json.dumps({k: v for k, v in cfg.items() if k not in ("mlflow_run_id", "fault_kill_at_step")},
                         sort_keys=True) + "|".join(inputs) + "|code:" + code_version(WORKERS.get(kind, f"tasks.{kind}"))
    return f"{kind}-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"


def mark_interrupted_runs(experiment: str, key: str) -> str | None:
    """Runs of the same key left RUNNING by a killed process -> KILLED; returns the newest such id."""
    runs = tracking.search_runs(experiment, f"tags.run_key = '{key}' and attributes.status = 'RUNNING'")
    last = None
    for rid in list(runs.get("run_id", [])):
        tracking.mark_status(rid, "KILLED")
        last = last or rid
    return last


def curve_table(evals: list[dict]):
    import pandas as pd

    return pd.DataFrame(evals)


@task(name="pretrain")
def pretrain(cfg: dict[str, Any], corpus_dir: str, *, parent_run_id: str | None = None,
             experiment: str = "pretrain") -> dict[str, Any]:
    from tasks.pretrain_worker import pretrain_worker
    from tasks.ray_train import fit

    logger = get_run_logger()
    key = run_key("pretrain", cfg, corpus_dir)
    root = Path(cfg.get("output_root") or state_dir() / "runs") / key
    worker_cfg = {**cfg, "corpus_dir": corpus_dir, "tokenizer_dir": str(Path(corpus_dir) / "tokenizer"),
                  "checkpoint_dir": str(root / "checkpoints")}
    arm = "sc" if cfg["tau"] == 0 else "spactor"
    final = root / "checkpoints" / "final"
    previous = mark_interrupted_runs(experiment, key)
    tags = {"stage": "pretrain", "arm": arm, "preset": cfg["preset"], "tau": cfg["tau"], "run_key": key,
            "corpus.path": corpus_dir}
    if previous:
        tags["resumed_from"] = previous
        logger.info("resuming the interrupted run %s from its last checkpoint", previous)
    with tracking.start_run(experiment, f"{cfg['preset']}-{arm}", params=cfg, tags=tags,
                            parent_run_id=parent_run_id) as run_id:
        worker_cfg["mlflow_run_id"] = run_id
        if (final / "trainer_state.json").exists():
            logger.info("training already finished at %s; logging its result", final)
        else:
            logger.info("training %s arm (tau=%d of %d steps) on %d Ray worker(s)", arm, cfg["tau"],
                        cfg["total_steps"], cfg["num_workers"])
            fit(pretrain_worker, worker_cfg, name=key, storage_path=root / "ray", num_workers=cfg["num_workers"],
                use_gpu=cfg["use_gpu"], max_failures=cfg["max_failures"])
        state = json.loads((final / "trainer_state.json").read_text())
        tracking.log_table(run_id, curve_table(state["evals"]), "curve.csv")
        tracking.log_artifact(run_id, final / "trainer_state.json")
        tracking.log_metrics(run_id, {"final_cum_flops": state["cum_flops"],
                                      "final_val_sc_loss": state["evals"][-1]["val_sc_loss"] if state["evals"] else float("nan")})
        model_uri = tracking.register_model(
            run_id, final / "model", cfg["register_as"] or f"t5-{cfg['preset']}-{arm}",
            tags={"preset": cfg["preset"], "arm": arm, "tau": cfg["tau"], "stage": "pretrain",
                  "corpus": corpus_dir, "mlflow_run_id": run_id})
    return {"run_id": run_id, "model_uri": model_uri, "model_dir": str(final / "model"), "arm": arm,
            "evals": state["evals"], "cum_flops": state["cum_flops"]}
