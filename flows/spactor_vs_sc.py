"""SpacTor vs SC: both arms from the same corpus, seeds and data order; one comparison run in MLflow.

    python -m flows.spactor_vs_sc --preset tiny [--set pretrain.tau=50]
    python -m flows.spactor_vs_sc --preset laptop          # 3 seeds, tau sweep, shorter SpacTor budgets

For every seed it trains the SC arm (tau = 0), one SpacTor arm per ``taus`` value (``pretrain.tau`` when
empty) and, for each of ``budget_fractions``, a SpacTor arm (tau = ``pretrain.tau``) with that fraction of
the steps. Logs validation SC loss against steps and against FLOPs, mean over seeds with the min-max band
(``comparison.png``), the table behind it, and the claim in its own terms (``summary.md``): the fraction
of steps and of FLOPs at which SpacTor first reaches SC's final validation loss, and the smallest budget
at which fine-tuned SpacTor reaches fine-tuned SC's downstream score, with the spread across seeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from prefect import flow

from engine.config.spactor_vs_sc import PRESETS, SpacTorVsSCConfig
from flows import corpus_prep as corpus_mod
from flows import finetune as finetune_mod
from flows import pretrain as pretrain_mod
from flows._cli import build_config, documented, preset_type, run_cli, run_footer


Preset = preset_type(PRESETS)


@dataclass
class ComparisonResult:
    run_id: str
    numbers: dict[str, float]
    sc_model_uri: str
    spactor_model_uri: str
    task_scores: dict
    study: dict = field(default_factory=dict)
    verdict: str = ""

    def summary(self) -> str:
        if self.verdict:
            return (f"{self.verdict}\nmodels (seed {self.study.get('seeds', [0])[0]}): SC {self.sc_model_uri}, "
                    f"SpacTor {self.spactor_model_uri}\n" + run_footer(self.run_id, files="comparison.png, summary.md"))
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
@documented()
def spactor_vs_sc(preset: Preset = "tiny", overrides: Optional[dict[str, Any]] = None,
                  config: Optional[SpacTorVsSCConfig] = None, parent_run_id: Optional[str] = None) -> ComparisonResult:
    from tasks import tracking
    from tasks.report.spactor_study import (comparison_numbers, log_study, log_task_scores, mean_scores, study_numbers,
                                            study_verdict)

    cfg = config or build_config(SpacTorVsSCConfig, PRESETS, preset, overrides)
    main = f"tau{cfg.pretrain.tau}"
    with tracking.start_run(cfg.experiment, f"{cfg.preset}-tau{cfg.pretrain.tau}", params=cfg.model_dump(),
                            tags={"stage": "spactor_vs_sc", "preset": cfg.preset},
                            parent_run_id=parent_run_id) as run_id:
        corpus_dir = corpus_mod.corpus_prep(config=cfg.corpus, parent_run_id=run_id).corpus_dir
        # 1. every arm for every seed, from the same corpus; a seed fixes the init and the data order
        runs: dict[tuple[str, int], dict[str, Any]] = {}
        for seed in cfg.seeds:
            for label, tau, steps in cfg.arms():
                p = cfg.pretrain.model_copy(update={"tau": tau, "total_steps": steps, "seed": seed,
                                                    "corpus_dir": corpus_dir,
                                                    "register_as": f"t5-{cfg.preset}-{label}-seed{seed}"})
                runs[(label, seed)] = pretrain_mod.pretrain_flow(config=p, parent_run_id=run_id).__dict__
        # 2. fine-tune every arm on the same task(s) with the same budget
        per_arm: dict[str, dict[tuple[str, int], dict[str, float]]] = {}
        for spec in cfg.finetune_tasks:
            for (label, seed), r in runs.items():
                f = cfg.finetune.model_copy(update={"model": r["model_uri"], "task": spec, "seed": seed,
                                                    "register_as": f"t5-{cfg.preset}-{label}-seed{seed}-{spec.name}"})
                res = finetune_mod.finetune_flow(config=f, parent_run_id=run_id)
                per_arm.setdefault(spec.name, {})[(label, seed)] = res.metrics
        # 3. the claim in its own terms, across seeds (downstream: the first task)
        first_task = per_arm.get(cfg.finetune_tasks[0].name) if cfg.finetune_tasks else None
        numbers = study_numbers(runs, cfg.sweep(), cfg.pretrain.tau, cfg.budget_fractions,
                                scores=first_task, total_steps=cfg.pretrain.total_steps)
        verdict = study_verdict(numbers, cfg.pretrain.tau)
        log_study(run_id, runs, ["sc", *(f"tau{t}" for t in cfg.sweep())], numbers, verdict, cfg.pretrain.total_steps)
        first = cfg.seeds[0]
        headline = comparison_numbers(runs[("sc", first)], runs[(main, first)])
        tracking.log_metrics(run_id, headline)
        scores = mean_scores(per_arm, [t.name for t in cfg.finetune_tasks], cfg.seeds, main)
        log_task_scores(run_id, scores)
    return ComparisonResult(run_id, headline, runs[("sc", first)]["model_uri"], runs[(main, first)]["model_uri"],
                            scores, study=numbers, verdict=verdict)


if __name__ == "__main__":
    run_cli(lambda c: spactor_vs_sc(config=c), SpacTorVsSCConfig, PRESETS,
            description="Train the SC and SpacTor arms on the same data and seed and compare them.")
