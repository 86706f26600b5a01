from tasks.runtime import stages


def test_the_code_version_covers_the_pipeline_import_closure_but_not_unrelated_flows():
    names = {p.name for p in stages.import_closure("flows.pipeline")}
    assert {"pipeline.py", "train_loop.py", "speculative.py", "span_corruption.py"} <= names
    assert "active_learning.py" not in names and "thai_segmenter.py" not in names


def test_a_stage_key_changes_with_config_or_inputs_and_records_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("SPACTOR_STAGE_DIR", str(tmp_path))
    k1 = stages.stage_key("pretrain", {"tau": 1}, {"corpus": "a"})
    assert k1 == stages.stage_key("pretrain", {"tau": 1}, {"corpus": "a"})
    assert k1 != stages.stage_key("pretrain", {"tau": 2}, {"corpus": "a"})
    assert k1 != stages.stage_key("pretrain", {"tau": 1}, {"corpus": "b"})
    assert stages.reusable(k1) == (None, "")
    stages.record(k1, {"rows": [1, 2]})
    assert stages.reusable(k1) == ({"rows": [1, 2]}, "")


def test_training_run_keys_and_the_corpus_key_change_with_the_code_they_run(monkeypatch):
    from tasks import corpus
    from tasks.runtime.tracked_run import run_key

    closure = {p.name for p in stages.import_closure("engine.pretrain_worker")}
    assert {"span_corruption.py", "spactor.py", "train_loop.py", "checkpoints.py"} <= closure
    cfg = {"lr": 1e-3, "tau": 3}
    before = run_key("pretrain", cfg, "/corpus")
    assert before == run_key("pretrain", cfg, "/corpus")  # stable for the same code
    fp = corpus.fingerprint_source.fn({"source": "packaged", "packaged": ["wiki"]})
    monkeypatch.setattr(stages, "code_version", lambda root="flows.pipeline": "edited-" + root)
    assert run_key("pretrain", cfg, "/corpus") != before
    assert corpus.fingerprint_source.fn({"source": "packaged", "packaged": ["wiki"]}) != fp


def test_a_reused_stage_message_names_every_earlier_mlflow_run_and_the_stage_key():
    from tasks.runtime.orchestration import reuse_message

    msg = reuse_message("pretrain", "k123", {"run_ids": {"teacher": "r1", "target": "r2"}, "models": {}})
    assert "stage key k123" in msg and "MLflow runs r1, r2" in msg
    assert reuse_message("corpus", "k", {"run_id": "c9", "corpus_dir": "/x"}).endswith("MLflow run c9")
    assert "MLflow" not in reuse_message("sd_benchmark", "k", {"rows": []})


# --- nothing stale: keys by content, records by store (issue 32) ---

import pytest  # noqa: E402


@pytest.fixture()
def store(tmp_path, monkeypatch):
    """Switch the tracking store: ``store("a")`` points MLflow at a fresh SQLite store (or back at "a")."""
    monkeypatch.setenv("SPACTOR_STAGE_DIR", str(tmp_path / "stages"))

    def use(name: str) -> str:
        uri = f"sqlite:///{tmp_path / name}.db"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        return uri
    return use


