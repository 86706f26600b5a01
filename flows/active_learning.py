"""Live active learning for Thai word segmentation: a random arm and a model-ranked arm, side by side.

    python -m flows.active_learning --preset tiny                      # ~1 minute, every environment change
    python -m flows.active_learning --preset small                     # the measured experiment (README numbers)
    python -m flows.active_learning --preset tiny --set annotator.kind=human --set annotator.human.wait=pause
    python -m flows.active_learning --preset small --set run_name=exp1 --set resume=true   # continue a run

After arXiv 1907.00038 ("The Practical Challenges of Active Learning: Lessons Learned from Live
Experimentation"). Both arms start from the same seed set and the
same initial model; each round both select ``batch_size`` sentences from the same pool (one at random,
one by the uncertainty scorer of ``models/al_scorers.py``), the annotator answers both batches at once
(blind to the arm), both segmenters retrain, concurrently, and are scored on held-out ORCHID documents.
Cost is counted in sentences and in characters. The environment can change under the experiment at
given rounds (``schedule``): annotation guideline, pool, annotator noise, model. Each change is an
MLflow tag ``env.rNN.<kind>``, an entry of ``events.json`` and a mark on ``learning_curve.png``.

A state file (``<output_root>/<run_name>/state.json``) is written after every round; ``resume=true``
continues a stopped or failed run from the last finished round, into the same MLflow runs. The round loop,
the run folder and its resume rules, and the MLflow runs are ``tasks/thai/al_loop.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from prefect import flow, get_run_logger

from engine.config.active_learning import PRESETS, ActiveLearningConfig
from flows._cli import build_config, documented, preset_type, run_cli


Preset = preset_type(PRESETS)


@dataclass
class ActiveLearningResult:
    run_id: str
    run_dir: str
    rounds_done: int
    stopped: bool
    numbers: dict[str, float] = field(default_factory=dict)
    model_uris: dict[str, str] = field(default_factory=dict)
    arm_run_ids: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        from tasks.tracking import artifact_local_path

        n = self.numbers
        head = (f"stopped after round {self.rounds_done}; continue with --set run_name={Path(self.run_dir).name} "
                "--set resume=true" if self.stopped else f"{self.rounds_done} rounds done")
        lines = [f"active learning: {head}"]
        if "random_final_f1" in n:
            arms = [a for a in ("ranked", "partial") if f"{a}_final_f1" in n]
            lines.append(f"final word F1: random {n['random_final_f1']:.4f} ({n['random_final_chars']:.0f} chars), "
                         + "".join(f"{a} {n[f'{a}_final_f1']:.4f} ({n[f'{a}_final_chars']:.0f} chars"
                                   + (" shown" if a == "partial" else "") + "), " for a in arms)
                         + f"newmm {n.get('newmm_test_f1', float('nan')):.4f}")
            lines.append(f"boundary F1: random {n['random_final_boundary_f1']:.4f}, "
                         + "".join(f"{a} {n[f'{a}_final_boundary_f1']:.4f}, " for a in arms)
                         + f"newmm {n.get('newmm_test_boundary_f1', float('nan')):.4f}")
            for a in arms:
                fraction = n.get("chars_fraction" if a == "ranked" else f"{a}_chars_fraction")
                if fraction is None:
                    lines.append(f"{a} arm did not reach the random arm's final F1")
                elif a == "ranked":
                    lines.append(f"ranked arm reached the random arm's final F1 with {fraction:.0%} of its "
                                 f"characters ({n['ranked_chars_to_random_final']:.0f}) and "
                                 f"{n['sentences_fraction']:.0%} of its sentences")
                else:
                    lines.append(f"{a} arm reached the random arm's final F1 with {fraction:.0%} of its characters "
                                 f"({n[f'{a}_chars_to_random_final']:.0f} shown)")
            if n.get("environment_changes"):
                lines[-1] += (f" (note: {n['environment_changes']:.0f} environment changes happened during the run; "
                              "the curves are not comparable across them)")
        if self.model_uris:
            lines.append("registered: " + ", ".join(f"{a} {u}" for a, u in self.model_uris.items()))
        lines += [f"MLflow run id: {self.run_id}", f"artifacts: {artifact_local_path(self.run_id)} (learning_curve.png)",
                  f"state: {self.run_dir}/state.json"]
        return "\n".join(lines)


@flow(name="active-learning")
@documented()
def active_learning(preset: Preset = "tiny", overrides: Optional[dict[str, Any]] = None,
                    config: Optional[ActiveLearningConfig] = None,
                    parent_run_id: Optional[str] = None) -> ActiveLearningResult:
    """Seed round, then ``rounds`` of select -> annotate -> retrain -> evaluate for both arms."""
    from tasks.thai import al_loop

    cfg = config or build_config(ActiveLearningConfig, PRESETS, preset, overrides)
    # The run folder (new or resumed), the MLflow runs, the rounds and the final numbers: tasks/thai/al_loop.py.
    return ActiveLearningResult(**al_loop.run_experiment(cfg, parent_run_id, get_run_logger()))


if __name__ == "__main__":
    run_cli(lambda c: active_learning(config=c), ActiveLearningConfig, PRESETS,
            description="Active learning for Thai word segmentation: random vs model-ranked arms, live environment.")
