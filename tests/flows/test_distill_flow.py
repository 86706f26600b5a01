"""The distill flow for real: Ray Train worker, MLflow run with acceptance metrics, registered alias."""

import pytest

from engine.config.distill import DistillConfig
from flows.distill import distill_flow
from tests.conftest import make_t5_dir


def test_draft_distillation_registers_an_alias_that_tells_the_story(prefect_harness, tiny_corpus, copy_task, tmp_path):
    from mlflow import MlflowClient

    tok = f"{tiny_corpus}/tokenizer"
    teacher = make_t5_dir(tok, tmp_path / "t", d_model=48, seed=1)
    student = make_t5_dir(tok, tmp_path / "s", d_model=32, seed=2)
    cfg = DistillConfig(teacher=teacher, student=student, task=copy_task, divergence="jsd",
                        data_mix={"student": 0.5, "fixed": 0.5}, total_steps=10, batch_size=8, eval_every=10,
                        eval_examples=8, max_input_length=16, max_target_length=6, threads_per_worker=1,
                        output_root=str(tmp_path / "runs"), register_as="test-distill")
    res = distill_flow(config=cfg)
    assert res.alias == "draft-distillspec-jsd-fixed50-student50"
    mv = MlflowClient().get_model_version_by_alias("test-distill", res.alias)
    assert mv.tags["lineage.teacher"] == teacher and mv.tags["lineage.divergence"] == "jsd"
    hist = MlflowClient().get_metric_history(res.run_id, "sampled.acceptance_rate")
    assert [m.step for m in hist] == [10] and 0.0 <= hist[0].value <= 1.0


def test_bad_distill_configs_are_refused_by_field():
    with pytest.raises(ValueError, match="unknown data sources"):
        DistillConfig(data_mix={"oracle": 1.0})
    with pytest.raises(ValueError, match="divergence"):
        DistillConfig(divergence="kl")
