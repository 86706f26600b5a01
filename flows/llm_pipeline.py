"""The decoder-only pipeline (``make run PRESET=llm``), as Prefect subflows under one MLflow parent run:

import the LLM (the packaged SmolLM2-135M-Instruct) -> build drafts from it -> DistillSpec: distil the draft from
the LLM itself (on-policy) -> a feature-level draft (EAGLE) trained on the LLM's own responses and hidden states ->
the model garden: a smaller target distilled from the LLM, and a draft distilled from that target -> SD benchmark
with the LLM as the target (its undistilled, distilled and feature drafts, HF assisted generation and prompt
lookup beside them), and the garden pair timed against the LLM alone -> the verdict.

    python -m flows.llm_pipeline --preset llm                 # what `make run PRESET=llm` does
    python -m flows.llm_pipeline --preset llm --set model=hf:HuggingFaceTB/SmolLM2-360M-Instruct
    python -m flows.llm_pipeline --preset llm --set from_stage=sd_benchmark

Prompts are the task's (default ``bbc_headline``: "summarize: <article>") through the model's chat template;
losses cover response tokens only. Stages are reused when their config, inputs and code are unchanged (as in
``flows.pipeline``).
"""

from __future__ import annotations

from typing import Any, Optional

from prefect import flow, get_run_logger

from engine.config.llm_pipeline import PRESETS, STAGES, LLMPipelineConfig, Stage
from engine.config.sd_benchmark import DraftRef
from flows import distill as distill_mod
from flows import import_model as import_mod
from flows import sd_benchmark as sd_mod
from flows._cli import build_config, documented, named_subflow, preset_type, records, run_cli
from flows.pipeline import PipelineResult

Preset = preset_type(PRESETS)


@flow(name="llm-pipeline")
@documented(from_stage="force this stage and every later one to run, even where an earlier run would be reused",
            stages="the stages to run: a prefix of import, drafts, distill_draft, feature_draft, garden, sd_benchmark "
                   "(empty: all)")
def llm_pipeline(preset: Preset = "tiny", overrides: Optional[dict[str, Any]] = None,
                 config: Optional[LLMPipelineConfig] = None, from_stage: Optional[Stage] = None,
                 stages: Optional[list[Stage]] = None) -> PipelineResult:
    """Run the stages in order (see the module docstring)."""
    from tasks import tracking
    from tasks.runtime.orchestration import tag_current_flow_run
    from tasks.runtime.pipeline_stages import StageRunner, report_llm_verdict

    typed = {k: v for k, v in (("from_stage", from_stage), ("stages", stages)) if v}
    cfg = config or build_config(LLMPipelineConfig, PRESETS, preset, {**(overrides or {}), **typed})
    logger = get_run_logger()
    forced = set(STAGES[STAGES.index(cfg.from_stage):]) if cfg.from_stage else set()
    result = PipelineResult(run_id="")
    with tracking.start_run(cfg.experiment, f"llm-pipeline-{cfg.preset}", params=cfg.model_dump(),
                            tags={"stage": "pipeline", "preset": cfg.preset}) as run_id:
        result.run_id = run_id
        tag_current_flow_run(f"mlflow_run_id:{run_id}", f"preset:{cfg.preset}")
        tracking.log_dict(run_id, cfg.model_dump(), "pipeline_config.json")
        stage = StageRunner(run_id, cfg.stages, forced, logger)
        imp = stage("import", {"model": cfg.model, "register_as": cfg.register_as, "task": cfg.task.model_dump(),
                               "eval": cfg.distill_draft.model_dump(include=EVAL_FIELDS)}, {},
                    lambda: _import(cfg, run_id))
        drafts = stage("drafts", {"draft": cfg.draft.model_dump(), "garden_target": cfg.garden_target.model_dump()},
                       imp and {"llm": imp["model_uri"]}, lambda: _drafts(cfg, imp["model_uri"], run_id))
        dd = stage("distill_draft", {"distill": cfg.distill_draft.model_dump(), "task": cfg.task.model_dump()},
                   drafts and {"teacher": imp["model_uri"], "student": drafts["models"]["draft_base"]},
                   lambda: _distill_stage(cfg, cfg.distill_draft, imp["model_uri"], drafts["models"]["draft_base"],
                                          "draft", run_id))
        fd = stage("feature_draft", {"feature_draft": cfg.feature_draft.model_dump(), "task": cfg.task.model_dump()},
                   dd and {"llm": imp["model_uri"]}, lambda: _feature_draft(cfg, imp["model_uri"], run_id))
        garden = stage("garden", {"target": cfg.distill_garden_target.model_dump(), "task": cfg.task.model_dump(),
                                  "draft": cfg.distill_garden_draft.model_dump(),
                                  "garden_draft": cfg.garden_draft.model_dump()},
                       fd and {"teacher": imp["model_uri"], "student": drafts["models"]["garden_target_base"]},
                       lambda: _garden(cfg, imp["model_uri"], drafts["models"]["garden_target_base"], run_id))
        stage("sd_benchmark", cfg.sd_benchmark.model_dump(),
              garden and {"target": imp["model_uri"],
                          "drafts": [drafts["models"]["draft_base"], dd["model_uri"], fd["model_uri"]],
                          "garden": [garden["target_uri"], garden["draft_uri"]]},
              lambda: _sd_stage(cfg, imp["model_uri"], drafts, dd, fd, garden, run_id))
        stage.finish()
        result.stages, result.skipped = stage.outputs, stage.skipped
        result.verdict = report_llm_verdict(run_id, preset=cfg.preset, task_kind=cfg.task.info()["kind"],
                                            stages=result.stages,
                                            not_run=[s for s in STAGES if s not in result.stages], logger=logger)
    return result


