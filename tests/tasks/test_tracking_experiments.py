"""Experiments this project creates open on the runs table of MLflow 3's UI, not on its GenAI overview."""

import uuid


def test_new_and_older_experiments_are_tagged_as_machine_learning_experiments():
    from mlflow import MlflowClient

    from tasks import tracking

    client = MlflowClient()
    fresh = tracking.ensure_experiment(f"kind-{uuid.uuid4().hex[:8]}")
    assert client.get_experiment(fresh).tags.get("mlflow.experimentKind") == "custom_model_development"
    old = client.create_experiment(f"old-{uuid.uuid4().hex[:8]}")  # as made before the tag existed
    assert "mlflow.experimentKind" not in client.get_experiment(old).tags
    assert tracking.ensure_experiment(client.get_experiment(old).name) == old
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"


def test_a_nested_run_joins_its_parents_experiment_so_the_ui_draws_one_tree_and_a_lone_run_keeps_its_own():
    from mlflow import MlflowClient

    from tasks import tracking

    client = MlflowClient()
    pipe, stage = f"pipe-{uuid.uuid4().hex[:8]}", f"stage-{uuid.uuid4().hex[:8]}"
    with tracking.start_run(pipe, "parent") as parent:
        with tracking.start_run(stage, "child", parent_run_id=parent) as child:
            pass
    with tracking.start_run(stage, "alone") as alone:
        pass
    exp_of = lambda rid: client.get_experiment(client.get_run(rid).info.experiment_id).name  # noqa: E731
    assert exp_of(child) == exp_of(parent) == pipe and exp_of(alone) == stage
    assert client.get_run(child).data.tags["mlflow.parentRunId"] == parent


def test_prefect_retries_transient_errors_but_never_bad_input():
    from prefect.states import Failed

    from tasks.runtime.orchestration import retry_transient

    assert retry_transient(None, None, Failed(data=ConnectionError("server hiccup")))
    assert retry_transient(None, None, Failed(data=TimeoutError("slow")))
    for exc in (ValueError("bad value"), FileNotFoundError("no such model"), KeyError("field")):
        assert not retry_transient(None, None, Failed(data=exc))


def test_run_links_open_the_mlflow_ui_in_its_model_training_view():
    from tasks.tracking import run_page_url

    url = run_page_url("http://127.0.0.1:5000/", "3", "abc")
    assert url == "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning"


def test_metric_names_mlflow_would_refuse_are_logged_with_their_odd_characters_replaced():
    """A user's draft label lands in metric names (verdict.sd.<draft>...): one odd character must not make MLflow
    refuse the whole batch of a run's metrics."""
    from mlflow import MlflowClient

    from tasks import tracking

    with tracking.start_run(f"names-{uuid.uuid4().hex[:8]}", "odd") as run_id:
        assert tracking.log_metrics(run_id, {"verdict.sd.a+b=c.speedup": 1.5, "plain.x-y_z:w/v": 2.0})
    assert MlflowClient().get_run(run_id).data.metrics == {"verdict.sd.a_b_c.speedup": 1.5, "plain.x-y_z:w/v": 2.0}
