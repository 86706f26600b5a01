"""Active learning over seeds: the numbers of the study, and the study flow for real (tiny, two seeds)."""

from __future__ import annotations

import pytest

from tasks.thai.active_learning import study_markdown, study_numbers


def _curve(chars, f1s):
    return [{"annotated_chars": float(c), "test_f1": f} for c, f in zip(chars, f1s)]


def test_an_arm_that_reaches_randoms_final_f1_with_half_its_characters_in_every_seed_meets_the_goal():
    chars = [100, 200, 300, 400]
    histories = {s: {"random": _curve(chars, [0.5, 0.6, 0.7, 0.8]), "ranked": _curve(chars, [0.6, 0.8, 0.85, 0.9])}
                 for s in (0, 1, 2)}
    n = study_numbers(histories, full_pool_f1=0.9, goal_fraction=0.7)
    ranked = n["arms"]["ranked"]
    assert ranked["to_random_final"]["values"] == [200.0] * 3
    assert ranked["fraction_of_random"]["mean"] == pytest.approx(0.5) and ranked["fraction_of_random"]["std"] == 0.0
    assert ranked["to_95_full"]["values"] == [pytest.approx(310.0)] * 3  # 0.855: a tenth of the way from 0.85 to 0.9
    assert n["arms"]["random"]["to_95_full"]["reached"] == 0  # 0.8 < 0.855
    assert n["goal_met"] == {"ranked": True}
    text = study_markdown(n)
    assert "**goal met**" in text and "| random |" in text and "never" in text


def test_the_goal_needs_every_seed_and_a_fraction_within_it():
    chars = [100, 200, 300, 400]
    slow = {"random": _curve(chars, [0.5, 0.6, 0.7, 0.8]), "ranked": _curve(chars, [0.5, 0.6, 0.75, 0.8])}
    never = {"random": _curve(chars, [0.5, 0.6, 0.7, 0.8]), "ranked": _curve(chars, [0.5, 0.6, 0.7, 0.75])}
    assert study_numbers({0: slow}, None)["goal_met"] == {"ranked": False}  # 350 / 400 = 0.875 > 0.7
    both = study_numbers({0: slow, 1: never}, None)
    assert both["arms"]["ranked"]["fraction_of_random"]["reached"] == 1 and both["goal_met"] == {"ranked": False}
    assert "(1/2 seeds)" in study_markdown(both) and "full-pool" not in study_markdown(both).splitlines()[0]


def test_a_mean_within_the_goal_does_not_meet_it_when_one_seed_needs_more():
    chars = [100, 200, 300, 400]
    fast = {"random": _curve(chars, [0.5, 0.6, 0.7, 0.8]), "ranked": _curve(chars, [0.6, 0.8, 0.85, 0.9])}  # 0.5
    late = {"random": _curve(chars, [0.5, 0.6, 0.7, 0.8]), "ranked": _curve(chars, [0.5, 0.6, 0.75, 0.9])}  # 333 / 400
    n = study_numbers({0: fast, 1: late}, None, goal_fraction=0.7)
    assert n["arms"]["ranked"]["fraction_of_random"]["mean"] < 0.7 and n["goal_met"] == {"ranked": False}
    assert "(per seed 0.50 / 0.83)" in study_markdown(n) and "**goal not met**" in study_markdown(n)


