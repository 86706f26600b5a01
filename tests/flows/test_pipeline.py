"""The whole tiny pipeline end to end (reduced step counts), then a rerun that skips every stage.

Time budget, measured on the 2-core CI machine: about 4 minutes for the first run (six Ray Train fits
dominate: ~20 s of Ray start-up each), under 30 s for the cached rerun.
"""

import pytest

from flows._cli import build_config
from engine.config.pipeline import PRESETS, STAGES, PipelineConfig
from flows.pipeline import pipeline

FAST = [
    "pretrain.total_steps=12", "pretrain.tau=6", "pretrain.eval_every=6", "pretrain.checkpoint_every=6",
    "pretrain.cosine_every=6", "pretrain.threads_per_worker=1",
    "finetune.total_steps=12", "finetune.eval_every=6", "finetune.test_examples=16", "finetune.threads_per_worker=1",
    "distill_target.total_steps=6", "distill_target.eval_every=6", "distill_target.eval_examples=8",
    "distill_draft.total_steps=6", "distill_draft.eval_every=6", "distill_draft.eval_examples=8",
    "sd_benchmark.repeats=1", "sd_benchmark.warmup=0", "sd_benchmark.num_prompts=2", "sd_benchmark.gammas=[2]",
    "sd_benchmark.lenience=[1.0, 0.5]", "sd_benchmark.max_new_tokens=8",
    'task={"name": "bbc_topic", "max_examples": 300}', "corpus.max_documents=800", "corpus.vocab_size=800",
]


