"""The pipeline's stage runner: run a stage, or reuse its earlier result, inside the parent MLflow run.

``flows/pipeline.py`` only wires the stages; this module does what each stage call means:

* the stage's key (:func:`tasks.runtime.stages.stage_key`: config, the content of the models it consumes, the code);
* reuse when :func:`tasks.runtime.stages.reusable` hands back the earlier outputs (a Prefect task run
  ``reuse-<stage>`` in state Cached names the earlier runs), else a Prefect task run ``stage-<stage>`` that
  holds the stage's subflows (the pipeline's Task Runs tab lists every stage), whose outputs are recorded;
* on the parent run: ``<stage>.skipped``, ``<stage>.reused_from`` (the MLflow runs a reused stage hands on)
  and ``wall_s.<stage>`` only for a stage that ran here (a reused stage's earlier time is not copied, so two
  runs compared side by side show what each one spent); at the end ``stages_run``, ``stages_skipped`` and
  ``wall_s.total``; a stage artifact in Prefect per stage.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from tasks.runtime import stages as stage_store
from tasks import tracking
from tasks.runtime.orchestration import earlier_runs, post_markdown, reuse_stage_task, stage_markdown


def _slug(name: str) -> str:
    return name.replace("_", "-")


def _run_stage(run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    t0 = time.perf_counter()
    out = run()
    out["wall_s"] = time.perf_counter() - t0
    return out


def run_stage_task():
    """A Prefect task that holds one running pipeline stage (its subflows run inside it)."""
    from prefect import task
    from prefect.cache_policies import NONE

    return task(_run_stage, name="stage", cache_policy=NONE, persist_result=False)


class StageRunner:
    """Runs the stages of one pipeline run (``wanted``: the config's stage list; ``forced``: the stages
    ``from_stage`` reruns whatever their records say). ``runner(name, config, inputs, run)`` returns the
    stage's outputs, or None when the stage is not wanted (then every later call gets None inputs and the
    flow passes None on)."""

    def __init__(self, run_id: str, wanted: list[str], forced: set[str], logger) -> None:
        self.run_id, self.wanted, self.forced, self.logger = run_id, list(wanted), set(forced), logger
        self.outputs: dict[str, dict[str, Any]] = {}
        self.skipped: list[str] = []

    def __call__(self, name: str, config: dict[str, Any], inputs: dict[str, Any] | None,
                 run: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        if name not in self.wanted or inputs is None:
            return None
        key = stage_store.stage_key(name, config, inputs)
        done, why = (None, "") if name in self.forced else stage_store.reusable(key)
        if why:
            self.logger.info("stage %s: completed earlier with the same config, inputs and code, but %s: running it "
                             "again", name, why)
        if done is not None:
            self.logger.info("stage %s: skipped, completed earlier with the same config, inputs and code (%s)",
                             name, key)
            self.skipped.append(name)
            out = reuse_stage_task().with_options(name=f"reuse-{_slug(name)}")(name, key, done, return_state=True).result()
            tracking.set_tags(self.run_id, {f"{name}.skipped": True,
                                            f"{name}.reused_from": ",".join(earlier_runs(out)) or "-"})
        else:
            self.logger.info("stage %s: running", name)
            out = run_stage_task().with_options(name=f"stage-{_slug(name)}")(run)
            stage_store.record(key, out)
            tracking.set_tags(self.run_id, {f"{name}.skipped": False})
            tracking.log_metrics(self.run_id, {f"wall_s.{name}": out["wall_s"]})
        self.outputs[name] = out
        post_markdown(f"stage-{_slug(name)}",
                      stage_markdown(name, out, skipped_key=key if done is not None else None,
                                     wall_s=out.get("wall_s"), mlflow_url=tracking.run_url(self.run_id)),
                      f"pipeline stage {name}" + (" (skipped, reused)" if done is not None else ""))
        return out

    def finish(self) -> None:
        """Log how many stages ran and were reused, and the wall time of those that ran."""
        ran = [n for n in self.outputs if n not in self.skipped]
        tracking.log_metrics(self.run_id, {"stages_skipped": len(self.skipped), "stages_run": len(ran),
                                           "wall_s.total": sum(self.outputs[n].get("wall_s") or 0.0 for n in ran)})


def report_verdict(run_id: str, *, preset: str, task_kind: str, stages: dict[str, dict[str, Any]],
                   not_run: list[str], logger) -> str:
    """Compare every number the stages that ran produced with what it must be compared with
    (:func:`tasks.report.verdict.pipeline_verdict`), saying first which stages did not run (``not_run``); log it, log ``summary.md`` and the verdict metrics (finite ones:
    a stage that did not run leaves no NaN behind) on the parent run, post it to Prefect; return the text."""
    from tasks.report.verdict import pipeline_verdict

    quality: dict[str, dict[str, float]] = dict((stages.get("finetune") or {}).get("metrics", {}))
    labels = {"teacher": "teacher (fine-tuned)", "draft_base": "draft-base (fine-tuned, undistilled)",
              "target": "target (distilled from the teacher)"}
    if (stages.get("distill_target") or {}).get("metrics"):
        quality["target"] = stages["distill_target"]["metrics"]
    if (stages.get("distill_draft") or {}).get("metrics"):
        quality["draft"] = stages["distill_draft"]["metrics"]
        labels["draft"] = f"draft ({stages['distill_draft']['alias']}, distilled from the target)"
    sd = stages.get("sd_benchmark") or {}
    text, metrics = pipeline_verdict(
        preset=preset, task_kind=task_kind, quality=quality, sd_rows=sd.get("rows") or [],
        distilled_draft=(stages.get("distill_draft") or {}).get("alias"), undistilled_draft="draft-base",
        garden=sd.get("garden"), pretrain=(stages.get("pretrain") or {}).get("summary"), labels=labels)
    return _publish_verdict(run_id, text, metrics, stages=stages, not_run=not_run, preset=preset, logger=logger)


def report_llm_verdict(run_id: str, *, preset: str, task_kind: str, stages: dict[str, dict[str, Any]],
                       not_run: list[str], logger) -> str:
    """:func:`report_verdict` for ``flows.llm_pipeline``: the LLM as imported, its distilled draft, the garden's
    target and draft against the task's baseline; SD with the LLM as the target; the garden against the LLM."""
    from tasks.report.verdict import pipeline_verdict

    sources = {"llm": ("import", "metrics", "the LLM (as imported)"),
               "draft": ("distill_draft", "metrics", "draft (distilled from the LLM)"),
               "garden_target": ("garden", "target_metrics", "garden target (distilled from the LLM)"),
               "garden_draft": ("garden", "draft_metrics", "garden draft (distilled from the garden target)")}
    quality, labels = {}, {}
    for role, (stage, key, label) in sources.items():
        if (stages.get(stage) or {}).get(key):
            quality[role], labels[role] = stages[stage][key], label
    sd = stages.get("sd_benchmark") or {}
    garden = [{**g, "teacher_label": "the LLM", "garden_draft": f"garden draft {g.get('garden_draft')}"}
              for g in sd.get("garden") or []]
    text, metrics = pipeline_verdict(
        preset=preset, task_kind=task_kind, quality=quality, sd_rows=sd.get("rows") or [],
        distilled_draft=(stages.get("distill_draft") or {}).get("alias"), undistilled_draft="draft-base",
        garden=garden, labels=labels, feature_draft="feature-draft" if stages.get("feature_draft") else None)
    return _publish_verdict(run_id, text, metrics, stages=stages, not_run=not_run, preset=preset, logger=logger)


def _publish_verdict(run_id: str, text: str, metrics: dict[str, float], *, stages: dict[str, Any], not_run: list[str],
                     preset: str, logger) -> str:
    """Say first which stages did not run; log the verdict, ``summary.md`` and its finite metrics on the parent
    run, post it to Prefect; return the text."""
    import math

    if not_run:  # a partial run (a `stages` prefix): say so first, then what the stages that ran show
        head, _, rest = text.partition("\n\n")
        text = (f"{head}\n\n**Partial run:** only {', '.join(stages) or 'no stage'} ran; not run: {', '.join(not_run)} "
                f"(the comparisons that need them are left out).\n\n{rest}")
    logger.info("verdict:\n%s", text)
    tracking.log_text(run_id, text, "summary.md")
    tracking.log_metrics(run_id, {k: v for k, v in metrics.items()
                                  if isinstance(v, (int, float)) and math.isfinite(v)})
    post_markdown("pipeline-verdict", text, f"verdict of pipeline run {run_id} ({preset} preset)")
    return text