#: the fields of the draft distillation that the LLM's own evaluation decodes with (part of the import stage's key)
EVAL_FIELDS = {"test_examples", "batch_size", "max_input_length", "max_target_length", "threads_per_worker"}


def _import(cfg: LLMPipelineConfig, parent: str) -> dict[str, Any]:
    """Register the LLM, then score it on the task's test split (with the settings the distilled models are
    scored with), so the verdict reads every model against the same baseline."""
    from tasks.distill import evaluate_test
    from tasks.finetune import prepare_task, resolve

    c = import_mod.ImportModelConfig(ref=cfg.model, register_as=cfg.register_as, experiment=cfg.experiment)
    r = named_subflow(import_mod.import_model_flow, "import")(config=c, parent_run_id=parent)
    metrics = evaluate_test(resolve(r.model_uri), prepare_task(cfg.task), r.run_id, cfg.distill_draft)
    return {"run_id": r.run_id, "model_uri": r.model_uri, "metrics": metrics}


def _drafts(cfg: LLMPipelineConfig, llm_uri: str, parent: str) -> dict[str, Any]:
    from tasks.finetune import prepare_task, resolve
    from tasks.import_model import make_draft

    folder, task = resolve(llm_uri), prepare_task(cfg.task)
    models = {}
    for role, shape in (("draft_base", cfg.draft), ("garden_target_base", cfg.garden_target)):
        out = make_draft(folder, f"{cfg.register_as}-{role.replace('_', '-')}", target_ref=llm_uri,
                         layers=shape.layers, init=shape.init, sizes=shape.sizes(), head_tokens=shape.head_tokens,
                         task_dir=task, experiment=cfg.experiment, parent_run_id=parent,
                         run_name=f"build-{role.replace('_', '-')}")
        models[role] = out["model_uri"]
    return {"models": models}


