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
from typing import Any, Callable, Literal, Optional

from prefect import flow, get_run_logger
from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.config import FlowConfig
from flows import corpus_prep as corpus_mod
from flows import distill as distill_mod
from flows import finetune as finetune_mod
from flows import pretrain as pretrain_mod
from flows import sd_benchmark as sd_mod
from flows._cli import (ConfigError, build_config, documented, named_subflow, overrides_model, preset_type, records,
                        run_cli, section_overrides)
from tasks.downstream import TaskSpec

STAGES = ("corpus", "pretrain", "finetune", "distill_target", "distill_draft", "sd_benchmark")
Stage = Literal["corpus", "pretrain", "finetune", "distill_target", "distill_draft", "sd_benchmark"]


class Sizes(BaseModel):
    """Architectures of the three model sizes (the pretraining settings are shared)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    teacher: pretrain_mod.T5Shape
    target: pretrain_mod.T5Shape
    draft: pretrain_mod.T5Shape


class PipelineConfig(FlowConfig):
    preset: str = "tiny"
    task: TaskSpec = Field(default_factory=lambda: TaskSpec(name="bbc_headline"),
                           description="the downstream task of fine-tuning, distillation and the SD prompts")
    corpus: corpus_mod.CorpusPrepConfig = Field(default_factory=corpus_mod.tiny)
    pretrain: pretrain_mod.PretrainConfig = Field(default_factory=pretrain_mod.tiny)
    sizes: Sizes
    finetune: finetune_mod.FinetuneConfig = Field(default_factory=finetune_mod.tiny)
    distill_target: distill_mod.DistillConfig = Field(default_factory=lambda: distill_mod.tiny().model_copy(
        update={"mode": "target", "data_mix": {"teacher": 0.5, "student": 0.5}}))
    distill_draft: distill_mod.DistillConfig = Field(default_factory=distill_mod.tiny)
    sd_benchmark: sd_mod.SDBenchmarkConfig = Field(default_factory=sd_mod.tiny)
    stages: list[Stage] = Field(list(STAGES), description="stages to run (a prefix of the full list)")
    from_stage: Optional[Stage] = Field(None, description="force this stage and all later ones to run even if cached")
    experiment: str = Field("pipeline", description="MLflow experiment of the parent run")
    parallel: bool = Field(True, description="on a Ray cluster (RAY_ADDRESS), train the three pretraining runs, "
                                             "then the two fine-tunings, side by side; on a laptop they run in order")

    @field_validator("stages")
    @classmethod
    def _prefix(cls, v: list[str]) -> list[str]:
        if not v or list(v) != list(STAGES[:len(v)]):
            raise ValueError(f"stages must be a non-empty prefix of {list(STAGES)} (each stage needs the ones "
                             f"before it), got {v}")
        return v


def _preset(name: str, corpus: Callable, pre: Callable, ft: Callable, di: Callable, sd: Callable,
            sizes: Sizes, task: str | TaskSpec = "bbc_headline", dt: Callable | None = None) -> Callable[[], PipelineConfig]:
    """A pipeline preset from the flows' presets; ``dt`` is the target distillation's (default: ``di``'s)."""
    def make() -> PipelineConfig:
        p = pre()
        return PipelineConfig(preset=name, task=task if isinstance(task, TaskSpec) else TaskSpec(name=task),
                              corpus=corpus().model_copy(update={"pack_length": p.tokens_length}),
                              pretrain=p, sizes=sizes, finetune=ft(),
                              distill_target=(dt or di)().model_copy(update={
                                  "mode": "target", "data_mix": {"teacher": 0.5, "student": 0.5}}),
                              distill_draft=di(), sd_benchmark=sd())

    make.__name__ = name
    return make


def _tiny_pretrain() -> pretrain_mod.PretrainConfig:
    """Half the pretraining flow's tiny steps: the minutes go to fine-tuning, where the task is learned."""
    return pretrain_mod.tiny().model_copy(update={"total_steps": 400, "tau": 200})


def _tiny_finetune() -> finetune_mod.FinetuneConfig:
    """Short text normalisation at tiny size: measured 2026-12-06, the tiny teacher reaches exact match 0.33 (the
    best trivial baseline 0.03) after 1,500 steps of 32 at lr 3e-3 (0.12 s a step); lr 1e-3 and 3e-4 learn
    slower, and the full task (2-4 spans, 2 words of context) stays at exact match 0 after 1,500 steps. 1,200
    steps here keep `make run` near 10 minutes (measured: 9 min 52 s, teacher exact match 0.157)."""
    return finetune_mod.tiny().model_copy(update=dict(
        total_steps=1200, lr=3e-3, warmup_steps=50, batch_size=32, max_input_length=48, max_target_length=48,
        eval_every=200, checkpoint_every=400, test_examples=300))


def _tiny_distill(steps: int) -> Callable[[], distill_mod.DistillConfig]:
    def make() -> distill_mod.DistillConfig:
        return distill_mod.tiny().model_copy(update=dict(
            total_steps=steps, lr=3e-3, warmup_steps=20, batch_size=32, max_input_length=48, max_target_length=48,
            eval_every=steps // 2, checkpoint_every=steps // 2, test_examples=300))

    return make


#: the tiny preset's task: text normalisation with 1-2 spans and 1 word of context (outputs ~8 words), the
#: version a 0.5M-parameter model learns within the tiny run's minutes
TINY_TASK = TaskSpec(name="text_normalization", spans=(1, 2), context=1)
S = pretrain_mod.T5Shape
tiny = _preset("tiny", corpus_mod.tiny, _tiny_pretrain, _tiny_finetune, _tiny_distill(300), sd_mod.tiny, Sizes(
    teacher=S(d_model=96, d_ff=192, d_kv=16, num_heads=6, num_layers=3, num_decoder_layers=3, tie_word_embeddings=True),
    target=S(d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=2, num_decoder_layers=2, tie_word_embeddings=True),
    draft=S(d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=1, num_decoder_layers=1, tie_word_embeddings=True)),
    task=TINY_TASK, dt=_tiny_distill(500))
def _laptop_distill_target() -> distill_mod.DistillConfig:
    """The teacher -> target distillation: 2,000 steps (half the sequences the teacher's, half the target's)."""
    return distill_mod.laptop().model_copy(update={"total_steps": 2000})


#: the laptop preset's task: text normalisation with 1-3 spans and 1 word of context (outputs ~10 words)
LAPTOP_TASK = TaskSpec(name="text_normalization", spans=(1, 3), context=1)
# laptop (third shapes, 2026-12-06): models small enough to learn the task within the budget. The first shapes
# (teacher d384 3+6, target d256 2+6, chosen so SD could pay: that target's step is 3.8 ms against the draft's
# 0.4 ms) did not learn it (teacher test exact match 0.007 after 800 steps), nor did a d128 3+3 teacher with 4
# heads of 32 (0.025 after 3,000 steps); the d96 3+3 shape with 6 heads of 16 does (0.20 after 1,500 steps,
# docs/results.md), so it is the teacher, and the target and draft are smaller still. The target keeps a
# decoder deeper than its encoder (the decoder is what SD repeats); at these sizes its step costs about two
# draft steps, so SD is not expected to pay on this CPU, and the verdict says by how much. Tied embeddings: T5
# then scales the decoder output by d_model^-0.5, which gives a sane initial loss.
laptop = _preset("laptop", corpus_mod.laptop, pretrain_mod.laptop, finetune_mod.laptop, distill_mod.laptop,
                 sd_mod.laptop, Sizes(
                     teacher=S(d_model=96, d_ff=192, d_kv=16, num_heads=6, num_layers=3, num_decoder_layers=3,
                               tie_word_embeddings=True),
                     target=S(d_model=64, d_ff=256, d_kv=16, num_heads=4, num_layers=2, num_decoder_layers=3,
                              tie_word_embeddings=True),
                     draft=S(d_model=32, d_ff=128, d_kv=8, num_heads=4, num_layers=1, num_decoder_layers=1,
                             tie_word_embeddings=True)),
                 task=LAPTOP_TASK, dt=_laptop_distill_target)
small = _preset("small", corpus_mod.small, pretrain_mod.small, finetune_mod.small, distill_mod.small, sd_mod.small,
                Sizes(teacher=S(d_model=768, d_ff=2048, d_kv=64, num_heads=12, num_layers=12, num_decoder_layers=12),
                      target=S(d_model=512, d_ff=1024, d_kv=64, num_heads=6, num_layers=8, num_decoder_layers=8),
                      draft=S(d_model=256, d_ff=512, d_kv=64, num_heads=4, num_layers=2, num_decoder_layers=2)))
base = _preset("base", corpus_mod.base, pretrain_mod.base, finetune_mod.base, distill_mod.base, sd_mod.base,
               Sizes(teacher=S(d_model=2048, d_ff=5120, d_kv=64, num_heads=32, num_layers=24, num_decoder_layers=24),
                     target=S(d_model=768, d_ff=2048, d_kv=64, num_heads=12, num_layers=12, num_decoder_layers=12),
                     draft=S(d_model=512, d_ff=1024, d_kv=64, num_heads=6, num_layers=8, num_decoder_layers=8)))
PRESETS = {"tiny": tiny, "laptop": laptop, "small": small, "base": base}
Preset = preset_type(PRESETS)
#: the typed per-stage "change these fields" forms of the run form (unset fields keep the preset's values)
CorpusOverrides = overrides_model(corpus_mod.CorpusPrepConfig)
PretrainOverrides = overrides_model(pretrain_mod.PretrainConfig)
FinetuneOverrides = overrides_model(finetune_mod.FinetuneConfig)
DistillOverrides = overrides_model(distill_mod.DistillConfig)
SDBenchmarkOverrides = overrides_model(sd_mod.SDBenchmarkConfig)


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
    corpus_overrides="corpus-prep fields to change (flows/corpus_prep.py)",
    pretrain_overrides="pretraining fields to change, shared by the three sizes (flows/pretrain.py)",
    finetune_overrides="fine-tuning fields to change (flows/finetune.py)",
    distill_target_overrides="fields of the target distillation (teacher -> target) to change (flows/distill.py)",
    distill_draft_overrides="fields of the DistillSpec draft distillation (target -> draft) to change",
    sd_benchmark_overrides="SD benchmark fields to change (flows/sd_benchmark.py)",
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
    from tasks.orchestration import tag_current_flow_run
    from tasks.pipeline_stages import StageRunner, report_verdict

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
    from tasks.orchestration import side_by_side

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
    from tasks.orchestration import side_by_side

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


def _distill(cfg: PipelineConfig, dcfg: distill_mod.DistillConfig, teacher: str, student: str, parent: str) -> dict[str, Any]:
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
        "drafts": [sd_mod.DraftRef(label="draft-base", model=ft["models"]["draft_base"]),
                   sd_mod.DraftRef(label=dd["alias"], model=dd["model_uri"])]})
    r = named_subflow(sd_mod.sd_benchmark, "sd-benchmark")(config=s, parent_run_id=parent)
    rows = records(r.table)
    # the model garden: the teacher decoding alone on the same prompts (greedy), against the distilled
    # target with the distilled draft
    t = named_subflow(sd_mod.sd_benchmark, "sd-benchmark-teacher-alone")(config=s.model_copy(update={
        "target": ft["models"]["teacher"], "drafts": [sd_mod.DraftRef(label="draft-base", model=ft["models"]["draft_base"])],
        "gammas": [1], "lenience": [1.0], "modes": ["greedy"], "hf_baselines": False, "batch_sizes": []}),
        parent_run_id=parent)
    from tasks.study import garden_row

    garden = [garden_row(records(t.table), rows, dd["alias"], precision=p) for p in s.precisions]
    return {"run_id": r.run_id, "markdown": r.markdown, "rows": rows, "teacher_run_id": t.run_id, "garden": garden}


if __name__ == "__main__":
    run_cli(lambda c: pipeline(config=c), PipelineConfig, PRESETS,
            description="Run the end-to-end pipeline (corpus -> pretrain -> finetune -> distill -> SD benchmark).")
