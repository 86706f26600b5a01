from tasks import stages


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
    assert stages.completed(k1) is None
    stages.record(k1, {"model_uri": "models:/x/1"})
    assert stages.completed(k1) == {"model_uri": "models:/x/1"}


def test_training_run_keys_and_the_corpus_key_change_with_the_code_they_run(monkeypatch):
    from tasks import corpus, pretrain

    closure = {p.name for p in stages.import_closure("engine.pretrain_worker")}
    assert {"span_corruption.py", "spactor.py", "train_loop.py", "checkpoints.py"} <= closure
    cfg = {"lr": 1e-3, "tau": 3}
    before = pretrain.run_key("pretrain", cfg, "/corpus")
    assert before == pretrain.run_key("pretrain", cfg, "/corpus")  # stable for the same code
    fp = corpus.fingerprint_source.fn({"source": "packaged", "packaged": ["wiki"]})
    monkeypatch.setattr(stages, "code_version", lambda root="flows.pipeline": "edited-" + root)
    assert pretrain.run_key("pretrain", cfg, "/corpus") != before
    assert corpus.fingerprint_source.fn({"source": "packaged", "packaged": ["wiki"]}) != fp


def test_a_reused_stage_message_names_every_earlier_mlflow_run_and_the_stage_key():
    from tasks.orchestration import reuse_message

    msg = reuse_message("pretrain", "k123", {"run_ids": {"teacher": "r1", "target": "r2"}, "models": {}})
    assert "stage key k123" in msg and "MLflow runs r1, r2" in msg
    assert reuse_message("corpus", "k", {"run_id": "c9", "corpus_dir": "/x"}).endswith("MLflow run c9")
    assert "MLflow" not in reuse_message("sd_benchmark", "k", {"rows": []})