def _distill_stage(cfg: LLMPipelineConfig, dcfg: distill_mod.DistillConfig, teacher: str, student: str, role: str,
                   parent: str) -> dict[str, Any]:
    d = dcfg.model_copy(update={"teacher": teacher, "student": student, "task": cfg.task,
                                "register_as": f"{cfg.register_as}-{role}"})
    r = named_subflow(distill_mod.distill_flow, f"distill-{role}")(config=d, parent_run_id=parent)
    return {"run_id": r.run_id, "model_uri": r.model_uri, "alias": r.alias, "final": r.final, "metrics": r.metrics}


def _feature_draft(cfg: LLMPipelineConfig, llm_uri: str, parent: str) -> dict[str, Any]:
    from tasks.feature_draft import train_feature_draft
    from tasks.finetune import prepare_task, resolve

    return train_feature_draft(resolve(llm_uri), prepare_task(cfg.task), cfg.feature_draft,
                               f"{cfg.register_as}-feature-draft", llm_ref=llm_uri, experiment=cfg.experiment,
                               parent_run_id=parent)


def _garden(cfg: LLMPipelineConfig, llm_uri: str, target_base: str, parent: str) -> dict[str, Any]:
    """The smaller target distilled from the LLM, a draft built from it and distilled towards it."""
    from tasks.finetune import prepare_task, resolve
    from tasks.import_model import make_draft

    target = _distill_stage(cfg, cfg.distill_garden_target, llm_uri, target_base, "garden-target", parent)
    shape = cfg.garden_draft
    base = make_draft(resolve(target["model_uri"]), f"{cfg.register_as}-garden-draft-base",
                      target_ref=target["model_uri"], layers=shape.layers, init=shape.init, sizes=shape.sizes(),
                      head_tokens=shape.head_tokens, task_dir=prepare_task(cfg.task),
                      experiment=cfg.experiment, parent_run_id=parent, run_name="build-garden-draft-base")
    draft = _distill_stage(cfg, cfg.distill_garden_draft, target["model_uri"], base["model_uri"], "garden-draft",
                           parent)
    return {"target_uri": target["model_uri"], "draft_uri": draft["model_uri"], "draft_alias": draft["alias"],
            "target_metrics": target["metrics"], "draft_metrics": draft["metrics"]}


def _sd_stage(cfg: LLMPipelineConfig, llm_uri: str, drafts: dict[str, Any], dd: dict[str, Any], fd: dict[str, Any],
              garden: dict[str, Any], parent: str) -> dict[str, Any]:
    from tasks.downstream import sd_prompts
    from tasks.report.distillspec_study import garden_row

    prompts = sd_prompts(cfg.task)
    s = cfg.sd_benchmark.model_copy(update={
        "target": llm_uri, "prompts_jsonl": prompts, "corpus_dir": None,
        "drafts": [DraftRef(label="draft-base", model=drafts["models"]["draft_base"]),
                   DraftRef(label=dd["alias"], model=dd["model_uri"]),
                   DraftRef(label="feature-draft", model=fd["model_uri"])]})
    r = named_subflow(sd_mod.sd_benchmark, "sd-benchmark")(config=s, parent_run_id=parent)
    rows = records(r.table)
    # the model garden: the garden target with its draft, against the LLM decoding alone (the rows above)
    g = named_subflow(sd_mod.sd_benchmark, "sd-benchmark-garden")(config=s.model_copy(update={
        "target": garden["target_uri"], "drafts": [DraftRef(label=garden["draft_alias"],
                                                                   model=garden["draft_uri"])],
        "hf_baselines": False, "batch_sizes": []}), parent_run_id=parent)
    garden_rows = [garden_row(rows, records(g.table), garden["draft_alias"], precision=p, teacher_outputs=r.outputs,
                              garden_outputs=g.outputs) for p in s.precisions]
    return {"run_id": r.run_id, "markdown": r.markdown, "rows": rows, "garden_run_id": g.run_id,
            "garden": garden_rows}


if __name__ == "__main__":
    run_cli(lambda c: llm_pipeline(config=c), LLMPipelineConfig, PRESETS,
            description="Run the decoder-only pipeline (import -> drafts -> DistillSpec -> garden -> SD benchmark).")
