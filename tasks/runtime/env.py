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
import re
import sqlite3
import tempfile
import urllib.parse
from importlib import metadata, util
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # tasks/runtime/env.py -> the project


def state_dir() -> Path:
    """The folder that holds all local state (databases, artifacts, caches, checkpoints)."""
    return Path(os.environ.get("SPACTOR_STATE_DIR", PROJECT_ROOT / ".state")).resolve()


def apply_embedded_defaults() -> Path:
    """Set the environment defaults of the embedded setup (never overriding what the user set)."""
    state = state_dir()
    try:
        state.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass  # environment_problems() names it in one line before any work
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


def _blocker(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` that is not a folder (a regular file in the way)."""
    for parent in [path, *path.parents]:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def _folder_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a folder this process writes into (it is created if missing), or None."""
    blocker = _blocker(path)
    if blocker is not None:
        return f"{blocker} is a file, not a folder"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return f"the folder cannot be created ({err.strerror or err})"
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        return f"the folder is not writable ({err.strerror or err})"
    return None


def _known_revisions(package: str, *parts: str) -> set[str]:
    """The alembic revisions of a package's database migrations (read from its files, without importing it)."""
    spec = util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return set()
    folder = Path(list(spec.submodule_search_locations)[0], *parts)
    pattern = re.compile(r"^revision\s*=\s*[\"']([0-9a-zA-Z_]+)[\"']", re.M)
    return {m.group(1) for f in folder.glob("*.py") for m in pattern.finditer(f.read_text(errors="replace"))}


def _alembic_rows(db: Path, mode: str) -> list[tuple]:
    """The alembic revision rows of an existing SQLite file, opened in ``mode`` (ro or rw; never created)."""
    con = sqlite3.connect(f"file:{db}?mode={mode}", uri=True, timeout=30)
    try:
        return con.execute("select version_num from alembic_version").fetchall()
    finally:
        con.close()


def _unreadable(db: Path, err: Exception) -> str | None:
    if "no such table" in str(err):
        return None  # an empty database: the package creates its tables
    return f"{db} is not a readable SQLite database ({err})"


def _database_problem(db: Path, package: str, *migrations: str) -> str | None:
    """Why the SQLite file ``db`` cannot be this package's store: not a database, or a newer schema."""
    if not db.exists():
        return None
    if not db.is_file():
        return f"{db} is not a file"
    try:
        rows = _alembic_rows(db, "ro")
    except sqlite3.OperationalError as err:
        if "readonly" not in str(err):
            return _unreadable(db, err)
        # A hot journal (a writer was killed mid-transaction) needs a read-write connection to roll it back,
        # as any SQLite client does on its first read; the read-only probe cannot.
        try:
            rows = _alembic_rows(db, "rw")
        except sqlite3.DatabaseError as err2:
            return _unreadable(db, err2)
    except sqlite3.DatabaseError as err:
        return _unreadable(db, err)
    known = _known_revisions(package, *migrations)
    unknown = [r for (r,) in rows if known and r not in known]
    if unknown:
        return (f"{db} holds a store of a newer schema (revision {unknown[0]}, unknown to the installed {package} "
                f"{metadata.version(package)}): upgrade {package} or use another store")
    return None


def _tracking_problem(uri: str) -> str | None:
    """Why a local MLflow tracking URI (sqlite, file, or a plain folder) cannot be used; servers are checked
    later, by asking them."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "sqlite":
        if not uri.startswith("sqlite:///") or uri == "sqlite:///:memory:":
            return None  # in memory
        path = Path(urllib.parse.unquote(uri[len("sqlite:///"):]))
        return _folder_problem(path.parent) or _database_problem(path, "mlflow", "store", "db_migrations",
                                                                   "versions")
    if parsed.scheme == "file":
        return _folder_problem(Path(urllib.parse.unquote(parsed.path)))
    if parsed.scheme == "" and ("/" in uri or uri.startswith(".")):  # a plain folder ("databricks" is a name)
        return _folder_problem(Path(uri))
    return None


def environment_problems() -> list[str]:
    """One line per setting that cannot work: each names the variable and the path. Checked before any work
    (``flows/__init__.py``): the state folder, the stage records, the caches, Prefect's home and its local
    database, and a local MLflow store (a folder that cannot be created or written, a file in the way, a
    database of a newer schema than the installed MLflow or Prefect)."""
    out: list[str] = []

    def check(var: str, value: str | None, problem: str | None) -> None:
        if problem:
            out.append(f"{var}={value} cannot be used: {problem}")

    state = os.environ.get("SPACTOR_STATE_DIR", str(PROJECT_ROOT / ".state"))
    check("SPACTOR_STATE_DIR", state, _folder_problem(state_dir()))
    if out:
        return out  # everything below defaults to a place inside it
    for var in ("SPACTOR_STAGE_DIR", "SPACTOR_CACHE_DIR", "PREFECT_HOME", "HF_HOME"):
        if os.environ.get(var):
            check(var, os.environ[var], _folder_problem(Path(os.environ[var]).expanduser()))
    root = os.environ.get("SPACTOR_ARTIFACT_ROOT")
    if root and "://" not in root:
        check("SPACTOR_ARTIFACT_ROOT", root, _folder_problem(Path(root)))
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        check("MLFLOW_TRACKING_URI", uri, _tracking_problem(uri))
    home = os.environ.get("PREFECT_HOME")
    if home and not any(os.environ.get(v) for v in ("PREFECT_API_URL", "PREFECT_API_DATABASE_CONNECTION_URL",
                                                    "PREFECT_SERVER_DATABASE_CONNECTION_URL")):
        if not any(line.startswith("PREFECT_HOME") for line in out):  # the temporary local API's database
            check("PREFECT_HOME", home, _database_problem(Path(home) / "prefect.db", "prefect", "server", "database",
                                                          "_migrations", "versions", "sqlite"))
    return out
