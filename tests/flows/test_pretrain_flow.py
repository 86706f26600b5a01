"""The pretraining flow for real: Prefect flow -> Ray Train workers -> MLflow run + registered model."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flows.pretrain import pretrain_flow
from tests.conftest import tiny_pretrain_config


def _history(run_id, key):
    from mlflow import MlflowClient

    return {m.step: m.value for m in MlflowClient().get_metric_history(run_id, key)}


@pytest.mark.reliability
def test_spactor_logs_mlm_and_rtd_only_before_tau_and_sc_loss_throughout_and_relative_paths_resolve(
        prefect_harness, tiny_corpus, tmp_path, monkeypatch):
    """Also the relative-paths case (one Ray fit for both): ``corpus_dir`` and ``output_root`` given relative to
    where the command runs are made absolute before they reach Ray Train's controller and workers."""
    import os
    import shutil

    from transformers import AutoTokenizer, T5ForConditionalGeneration

    from tasks.tracking import resolve_model

    shutil.copytree(tiny_corpus, tmp_path / "corpus")
    monkeypatch.chdir(tmp_path)
    cfg = tiny_pretrain_config(corpus_dir="corpus", output_root="./out", total_steps=12, tau=6)
    assert cfg.corpus_dir == str(tmp_path / "corpus") and cfg.output_root == str(tmp_path / "out")
    res = pretrain_flow(config=cfg)
    assert Path(res.model_dir).is_relative_to(tmp_path / "out") and os.path.isdir(res.model_dir)
    sc, mlm, rtd = (_history(res.run_id, k) for k in ("sc_loss", "mlm_loss", "rtd_loss"))
    assert sorted(sc) == [2, 4, 6, 8, 10, 12]
    assert sorted(mlm) == sorted(rtd) == [2, 4, 6]
    flops = _history(res.run_id, "cum_flops")
    assert all(flops[a] < flops[b] for a, b in zip(sorted(flops), sorted(flops)[1:]))
    # hybrid steps cost more than SC steps
    assert flops[4] - flops[2] > flops[12] - flops[10]
    assert set(_history(res.run_id, "grad_cosine_sc_rtd")) == {4}
    assert set(_history(res.run_id, "val_sc_loss")) == {4, 8, 12}
    # the registered model loads with from_pretrained and generates
    folder = resolve_model(res.model_uri)
    model = T5ForConditionalGeneration.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    out = model.generate(**tok(["The House of Commons"], return_tensors="pt"), max_new_tokens=5)
    assert out.shape[0] == 1 and 1 < out.shape[1] <= 6
    from mlflow import MlflowClient

    mv = MlflowClient().get_model_version("t5-test-spactor", res.model_uri.rsplit("/", 1)[1])
    assert mv.tags["preset"] == "test" and mv.tags["arm"] == "spactor"


@pytest.mark.reliability
def test_ray_worker_sigkill_mid_training_resumes_to_the_same_parameters(prefect_harness, tiny_corpus, tmp_path):
    kw = dict(corpus_dir=tiny_corpus, total_steps=8, tau=4, checkpoint_every=4, num_workers=2)
    straight = pretrain_flow(config=tiny_pretrain_config(output_root=str(tmp_path / "a"), **kw))
    killed = pretrain_flow(config=tiny_pretrain_config(output_root=str(tmp_path / "b"), fault_kill_at_step=6, **kw))
    markers = list((tmp_path / "b").rglob(".fault-injected-*"))
    assert markers, "the fault was not injected"
    a = load_file(str(Path(straight.model_dir) / "model.safetensors"))
    b = load_file(str(Path(killed.model_dir) / "model.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_model_references_keep_uris_and_hub_names_and_make_local_folders_absolute(tmp_path, monkeypatch):
    from engine.config.paths import model_reference

    monkeypatch.chdir(tmp_path)
    (tmp_path / "my-model").mkdir()
    assert model_reference("models:/t5/1") == "models:/t5/1"
    assert model_reference("runs:/abc/model") == "runs:/abc/model"
    assert model_reference("s3://bucket/model") == "s3://bucket/model"
    assert model_reference("google/t5-small") == "google/t5-small"
    assert model_reference("my-model") == str(tmp_path / "my-model")
    assert model_reference("./later") == str(tmp_path / "later")
