"""Links between Prefect and MLflow: tag the current Prefect flow run with the MLflow run id."""

from __future__ import annotations

import logging
from typing import Any, Callable

log = logging.getLogger(__name__)

def run_logger(fallback: str):
    """Prefect's run logger inside a flow or task run, else the standard logger ``fallback`` (tests, scripts)."""
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a Prefect run
        return logging.getLogger(fallback)


#: errors that a rerun cannot fix (bad input, a missing file or model, a refused config): never retried
from engine.train_loop import NonFiniteTrainingError  # noqa: E402 - torch is imported by every caller anyway
from engine.checkpoints import StorageFullError  # noqa: E402 - a full disk: rerunning at once fails the same way

DETERMINISTIC_ERRORS = (ValueError, TypeError, KeyError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                        PermissionError, NonFiniteTrainingError, StorageFullError)
#: errors the user fixes (bad input, a missing file or service, a refused config, a full disk): the command line
#: prints them in one line, without a traceback
USER_ERRORS = (ValueError, FileNotFoundError, ConnectionError, StorageFullError)


def retry_transient(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry a failed task only when its error may be transient (a network or
    server hiccup), never for :data:`DETERMINISTIC_ERRORS`."""
    exc = state.data if isinstance(getattr(state, "data", None), BaseException) else None
    if exc is None:
        try:
            exc = state.result(raise_on_failure=False)
        except Exception:  # noqa: BLE001 - unknown: keep Prefect's default (retry)
            return True
    return not isinstance(exc, DETERMINISTIC_ERRORS)


def tag_current_flow_run(*tags: str) -> None:
    """Add tags (e.g. ``mlflow_run_id:<id>``) to the running Prefect flow run; never fails the flow."""
    try:
        from prefect.client.orchestration import get_client
        from prefect.runtime import flow_run

        rid = flow_run.get_id()
        if not rid:
            return
        with get_client(sync_client=True) as client:
            current = client.read_flow_run(rid)
            client.update_flow_run(rid, tags=sorted(set(current.tags) | set(tags)))
    except Exception as err:  # noqa: BLE001 - a missing tag must not fail the pipeline
        log.warning("could not tag the Prefect flow run: %s", err)


def post_markdown(key: str, markdown: str, description: str) -> None:
    """Post a markdown artifact on the running Prefect flow run (shown in the UI); never fails the flow.

    ``key`` must be lowercase letters, digits and dashes (Prefect's rule); outside a flow run it does nothing.
    """
    try:
        from prefect.artifacts import create_markdown_artifact
        from prefect.runtime import flow_run

        if not flow_run.get_id():
            return
        create_markdown_artifact(markdown=markdown, key=key, description=description)
    except Exception as err:  # noqa: BLE001 - a missing artifact must not fail the pipeline
        log.warning("could not post the Prefect artifact %s: %s", key, err)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 120 else text[:117] + "..."


def stage_markdown(name: str, out: dict, *, skipped_key: str | None, wall_s: float | None,
                   mlflow_url: str | None = None) -> str:
    """A Prefect artifact for one pipeline stage: whether it ran or reused an earlier result (and which), its
    wall time, the models and runs it produced, its headline metrics, and the MLflow link when there is one."""
    lines = [f"### stage `{name}`", ""]
    if skipped_key:
        lines.append(f"**Skipped:** reuses the earlier completed stage `{skipped_key}` (same config, inputs and code); "
                     "nothing was recomputed.")
    else:
        lines.append(f"**Ran** in {wall_s:.1f} s." if wall_s is not None else "**Ran.**")
    if mlflow_url:
        lines.append(f"MLflow run: [{mlflow_url}]({mlflow_url})")
    rows = []
    for key in ("corpus_dir", "model_uri", "alias", "run_id"):
        if out.get(key):
            rows.append((key, out[key]))
    for role, uri in (out.get("models") or {}).items():
        rows.append((f"model[{role}]", uri))
    metrics = out.get("metrics") or {}
    flat = metrics if all(not isinstance(v, dict) for v in metrics.values()) else {
        f"{role}.{k}": v for role, ms in metrics.items() if isinstance(ms, dict) for k, v in ms.items()}
    rows += [(k, v) for k, v in flat.items() if isinstance(v, (int, float)) and not k.endswith("examples")]
    if rows:
        lines += ["", "| what | value |", "|---|---|"] + [f"| {k} | {_cell(v)} |" for k, v in rows]
    if out.get("markdown"):
        lines += ["", out["markdown"]]
    return "\n".join(lines)


def earlier_runs(out: dict) -> list[str]:
    """The MLflow run ids a recorded stage output names (``run_id``, or ``run_ids`` per model)."""
    ids = [out["run_id"]] if out.get("run_id") else []
    runs = out.get("run_ids") or {}
    ids += [v for v in (runs.values() if isinstance(runs, dict) else runs) if v]
    return ids


def reuse_message(name: str, key: str, out: dict) -> str:
    runs = earlier_runs(out)
    return (f"stage {name} reused: completed earlier with the same config, inputs and code (stage key {key})"
            + (f"; MLflow run{'s' if len(runs) > 1 else ''} {', '.join(runs)}" if runs else ""))


def _reuse_stage(name: str, key: str, out: dict):
    from prefect.states import Completed

    return Completed(name="Cached", message=reuse_message(name, key, out), data=out)


def reuse_stage_task():
    """A Prefect task that stands for a skipped pipeline stage: its run ends in a Completed state named
    "Cached" whose message names the earlier run it reuses, so the Prefect UI shows the stage (and why it
    did not run), not "0 task runs". Called as ``reuse_stage_task().with_options(name=...)(name, key, out)``."""
    from prefect import task
    from prefect.cache_policies import NONE

    return task(_reuse_stage, name="reuse-stage", cache_policy=NONE, persist_result=False)


def on_a_cluster() -> bool:
    """A Ray cluster is configured (``RAY_ADDRESS``): independent runs may share it side by side."""
    import os

    return bool(os.environ.get("RAY_ADDRESS"))


def side_by_side(jobs: dict[str, Callable[[], Any]], *, parallel: bool) -> dict[str, Any]:
    """Run independent stage runs (``name -> call``) and return their results by name.

    With ``parallel`` on a Ray cluster (:func:`on_a_cluster`), each call runs in its own Prefect task run, all
    submitted at once (Prefect's thread pool), so their Ray Train fits share the cluster, each with the
    resources its own config asks for. Otherwise (a laptop: one local Ray instance per fit) they run in order.
    Every call is waited for before the first error is raised, so no run is left unwatched."""
    if not (parallel and on_a_cluster()) or len(jobs) < 2:
        return {name: call() for name, call in jobs.items()}
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    @task(cache_policy=NO_CACHE)
    def side_by_side_run(call: Callable[[], Any]) -> Any:
        """One of several independent stage runs submitted together (its subflow runs inside this task run)."""
        return call()

    futures = {name: side_by_side_run.with_options(name=f"side-by-side-{name}").submit(call)
               for name, call in jobs.items()}
    for f in futures.values():
        f.wait()
    return {name: f.result() for name, f in futures.items()}
