"""The shared training loop run by every Ray Train worker (pretraining, fine-tuning, distillation).

An *objective* supplies the model, the batches and the loss; this loop owns everything else:
optimizer and schedule, gradient accumulation, clipping, data parallelism (DDP through
``ray.train.torch.prepare_model`` when there are several workers), bf16 autocast on GPU, checkpoints
with checksums and exact resume, progress, and metrics from rank 0 only, handed to a *metrics sink* (``LoopSettings.metrics_sink``: any
callable ``sink(metrics, step)``; the tasks layer passes one that logs to MLflow, a plain script passes
none or its own).

It has neither Prefect nor MLflow imports and imports Ray lazily, so it also runs as a plain function in a single
process (benchmarks, the GPU machine): ``run(objective, settings)`` with ``settings.in_ray=False``.

Resume is exact: the data a step reads and the objective's random numbers are functions of (seed,
step) (see ``models/training.py``), and the checkpoint holds model, optimizer and RNG state.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from models.training import grad_global_norm, lr_at, make_optimizer, set_lr
from engine import checkpoints, storage

log = logging.getLogger(__name__)


class NonFiniteTrainingError(RuntimeError):
    """The loss or the gradient norm stopped being finite; training stops before the update is applied."""


class Objective(Protocol):
    model: torch.nn.Module

    def loss(self, model: torch.nn.Module, step: int, micro: int, rank: int, world: int) -> tuple[torch.Tensor, dict]:
        """Loss of one micro-batch and metric tensors (detached)."""

    def tokens_per_micro(self) -> int:
        """Tokens one worker processes per micro-batch (for tokens/s)."""

    def step_flops(self, step: int, world: int) -> int:
        """Training FLOPs of one optimizer step over all workers."""

    def evaluate(self, step: int) -> dict[str, float]:
        """Validation metrics (rank 0); may be empty."""

    def periodic(self, step: int) -> dict[str, float]:
        """Extra diagnostics every ``diag_every`` steps (rank 0); may be empty."""

    def save_final(self, out_dir: Path) -> None:
        """Write the final model (``save_pretrained``) and anything else it needs."""


@dataclass
class LoopSettings:
    total_steps: int
    lr: float
    warmup_steps: int = 0
    schedule: str = "cosine"
    weight_decay: float = 0.0
    clip_norm: float = 1.0
    grad_accum: int = 1
    checkpoint_dir: str = ""
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    eval_every: int = 0
    log_every: int = 10
    diag_every: int = 0
    metrics_sink: Callable[[dict, int], None] | None = None  # sink(metrics, step), called on rank 0 only
    use_gpu: bool = False
    bf16: bool = True
    compile: bool = False
    in_ray: bool = True
    early_stop_metric: str | None = None  # e.g. "val_loss": stop when it has not improved ...
    early_stop_patience: int = 0  # ... for this many evaluations (0 = never)
    fault_kill_at_step: int | None = None  # test hook: SIGKILL this worker once at that step
    extra_state: dict = field(default_factory=dict)


def worker_threads(threads_per_worker: int | None, num_workers: int = 1) -> int:
    """Torch threads for one training worker: the configured number, or (0/None) this machine's CPUs
    divided among the workers.

    Ray sets ``OMP_NUM_THREADS=1`` in its workers, so "torch's default" there is one thread and a single
    worker would leave every other core idle; dividing the CPUs keeps the whole machine busy without
    oversubscribing it when several workers share a node.
    """
    if threads_per_worker:
        return int(threads_per_worker)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // max(1, int(num_workers)))


def use_worker_threads(job: Any) -> int:
    """Apply :func:`worker_threads` for a job (``engine.jobs``: ``threads_per_worker``, ``num_workers``); returns it."""
    n = worker_threads(job.threads_per_worker, job.num_workers or 1)
    torch.set_num_threads(n)
    return n


def settings_from(cfg: dict[str, Any], **overrides: Any) -> LoopSettings:
    """LoopSettings from a flow config dict: every field of the same name is taken, overrides win."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(LoopSettings)}
    values = {k: v for k, v in cfg.items() if k in names and v is not None}
    values.setdefault("in_ray", True)
    return LoopSettings(**{**values, **overrides})


def _report(metrics: dict, upload: Path | None, in_ray: bool) -> None:
    """Report to Ray Train. ``upload`` is a local checkpoint folder bound for object storage: Ray copies it
    to its storage filesystem as ``<checkpoint URI>/<folder name>`` and the local folder is deleted, so the
    bucket holds the only copy. A local checkpoint root is never handed to Ray: the project's folder is then
    the one copy (Ray would keep a second under its storage path)."""
    if not in_ray:
        return
    import ray.train

    if upload is None:
        ray.train.report(metrics)
        return
    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(upload)),
                     checkpoint_dir_name=upload.name, delete_local_checkpoint_after_upload=True)


