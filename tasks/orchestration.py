"""Links between Prefect and MLflow: tag the current Prefect flow run with the MLflow run id."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


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
