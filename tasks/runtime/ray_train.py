"""Ray: start or join a cluster, and run a worker function on Ray Train workers.

Locally (no ``RAY_ADDRESS``) Ray starts on this machine with every socket on 127.0.0.1 and no
dashboard; with ``RAY_ADDRESS=auto`` (or ``ray://...``) the same code joins a cluster, ships the project
code as the job's working directory, and forwards the tracking settings to the workers.
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path
from typing import Any, Callable

from tasks.runtime.env import PROJECT_ROOT, state_dir

#: variables every Ray worker needs to see (tracking and offline settings)
#: (MLflow credentials are not among them: Ray logs a job's runtime env, so secrets would land in its log
#: files; local workers inherit the driver's environment, and cluster nodes must have them in their own)
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HOME", "SPACTOR_STATE_DIR",
                 "TOKENIZERS_PARALLELISM", "MLFLOW_DISABLE_TELEMETRY", "OMP_NUM_THREADS",
                 "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "SPACTOR_ARTIFACT_ROOT", "SPACTOR_FAULT_INJECT",
                 # object storage for checkpoints (engine.storage) and MLflow artifacts
                 "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL",
                 "AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL", "SPACTOR_CACHE_DIR")


#: MLflow's own HTTP retries on workers: its default (7 retries, 120 s timeout each) can hold one log call for
#: about 12 minutes during an outage; metrics are logged from a background thread (tasks.tracking.MetricsSink)
#: with the project's 3 tries anyway, so a short client timeout is enough. A user's own setting wins.
WORKER_MLFLOW_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}


def worker_env() -> dict[str, str]:
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    for k, v in WORKER_MLFLOW_HTTP.items():
        env[k] = os.environ.get(k, v)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
    return env


_RAY_INIT_LOCK = threading.Lock()  # side-by-side stage runs (threads of one driver) must not both ray.init


def ensure_ray(num_cpus: int | None = None) -> None:
    """``ray.init`` once per process: local on 127.0.0.1, or the cluster named by ``RAY_ADDRESS``."""
    with _RAY_INIT_LOCK:
        _ensure_ray(num_cpus)


def _ensure_ray(num_cpus: int | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    runtime_env: dict[str, Any] = {"env_vars": worker_env()}
    if address:
        runtime_env["working_dir"] = str(PROJECT_ROOT)
        runtime_env["excludes"] = [".venv", ".state", ".git", "**/__pycache__"]
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        return
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    tmp = state_dir() / "ray"
    # Unix socket paths are limited to 107 bytes: a deep project folder falls back to Ray's default
    temp_dir = str(tmp) if len(str(tmp)) < 48 else None
    runtime_env["worker_process_setup_hook"] = "tasks.runtime.ray_train.quiet_state_api_warnings"
    # address="local": always a fresh local instance, never a cluster that `ray start` left on this machine
    # (ray.init would otherwise connect to the latest one it finds)
    ray.init(address="local", include_dashboard=False, num_cpus=num_cpus or os.cpu_count(), runtime_env=runtime_env,
             _temp_dir=temp_dir, _node_ip_address="127.0.0.1", configure_logging=True, log_to_driver=True)


#: Ray Train's placement-group cleaner asks the state API (served by the dashboard) every second whether the
#: controller is alive. The local cluster runs without a dashboard, so each query fails and logs a warning:
#: about 500 lines in a `make run`. A local cluster dies with the driver, so nothing is left to clean.
QUIETED_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)


def quiet_state_api_warnings() -> None:
    """Runs in every worker process of the local cluster (Ray's ``worker_process_setup_hook``)."""
    import logging

    for name in QUIETED_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def _call_with_job(worker_fn: Callable[[Any], Any], config: dict[str, Any]) -> Any:
    return worker_fn(config["job"])


FAILURE_FILE = "deterministic-failure-rank{rank}.json"


def _stop_on_deterministic_error(marker_dir: str, worker_fn: Callable[[Any], Any], config: Any) -> Any:
    """Run the worker; a deterministic error (bad input, NaN) is written to ``marker_dir`` and the worker
    returns, so Ray does not restart the group to fail the same way again. ``fit`` raises it on the driver.
    Anything else (a killed worker, a lost connection) is raised as usual and Ray's retries apply."""
    from tasks.runtime.orchestration import DETERMINISTIC_ERRORS

    try:
        return worker_fn(config)
    except DETERMINISTIC_ERRORS as err:
        import json
        import traceback

        try:
            import ray.train

            rank = ray.train.get_context().get_world_rank()
        except Exception:  # noqa: BLE001 - outside Ray Train
            rank = 0
        path = Path(marker_dir) / FAILURE_FILE.format(rank=rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"type": type(err).__name__, "message": str(err),
                                   "traceback": traceback.format_exc(), "rank": rank}))
        tmp.replace(path)
        return None


def _raise_recorded_failure(marker_dir: Path) -> None:
    import json

    from tasks.runtime.orchestration import DETERMINISTIC_ERRORS

    recorded = sorted(marker_dir.glob(FAILURE_FILE.format(rank="*")))
    if not recorded:
        return
    failure = json.loads(recorded[0].read_text())
    cls = next((c for c in DETERMINISTIC_ERRORS if c.__name__ == failure["type"]), ValueError)
    err = cls(failure["message"])
    err.add_note(f"raised on Ray Train worker rank {failure['rank']}, not retried (deterministic):\n"
                 + failure["traceback"])
    raise err


