"""Fine-tuning and evaluation flows for real (Ray Train worker, MLflow registry), on a local jsonl task."""

import json

import pytest

from engine.config.evaluate import EvaluateConfig
from engine.config.finetune import FinetuneConfig
from flows.evaluate import evaluate_flow
from flows.finetune import finetune_flow
from tests.conftest import make_t5_dir


@pytest.fixture(scope="module")
def tiny_t5_dir(tiny_corpus, tmp_path_factory):
    return make_t5_dir(f"{tiny_corpus}/tokenizer", tmp_path_factory.mktemp("t5"))


def test_finetune_registers_the_model_with_task_and_lineage_tags_and_evaluates_it(prefect_harness, tiny_t5_dir,
                                                                                  copy_task, tmp_path):
    from mlflow import MlflowClient

    cfg = FinetuneConfig(model=tiny_t5_dir, task=copy_task, total_steps=150, batch_size=16, lr=3e-3, eval_every=50, dropout_rate=0.0, early_stop_patience=0,
                         checkpoint_every=50, max_input_length=16, max_target_length=4, test_examples=40,
                         threads_per_worker=1, output_root=str(tmp_path), register_as="test-copy")
    res = finetune_flow(config=cfg)
    assert set(res.metrics) >= {"test.accuracy", "test.macro_f1", "test.examples_per_s"}
    assert res.metrics["test.accuracy"] > 0.5  # the copy task is learnt
    mv = MlflowClient().get_model_version("test-copy", res.model_uri.rsplit("/", 1)[1])
    assert mv.tags["task"] == "copy_first" and mv.tags["lineage.pretrained_model"] == tiny_t5_dir
    ev = evaluate_flow(config=EvaluateConfig(model=res.model_uri, task=copy_task, max_input_length=16,
                                             max_new_tokens=4))
    assert ev.metrics["test.accuracy"] == pytest.approx(res.metrics["test.accuracy"])
    # the two kept step checkpoints (100, 150) are logged models of the run; MLflow's API ranks them by val loss
    import mlflow

    from tasks import tracking

    ckpts = mlflow.search_logged_models(filter_string=f"source_run_id = '{res.run_id}' AND tags.kind = 'checkpoint'",
                                        experiment_ids=[MlflowClient().get_run(res.run_id).info.experiment_id],
                                        output_format="list")
    assert sorted(m.tags["step"] for m in ckpts) == ["100", "150"] and all(m.status.name == "READY" for m in ckpts)
    losses = {int(m.tags["step"]): next(x.value for x in m.metrics if x.key == "checkpoint.val_loss") for m in ckpts}
    assert [p.step for p in MlflowClient().get_metric_history(res.run_id, "val_loss")] == [50, 100, 150]
    best = tracking.best_checkpoint(res.run_id, "val_loss")
    assert int(best.tags["step"]) == min(losses, key=losses.get)
    from pathlib import Path

    files = Path(mlflow.artifacts.download_artifacts(artifact_uri=best.artifact_location, dst_path=str(tmp_path / "b")))
    assert json.loads((files / "state.json").read_text())["step"] == int(best.tags["step"])
    assert (files / "model.safetensors").stat().st_size > 0


def test_a_tokenizer_that_does_not_match_the_model_is_refused_before_training(prefect_harness, tiny_t5_dir, copy_task,
                                                                              tmp_path):
    import shutil

    from transformers import T5Config, T5ForConditionalGeneration

    bad = tmp_path / "bad"
    shutil.copytree(tiny_t5_dir, bad)
    small = T5ForConditionalGeneration(T5Config(vocab_size=50, d_model=16, d_ff=16, d_kv=4, num_heads=2, num_layers=1,
                                                decoder_start_token_id=0))
    small.save_pretrained(bad)  # overwrite the weights/config with a 50-token model; tokenizer stays
    with pytest.raises(ValueError, match="the tokenizer has .* tokens but the model's embedding has 50 rows"):
        finetune_flow(config=FinetuneConfig(model=str(bad), task=copy_task, output_root=str(tmp_path)))
