"""The DistillSpec study end to end on tiny models: drafts x divergences, SD benchmark, model-garden row."""

from pathlib import Path

import pytest

from engine.config.distill import DistillConfig
from engine.config.distillspec_study import StudyConfig
from engine.config.sd_benchmark import SDBenchmarkConfig
from flows.distillspec_study import distillspec_study
from tests.conftest import make_t5_dir


@pytest.mark.slow
def test_study_logs_one_table_over_drafts_and_the_model_garden_row(prefect_harness, tiny_corpus, copy_task, tmp_path):
    from tasks.tracking import artifact_local_path

    tok = f"{tiny_corpus}/tokenizer"
    teacher = make_t5_dir(tok, tmp_path / "teacher", d_model=64, seed=3)
    target = make_t5_dir(tok, tmp_path / "target", d_model=48, seed=1)
    draft = make_t5_dir(tok, tmp_path / "draft", d_model=16, layers=1, seed=2)
    cfg = StudyConfig(target=target, draft=draft, teacher=teacher, task=copy_task, divergences=["tvd"],
                      data_sources={"onpolicy": {"student": 1.0}},
                      distill=DistillConfig(total_steps=6, batch_size=8, eval_every=6, eval_examples=8,
                                            max_input_length=16, max_target_length=6, threads_per_worker=1,
                                            output_root=str(tmp_path / "runs")),
                      sd=SDBenchmarkConfig(num_prompts=2, repeats=1, warmup=0, gammas=[2], lenience=[1.0],
                                           max_new_tokens=6, hf_baselines=False))
    res = distillspec_study(config=cfg)
    assert set(res.drafts) == {"undistilled", "tvd-onpolicy"}
    art = Path(artifact_local_path(res.run_id))
    table = (art / "study.csv").read_text()
    assert "speedup_vs_undistilled_sd" in table and "tvd-onpolicy" in table
    assert (art / "model_garden.json").exists() and "model garden" in res.markdown