def _free_loopback_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _loopback_interface() -> str:
    import socket

    names = [name for _, name in socket.if_nameindex()]
    return next((n for n in names if n == "lo" or n.startswith("lo")), "lo")


def _loopback_process_group(port: int, use_gpu: bool, worker_fn: Callable[[Any], Any], config: Any) -> Any:
    """The DDP process group of a local multi-worker fit, on loopback only.

    Ray's torch backend starts torch's TCPStore, whose server listens on every interface (torch has no
    bind-address option). Here rank 0 binds the rendezvous socket to 127.0.0.1 itself and hands it to the
    TCPStore (``master_listen_fd``); gloo and NCCL are pinned to the loopback interface. A restarted worker
    group binds the same port again (SO_REUSEADDR)."""
    import datetime
    import socket

    import ray.train
    import torch.distributed as dist

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    lo = _loopback_interface()
    os.environ["GLOO_SOCKET_IFNAME"] = lo
    os.environ["NCCL_SOCKET_IFNAME"] = lo
    timeout = datetime.timedelta(minutes=10)
    listener = None
    if rank == 0:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(world)
        store = dist.TCPStore("127.0.0.1", port, world, True, timeout=timeout, master_listen_fd=listener.fileno())
    else:
        store = dist.TCPStore("127.0.0.1", port, world, False, timeout=timeout)
    dist.init_process_group("nccl" if use_gpu else "gloo", store=store, rank=rank, world_size=world, timeout=timeout)
    try:
        return worker_fn(config)
    finally:
        dist.destroy_process_group()
        if listener is not None:
            listener.close()


def fit(worker_fn: Callable[[Any], None], config: Any, *, name: str, storage_path: str | Path,
        num_workers: int = 1, use_gpu: bool = False, max_failures: int = 2, cpus_per_worker: float = 1.0):
    """Run ``worker_fn(config)`` on ``num_workers`` Ray Train workers (DDP process group: gloo on CPU,
    NCCL on GPU); ``config`` is a dict or a typed job (``engine.jobs``), which reaches the workers as that
    object (Ray's loop config holds it under "job"). Failed worker groups are restarted up to ``max_failures``
    times and resume from the last checkpoint, except after a deterministic error (bad input, a non-finite
    loss: ``tasks.runtime.orchestration.DETERMINISTIC_ERRORS``), which is raised here at once. Returns the Ray ``Result``; raises its error if training failed for good.

    A single worker gets no torch.distributed process group (it has nothing to all-reduce). Several local
    workers get :func:`_loopback_process_group` (torch's own rendezvous store would listen on every
    interface); on a cluster (``RAY_ADDRESS``) Ray's torch backend sets the group up, and every error is
    left to Ray's retries (the workers' files are not on the driver's disk).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from engine import storage

    ensure_ray()
    if not isinstance(config, dict):
        worker_fn, config = functools.partial(_call_with_job, worker_fn), {"job": config}
    run_storage: dict[str, Any] = {"name": name, "storage_path": str(storage_path)}
    markers = Path(storage_path) / "failures"
    if storage.is_remote(str(storage_path)):
        # Ray's experiment folder is the checkpoint URI itself: a checkpoint reported as step-N lands at
        # <storage_path>/step-N, where engine.storage finds it on resume
        parent, experiment, fs = storage.ray_storage(str(storage_path))
        run_storage = {"name": experiment, "storage_path": parent, "storage_filesystem": fs}
        import hashlib
        import tempfile

        markers = Path(tempfile.gettempdir()) / f"spactor-failures-{hashlib.sha256(str(storage_path).encode()).hexdigest()[:12]}"
    for old in markers.glob(FAILURE_FILE.format(rank="*")):  # from an earlier fit of the same run
        old.unlink()
    if not os.environ.get("RAY_ADDRESS"):  # the driver sees the workers' files (one machine)
        worker_fn = functools.partial(_stop_on_deterministic_error, str(markers), worker_fn)
    if num_workers == 1 or not os.environ.get("RAY_ADDRESS"):
        from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

        trainer_cls, backend = DataParallelTrainer, {}
        if num_workers > 1:  # local: our own process group, every socket on 127.0.0.1
            worker_fn = functools.partial(_loopback_process_group, _free_loopback_port(), use_gpu, worker_fn)
    else:
        trainer_cls, backend = TorchTrainer, {"torch_config": TorchConfig(backend="nccl" if use_gpu else "gloo")}
    trainer = trainer_cls(
        worker_fn,
        train_loop_config=config,
        **backend,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker=None if use_gpu else {"CPU": cpus_per_worker}),
        run_config=RunConfig(
            **run_storage,
            failure_config=FailureConfig(max_failures=max_failures),
            # on object storage the loop prunes its own checkpoints after each upload (Ray's count restarts
            # with a restarted worker group and left older ones behind); locally Ray holds no checkpoint
            checkpoint_config=CheckpointConfig(num_to_keep=None if "storage_filesystem" in run_storage else 2),
            worker_runtime_env={"env_vars": worker_env()},
        ),
    )
    try:
        result = trainer.fit()
    finally:
        if not os.environ.get("RAY_ADDRESS"):
            # A local Ray instance lives as long as one fit: finished trainers' actors and placement groups
            # cannot pile up and starve the next fit of CPUs (seen with several fits in one process).
            import ray

            ray.shutdown()
    _raise_recorded_failure(markers)
    if result.error:
        raise result.error
    return result
