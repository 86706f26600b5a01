"""One resumable, tracked training run: what pretraining, fine-tuning and distillation share.

A training run's folder is keyed on (config, inputs, code) by :func:`run_key`, so rerunning the same stage
after a crash resumes from its last valid checkpoint and a run of another config never touches it. The
sequence, written once here:

1. the key and the folder ``<output_root or state>/runs/<key>``;
2. the run folder's lock is taken (:func:`run_lock`): a second run of the same key while the first is
   training is refused, naming the holder, instead of racing it on one checkpoint folder; then MLflow runs
   of the same key left RUNNING by a killed process are marked KILLED (never a live run: it would hold
   the lock), and the new run is tagged ``resumed_from`` with the newest such id;
3. the MLflow run is started (nested under ``parent_run_id``);
4. the engine's worker is fitted on Ray Train unless a valid ``final/`` (its checksums match) already
   exists, with a metrics sink that logs to that run from rank 0;
5. the trainer state is read back and handed to the caller, who logs, evaluates and registers inside the
   still-open run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from engine import checkpoints, storage
from engine.config.base import TrainRunFields
from tasks import tracking
from tasks.runtime.orchestration import run_logger
from tasks.runtime.env import state_dir

#: the engine module whose import closure (project code) a training kind depends on
WORKERS = {"pretrain": "engine.pretrain_worker", "finetune": "engine.finetune_worker",
           "distill": "engine.distill_worker"}


def run_key(kind: str, cfg: dict[str, Any], *inputs: str) -> str:
    """The checkpoint folder's key: the config, the inputs and the fingerprint of the code the worker runs
    (its import closure), so a fix in ``models/`` or the loop retrains instead of re-registering old weights.
    Models enter by their content (:func:`tasks.tracking.model_identity`: a model folder's sha256, a registered
    version's content tag), never by a reference string or a download path: the same weights registered again
    resume the same run, other weights under the same name start another."""
    from tasks.runtime.stages import by_content, code_version

    kept = {k: v for k, v in cfg.items() if k not in ("mlflow_run_id", "fault_kill_at_step", "checkpoint_uri")}
    payload = (json.dumps(by_content(kept), sort_keys=True) + "|".join(by_content(list(inputs)))
               + "|code:" + code_version(WORKERS.get(kind, f"tasks.{kind}")))
    return f"{kind}-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"


def mark_interrupted_runs(experiment: str, key: str) -> str | None:
    """Runs of the same key left RUNNING by a killed process -> KILLED; returns the newest such id."""
    runs = tracking.search_runs(experiment, f"tags.run_key = '{key}' and attributes.status = 'RUNNING'")
    last = None
    for rid in list(runs.get("run_id", [])):
        tracking.mark_status(rid, "KILLED")
        last = last or rid
    return last


class RunLockedError(RuntimeError):
    """Another process is training the same run (same config, inputs and code) right now."""


@contextlib.contextmanager
def run_lock(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run folder ``root`` (``root/.lock``, ``flock``) for the whole run.

    The lock dies with its process, so a killed run never leaves it behind. Raises RunLockedError, naming
    the holder (pid, host, start time), when another process holds it."""
    root.mkdir(parents=True, exist_ok=True)
    f = open(root / ".lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise RunLockedError(f"the same run is being trained right now by {holder} in {root}: wait for it to "
                             "finish (its result is then reused), or set output_root to train a separate copy") from None
    try:
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


@dataclass(frozen=True)
class TrainedRun:
    """A finished training run, inside its open MLflow run."""

    run_id: str
    key: str
    final: Path  # <root>/checkpoints/final: model/, trainer_state.json, ...
    state: dict[str, Any]  # the trainer state (step, cum_flops, evals, stopped_early, ...)

    @property
    def model_dir(self) -> Path:
        return self.final / "model"


@contextlib.contextmanager
def resumable_run(kind: str, cfg: TrainRunFields, inputs: Mapping[str, str], *, worker: Callable[[Any], Any],
                  experiment: str, run_name: str, tags: Mapping[str, Any], parent_run_id: str | None = None,
                  describe: str = "training") -> Iterator[TrainedRun]:
    """Train ``worker`` once per key on the typed job built from ``cfg`` (a training config of the config room)
    and ``inputs``, and yield the result inside its MLflow run.

    ``inputs`` are the paths the worker reads (they are part of the key, in order); ``describe`` names the
    work in the log line ("fine-tuning X on Y"). The worker's ``job_type`` (``engine.jobs``) is built here,
    once, on the driver."""
    logger = run_logger(__name__)
    key = run_key(kind, cfg.model_dump(), *inputs.values())
    root = Path(cfg.output_root or state_dir() / "runs") / key
    final = root / "checkpoints" / "final"
    tags = {**tags, "run_key": key}
    with run_lock(root):
        yield from _locked_run(cfg, inputs, key, root, final, tags, worker=worker, experiment=experiment,
                               run_name=run_name, parent_run_id=parent_run_id, describe=describe, logger=logger)


def _locked_run(cfg, inputs, key, root, final, tags, *, worker, experiment, run_name, parent_run_id, describe,
                logger) -> Iterator[TrainedRun]:
    from tasks.runtime.ray_train import fit

    previous = mark_interrupted_runs(tracking.experiment_for(experiment, parent_run_id), key)
    if previous:
        tags["resumed_from"] = previous
        logger.info("resuming the interrupted run %s from its last checkpoint", previous)
    uri = cfg.checkpoint_uri
    ckpt_root = storage.join(uri, key, "checkpoints") if uri else str(root / "checkpoints")
    with tracking.start_run(experiment, run_name, params=cfg.model_dump(), tags=tags,
                            parent_run_id=parent_run_id) as run_id:
        if uri and checkpoints.verify(final) is not None and storage.exists(storage.join(ckpt_root, "final")):
            storage.fetch_valid(storage.join(ckpt_root, "final"), final)  # finished earlier: the bucket's copy
        problem = checkpoints.verify(final) if final.exists() else "not trained yet"
        if problem is None:
            logger.info("training already finished at %s; logging its result", final)
        else:
            if final.exists():
                logger.warning("%s is not a complete result (%s); training again from the last valid checkpoint",
                               final, problem)
            logger.info("%s on %d Ray worker(s)", describe, cfg.num_workers)
            job = worker.job_type.of(cfg, **inputs, checkpoint_dir=ckpt_root,  # built and checked here, before Ray
                                     metrics_sink=tracking.MetricsSink(run_id))
            fit(worker, job, name=key, storage_path=ckpt_root if uri else root / "ray", num_workers=cfg.num_workers,
                use_gpu=cfg.use_gpu, max_failures=cfg.max_failures)
            if uri and storage.fetch_valid(storage.join(ckpt_root, "final"), final) is None:
                raise RuntimeError(f"training finished but {storage.join(ckpt_root, 'final')} is not complete")
        state = json.loads((final / "trainer_state.json").read_text())
        if not uri:  # the kept step checkpoints, as logged models the run's evaluations rank
            tracking.log_checkpoints(run_id, root / "checkpoints", state.get("evals") or [])
        yield TrainedRun(run_id=run_id, key=key, final=final, state=state)