def _weights(folder, content: bytes):
    """A model folder (not a T5: registered as plain files) whose weights are ``content``."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "toy"}')
    (folder / "weights.bin").write_bytes(content)
    return folder


def _register(folder, name="m"):
    from tasks import tracking

    with tracking.start_run("stages-test", "train") as run_id:
        uri = tracking.register_model(run_id, folder, name)
    return run_id, uri


def test_stage_keys_take_a_models_content_not_its_reference_string(store, tmp_path):
    a = _weights(tmp_path / "a", b"weights A")
    b = _weights(tmp_path / "b", b"weights B")
    store("one")
    _, uri = _register(a)
    key_one = stages.stage_key("finetune", {"lr": 1}, {"teacher": uri})
    store("two")  # a fresh store: the same name and version, other weights (a retrained model)
    _, uri_two = _register(b)
    assert uri_two == uri
    assert stages.stage_key("finetune", {"lr": 1}, {"teacher": uri}) != key_one
    store("three")  # the same weights registered again, in yet another store: the same key
    _register(a)
    assert stages.stage_key("finetune", {"lr": 1}, {"teacher": uri}) == key_one
    assert stages.stage_key("finetune", {"lr": 1}, {"teacher": str(a)}) == key_one  # the folder itself too


def test_a_stage_record_is_reused_only_against_the_store_it_was_written_against(store, tmp_path):
    store("one")
    run_id, uri = _register(_weights(tmp_path / "a", b"weights A"))
    key = stages.stage_key("finetune", {}, {})
    stages.record(key, {"run_id": run_id, "models": {"teacher": uri}, "task_dir": str(tmp_path)})
    outputs, why = stages.reusable(key)
    assert outputs == {"run_id": run_id, "models": {"teacher": uri}, "task_dir": str(tmp_path)} and why == ""
    store("fresh")
    outputs, why = stages.reusable(key)
    assert outputs is None and "recorded against the tracking store" in why and "one.db" in why
    store("one")
    assert stages.reusable(key)[0] is not None


def test_a_stage_whose_model_version_run_or_folder_is_gone_or_replaced_runs_again(store, tmp_path):
    from mlflow import MlflowClient

    store("one")
    run_id, uri = _register(_weights(tmp_path / "a", b"weights A"))
    key = stages.stage_key("distill_draft", {}, {})
    stages.record(key, {"run_id": run_id, "model_uri": uri})
    assert stages.reusable(key) == ({"run_id": run_id, "model_uri": uri}, "")
    MlflowClient().delete_model_version("m", "1")
    outputs, why = stages.reusable(key)
    assert outputs is None and "models:/m/1" in why and "no longer in the registry" in why
    # a version 1 of other weights under the same name (deleted and re-created model) is not the recorded one
    MlflowClient().delete_registered_model("m")
    _register(_weights(tmp_path / "b", b"weights B"))
    outputs, why = stages.reusable(key)
    assert outputs is None and "other weights" in why
    # a run deleted from the store, and a folder removed from disk
    key2 = stages.stage_key("corpus", {}, {})
    gone = tmp_path / "corpus"
    gone.mkdir()
    stages.record(key2, {"run_id": run_id, "corpus_dir": str(gone)})
    assert stages.reusable(key2)[0] is not None
    gone.rmdir()
    assert "is gone" in stages.reusable(key2)[1]
    gone.mkdir()
    MlflowClient().delete_run(run_id)
    assert f"MLflow run {run_id}" in stages.reusable(key2)[1]


def test_a_record_from_before_store_checks_or_unreadable_is_not_reused(store, tmp_path):
    store("one")
    key = stages.stage_key("corpus", {}, {})
    p = tmp_path / "stages" / f"{key}.json"
    p.parent.mkdir(parents=True)
    p.write_text('{"run_id": "r"}')
    assert stages.reusable(key) == (None, "its record names no tracking store (written before stores were checked)")
    p.write_text("{not json")
    assert "not readable JSON" in stages.reusable(key)[1]
    assert stages.reusable("never-ran") == (None, "")


def test_training_run_keys_take_a_model_folders_content_not_its_path(tmp_path):
    from tasks.runtime.tracked_run import run_key

    a = _weights(tmp_path / "a", b"weights A")
    copy = _weights(tmp_path / "elsewhere" / "a", b"weights A")
    b = _weights(tmp_path / "b", b"weights B")
    assert run_key("finetune", {"lr": 1}, str(a)) == run_key("finetune", {"lr": 1}, str(copy))
    assert run_key("finetune", {"lr": 1}, str(a)) != run_key("finetune", {"lr": 1}, str(b))
    assert run_key("finetune", {"model": str(a)}, "/task") == run_key("finetune", {"model": str(copy)}, "/task")
