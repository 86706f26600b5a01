"""Active learning over several seeds: learning curves with their spread, and the characters each arm needs.

    python -m flows.al_study --preset small                     # 3 seeds of the small experiment (~15-20 min)
    python -m flows.al_study --preset tiny --set 'seeds=[0,1]'  # a quick look
    python -m flows.al_study --preset small --set name=study1   # rerun: finished seeds are reused

Each seed is one run of ``flows.active_learning`` (nested under the study's MLflow run; its folder is
``<name>-seed<seed>``, so a rerun with the same name reuses the seeds that finished and resumes the one
that stopped). One segmenter trained on the whole gold pool gives the ceiling. The study reports, per arm,
the final word F1, the characters it needs to reach the random arm's final F1 (of the same seed) and 95%
of the full-pool F1, with the spread across seeds, and whether a non-random arm reaches random's final
F1 with at most ``goal_fraction`` of its characters in every seed. With environment changes
(``active_learning.schedule``), it also gives per change and arm the dip in F1 and the rounds until
the curve is back at its value before the change. Table and verdict: ``study.md``; curves with a
one-standard-deviation band and the changes marked: ``study_curves.png``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from prefect import flow, get_run_logger

from engine.config.al_study import PRESETS, ALStudyConfig
from flows import active_learning as al_flow
from flows._cli import build_config, documented, preset_type, run_cli


Preset = preset_type(PRESETS)


@dataclass
class ALStudyResult:
    run_id: str
    markdown: str
    numbers: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        from tasks.tracking import artifact_local_path

        return "\n".join([self.markdown, f"MLflow run id: {self.run_id}",
                          f"artifacts: {artifact_local_path(self.run_id)} (study.md, study_curves.png, study.json)"])


@flow(name="active-learning-study")
@documented()
def al_study(preset: Preset = "tiny", overrides: Optional[dict[str, Any]] = None,
             config: Optional[ALStudyConfig] = None) -> ALStudyResult:
    """One active-learning run per seed, the full-pool ceiling, then the numbers, the table and the plot."""
    from tasks import tracking
    from tasks.thai import al_loop

    cfg = config or build_config(ALStudyConfig, PRESETS, preset, overrides)
    log = get_run_logger()
    name = cfg.name or f"al-study-{cfg.preset}"
    with tracking.start_run(cfg.experiment, name, params=cfg.model_dump(),
                            tags={"stage": "active_learning_study", "preset": cfg.preset}) as run_id:
        # 1. one active-learning sub-flow per seed (a finished seed's run folder is reused)
        runs = {seed: al_loop.seed_run(cfg, name, seed, run_id, log, run_flow=al_flow.active_learning)
                for seed in cfg.seeds}
        # 2. the ceiling: one segmenter trained on the whole gold pool
        full = al_loop.study_full_pool_f1(cfg) if cfg.full_pool else None
        # 3. numbers, table, curves -> the study's run
        numbers, markdown = al_loop.report_study(run_id, runs, full, goal_fraction=cfg.goal_fraction, log=log)
    return ALStudyResult(run_id, markdown, numbers)


if __name__ == "__main__":
    run_cli(lambda c: al_study(config=c), ALStudyConfig, PRESETS,
            description="Active learning over seeds: curves with spread, characters to reach random's final F1.")