@pytest.mark.slow
def test_tiny_pipeline_runs_end_to_end_and_a_rerun_skips_every_stage(prefect_harness, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("SPACTOR_STAGE_DIR", str(tmp_path / "stages"))
    cfg = build_config(PipelineConfig, PRESETS, "tiny", FAST + ["experiment=pipeline-test"])
    first = pipeline(config=cfg)
    assert list(first.stages) == list(STAGES) and first.skipped == []
    models = first.stages["finetune"]["models"]
    assert models["teacher"].startswith("models:/") and first.stages["distill_draft"]["alias"].startswith("draft-")
    assert "speedup" in first.stages["sd_benchmark"]["markdown"].lower()
    # one parent run with a nested run per stage
    client = MlflowClient()
    parent = client.get_run(first.run_id)
    assert parent.data.tags.get("prefect.flow_run_id")
    children = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  filter_string=f"tags.mlflow.parentRunId = '{first.run_id}'")
    assert {r.data.tags.get("stage") for r in children} >= {"corpus_prep", "pretrain", "finetune",
                                                            "distill_target", "distill_draft"}
    # every child run is named for its stage and role (issue 35), and so is every Prefect subflow run
    names = sorted(r.info.run_name for r in children)
    assert {"pretrain-teacher", "pretrain-target", "pretrain-draft", "finetune-teacher", "finetune-draft-base",
            "distill-target", "distill-draft", "sd-benchmark", "sd-benchmark-teacher-alone"} <= set(names), names
    assert len(names) == len(set(names)), names
    # the verdict: computed from the results, printed, logged as summary.md, posted to Prefect
    verdict = first.verdict
    assert "Best lossless SD" in verdict and "trivial baseline" in verdict and "majority class" in verdict
    assert "PRESET=laptop" in verdict  # the tiny preset says where meaningful numbers come from
    assert verdict in first.summary()
    assert "summary.md" in [f.path for f in client.list_artifacts(first.run_id)]
    assert {"verdict.sd_best_speedup", "verdict.sd_best_c", "quality.teacher.accuracy", "quality.target.baseline.accuracy"} <= set(
        client.get_run(first.run_id).data.metrics)
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as pc:
        art = pc.read_latest_artifacts()
    assert any(a.key == "pipeline-verdict" for a in art)
    # one tree, comparable parents: the stage runs sit in the parent's experiment; the parent carries every
    # config value as a param, each stage's wall time and the SD table; every stage posts a Prefect artifact
    assert {r.info.experiment_id for r in children} == {parent.info.experiment_id}
    assert {f"wall_s.{s}" for s in STAGES} <= set(client.get_run(first.run_id).data.metrics)
    assert "sd_table.md" in [f.path for f in client.list_artifacts(first.run_id)]
    assert parent.data.params["pretrain.total_steps"] == str(cfg.pretrain.total_steps)
    assert {f"stage-{s.replace('_', '-')}" for s in STAGES} <= {a.key for a in art}
    # the stage deployments' default model inputs (prefect.yaml) are aliases this run set: one-click reruns
    from tasks.tracking import model_version_info
    from tests.infra.test_prefect_yaml import stage_deployment_model_refs

    for name, refs in stage_deployment_model_refs().items():
        for ref in refs:  # prefect.yaml's defaults are for the tiny preset's task; this run used bbc_topic
            assert model_version_info(ref.replace("text_normalization", "bbc_topic")), f"{name}: {ref} does not resolve"
    (garden,) = first.stages["sd_benchmark"]["garden"]  # one per precision; the tiny preset times fp32 only
    assert garden["precision"] == "fp32"
    assert garden["teacher_ms_per_token"] > 0 and garden["latency_reduction"] > 0
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId

    first_flow_run = parent.data.tags["prefect.flow_run_id"]
    with get_client(sync_client=True) as pc:  # the pipeline's Task Runs tab: a task run per stage
        stage_runs = pc.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[first_flow_run])))
        subflows = pc.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[first_flow_run])))
    assert {f"stage-{s.replace('_', '-')}" for s in STAGES} <= {t.name.rsplit("-", 1)[0] for t in stage_runs}
    assert {"corpus", "pretrain-teacher", "finetune-draft-base", "distill-target", "sd-benchmark"} <= {
        f.name for f in subflows}
    second = pipeline(config=cfg)
    assert second.skipped == list(STAGES)
    # a reused stage names the runs it reuses and copies no wall time (compare shows what each run spent)
    again_run = client.get_run(second.run_id)
    assert again_run.data.tags["pretrain.reused_from"] == ",".join(first.stages["pretrain"]["run_ids"].values())
    assert not {f"wall_s.{s}" for s in STAGES} & set(again_run.data.metrics)
    assert again_run.data.metrics["stages_run"] == 0 and again_run.data.metrics["stages_skipped"] == len(STAGES)
    with get_client(sync_client=True) as pc:
        latest = {a.key: a for a in pc.read_latest_artifacts()}
    assert "Skipped:** reuses the earlier completed stage" in latest["stage-pretrain"].data
    # each skipped stage is a task run in state Cached whose message names the run it reuses
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flow_run_id = client.get_run(second.run_id).data.tags["prefect.flow_run_id"]
    with get_client(sync_client=True) as pc:
        task_runs = pc.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    reused = {t.name.rsplit("-", 1)[0]: t.state for t in task_runs if t.name.startswith("reuse-")}
    assert set(reused) == {f"reuse-{s.replace('_', '-')}" for s in STAGES}
    assert all(st.name == "Cached" and st.is_completed() for st in reused.values())
    assert first.stages["corpus"]["run_id"] in reused["reuse-corpus"].message
    assert first.stages["pretrain"]["run_ids"]["teacher"] in reused["reuse-pretrain"].message
    assert second.verdict == first.verdict  # computed again from the cached stage results
    forced = pipeline(config=cfg.model_copy(update={"from_stage": "sd_benchmark"}))
    assert forced.skipped == list(STAGES[:-1])
    # nothing stale (issue 32): a model version deleted from the registry after its stage completed makes that
    # stage run again (its training is reused from the run folder, keyed by content), and the stages before it
    # are still reused; against a fresh tracking store nothing is reused and the models are registered there
    name, version = first.stages["distill_draft"]["model_uri"][len("models:/"):].rsplit("/", 1)
    client.delete_model_version(name, version)
    again = pipeline(config=cfg)
    assert again.skipped[:4] == list(STAGES[:4]) and "distill_draft" not in again.skipped
    assert again.stages["distill_draft"]["model_uri"] != first.stages["distill_draft"]["model_uri"]
    assert model_version_info(again.stages["distill_draft"]["model_uri"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'fresh.db'}")
    fresh = pipeline(config=cfg.model_copy(update={"stages": ["corpus", "pretrain"]}))
    assert fresh.skipped == []
    # a partial run still posts its verdict, says it is partial, and logs what ran (no NaN for the rest)
    assert "**Partial run:** only corpus, pretrain ran; not run: finetune" in fresh.verdict
    partial = MlflowClient().get_run(fresh.run_id).data.metrics
    assert partial["stages_run"] == 2 and "pretrain.teacher.val_sc_loss" in partial
    assert all(v == v for v in partial.values())
    assert all(model_version_info(uri) for uri in fresh.stages["pretrain"]["models"].values())