def test_recovery_after_each_change_is_measured_per_arm_and_seed_within_the_window_before_the_next_change():
    def rows(f1s, guideline=None):
        out = [{"round": i, "annotated_chars": 100.0 * (i + 1), "test_f1": f} for i, f in enumerate(f1s)]
        for r, g in zip(out, guideline or []):
            r["test_guideline_f1"] = g
        return out

    # round 2: a pool change that costs random two rounds and ranked nothing; round 4: a guideline change,
    # measured on the guideline's own test F1 (test_f1 keeps falling: the convention differs from ORCHID)
    random_f1 = [0.5, 0.6, 0.55, 0.62, 0.5, 0.45]
    random_g = [0.5, 0.6, 0.55, 0.62, 0.58, 0.64]
    ranked_f1 = [0.5, 0.6, 0.65, 0.7, 0.5, 0.45]
    ranked_g = [0.5, 0.6, 0.65, 0.7, 0.6, 0.62]
    histories = {s: {"random": rows(random_f1, random_g), "ranked": rows(ranked_f1, ranked_g)} for s in (0, 1)}
    events = {s: [{"round": 2, "kind": "pool", "detail": "wiki"}, {"round": 4, "kind": "guideline", "detail": "newmm"},
                  {"round": 3, "kind": "resumed", "detail": "resumed at round 3"}] for s in (0, 1)}
    n = study_numbers(histories, None, events=events)
    pool, guideline = n["recovery"]
    assert (pool["round"], pool["kind"], guideline["round"], guideline["metric"]) == (2, "pool", 4, "test_guideline_f1")
    assert pool["arms"]["random"]["rounds_to_recover"]["values"] == [1, 1]  # 0.62 >= 0.6 at round 3
    assert pool["arms"]["random"]["dip"]["mean"] == pytest.approx(0.05)
    assert pool["arms"]["ranked"]["rounds_to_recover"]["values"] == [0, 0] and pool["arms"]["ranked"]["dip"]["mean"] == 0
    assert guideline["arms"]["random"]["rounds_to_recover"]["values"] == [1, 1]  # 0.64 >= 0.62 at round 5
    assert guideline["arms"]["ranked"]["rounds_to_recover"]["reached"] == 0  # 0.62 < 0.7 by the last round
    text = study_markdown(n)
    assert "| 4 | guideline: newmm | ranked | test_guideline_f1 |" in text and "not within the window" in text


@pytest.mark.slow
def test_the_study_runs_a_seed_per_run_and_a_rerun_reuses_the_finished_seeds(prefect_harness, tmp_path):
    from mlflow import MlflowClient

    from flows._cli import build_config
    from engine.config.al_study import PRESETS, ALStudyConfig
    from flows.al_study import al_study

    cfg = build_config(ALStudyConfig, PRESETS, "tiny", [
        "seeds=[0,1]", "name=t", f"active_learning.output_root={tmp_path}", "active_learning.rounds=2",
        'active_learning.schedule=[{"kind":"annotator","round":1,"noise_rate":0.03}]',
        "active_learning.data.max_pool=400", "active_learning.data.max_test=80"])
    first = al_study(config=cfg)
    assert first.numbers["seeds"] == [0, 1] and 0.0 < first.numbers["full_pool_f1"] <= 1.0
    (change,) = first.numbers["recovery"]  # the annotator change of round 1, measured for both arms and seeds
    assert change["kind"] == "annotator" and set(change["arms"]) == {"random", "ranked"}
    assert change["arms"]["random"]["dip"]["seeds"] == 2 and "Recovery after each environment change" in first.markdown
    assert {p.name for p in tmp_path.iterdir()} >= {"t-seed0", "t-seed1"}
    arts = [f.path for f in MlflowClient().list_artifacts(first.run_id)]
    assert {"study.md", "study_curves.png", "study.json"} <= set(arts)
    children = MlflowClient().search_runs([MlflowClient().get_run(first.run_id).info.experiment_id],
                                          filter_string=f"tags.mlflow.parentRunId = '{first.run_id}'")
    assert len(children) == 2  # one active-learning run per seed, nested under the study
    again = al_study(config=cfg.model_copy(update={"full_pool": False}))
    assert again.numbers["arms"]["ranked"]["final_f1"]["values"] == first.numbers["arms"]["ranked"]["final_f1"]["values"]
    assert not MlflowClient().search_runs([MlflowClient().get_run(again.run_id).info.experiment_id],
                                          filter_string=f"tags.mlflow.parentRunId = '{again.run_id}'")
