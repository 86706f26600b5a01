"""Embedded defaults: every service and cache under one project folder, overridable by the standard variables.

Imported (and applied) by ``flows/__init__.py`` and ``tests/conftest.py`` *before* prefect, mlflow, ray or
Hugging Face libraries are imported, because several of them read their settings at import time.

With nothing set, the pipeline runs fully local and offline:

* Prefect uses its temporary local API with a SQLite database under ``<state>/prefect``;
* MLflow tracks to ``sqlite:///<state>/mlflow.db`` with artifacts under ``<state>/mlartifacts``;
* Ray starts a local instance on 127.0.0.1 (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``);
* Hugging Face hub access is off (``HF_HUB_OFFLINE=1``): set ``HF_HUB_OFFLINE=0`` to load hub datasets/models.

Set ``PREFECT_API_URL``, ``MLFLOW_TRACKING_URI`` or ``RAY_ADDRESS`` to use real servers and clusters instead;
``SPACTOR_STATE_DIR`` moves the state folder. Object storage: ``SPACTOR_ARTIFACT_ROOT=s3://bucket/prefix``
puts MLflow artifacts there; ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) names an S3-compatible server and
is passed on to MLflow as ``MLFLOW_S3_ENDPOINT_URL``; ``SPACTOR_CACHE_DIR`` is where workers keep downloaded
corpora (default ``~/.cache/spactor``).
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def state_dir() -> Path:
    """The folder that holds all local state (databases, artifacts, caches, checkpoints)."""
    return Path(os.environ.get("SPACTOR_STATE_DIR", PROJECT_ROOT / ".state")).resolve()


def apply_embedded_defaults() -> Path:
    """Set the environment defaults of the embedded setup (never overriding what the user set)."""
    state = state_dir()
    state.mkdir(parents=True, exist_ok=True)
    defaults = {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(state / "hf"),
        "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PREFECT_HOME": str(state / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "DO_NOT_TRACK": "1",
        "MLFLOW_TRACKING_URI": f"sqlite:///{state / 'mlflow.db'}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "disabled",
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_DEDUP_LOGS": "0",
    }
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:  # an S3-compatible server (MinIO, moto, Ceph): MLflow's S3 artifact store reads its own variable
        defaults["MLFLOW_S3_ENDPOINT_URL"] = endpoint
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    return state
