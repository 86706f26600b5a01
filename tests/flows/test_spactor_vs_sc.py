"""The SpacTor-vs-SC comparison flow for real: two arms, one comparison run with plot, numbers, task scores."""

from pathlib import Path

import pytest

from engine.config.corpus_prep import CorpusPrepConfig
from engine.config.finetune import FinetuneConfig
from engine.config.spactor_vs_sc import SpacTorVsSCConfig
from flows.spactor_vs_sc import spactor_vs_sc
from tests.conftest import tiny_pretrain_config


@pytest.mark.slow
def test_comparison_logs_plot_curves_reach_point_tau_sweep_budgets_and_task_scores(prefect_harness, copy_task, tmp_path):
    from tasks.tracking import artifact_local_path

    corpus = CorpusPrepConfig(name="cmp", packaged=["wiki", "parl"], max_documents=400, vocab_size=600, pack_length=70,
                              character_coverage=1.0, num_proc=1, output_root=str(tmp_path / "corpus"))
    cfg = SpacTorVsSCConfig(
        preset="test", corpus=corpus,
        pretrain=tiny_pretrain_config(total_steps=12, tau=6, output_root=str(tmp_path / "runs")),
        finetune_tasks=[copy_task],
        finetune=FinetuneConfig(total_steps=10, batch_size=8, eval_every=5, max_input_length=16, max_target_length=4,
                                test_examples=16, threads_per_worker=1, output_root=str(tmp_path / "ft")),
        budget_fractions=[0.5])  # the tau sweep's verdict is unit-tested below: here SC, tau 6 and its half budget
    res = spactor_vs_sc(config=cfg)
    art = Path(artifact_local_path(res.run_id))
    assert (art / "comparison.png").stat().st_size > 1000 and (art / "comparison.csv").exists()
    assert (art / "task_scores.csv").exists()
    n = res.numbers
    assert n["sc_total_steps"] == 12 and n["sc_total_flops"] > 0
    # the same data and seed: the arms' curves start from the same model, so SpacTor's FLOPs per step are larger
    assert set(res.task_scores["copy_first"]["test.accuracy"]) == {"sc", "spactor"}
    assert res.sc_model_uri != res.spactor_model_uri
    # the half-budget arm and the claim in its own terms
    assert set(res.study["taus"]) == {6} and not res.study["taus"][6]["hybrid_to_the_end"]
    assert res.study["downstream"]["per_seed"][0]["spactor"].keys() == {"0.5", "1"}
    assert "Downstream (test.accuracy" in res.verdict
    assert (art / "summary.md").read_text() == res.verdict and (art / "study.json").exists()


def _evals(losses, flops_per_step):
    return [{"step": 10 * (i + 1), "val_sc_loss": v, "cum_flops": flops_per_step * 10 * (i + 1)}
            for i, v in enumerate(losses)]


def test_study_numbers_give_the_fraction_of_steps_and_flops_to_reach_sc_with_the_seed_spread():
    from tasks.report.spactor_study import study_numbers, study_verdict

    runs = {}
    for seed, shift in ((0, 0.0), (1, 0.1)):
        runs[("sc", seed)] = {"evals": _evals([5.0, 4.0, 3.0, 2.0], 1.0), "cum_flops": 40.0}
        # SpacTor reaches 2.0 (+shift) at step 20 of 40, with 1.2x the FLOPs per step
        runs[("tau10", seed)] = {"evals": _evals([3.0, 2.0 + shift, 1.5, 1.4], 1.2), "cum_flops": 48.0}
        runs[("tau10-x0.5", seed)] = {"evals": _evals([3.0, 2.0], 1.2), "cum_flops": 24.0}
    scores = {("sc", s): {"test.accuracy": 0.60} for s in (0, 1)}
    scores.update({("tau10", 0): {"test.accuracy": 0.70}, ("tau10", 1): {"test.accuracy": 0.65},
                   ("tau10-x0.5", 0): {"test.accuracy": 0.61}, ("tau10-x0.5", 1): {"test.accuracy": 0.55}})
    n = study_numbers(runs, [10], 10, [0.5], scores=scores, total_steps=40)
    t = n["taus"][10]
    assert t["reached"] == 2
    # seed 0: 20/40 steps = 0.5, 24/40 FLOPs = 0.6; seed 1 crosses SC's final 2.0 between 2.1 (step 20) and
    # 1.5 (step 30): step 20 + 10/6, FLOPs 24 + 12/6 = 26
    assert t["steps_fraction"]["min"] == pytest.approx(0.5)
    assert t["steps_fraction"]["max"] == pytest.approx((20 + 10 / 6) / 40)
    assert t["flops_fraction"]["mean"] == pytest.approx((0.6 + 26 / 40) / 2)
    d = n["downstream"]
    assert [p["steps_fraction"] for p in d["per_seed"]] == [0.5, 1.0]
    assert d["per_seed"][0]["flops_fraction"] == pytest.approx(24 / 40)
    text = study_verdict(n, 10)
    assert "does not hold at this scale" in text  # the mean steps fraction 0.525 is above the paper's 0.5
    assert "52% ± 3%" in text
    # a tau sweep ending in "hybrid to the end" (tau = total steps) is compared with switching at tau
    for seed in (0, 1):
        runs[("tau40", seed)] = {"evals": _evals([3.2, 2.2, 1.8, 1.6], 1.2), "cum_flops": 48.0}
    swept = study_numbers(runs, [10, 40], 10, [0.5], scores=scores, total_steps=40)
    assert swept["taus"][40]["hybrid_to_the_end"] and not swept["taus"][10]["hybrid_to_the_end"]
    assert "Hybrid to the end vs switching at tau = 10" in study_verdict(swept, 10)


def test_the_spactor_arm_needs_a_positive_tau():
    with pytest.raises(ValueError, match="tau must be > 0"):
        SpacTorVsSCConfig(pretrain=tiny_pretrain_config(tau=0))


@pytest.mark.parametrize("update, match", [
    ({"taus": [0]}, "every tau must be in"), ({"taus": [13]}, "every tau must be in"),
    ({"budget_fractions": [1.0]}, "budget_fractions must lie in"),
    ({"budget_fractions": [0.25]}, "below pretrain.tau"), ({"seeds": [1, 1]}, "distinct"),
])
def test_bad_sweeps_are_refused_by_field(update, match):
    with pytest.raises(ValueError, match=match):
        SpacTorVsSCConfig(pretrain=tiny_pretrain_config(total_steps=12, tau=6), **update)


def test_laptop_preset_has_three_seeds_a_tau_sweep_ending_in_hybrid_to_the_end_and_shorter_budgets():
    from engine.config.spactor_vs_sc import PRESETS

    cfg = PRESETS["laptop"]()
    assert len(cfg.seeds) >= 3 and len(cfg.sweep()) >= 3 and cfg.pretrain.total_steps in cfg.sweep()
    labels = [a for a, _, _ in cfg.arms()]
    assert labels[0] == "sc" and len(labels) == len(set(labels))
    assert cfg.corpus.pack_length == cfg.pretrain.tokens_length
