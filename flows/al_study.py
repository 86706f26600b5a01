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
from pathlib import Path
from typing import Any, Optional

from prefect import flow, get_run_logger

from engine.config.al_study import PRESETS, ALStudyConfig
from engine.config.active_learning import ActiveLearningConfig
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
    from tasks import active_learning as al
    from tasks import tracking

    cfg = config or build_config(ALStudyConfig, PRESETS, preset, overrides)
    log = get_run_logger()
    name = cfg.name or f"al-study-{cfg.preset}"
    with tracking.start_run(cfg.experiment, name, params=cfg.model_dump(),
                            tags={"stage": "active_learning_study", "preset": cfg.preset}) as run_id:
        runs = {seed: _seed_run(cfg, name, seed, run_id, log) for seed in cfg.seeds}
        histories = {seed: h for seed, (h, _) in runs.items()}
        events = {seed: e for seed, (_, e) in runs.items()}
        full = _full_pool_f1(cfg) if cfg.full_pool else None
        numbers = al.study_numbers(histories, full, goal_fraction=cfg.goal_fraction, events=events)
        markdown = al.study_markdown(numbers)
        log.info("study:\n%s", markdown)
        tracking.log_text(run_id, markdown, "study.md")
        tracking.log_dict(run_id, {"numbers": numbers, "histories": {str(s): h for s, h in histories.items()}},
                          "study.json")
        tracking.log_figure(run_id, al.study_figure(histories, full, events=next(iter(events.values()), [])),
                            "study_curves.png")
        tracking.log_metrics(run_id, _headline(numbers))
    return ALStudyResult(run_id, markdown, numbers)


def _seed_run(cfg: ALStudyConfig, name: str, seed: int, parent: str, log):
    """The arms' curves of one seed and its environment changes: from its finished run folder, or by
    running (or resuming) it."""
    from tasks.active_learning import load_state
    from tasks.env import state_dir

    run_cfg = cfg.active_learning.model_copy(update={"seed": seed, "run_name": f"{name}-seed{seed}",
                                                     "resume": "auto", "register_models": False})
    root = run_cfg.output_root or state_dir() / "active_learning"
    state = load_state(Path(root) / run_cfg.run_name)
    if state is not None and state.get("round_done", -1) >= run_cfg.rounds and not state.get("stopped"):
        log.info("seed %d: reusing the finished run %s", seed, run_cfg.run_name)
    else:
        al_flow.active_learning(config=ActiveLearningConfig.model_validate(run_cfg.model_dump()),
                                parent_run_id=parent)
        state = load_state(Path(root) / run_cfg.run_name)
    return {arm: s["history"] for arm, s in state["arms"].items()}, state.get("events", [])


def _full_pool_f1(cfg: ALStudyConfig) -> float:
    from tasks import active_learning as al
    from tasks.thai_data import load_experiment

    a, d = cfg.active_learning, cfg.active_learning.data
    pool, test = load_experiment(d.source, d.paths, test_fraction=d.test_fraction, split_seed=d.split_seed,
                                 max_pool=d.max_pool, max_test=d.max_test, min_chars=d.min_chars)
    return al.full_pool_f1(pool, test, segmenter=a.segmenter, epochs=a.fresh_epochs, seed=a.seed)


def _headline(numbers: dict[str, Any]) -> dict[str, float]:
    out = {}
    if numbers["full_pool_f1"] is not None:
        out["full_pool_f1"] = numbers["full_pool_f1"]
    for arm, s in numbers["arms"].items():
        for key in ("final_f1", "final_chars", "fraction_of_random", "to_95_full"):
            if s[key].get("n"):
                out[f"{arm}.{key}.mean"], out[f"{arm}.{key}.std"] = s[key]["mean"], s[key]["std"]
    for arm, met in numbers["goal_met"].items():
        out[f"{arm}.goal_met"] = float(met)
    return out


if __name__ == "__main__":
    run_cli(lambda c: al_study(config=c), ALStudyConfig, PRESETS,
            description="Active learning over seeds: curves with spread, characters to reach random's final F1.")
