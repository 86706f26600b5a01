"""The end-to-end pipeline: corpus prep -> SpacTor pretraining -> ... as Prefect subflows.

    python -m flows.pipeline --preset tiny                     # what `make run` does
    python -m flows.pipeline --preset tiny --set from_stage=pretrain

One parent MLflow run (experiment ``pipeline``) holds a nested run per stage; the parent is tagged with
the Prefect flow-run id and the Prefect flow run with the MLflow run id. A stage whose config, inputs
and code are unchanged since it last completed is skipped (the log says so); ``from_stage`` forces a
stage and everything after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional

from prefect import flow, get_run_logger
from pydantic import Field

from flows import corpus_prep as corpus_mod
from flows import pretrain as pretrain_mod
from flows._cli import FlowConfig, build_config, run_cli

STAGES = ("corpus", "pretrain")


class PipelineConfig(FlowConfig):
    preset: str = "tiny"
    corpus: corpus_mod.CorpusPrepConfig = Field(default_factory=corpus_mod.tiny)
    pretrain: pretrain_mod.PretrainConfig = Field(default_factory=pretrain_mod.tiny)
    from_stage: Optional[Literal["corpus", "pretrain"]] = Field(
        None, description="force this stage and all later ones to run even if cached")
    experiment: str = Field("pipeline", description="MLflow experiment of the parent run")


def _preset(name: str, corpus: Callable, pre: Callable) -> Callable[[], PipelineConfig]:
    def make() -> PipelineConfig:
        p = pre()
        c = corpus().model_copy(update={"pack_length": p.tokens_length})
        return PipelineConfig(preset=name, corpus=c, pretrain=p)

    make.__name__ = name
    return make


tiny = _preset("tiny", corpus_mod.tiny, pretrain_mod.tiny)
small = _preset("small", corpus_mod.small, pretrain_mod.small)
base = _preset("base", corpus_mod.base, pretrain_mod.base)
PRESETS = {"tiny": tiny, "small": small, "base": base}


@dataclass
class PipelineResult:
    run_id: str
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        from tasks.tracking import artifact_local_path

        lines = [f"pipeline finished; MLflow parent run id: {self.run_id}",
                 f"artifacts: {artifact_local_path(self.run_id)}"]
        for name, out in self.stages.items():
            state = "skipped (cached)" if name in self.skipped else "ran"
            lines.append(f"  {name:<10} {state:<17} run {out.get('run_id', '-')}  "
                         f"{out.get('model_uri') or out.get('corpus_dir') or ''}")
        return "\n".join(lines)


@flow(name="pipeline")
def pipeline(preset: str = "tiny", overrides: Optional[dict[str, Any]] = None,
             config: Optional[PipelineConfig] = None) -> PipelineResult:
    from tasks import stages, tracking
    from tasks.orchestration import tag_current_flow_run

    cfg = config or build_config(PipelineConfig, PRESETS, preset, overrides)
    logger = get_run_logger()
    forced = set(STAGES[STAGES.index(cfg.from_stage):]) if cfg.from_stage else set()
    result = PipelineResult(run_id="")
    with tracking.start_run(cfg.experiment, f"pipeline-{cfg.preset}", params={"preset": cfg.preset},
                            tags={"stage": "pipeline", "preset": cfg.preset}) as run_id:
        result.run_id = run_id
        tag_current_flow_run(f"mlflow_run_id:{run_id}", f"preset:{cfg.preset}")
        tracking.log_dict(run_id, cfg.model_dump(), "pipeline_config.json")

        def stage(name: str, stage_cfg: FlowConfig, inputs: dict[str, Any], run: Callable[[], dict[str, Any]]):
            key = stages.stage_key(name, stage_cfg.model_dump(), inputs)
            done = None if name in forced else stages.completed(key)
            if done is not None:
                logger.info("stage %s: skipped, completed earlier with the same config, inputs and code (%s)",
                            name, key)
                result.skipped.append(name)
                out = done
            else:
                logger.info("stage %s: running", name)
                out = run()
                stages.record(key, out)
            result.stages[name] = out
            tracking.set_tags(run_id, {f"{name}.run_id": out.get("run_id", ""), f"{name}.skipped": done is not None})
            return out

        corpus = stage("corpus", cfg.corpus, {}, lambda: _corpus(cfg, run_id))
        stage("pretrain", cfg.pretrain, {"corpus_dir": corpus["corpus_dir"]},
              lambda: _pretrain(cfg, corpus["corpus_dir"], run_id))
        tracking.log_metrics(run_id, {"stages_skipped": len(result.skipped), "stages_run": len(result.stages) - len(result.skipped)})
    return result


def _corpus(cfg: PipelineConfig, parent: str) -> dict[str, Any]:
    r = corpus_mod.corpus_prep(config=cfg.corpus, parent_run_id=parent)
    return {"run_id": r.run_id, "corpus_dir": r.corpus_dir}


def _pretrain(cfg: PipelineConfig, corpus_dir: str, parent: str) -> dict[str, Any]:
    p = cfg.pretrain.model_copy(update={"corpus_dir": corpus_dir})
    r = pretrain_mod.pretrain_flow(config=p, parent_run_id=parent)
    return {"run_id": r.run_id, "model_uri": r.model_uri, "model_dir": r.model_dir}


if __name__ == "__main__":
    run_cli(lambda c: pipeline(config=c), PipelineConfig, PRESETS,
            description="Run the end-to-end pipeline (corpus prep -> SpacTor pretraining -> ...).")
