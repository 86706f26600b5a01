"""The decoder-only pipeline (flows.llm_pipeline) end to end on a tiny random Llama standing in for SmolLM2, then a
rerun that skips every stage. The real SmolLM2 run is `make run PRESET=llm` (docs/results.md)."""

import pytest

from flows._cli import build_config
from engine.config.llm_pipeline import PRESETS, STAGES, LLMPipelineConfig
from flows.llm_pipeline import llm_pipeline


def test_the_llm_preset_is_smollm2_with_a_two_layer_draft_and_a_garden_target_of_eight_layers():
    cfg = PRESETS["llm"]()
    assert cfg.model == "smollm2" and cfg.draft.layers == 2 and cfg.garden_target.layers == 8
    assert cfg.sd_benchmark.precisions == ["fp32", "int8"] and cfg.sd_benchmark.modes == ["greedy"]
    assert cfg.sd_benchmark.prompt_lookup == 3
    with pytest.raises(ValueError, match="prefix"):
        LLMPipelineConfig(stages=["drafts"])


@pytest.mark.slow
def test_llm_pipeline_imports_builds_distils_benchmarks_and_a_rerun_skips_every_stage(
        prefect_harness, tiny_corpus, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from tests.conftest import make_llama_dir

    monkeypatch.setenv("SPACTOR_STAGE_DIR", str(tmp_path / "stages"))
    llm = make_llama_dir(f"{tiny_corpus}/tokenizer", tmp_path / "llm", hidden=48, layers=2, seed=0, head_scale=20.0)
    cfg = build_config(LLMPipelineConfig, PRESETS, "tiny", [
        f"model={llm}", "register_as=tiny-llm", "experiment=llm-pipeline-test",
        'task={"name": "bbc_headline", "max_examples": 200}'])
    first = llm_pipeline(config=cfg)
    assert list(first.stages) == list(STAGES) and first.skipped == []
    drafts = first.stages["drafts"]["models"]
    assert drafts["draft_base"].startswith("models:/tiny-llm-draft-base/")
    assert first.stages["distill_draft"]["model_uri"].startswith("models:/tiny-llm-draft/")
    assert first.stages["feature_draft"]["model_uri"].startswith("models:/tiny-llm-feature-draft/")
    rows = first.stages["sd_benchmark"]["rows"]
    assert {r["method"] for r in rows} >= {"target", "sd", "hf_assisted", "hf_prompt_lookup"}
    # the feature draft (EAGLE) decodes through our engine only: SD rows, no HF assisted or batched rows
    assert {r["method"] for r in rows if r["draft"] == "feature-draft"} == {"sd"}
    # our prompt-lookup draft, alone and before the feature draft: SD rows too
    assert {r["method"] for r in rows if r["draft"] in ("lookup", "lookup-else-feature-draft")} == {"sd"}
    assert all(r["exact"] for r in rows if r["mode"] == "greedy")  # lossless, with either draft
    assert first.stages["sd_benchmark"]["garden"][0]["latency_reduction"] > 0
    assert "rougeL" in " ".join(first.stages["import"]["metrics"])  # the LLM itself scored on the task
    verdict = first.verdict
    assert "Best lossless SD" in verdict and "prompt-lookup decoding" in verdict and "the LLM alone" in verdict
    assert "feature draft `feature-draft`" in verdict and "Agreement with the LLM's own outputs" in verdict
    assert "prompt lookup, else the feature draft `lookup-else-feature-draft`" in verdict
    client = MlflowClient()
    logged = client.get_run(first.run_id).data.metrics  # every verdict metric reached the parent run
    assert {"verdict.sd_target_met", "verdict.sd.lookup-else-feature-draft.greedy.speedup"} <= set(logged)
    children = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  filter_string=f"tags.mlflow.parentRunId = '{first.run_id}'")
    names = {r.info.run_name for r in children}
    assert {"import", "build-draft-base", "build-garden-target-base", "distill-draft", "feature-draft",
            "distill-garden-target",
            "build-garden-draft-base", "distill-garden-draft", "sd-benchmark", "sd-benchmark-garden"} <= names, names
    again = llm_pipeline(config=cfg)
    assert again.skipped == list(STAGES)
