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
