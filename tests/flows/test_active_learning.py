"""The active-learning flow for real: Prefect flow, both arms, ORCHID, MLflow runs, registered segmenters."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.config.active_learning import (
    PRESETS,
    ActiveLearningConfig,
    AnnotatorChange,
    DataSettings,
    GuidelineChange,
    ModelChange,
    PoolChange,
)
from flows._cli import ConfigError, build_config
from flows.active_learning import active_learning

SEGMENTER = dict(embed_dim=8, class_dim=4, hidden=16, layers=2, kernel=3, batch_size=16)


def _cfg(root: Path, **kw) -> ActiveLearningConfig:
    base = dict(preset="test", data=DataSettings(max_pool=300, max_test=60), segmenter=SEGMENTER, seed_size=12,
                batch_size=12, rounds=3, candidates=80, fresh_epochs=2, round_epochs=1, output_root=str(root),
                run_name="straight",
                schedule=[PoolChange(round=1, max_items=30), AnnotatorChange(round=2, noise_rate=0.05),
                          GuidelineChange(round=2), ModelChange(round=3, segmenter={"hidden": 24})])
    base.update(kw)
    return ActiveLearningConfig(**base)


def _history(run_id: str, key: str) -> dict[int, float]:
    from mlflow import MlflowClient

    return {m.step: m.value for m in MlflowClient().get_metric_history(run_id, key)}


@pytest.fixture(scope="module")
def straight(prefect_harness, tmp_path_factory):
    root = tmp_path_factory.mktemp("al")
    return active_learning(config=_cfg(root)), root


def test_both_arms_log_every_round_from_the_same_seed_round(straight):
    res, _ = straight
    assert not res.stopped and res.rounds_done == 3
    f1 = {arm: _history(res.arm_run_ids[arm], "test_f1") for arm in ("random", "ranked")}
    sents = {arm: _history(res.arm_run_ids[arm], "annotated_sentences") for arm in ("random", "ranked")}
    chars = {arm: _history(res.arm_run_ids[arm], "annotated_chars") for arm in ("random", "ranked")}
    for arm in ("random", "ranked"):
        assert sorted(f1[arm]) == [0, 1, 2, 3]
        assert sents[arm] == {r: 12.0 + 12 * r for r in range(4)}
        assert all(chars[arm][r] < chars[arm][r + 1] for r in range(3))
        assert all(0.0 <= v <= 1.0 for v in _history(res.arm_run_ids[arm], "test_boundary_f1").values())
        assert set(_history(res.arm_run_ids[arm], "sel_score_mean")) == {1, 2, 3}
    assert f1["random"][0] == f1["ranked"][0] and chars["random"][0] == chars["ranked"][0]
    assert set(_history(res.arm_run_ids["ranked"], "candidates_score_mean")) == {1, 2, 3}
    assert 0.0 < res.numbers["newmm_test_boundary_f1"] <= 1.0 and "random_final_f1" in res.numbers


def test_environment_changes_are_tags_events_and_curve_marks(straight):
    from mlflow import MlflowClient

    from tasks.tracking import artifact_local_path

    res, _ = straight
    expected = {"env.r01.pool", "env.r02.annotator", "env.r02.guideline", "env.r03.model"}
    for rid in (res.run_id, *res.arm_run_ids.values()):
        tags = MlflowClient().get_run(rid).data.tags
        assert expected <= set(tags), rid
    assert "orchid -> newmm" in MlflowClient().get_run(res.run_id).data.tags["env.r02.guideline"]
    art = Path(artifact_local_path(res.run_id))
    events = json.loads((art / "events.json").read_text())
    assert [(e["round"], e["kind"]) for e in events] == [(1, "pool"), (2, "annotator"), (2, "guideline"), (3, "model")]
    assert (art / "learning_curve.png").stat().st_size > 10_000 and (art / "learning_curve.csv").exists()
    rid = res.arm_run_ids["random"]
    pool = _history(rid, "pool_size")
    assert pool[1] == pool[0] + 30  # the Wikipedia titles joined the pool at round 1
    agreement = _history(rid, "annotation_gold_boundary_f1")
    assert agreement[1] == 1.0 and agreement[2] < 1.0  # noise and the newmm guideline from round 2
    assert set(_history(rid, "test_guideline_f1")) == {0, 1, 2, 3}


def test_registered_segmenters_keep_every_character(straight, tmp_path, capsys):
    from flows.segment import main
    from models.thai_segmenter import ThaiSegmenter
    from tasks.tracking import resolve_model

    res, _ = straight
    texts = ["ฉันกินข้าวที่กรุงเทพฯ", "", "  spaces  and ASCII 123 ", "emoji 😀 ผสม ไทย", "ก่่่"]
    for arm, uri in res.model_uris.items():
        model = ThaiSegmenter.load(resolve_model(uri))
        for text in texts:
            assert "".join(model.segment(text)) == text
    assert main(["--model", "models:/thai-seg-test-ranked@final", "--text", texts[0]]) == 0
    out = capsys.readouterr().out
    assert out.replace("|", "") == texts[0] + "\n" and "|" in out
    (tmp_path / "in.txt").write_text("\n".join(texts[2:]) + "\n", encoding="utf-8")
    assert main(["--model", res.model_uris["random"], "--file", str(tmp_path / "in.txt"), "--sep", "¦"]) == 0
    assert capsys.readouterr().out.replace("¦", "").split("\n")[:-1] == texts[2:]
    assert main(["--model", "models:/no-such-model@final", "--text", "x"]) == 2


def test_a_stopped_run_resumes_where_it_stopped_and_ends_on_the_same_curve(straight):
    from mlflow import MlflowClient

    done, root = straight
    # resume="auto" starts the run when there is no state yet
    first = active_learning(config=_cfg(root, run_name="resumed", resume="auto", stop_after_round=1,
                                        register_models=False))
    assert first.stopped and first.rounds_done == 1
    assert json.loads((root / "resumed" / "state.json").read_text())["round_done"] == 1
    assert MlflowClient().get_run(first.run_id).info.status == "KILLED"
    # a scheduled call: one round per call
    second = active_learning(config=_cfg(root, run_name="resumed", resume="auto", rounds_per_call=1,
                                         register_models=False))
    assert second.stopped and second.rounds_done == 2 and second.run_id == first.run_id
    third = active_learning(config=_cfg(root, run_name="resumed", resume=True, register_models=False))
    assert not third.stopped and third.run_id == first.run_id  # the same MLflow runs continue
    for arm in ("random", "ranked"):
        a = _history(done.arm_run_ids[arm], "test_f1")
        b = _history(third.arm_run_ids[arm], "test_f1")
        assert a == b, arm  # same draws, same annotations, same weights: the same curve
    tags = MlflowClient().get_run(third.run_id).data.tags
    assert tags["env.r02.resumed"] == "resumed at round 2" and tags["env.r03.resumed"] == "resumed at round 3"
    assert MlflowClient().get_run(third.run_id).info.status == "FINISHED"


def test_ranked_selection_takes_the_top_of_the_scorers_ranking():
    from models.al_scorers import rank
    from models.thai_segmenter import SegmenterConfig, ThaiSegmenter
    from tasks.thai.active_learning import select_batch
    from tasks.thai.data import load_experiment

    pool, _ = load_experiment("orchid", [], test_fraction=0.1, split_seed=0, max_pool=200, max_test=10)
    g = torch.Generator().manual_seed(0)
    model = ThaiSegmenter(SegmenterConfig(**SEGMENTER, epochs=1), generator=g)
    model.fit([list(it.words) for it in pool[:50]], generator=g)
    scorer = dict(method="margin", aggregate="sum", length_normalize=False, cost_aware=True)
    batch, stats = select_batch.fn("ranked", model, pool, 7, scorer, 0, np.random.default_rng(0))
    assert [it.id for it in batch] == [pool[i].id for i in rank([it.text for it in pool], model, **scorer)[:7]]
    assert stats["sel_score_min"] >= stats["candidates_score_mean"]
    rnd, _ = select_batch.fn("random", model, pool, 7, scorer, 0, np.random.default_rng(0))
    again, _ = select_batch.fn("random", model, pool, 7, scorer, 0, np.random.default_rng(0))
    assert [it.id for it in rnd] == [it.id for it in again] and len({it.id for it in rnd}) == 7


def test_ranked_selection_with_diversity_takes_the_diverse_order_and_adds_no_duplicate_of_the_labelled_set():
    from models.al_scorers import diverse_order, sentence_scores
    from models.thai_segmenter import SegmenterConfig, ThaiSegmenter
    from tasks.thai.active_learning import select_batch
    from tasks.thai.data import load_experiment

    pool, _ = load_experiment("orchid", [], test_fraction=0.1, split_seed=0, max_pool=200, max_test=10)
    g = torch.Generator().manual_seed(0)
    model = ThaiSegmenter(SegmenterConfig(**SEGMENTER, epochs=1), generator=g)
    model.fit([list(it.words) for it in pool[:50]], generator=g)
    base = dict(method="entropy", aggregate="mean", length_normalize=False, cost_aware=False)
    plain, _ = select_batch.fn("ranked", model, pool, 7, {**base, "diversity": 0.0}, 0, np.random.default_rng(0))
    labelled = [it.text for it in plain[:3]]  # pretend the plain top three are labelled already
    batch, stats = select_batch.fn("ranked", model, pool, 7, {**base, "diversity": 1.0, "ngram": 3}, 0,
                                   np.random.default_rng(0), labelled_texts=labelled)
    texts = [it.text for it in pool]
    want = diverse_order(texts, sentence_scores(texts, model, **base), covered=labelled, max_items=7)
    assert [it.id for it in batch] == [pool[i].id for i in want]
    assert not {it.text for it in batch} & set(labelled) and 0.0 < stats["batch_novelty"] <= 1.0


@pytest.mark.parametrize("overrides, match", [
    ({"schedule": [{"kind": "guideline", "round": 9}]}, "schedule.0.*round 9 but rounds=4"),
    ({"segmenter": {"widht": 3}}, "segmenter.*widht"),
    ({"schedule": [{"kind": "model", "round": 2, "segmenter": {"arch": "transformer"}}]}, "arch must be"),
    ({"schedule": [{"kind": "pool", "round": 2, "source": "text"}]}, "needs paths"),
    ({"resume": True}, "needs run_name"),
    ({"resume": "always"}, "resume"),
    ({"scorer": {"length_normalize": True, "cost_aware": True}}, "set one"),
    ({"annotator": {"noise_rate": 0.7}}, "annotator.noise_rate"),
])
def test_bad_configs_are_refused_in_one_line_naming_the_field(overrides, match):
    with pytest.raises(ConfigError, match=match):
        build_config(ActiveLearningConfig, PRESETS, "tiny", overrides)


def test_an_existing_run_is_not_overwritten_and_resume_needs_the_same_experiment(straight):
    _, root = straight
    with pytest.raises(ValueError, match="already holds a run"):
        active_learning(config=_cfg(root))
    with pytest.raises(ValueError, match=r"config differs.*\['seed'\]"):
        active_learning(config=_cfg(root, resume=True, seed=1))
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        active_learning(config=_cfg(root, run_name="never-ran", resume=True))


def test_the_partial_arm_pays_the_characters_it_shows_and_resumes_to_the_same_curve(prefect_harness, tmp_path):
    arms = ["random", "ranked", "partial"]
    kw = dict(arms=arms, batch_chars=300, schedule=[], register_models=False)
    straight = active_learning(config=_cfg(tmp_path, run_name="p-straight", **kw))
    state = json.loads((tmp_path / "p-straight" / "state.json").read_text())
    part, rnd = state["arms"]["partial"], state["arms"]["random"]
    assert set(state["arms"]) == set(arms) and set(straight.arm_run_ids) == {"parent", *arms}
    assert set(part["labelled"]) <= set(rnd["labelled"])  # whole sentences: the shared seed set only
    assert part["partial"] and all(set(p["starts"]) <= set(p["known"]) for p in part["partial"].values())
    rows = part["history"]
    shown = [b["batch_chars"] for b in rows[1:]]
    assert all(300 <= c < 300 + 2 * 3 for c in shown)  # the budget, crossed by at most one window
    assert "partial_final_f1" in straight.numbers and "partial arm" in straight.summary()
    stopped = active_learning(config=_cfg(tmp_path, run_name="p-resumed", stop_after_round=1, **kw))
    assert stopped.stopped
    resumed = active_learning(config=_cfg(tmp_path, run_name="p-resumed", resume=True, **kw))
    for arm in arms:
        assert _history(resumed.arm_run_ids[arm], "test_f1") == _history(straight.arm_run_ids[arm], "test_f1"), arm


def test_the_partial_arm_takes_a_human_annotator_and_arms_must_start_with_random():
    cfg = ActiveLearningConfig(arms=["random", "partial"], annotator={"kind": "human"})
    assert cfg.arms == ["random", "partial"]  # the windows go to the person in the batch file
    with pytest.raises(ValueError, match="must start with 'random'"):
        ActiveLearningConfig(arms=["ranked", "random"])


def test_the_ranked_arm_selects_at_random_until_its_cold_start_characters_then_ranks(straight):
    _, root = straight
    seed_chars = json.loads((root / "straight" / "state.json").read_text())["arms"]["ranked"]["history"][0][
        "annotated_chars"]
    cfg = _cfg(root, run_name="cold", rounds=2, schedule=[], register_models=False,
               cold_start_chars=int(seed_chars) + 1)  # round 1 still cold, round 2 past it
    active_learning(config=cfg)
    rows = json.loads((root / "cold" / "state.json").read_text())["arms"]["ranked"]["history"]
    assert rows[1]["cold_start"] == 1.0 and "candidates" not in rows[1]  # a random batch, nothing scored
    assert rows[1]["annotated_chars"] >= cfg.cold_start_chars
    assert rows[2]["cold_start"] == 0.0 and rows[2]["candidates"] == 80.0  # ranked among 80 candidates