class _CheckpointStore:
    """Where the loop's checkpoints live: a local root (:mod:`engine.checkpoints` writes, publishes and prunes
    there) or an ``s3://`` URI (:mod:`engine.storage`: written in a local scratch folder, then uploaded by Ray
    Train, or directly outside Ray, checksums last; resume downloads the newest complete one)."""

    def __init__(self, root: str, keep: int):
        self.root, self.keep, self.remote = root, keep, storage.is_remote(root)
        self.scratch = storage.scratch_dir("checkpoints") if self.remote else None

    def latest(self) -> Path | None:
        if not self.remote:
            return checkpoints.latest_valid(self.root)
        return storage.fetch_latest_valid(self.root, self.scratch / "resume")

    def latest_name(self) -> str:
        if not self.remote:
            last = checkpoints.latest_valid(self.root)
            return last.name if last else "none"
        names = storage.list_checkpoints(self.root)
        return names[-1].rsplit("/", 1)[1] if names else "none"

    def save(self, step: int, *, model, optimizer, state: dict, in_ray: bool) -> Path | None:
        """Write checkpoint ``step``; returns the local folder Ray must upload (remote root in Ray), else None."""
        if not self.remote:
            checkpoints.save(self.root, step, model=model, optimizer=optimizer, state=state, keep=self.keep)
            return None
        local = checkpoints.save(self.scratch / "out", step, model=model, optimizer=optimizer, state=state, keep=0)
        if in_ray:
            return local  # Ray uploads it (and prunes to num_to_keep) in ray.train.report
        storage.upload_folder(local, storage.join(self.root, local.name))
        shutil.rmtree(local, ignore_errors=True)
        self.prune()
        return None

    def prune(self) -> None:
        storage.prune(self.root, self.keep)

    def save_final(self, write, state: dict) -> None:
        if not self.remote:
            checkpoints.save_final(self.root, write, state)
            return
        final = checkpoints.save_final(self.scratch / "final-out", write, state)
        storage.upload_folder(final, storage.join(self.root, "final"))
        shutil.rmtree(self.scratch, ignore_errors=True)

    def fault_marker(self, rank: int) -> Path:
        if not self.remote:
            return Path(self.root) / f".fault-injected-{rank}"
        import hashlib

        digest = hashlib.sha256(self.root.encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"spactor-fault-{digest}-{rank}"


def world() -> tuple[int, int]:
    """(rank, world size) inside a Ray Train worker; (0, 1) outside one."""
    try:
        import ray.train

        ctx = ray.train.get_context()
        return ctx.get_world_rank(), ctx.get_world_size()
    except Exception:  # noqa: BLE001 - plain process (benchmarks, tests)
        return 0, 1


def _log(sink: Callable[[dict, int], None] | None, metrics: dict, step: int) -> None:
    if sink is not None and metrics:
        sink(metrics, step)


def run(objective: Objective, s: LoopSettings) -> dict[str, Any]:
    """Train ``objective.model`` for ``s.total_steps`` optimizer steps; returns the final trainer state.

    A sink that logs in the background (``tasks.tracking.MetricsSink``) is flushed at the end, also when
    training stops with an error."""
    try:
        return _Training(objective, s).run()
    finally:
        close = getattr(s.metrics_sink, "close", None)
        if callable(close):
            close()


def progress_line(step: int, total: int, logged: dict[str, float]) -> str:
    """``step 120/400 (30%) | loss 5.91 | 2.10 s/step | 9 min 48 s left``: what a Ray worker prints at each log."""
    left = max(0, total - step) * logged.get("step_time_s", 0.0)
    eta = f"{int(left // 60)} min {int(left % 60)} s" if left >= 60 else f"{left:.0f} s"
    loss = f" | loss {logged['loss']:.4g}" if "loss" in logged else ""
    return (f"step {step}/{total} ({100 * step // max(1, total)}%){loss} | "
            f"{logged.get('step_time_s', 0.0):.2f} s/step | {eta} left")


class _Training:
    """One call of :func:`run`, in the order it happens: set-up (device, optimizer, resume, data parallelism), then
    per optimizer step 1. the update, 2. rank-0 logging, 3. diagnostics, evaluation and early stopping,
    4. the checkpoint; finally the final model. Its attributes are the loop's state between those steps."""

    def __init__(self, objective: Objective, s: LoopSettings):
        self.objective, self.s = objective, s
        self.rank, self.world_size = world() if s.in_ray else (0, 1)
        self.device = torch.device("cuda" if s.use_gpu and torch.cuda.is_available() else "cpu")
        self.model = objective.model.to(self.device)
        self.optimizer = make_optimizer(self.model, lr=s.lr, weight_decay=s.weight_decay)
        self.store = _CheckpointStore(s.checkpoint_dir, s.keep_checkpoints) if s.checkpoint_dir else None
        self.state = self._resume()
        self.train_model = self._parallel_model()
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" and s.bf16
                         else contextlib.nullcontext())
        self.progress = None
        if self.rank == 0 and not s.in_ray:
            from tqdm.auto import tqdm

            self.progress = tqdm(total=s.total_steps, initial=self.state["step"], desc="training", unit="step")
        self._new_window()

    def _resume(self) -> dict[str, Any]:
        """The trainer state, from the newest valid checkpoint when there is one (corrupted ones are skipped with a
        warning); the model and optimizer are loaded from it too."""
        state: dict[str, Any] = {"step": 0, "cum_flops": 0, "evals": [], "best": None, "bad_evals": 0,
                                 **self.s.extra_state}
        ckpt = self.store.latest() if self.store else None
        if ckpt is not None:
            state.update(checkpoints.load(ckpt, model=self.model, optimizer=self.optimizer, map_location=self.device))
            log.info("rank %d resumed from %s at step %d", self.rank, ckpt, state["step"])
        return state

    def _parallel_model(self) -> torch.nn.Module:
        """The model the steps run: DDP over gloo (CPU) or NCCL (GPU) when there are several workers, compiled if
        asked."""
        train_model = self.model
        if self.s.in_ray and self.world_size > 1:
            import ray.train.torch

            train_model = ray.train.torch.prepare_model(
                self.model, move_to_device=False, parallel_strategy_kwargs={"find_unused_parameters": True})
        if self.s.compile:
            train_model = torch.compile(train_model)
        return train_model

    def _new_window(self) -> None:
        """Start a logging window: the metrics, wall time and tokens of the steps until the next log."""
        self.window: dict[str, list] = {}
        self.t_window, self.tok_window = time.perf_counter(), 0

    def run(self) -> dict[str, Any]:
        s = self.s
        stopped_early = False
        for step in range(self.state["step"], s.total_steps):
            self._inject_fault(step)
            self._optimizer_step(step)
            done = step + 1 == s.total_steps
            self._log_window(step, done)
            stop_now = self._evaluate(step, done)
            self._checkpoint(step, done, stop_now)
            if stop_now:
                stopped_early = True
                log.info("early stopping at step %d (%s did not improve for %d evaluations)", step + 1,
                         s.early_stop_metric, s.early_stop_patience)
                break
        return self._finish(stopped_early)

    def _inject_fault(self, step: int) -> None:
        """The test hook ``fault_kill_at_step``: SIGKILL this worker once (a marker file remembers it)."""
        s = self.s
        if s.fault_kill_at_step is not None and step == s.fault_kill_at_step and s.checkpoint_dir:
            marker = self.store.fault_marker(self.rank)
            if not marker.exists():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()
                os.kill(os.getpid(), signal.SIGKILL)

    # 1. one optimizer step: accumulate micro-batches, clip, update

    def _optimizer_step(self, step: int) -> None:
        s = self.s
        set_lr(self.optimizer, lr_at(step, lr=s.lr, warmup_steps=s.warmup_steps, total_steps=s.total_steps,
                                     schedule=s.schedule))
        loss = self._accumulate(step)
        grad_norm = (torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.clip_norm) if s.clip_norm > 0
                     else grad_global_norm(self.model.parameters()))
        self._check_finite(step, loss, grad_norm)
        self.window.setdefault("grad_norm", []).append(grad_norm.detach().float())
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state["cum_flops"] += self.objective.step_flops(step, self.world_size)
        self.state["step"] = step + 1
        if self.progress is not None:
            self.progress.update(1)

    def _accumulate(self, step: int) -> torch.Tensor:
        """Forward and backward over the step's micro-batches (DDP syncs on the last one only); the last loss."""
        s, train_model = self.s, self.train_model
        for micro in range(s.grad_accum):
            sync = micro == s.grad_accum - 1 or train_model is self.model
            ctx = contextlib.nullcontext() if sync else train_model.no_sync()
            with ctx, self.autocast:
                loss, metrics = self.objective.loss(train_model, step, micro, self.rank, self.world_size)
                (loss / s.grad_accum).backward()
            for k, v in metrics.items():
                if v is not None:
                    self.window.setdefault(k, []).append(v.detach().float())
            self.tok_window += self.objective.tokens_per_micro()
        return loss

    def _check_finite(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Never apply (let alone checkpoint or register) a non-finite update. One host sync per step; every rank
        sees the same all-reduced gradient norm, so all stop together."""
        pair = torch.stack([loss.detach().float().reshape(()), grad_norm.detach().float().reshape(())])
        if not bool(torch.isfinite(pair).all()):
            raise NonFiniteTrainingError(
                f"training stopped at step {step + 1}: loss {loss.item():.4g}, grad norm {grad_norm.item():.4g} "
                f"(not finite); nothing was saved from this step, the last good checkpoint is "
                f"{self.store.latest_name() if self.store else 'none'}. Lower lr or check the data.")

    # 2. rank-0 logging: host syncs only here, every log_every steps

    def _log_window(self, step: int, done: bool) -> None:
        s = self.s
        if not (self.rank == 0 and (done or (s.log_every and (step + 1) % s.log_every == 0))):
            return
        dt = time.perf_counter() - self.t_window
        logged = {k: torch.stack(v).mean().item() for k, v in self.window.items()}
        logged.update(lr=self.optimizer.param_groups[0]["lr"],
                      tokens_per_s=self.tok_window * self.world_size / max(dt, 1e-9),
                      step_time_s=dt / max(1, len(self.window.get("grad_norm", [1]))),
                      cum_flops=self.state["cum_flops"])
        _log(s.metrics_sink, logged, step + 1)
        if self.progress is not None:
            self.progress.set_postfix({k: f"{logged[k]:.3g}" for k in list(logged)[:3]})
        elif s.in_ray:  # Ray forwards a worker's stdout to the driver's terminal: one progress line per log
            # written to the process's own stdout: Ray Train's patched print() would also log it (twice)
            out = sys.__stdout__ or sys.stdout
            out.write(progress_line(step + 1, s.total_steps, logged) + "\n")
            out.flush()
        self._new_window()

    # 3. rank-0 diagnostics and evaluation; early stopping, decided on rank 0 for every rank

    def _evaluate(self, step: int, done: bool) -> bool:
        """Run what is due at this step (diagnostics, evaluation); whether to stop early now."""
        s = self.s
        if self.rank == 0 and s.diag_every and (step + 1) % s.diag_every == 0:
            _log(s.metrics_sink, self.objective.periodic(step + 1), step + 1)
        if self.rank == 0 and (done or (s.eval_every and (step + 1) % s.eval_every == 0)):
            ev = self.objective.evaluate(step + 1)
            if ev:
                self.state["evals"].append({"step": step + 1, "cum_flops": self.state["cum_flops"], **ev})
                _log(s.metrics_sink, ev, step + 1)
                self._track_best(ev)
        stop_now = bool(s.early_stop_patience and self.state["bad_evals"] >= s.early_stop_patience)
        if s.in_ray and self.world_size > 1 and s.early_stop_patience:
            flag = torch.tensor([1.0 if stop_now else 0.0], device=self.device)
            torch.distributed.broadcast(flag, src=0)
            stop_now = bool(flag.item())
        return stop_now

    def _track_best(self, ev: dict[str, float]) -> None:
        """Early stopping's bookkeeping: the best value of the metric so far, evaluations since it improved."""
        s, state = self.s, self.state
        if s.early_stop_metric and s.early_stop_patience:
            val = ev[s.early_stop_metric]
            if state["best"] is None or val < state["best"]:
                state["best"], state["bad_evals"] = val, 0
            else:
                state["bad_evals"] += 1

    # 4. checkpoint (rank 0 writes; every rank reports so Ray keeps them in step)

    def _checkpoint(self, step: int, done: bool, stop_now: bool) -> None:
        s = self.s
        due = done or stop_now or (s.checkpoint_every and (step + 1) % s.checkpoint_every == 0)
        if not (s.checkpoint_dir and due):
            return
        upload = None
        if self.rank == 0:
            upload = self.store.save(step + 1, model=self.model, optimizer=self.optimizer,
                                     state={k: v for k, v in self.state.items() if k != "step"}, in_ray=s.in_ray)
        _report({"step": step + 1, "cum_flops": self.state["cum_flops"]}, upload, s.in_ray)
        if upload is not None:  # uploaded by Ray: now keep the newest ones in the bucket
            self.store.prune()

    def _finish(self, stopped_early: bool) -> dict[str, Any]:
        """Close the progress bar; rank 0 writes the final model. Returns the final trainer state."""
        if self.progress is not None:
            self.progress.close()
        self.state["stopped_early"] = stopped_early
        if self.rank == 0 and self.store is not None:
            self.store.save_final(self.objective.save_final, self.state)
        return self.state
