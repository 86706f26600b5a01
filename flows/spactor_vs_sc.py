"""SpacTor vs SC: both arms from the same corpus, seed and data order; one comparison run in MLflow.

    python -m flows.spactor_vs_sc --preset tiny [--set pretrain.tau=50]

Logs validation SC loss against steps and against FLOPs for both arms (``comparison.png``), the table
behind it, and the steps/FLOPs at which SpacTor first reaches the SC arm's final validation loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from prefect import flow
from pydantic import Field, model_validator

from flows import corpus_prep as corpus_mod
from flows import pretrain as pretrain_mod
from flows import finetune as finetune_mod
from flows._cli import FlowConfig, build_config, run_cli, run_footer
from tasks.downstream import TaskSpec


class SpacTorVsSCConfig(FlowConfig):
    preset: str = "tiny"
    corpus: corpus_mod.CorpusPrepConfig = Field(default_factory=corpus_mod.tiny)
    pretrain: pretrain_mod.PretrainConfig = Field(default_factory=pretrain_mod.tiny,
                                                  description="shared settings; pretrain.tau is the SpacTor arm's tau")
    finetune_tasks: list[TaskSpec] = Field(default_factory=lambda: [TaskSpec(name="bbc_topic")],
                                           description="downstream tasks both arms are fine-tuned on ([] = none)")
    finetune: finetune_mod.FinetuneConfig = Field(default_factory=finetune_mod.tiny)
    experiment: str = "spactor-vs-sc"

    @model_validator(mode="after")
    def _check(self):
        if self.pretrain.tau == 0:
            raise ValueError("pretrain.tau must be > 0 for the SpacTor arm (the SC arm uses tau=0)")
        return self


def _preset(name, corpus, pre):
    def make():
        p = pre()
        return SpacTorVsSCConfig(preset=name, corpus=corpus().model_copy(update={"pack_length": p.tokens_length}),
                                 pretrain=p, finetune=FINETUNE[name]())
    return make


FINETUNE = {"tiny": finetune_mod.tiny, "small": finetune_mod.small, "base": finetune_mod.base}
PRESETS = {"tiny": _preset("tiny", corpus_mod.tiny, pretrain_mod.tiny),
           "small": _preset("small", corpus_mod.small, pretrain_mod.small),
           "base": _preset("base", corpus_mod.base, pretrain_mod.base)}


@dataclass
class ComparisonResult:
    run_id: str
    numbers: dict[str, float]
    sc_model_uri: str
    spactor_model_uri: str
    task_scores: dict

    def summary(self) -> str:
        n = self.numbers
        reach = (f"SpacTor reached the SC arm's final validation loss ({n['sc_final_val_sc_loss']:.4f}) at "
                 f"{n['steps_fraction']:.0%} of its steps and {n['flops_fraction']:.0%} of its FLOPs"
                 if "steps_fraction" in n else
                 f"SpacTor did not reach the SC arm's final validation loss {n['sc_final_val_sc_loss']:.4f} "
                 f"(its final: {n['spactor_final_val_sc_loss']:.4f})")
        scores = "".join(f"\n  {task} {metric}: SC {v['sc']:.4f}  SpacTor {v['spactor']:.4f}"
                         for task, ms in self.task_scores.items() for metric, v in ms.items())
        return (f"{reach}{scores}\nmodels: SC {self.sc_model_uri}, SpacTor {self.spactor_model_uri}\n"
                + run_footer(self.run_id, files="comparison.png"))


@flow(name="spactor-vs-sc")
def spactor_vs_sc(preset: str = "tiny", overrides: Optional[dict[str, Any]] = None,
                  config: Optional[SpacTorVsSCConfig] = None, parent_run_id: Optional[str] = None) -> ComparisonResult:
    from tasks import tracking
    from tasks.compare import compare_arms, log_task_scores

    cfg = config or build_config(SpacTorVsSCConfig, PRESETS, preset, overrides)
    with tracking.start_run(cfg.experiment, f"{cfg.preset}-tau{cfg.pretrain.tau}", params=cfg.model_dump(),
                            tags={"stage": "spactor_vs_sc", "preset": cfg.preset},
                            parent_run_id=parent_run_id) as run_id:
        corpus_dir = corpus_mod.corpus_prep(config=cfg.corpus, parent_run_id=run_id).corpus_dir
        arms = {}
        for arm, tau in (("sc", 0), ("spactor", cfg.pretrain.tau)):
            p = cfg.pretrain.model_copy(update={"tau": tau, "corpus_dir": corpus_dir})
            arms[arm] = pretrain_mod.pretrain_flow(config=p, parent_run_id=run_id).__dict__
        numbers = compare_arms(arms["sc"], arms["spactor"], cfg.pretrain.tau, run_id)
        # fine-tune both arms on the same task(s) with the same budget; compare task scores
        scores: dict[str, dict[str, dict[str, float]]] = {}
        for spec in cfg.finetune_tasks:
            for arm in ("sc", "spactor"):
                f = cfg.finetune.model_copy(update={"model": arms[arm]["model_uri"], "task": spec,
                                                    "register_as": f"t5-{cfg.preset}-{arm}-{spec.name}"})
                res = finetune_mod.finetune_flow(config=f, parent_run_id=run_id)
                for metric, value in res.metrics.items():
                    if metric.endswith(("rouge1", "rouge2", "rougeL", "accuracy", "macro_f1")):
                        scores.setdefault(spec.name, {}).setdefault(metric, {})[arm] = value
        log_task_scores(run_id, scores)
    return ComparisonResult(run_id, numbers, arms["sc"]["model_uri"], arms["spactor"]["model_uri"], scores)


if __name__ == "__main__":
    run_cli(lambda c: spactor_vs_sc(config=c), SpacTorVsSCConfig, PRESETS,
            description="Train the SC and SpacTor arms on the same data and seed and compare them.")
