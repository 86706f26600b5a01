"""The end-to-end pipeline, as Prefect subflows:

corpus prep -> SpacTor pretraining (teacher, target and draft sizes) -> fine-tuning (teacher, and the
undistilled draft baseline) -> target distillation (teacher -> target, the model-garden step) ->
DistillSpec draft training (target -> draft) -> SD latency benchmark (target with both drafts).

    python -m flows.pipeline --preset tiny                     # what `make run` does
    python -m flows.pipeline --preset tiny --set from_stage=distill_draft

One parent MLflow run (experiment ``pipeline``) holds a nested run per stage; the parent is tagged with
the Prefect flow-run id and the Prefect flow run with the MLflow run id. Stages pass models by MLflow
URI and data by path. A stage whose config, inputs and code are unchanged since it last completed is
skipped (the log says so); ``from_stage`` forces a stage and everything after it. Training stages
resume from their last checkpoint when rerun after a crash.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from prefect import flow, get_run_logger
from pydantic import BaseModel

from engine.config.corpus_prep import CorpusPrepConfig
from engine.config.distill import DistillConfig
from engine.config.finetune import FinetuneConfig
from engine.config.pipeline import PRESETS, STAGES, PipelineConfig, Stage
from engine.config.pretrain import PretrainConfig
from engine.config.sd_benchmark import DraftRef, SDBenchmarkConfig
from engine.config.task import TaskSpec
from flows import corpus_prep as corpus_mod
from flows import distill as distill_mod
from flows import finetune as finetune_mod
from flows import pretrain as pretrain_mod
from flows import sd_benchmark as sd_mod
from flows._cli import (ConfigError, build_config, documented, named_subflow, overrides_model, preset_type, records,
                        run_cli, section_overrides)

Preset = preset_type(PRESETS)
#: the typed per-stage "change these fields" forms of the run form (unset fields keep the preset's values)
CorpusOverrides = overrides_model(CorpusPrepConfig)
PretrainOverrides = overrides_model(PretrainConfig)
FinetuneOverrides = overrides_model(FinetuneConfig)
DistillOverrides = overrides_model(DistillConfig)
SDBenchmarkOverrides = overrides_model(SDBenchmarkConfig)


@dataclass
class PipelineResult:
    run_id: str
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    verdict: str = ""

    def summary(self) -> str:
        from tasks.tracking import artifact_local_path

        lines = [f"pipeline finished; MLflow parent run id: {self.run_id}",
                 f"artifacts: {artifact_local_path(self.run_id)}"]
        for name, out in self.stages.items():
            state = "skipped (cached)" if name in self.skipped else "ran"
            refs = out.get("models") or out.get("model_uri") or out.get("corpus_dir") or ""
            lines.append(f"  {name:<15} {state:<17} {refs}")
        if "sd_benchmark" in self.stages and self.stages["sd_benchmark"].get("markdown"):
            lines.append(self.stages["sd_benchmark"]["markdown"])
        if self.verdict:
            lines.append(self.verdict)
        return "\n".join(lines)


def pipeline_config(preset: str = "tiny", overrides: Optional[dict[str, Any]] = None,
                    config: Optional[PipelineConfig] = None, *, from_stage: Optional[str] = None,
                    stages: Optional[list[str]] = None, task: Any = None, **sections: Any) -> PipelineConfig:
    """The config a pipeline run uses: ``config`` as given, or the preset + ``overrides`` + the run form's typed
    fields (``sections``: ``<stage>`` or ``<stage>_overrides`` -> its ``*Overrides`` form or a dict; only set
    fields count). ``pipeline_config(**pipeline.validate_parameters(form))`` is what a UI run gets."""
    sections = {k.removesuffix("_overrides"): v for k, v in sections.items()}
    unknown = sorted(set(sections) - set(STAGES))
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}: the per-stage overrides are {[f'{s}_overrides' for s in STAGES]}")
    typed = section_overrides(sections)
    typed.update({k: v.model_dump() if isinstance(v, BaseModel) else v
                  for k, v in (("from_stage", from_stage), ("stages", stages), ("task", task)) if v})
    if config is not None:
        if typed or overrides:
            raise ConfigError("pass either config or preset + overrides and the typed fields, not both")
        return config
    return build_config(PipelineConfig, PRESETS, preset, {**(overrides or {}), **typed})


@flow(name="pipeline")
@documented(
    from_stage="force this stage and every later one to run, even where an earlier run with the same config, "
               "inputs and code would be reused",
    stages="the stages to run: a prefix of corpus, pretrain, finetune, distill_target, distill_draft, "
           "sd_benchmark (empty: all)",
    task="the downstream task of fine-tuning, distillation and the SD prompts (empty: the preset's)",
    corpus_overrides="corpus-prep fields to change (engine/config/corpus_prep.py)",
    pretrain_overrides="pretraining fields to change, shared by the three sizes (engine/config/pretrain.py)",
    finetune_overrides="fine-tuning fields to change (engine/config/finetune.py)",
    distill_target_overrides="fields of the target distillation (teacher -> target) to change "
                             "(engine/config/distill.py)",
    distill_draft_overrides="fields of the DistillSpec draft distillation (target -> draft) to change",
    sd_benchmark_overrides="SD benchmark fields to change (engine/config/sd_benchmark.py)",
)
def pipeline(preset: Preset = "tiny", overrides: Optional[dict[str, Any]] = None,
             config: Optional[PipelineConfig] = None, from_stage: Optional[Stage] = None,
             stages: Optional[list[Stage]] = None, task: Optional[TaskSpec] = None,
             corpus_overrides: Optional[CorpusOverrides] = None,
             pretrain_overrides: Optional[PretrainOverrides] = None,
             finetune_overrides: Optional[FinetuneOverrides] = None,
             distill_target_overrides: Optional[DistillOverrides] = None,
             distill_draft_overrides: Optional[DistillOverrides] = None,
             sd_benchmark_overrides: Optional[SDBenchmarkOverrides] = None) -> PipelineResult:
    """Run the stages in order (see module docstring)."""
    from tasks import tracking
    from tasks.runtime.orchestration import tag_current_flow_run
    from tasks.runtime.pipeline_stages import StageRunner, report_verdict

    cfg = pipeline_config(preset, overrides, config, from_stage=from_stage, stages=stages, task=task,
                          corpus=corpus_overrides, pretrain=pretrain_overrides, finetune=finetune_overrides,
                          distill_target=distill_target_overrides, distill_draft=distill_draft_overrides,
                          sd_benchmark=sd_benchmark_overrides)
    logger = get_run_logger()
    forced = set(STAGES[STAGES.index(cfg.from_stage):]) if cfg.from_stage else set()
    result = PipelineResult(run_id="")
    # every config value is a param, so MLflow's Compare of two pipeline runs shows what differs
    with tracking.start_run(cfg.experiment, f"pipeline-{cfg.preset}", params=cfg.model_dump(),
                            tags={"stage": "pipeline", "preset": cfg.preset}) as run_id:
        result.run_id = run_id
        tag_current_flow_run(f"mlflow_run_id:{run_id}", f"preset:{cfg.preset}")
        tracking.log_dict(run_id, cfg.model_dump(), "pipeline_config.json")

        stage = StageRunner(run_id, cfg.stages, forced, logger)
        corpus = stage("corpus", cfg.corpus.model_dump(), {}, lambda: _corpus(cfg, run_id))
        pre = stage("pretrain", {"pretrain": cfg.pretrain.model_dump(), "sizes": cfg.sizes.model_dump()},
                    corpus and {"corpus_dir": corpus["corpus_dir"]}, lambda: _pretrain(cfg, corpus["corpus_dir"], run_id))
        ft = stage("finetune", {"finetune": cfg.finetune.model_dump(), "task": cfg.task.model_dump()},
                   pre and pre["models"], lambda: _finetune(cfg, pre["models"], run_id))
        dt = stage("distill_target", {"distill": cfg.distill_target.model_dump(), "task": cfg.task.model_dump()},
                   ft and {"teacher": ft["models"]["teacher"], "student": pre["models"]["target"]},
                   lambda: _distill(cfg, cfg.distill_target, ft["models"]["teacher"], pre["models"]["target"], run_id))
        dd = stage("distill_draft", {"distill": cfg.distill_draft.model_dump(), "task": cfg.task.model_dump()},
                   dt and {"teacher": dt["model_uri"], "student": ft["models"]["draft_base"]},
                   lambda: _distill(cfg, cfg.distill_draft, dt["model_uri"], ft["models"]["draft_base"], run_id))
        stage("sd_benchmark", cfg.sd_benchmark.model_dump(),
              dd and {"target": dt["model_uri"], "drafts": [ft["models"]["draft_base"], dd["model_uri"]],
                      "teacher": ft["models"]["teacher"]},
              lambda: _sd(cfg, dt["model_uri"], ft, dd, run_id))
        stage.finish()
        result.stages, result.skipped = stage.outputs, stage.skipped
        if (result.stages.get("sd_benchmark") or {}).get("markdown"):
            tracking.log_text(run_id, result.stages["sd_benchmark"]["markdown"], "sd_table.md")
        result.verdict = report_verdict(run_id, preset=cfg.preset, task_kind=cfg.task.info()["kind"],
                                        stages=result.stages, not_run=[s for s in STAGES if s not in result.stages],
                                        logger=logger)
    return result


def _corpus(cfg: PipelineConfig, parent: str) -> dict[str, Any]:
    r = corpus_mod.corpus_prep.with_options(flow_run_name="corpus")(config=cfg.corpus, parent_run_id=parent)
    return {"run_id": r.run_id, "corpus_dir": r.corpus_dir}


def _pretrain(cfg: PipelineConfig, corpus_dir: str, parent: str) -> dict[str, Any]:
    from tasks.runtime.orchestration import side_by_side

    def one(size: str) -> Callable[[], Any]:
        p = cfg.pretrain.model_copy(update={"corpus_dir": corpus_dir, "model": getattr(cfg.sizes, size),
                                            "register_as": f"t5-{cfg.preset}-{size}-pretrained"})
        return lambda: named_subflow(pretrain_mod.pretrain_flow, f"pretrain-{size}")(config=p, parent_run_id=parent)

    done = side_by_side({size: one(size) for size in ("teacher", "target", "draft")}, parallel=cfg.parallel)
    models, runs, summary = {}, {}, {}
    for size, r in done.items():
        models[size], runs[size] = r.model_uri, r.run_id
        _alias(r.model_uri, "pretrained")  # the stage deployments' defaults (prefect.yaml) name these aliases
        summary[size] = {"val_sc_loss": r.evals[-1]["val_sc_loss"] if r.evals else None, "cum_flops": r.cum_flops}
    return {"models": models, "run_ids": runs, "summary": summary}


def _finetune(cfg: PipelineConfig, pretrained: dict[str, str], parent: str) -> dict[str, Any]:
    from tasks.runtime.orchestration import side_by_side

    def one(role: str, size: str) -> Callable[[], Any]:
        f = cfg.finetune.model_copy(update={"model": pretrained[size], "task": cfg.task,
                                            "register_as": f"t5-{cfg.preset}-{cfg.task.name}-{role}"})
        return lambda: named_subflow(finetune_mod.finetune_flow, f"finetune-{role.replace('_', '-')}")(config=f,
                                                                                               parent_run_id=parent)

    done = side_by_side({role: one(role, size) for role, size in (("teacher", "teacher"), ("draft_base", "draft"))},
                        parallel=cfg.parallel)
    models, metrics = {}, {}
    for role, r in done.items():
        models[role], metrics[role] = r.model_uri, r.metrics
    _alias(models["draft_base"], "draft-base")
    _alias(models["teacher"], "teacher")
    return {"models": models, "metrics": metrics}


def _alias(uri: str, alias: str) -> None:
    from tasks.tracking import set_alias

    set_alias(uri, alias)


def _distill(cfg: PipelineConfig, dcfg: DistillConfig, teacher: str, student: str, parent: str) -> dict[str, Any]:
    d = dcfg.model_copy(update={"teacher": teacher, "student": student, "task": cfg.task,
                                "register_as": f"t5-{cfg.preset}-{cfg.task.name}-{dcfg.mode}"})
    r = named_subflow(distill_mod.distill_flow, f"distill-{dcfg.mode}")(config=d, parent_run_id=parent)
    if dcfg.mode == "draft":
        _alias(r.model_uri, "draft")  # the latest pipeline's DistillSpec draft, whatever its divergence and data
    return {"run_id": r.run_id, "model_uri": r.model_uri, "alias": r.alias, "final": r.final, "metrics": r.metrics}


def _sd(cfg: PipelineConfig, target: str, ft: dict[str, Any], dd: dict[str, Any], parent: str) -> dict[str, Any]:
    from tasks.downstream import sd_prompts

    prompts = sd_prompts(cfg.task)
    s = cfg.sd_benchmark.model_copy(update={
        "target": target, "prompts_jsonl": prompts, "corpus_dir": None,
        "drafts": [DraftRef(label="draft-base", model=ft["models"]["draft_base"]),
                   DraftRef(label=dd["alias"], model=dd["model_uri"])]})
    r = named_subflow(sd_mod.sd_benchmark, "sd-benchmark")(config=s, parent_run_id=parent)
    rows = records(r.table)
    # the model garden: the teacher decoding alone on the same prompts (greedy), against the distilled
    # target with the distilled draft
    t = named_subflow(sd_mod.sd_benchmark, "sd-benchmark-teacher-alone")(config=s.model_copy(update={
        "target": ft["models"]["teacher"], "drafts": [DraftRef(label="draft-base", model=ft["models"]["draft_base"])],
        "gammas": [1], "lenience": [1.0], "modes": ["greedy"], "hf_baselines": False, "batch_sizes": []}),
        parent_run_id=parent)
    from tasks.report.distillspec_study import garden_row

    garden = [garden_row(records(t.table), rows, dd["alias"], precision=p, teacher_outputs=t.outputs,
                         garden_outputs=r.outputs) for p in s.precisions]
    return {"run_id": r.run_id, "markdown": r.markdown, "rows": rows, "teacher_run_id": t.run_id, "garden": garden}


if __name__ == "__main__":
    run_cli(lambda c: pipeline(config=c), PipelineConfig, PRESETS,
            description="Run the end-to-end pipeline (corpus -> pretrain -> finetune -> distill -> SD benchmark).")
