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
