"""DistillSpec study: drafts distilled with each divergence x data source, benchmarked against one target.

    python -m flows.distillspec_study --preset tiny --set target=models:/t5-tiny-bbc_topic@target \
        --set draft=models:/t5-tiny-bbc_topic-draft_base/1 --set teacher=models:/t5-tiny-bbc_topic-teacher/1

For every (divergence, data source) the draft is distilled from the target (the ``distill`` flow,
mode=draft); then the SD benchmark runs the target with the undistilled draft and every distilled one on
the task's held-out prompts. One table: acceptance rate, block efficiency, speedup over target-only
decoding and over SD with the undistilled draft. With a ``teacher``, the model-garden row compares
teacher-only latency and quality with the distilled target + best distilled draft under SD.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from prefect import flow

from engine.config.distillspec_study import PRESETS, StudyConfig
from engine.config.sd_benchmark import DraftRef
from flows import distill as distill_mod
from flows import sd_benchmark as sd_mod
from flows._cli import build_config, documented, preset_type, run_cli, run_footer


Preset = preset_type(PRESETS)


@dataclass
class StudyResult:
    run_id: str
    markdown: str
    drafts: dict

    def summary(self) -> str:
        return f"{self.markdown}\n" + run_footer(self.run_id)


@flow(name="distillspec-study")
@documented()
def distillspec_study(preset: Preset = "tiny", overrides: Optional[dict[str, Any]] = None,
                      config: Optional[StudyConfig] = None, parent_run_id: Optional[str] = None) -> StudyResult:
    from tasks import tracking
    from tasks.downstream import sd_prompts
    from tasks.report.distillspec_study import best_draft, garden_row, log_study, study_table

    cfg = config or build_config(StudyConfig, PRESETS, preset, overrides)
    if not cfg.target or not cfg.draft:
        raise ValueError("set target and draft (models:/ URIs or save_pretrained folders)")
    with tracking.start_run(cfg.experiment, f"{cfg.preset}-study", params=cfg.model_dump(),
                            tags={"stage": "distillspec_study", "preset": cfg.preset},
                            parent_run_id=parent_run_id) as run_id:
        # 1. one distilled draft per (divergence, data source)
        drafts = {"undistilled": cfg.draft}
        for div in cfg.divergences:
            for name, mix in cfg.data_sources.items():
                d = cfg.distill.model_copy(update={"mode": "draft", "teacher": cfg.target, "student": cfg.draft,
                                                   "task": cfg.task, "divergence": div, "data_mix": mix})
                drafts[f"{div}-{name}"] = distill_mod.distill_flow(config=d, parent_run_id=run_id).model_uri
        # 2. SD benchmark of every draft against the same target, on held-out task prompts
        prompts = sd_prompts(cfg.task)
        refs = [DraftRef(label=k, model=v) for k, v in drafts.items()]
        sd_cfg = cfg.sd.model_copy(update={"target": cfg.target, "drafts": refs, "prompts_jsonl": prompts,
                                           "corpus_dir": None})
        bench = sd_mod.sd_benchmark(config=sd_cfg, parent_run_id=run_id)
        rows = bench.table.to_dict("records")
        table = study_table(rows, "undistilled")
        garden = None
        if cfg.teacher:  # 3. the model-garden row: teacher-only vs distilled target + distilled draft
            best = best_draft(table, "undistilled")
            t_cfg = sd_cfg.model_copy(update={"target": cfg.teacher, "drafts": [refs[0]], "hf_baselines": False,
                                              "modes": ["greedy"], "batch_sizes": []})
            teacher = sd_mod.sd_benchmark(config=t_cfg, parent_run_id=run_id)
            garden = garden_row(teacher.table.to_dict("records"), rows, best, teacher_outputs=teacher.outputs,
                                garden_outputs=bench.outputs)
        markdown = log_study(run_id, table, garden)
    return StudyResult(run_id=run_id, markdown=markdown, drafts=drafts)


if __name__ == "__main__":
    run_cli(lambda c: distillspec_study(config=c), StudyConfig, PRESETS,
            description="DistillSpec study: divergences x data sources for the draft, SD benchmark, model garden.")
