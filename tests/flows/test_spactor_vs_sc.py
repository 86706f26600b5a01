"""The SpacTor-vs-SC comparison flow for real: two arms, one comparison run with plot, numbers, task scores."""

from pathlib import Path

import pytest

from flows.corpus_prep import CorpusPrepConfig
from flows.finetune import FinetuneConfig
from flows.spactor_vs_sc import SpacTorVsSCConfig, spactor_vs_sc
from tests.conftest import tiny_pretrain_config


@pytest.mark.slow
def test_comparison_logs_plot_curves_reach_point_and_task_scores_of_both_arms(prefect_harness, copy_task, tmp_path):
    from tasks.tracking import artifact_local_path

    corpus = CorpusPrepConfig(name="cmp", packaged=["wiki", "parl"], max_documents=400, vocab_size=600, pack_length=70,
                              character_coverage=1.0, num_proc=1, output_root=str(tmp_path / "corpus"))
    cfg = SpacTorVsSCConfig(
        preset="test", corpus=corpus,
        pretrain=tiny_pretrain_config(total_steps=12, tau=6, output_root=str(tmp_path / "runs")),
        finetune_tasks=[copy_task],
        finetune=FinetuneConfig(total_steps=10, batch_size=8, eval_every=5, max_input_length=16, max_target_length=4,
                                test_examples=16, threads_per_worker=1, output_root=str(tmp_path / "ft")))
    res = spactor_vs_sc(config=cfg)
    art = Path(artifact_local_path(res.run_id))
    assert (art / "comparison.png").stat().st_size > 1000 and (art / "comparison.csv").exists()
    assert (art / "task_scores.csv").exists()
    n = res.numbers
    assert n["sc_total_steps"] == 12 and n["sc_total_flops"] > 0
    # the same data and seed: the arms' curves start from the same model, so SpacTor's FLOPs per step are larger
    assert set(res.task_scores["copy_first"]["test.accuracy"]) == {"sc", "spactor"}
    assert res.sc_model_uri != res.spactor_model_uri


def test_the_spactor_arm_needs_a_positive_tau():
    with pytest.raises(ValueError, match="tau must be > 0"):
        SpacTorVsSCConfig(pretrain=tiny_pretrain_config(tau=0))
