"""Comparison of pipeline runs read back from MLflow: one row per pipeline run (preset, key metrics per stage,
durations), a plot, and the ``compare`` run that logs them. ``python -m flows.compare`` is its command line.

A pipeline run is a parent run tagged ``stage=pipeline`` with a ``<stage>.skipped`` tag per stage; its stage runs
are the runs nested under it (``mlflow.parentRunId``), in the pipeline's own experiment (one run tree per
pipeline run) or, for runs made before that, in the stages' experiments.
"""

from __future__ import annotations

import fnmatch
from typing import Iterable, Optional

import pandas as pd

# Where older stage runs are looked for (the stage flows' default experiments), besides the pipeline's own.
STAGE_EXPERIMENTS = ("corpus-prep", "pretrain", "finetune", "evaluate", "distill", "sd-benchmark")
# The pipeline's stages in order; others follow alphabetically. A stage run's `stage` tag names its stage.
STAGE_ORDER = ("corpus", "pretrain", "finetune", "distill_target", "distill_draft", "sd_benchmark")
STAGE_TAG_ALIASES = {"corpus_prep": "corpus"}

# The key metrics per stage (globs on the metric name): the stable contract between the stages and this
# table. A stage not listed here is looked up by its first word (distill_target -> distill), then shows
# its final* and test.* metrics.
KEY_METRICS = {
    "pipeline": ["stages_run", "stages_skipped"],
    "corpus": ["tokens.train", "tokens_per_word"],
    "pretrain": ["final_val_sc_loss"],
    "finetune": ["test.accuracy", "test.macro_f1", "test.rougeL"],
    "evaluate": ["test.accuracy", "test.macro_f1", "test.rougeL"],
    "distill": ["final.val.accuracy", "final.val.rougeL", "final.greedy.*accept*"],
    "sd_benchmark": ["best_speedup", "best_speedup_gamma"],
}
DEFAULT_KEY_METRICS = ["final*", "test.*"]


def _seconds(start, end) -> float:
    if pd.isna(start) or pd.isna(end):
        return float("nan")
    return (end - start).total_seconds()


def _str(value) -> str:
    return value if isinstance(value, str) else ""


def pipeline_runs(experiment: str = "pipeline", max_runs: int = 20, preset: Optional[str] = None) -> pd.DataFrame:
    """The newest ``max_runs`` pipeline parent runs (one row each, straight from MLflow), oldest first."""
    from tasks import tracking

    query = "tags.stage = 'pipeline'" + (f" and tags.preset = '{preset}'" if preset else "")
    runs = tracking.search_runs(experiment, query, max_results=max_runs)
    if runs.empty:
        return runs
    return runs.sort_values("start_time").reset_index(drop=True)


def stage_runs(parents: pd.DataFrame, experiments: Iterable[str] = STAGE_EXPERIMENTS) -> pd.DataFrame:
    """Runs nested under the given pipeline runs, from the stage experiments, with ``stage`` and ``label``
    columns: the stage name, and ``stage[role]`` when a stage has several runs (pretrain: teacher, target,
    draft). The role is the run's ``role`` tag, else read from its registered-model name, else its run name."""
    from tasks import tracking

    since = int(parents["start_time"].min().timestamp() * 1000)
    frames = []
    for exp in dict.fromkeys(experiments):
        df = tracking.search_runs(exp, f"attributes.start_time >= {since}", max_results=50_000)
        if not df.empty and "tags.mlflow.parentRunId" in df:
            frames.append(df[df["tags.mlflow.parentRunId"].isin(set(parents["run_id"]))])
    if not frames:
        return pd.DataFrame(columns=["run_id", "parent", "stage", "label"])
    runs = pd.concat(frames, ignore_index=True).sort_values("start_time").reset_index(drop=True)
    runs["parent"] = runs["tags.mlflow.parentRunId"]
    tag = runs["tags.stage"] if "tags.stage" in runs else pd.Series([""] * len(runs))
    runs["stage"] = [STAGE_TAG_ALIASES.get(_str(t), _str(t)) or "unknown" for t in tag]
    runs["label"] = runs["stage"]
    for _, group in runs.groupby(["parent", "stage"]):
        if len(group) > 1:
            roles = [_role(row) for _, row in group.iterrows()]
            if len(set(roles)) < len(roles):
                roles = [f"{r}-{i}" for i, r in enumerate(roles)]
            runs.loc[group.index, "label"] = [f"{s}[{r}]" for s, r in zip(group["stage"], roles)]
    return runs


def _role(run: pd.Series) -> str:
    if _str(run.get("tags.role")):
        return run["tags.role"]
    name = _str(run.get("params.register_as"))
    if name:  # e.g. t5-tiny-teacher-pretrained, t5-tiny-bbc_topic-draft_base
        preset, task = _str(run.get("tags.preset")), _str(run.get("tags.task"))
        name = name.removeprefix(f"t5-{preset}-") if preset else name
        name = name.removeprefix(f"{task}-") if task else name
        return name.removesuffix("-pretrained")
    return _str(run.get("tags.mlflow.runName")) or run["run_id"][:8]


def _pick(row: pd.Series, patterns: list[str], labelled: list[str] = (), label: str = "") -> dict[str, float]:
    """Metrics of ``row`` whose name matches a glob of ``patterns``, or whose ``label.name`` matches one
    of ``labelled``."""
    out = {}
    for col in row.index:
        if col.startswith("metrics.") and pd.notna(row[col]):
            name = col[len("metrics."):]
            if (any(fnmatch.fnmatchcase(name, p) for p in patterns)
                    or any(fnmatch.fnmatchcase(f"{label}.{name}", p) for p in labelled)):
                out[name] = float(row[col])
    return out


def _key_patterns(stage: str) -> list[str]:
    return KEY_METRICS.get(stage) or KEY_METRICS.get(stage.split("_")[0]) or DEFAULT_KEY_METRICS


def _stage_order(stages: Iterable[str]) -> list[str]:
    known = [s for s in STAGE_ORDER if s in stages]
    return known + sorted(set(stages) - set(known))


def comparison_table(parents: pd.DataFrame, children: pd.DataFrame, *, extra: Iterable[str] = (),
                     all_metrics: bool = False) -> pd.DataFrame:
    """One row per pipeline run: preset, status, durations (total and per stage), key metrics.

    A stage's duration is the sum of the wall times of its runs under this pipeline run (plus their
    ``build_seconds`` metric: corpus prep opens its run after the build). A stage skipped as cached counts
    0 s, is listed under ``skipped`` and has no metrics in that row (its outputs came from an earlier run).
    """
    extra = list(extra)
    tagged = {c[len("tags."):-len(".skipped")] for c in parents.columns
              if c.startswith("tags.") and c.endswith(".skipped")}
    stages = _stage_order(tagged | set(children.get("stage", [])))
    rows = []
    for _, run in parents.iterrows():
        row = {"run": run["run_id"][:8], "started": run["start_time"].strftime("%Y-%m-%d %H:%M"),
               "preset": run.get("tags.preset", run.get("params.preset")), "status": run["status"],
               "total_s": round(_seconds(run["start_time"], run["end_time"]), 1)}
        mine = children[children["parent"] == run["run_id"]] if len(children) else children
        skipped, metrics = [], {}
        for name, value in _pick(run, ["*"] if all_metrics else KEY_METRICS["pipeline"], extra, "pipeline").items():
            metrics[f"pipeline.{name}"] = value
        for stage in stages:
            runs = mine[mine["stage"] == stage] if len(mine) else mine
            if str(run.get(f"tags.{stage}.skipped", "")).lower() == "true":
                skipped.append(stage)
                row[f"{stage}_s"] = 0.0
            elif len(runs):
                build = runs.get("metrics.build_seconds", pd.Series(0.0, index=runs.index)).fillna(0.0)
                wall = [_seconds(s, e) for s, e in zip(runs["start_time"], runs["end_time"])]
                row[f"{stage}_s"] = round(sum(wall) + float(build.sum()), 1)
            for _, srow in runs.iterrows():
                label = srow["label"]
                patterns = ["*"] if all_metrics else _key_patterns(stage)
                metrics.update({f"{label}.{n}": v for n, v in sorted(_pick(srow, patterns, extra, label).items())})
        row["skipped"] = ",".join(skipped) or "-"
        row.update(metrics)
        rows.append(row)
    return pd.DataFrame(rows)


def comparison_figure(table: pd.DataFrame):
    """Stage durations (stacked bars) and each key metric across runs, oldest run on the left."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r}\n{p}" for r, p in zip(table["run"], table["preset"])]
    x = list(range(len(table)))
    stage_cols = [c for c in table.columns if c.endswith("_s") and c != "total_s"]
    metric_cols = [c for c in table.columns if "." in c and not c.startswith("pipeline.")][:8]
    n = 1 + len(metric_cols)
    ncols = min(3, n)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.6 * nrows), squeeze=False)
    flat = axes.ravel()
    bottom = [0.0] * len(table)
    for col in stage_cols:
        vals = table[col].fillna(0.0).tolist()
        flat[0].bar(x, vals, bottom=bottom, label=col[:-2])
        bottom = [b + v for b, v in zip(bottom, vals)]
    flat[0].plot(x, table["total_s"], "k_", ms=18, mew=2, label="pipeline total")
    flat[0].set_title("duration (s); cached stages count 0")
    flat[0].legend(fontsize=7)
    for ax, col in zip(flat[1:], metric_cols):
        ax.plot(x, table[col], "-o", ms=4)
        ax.set_title(col, fontsize=9)
    for ax in flat[:n]:
        ax.set_xticks(x, labels, fontsize=7)
        ax.grid(alpha=0.3)
    for ax in flat[n:]:
        ax.set_visible(False)
    fig.suptitle("pipeline runs")
    fig.tight_layout()
    return fig


def compare(experiment: str = "pipeline", max_runs: int = 20, preset: Optional[str] = None,
            extra: Iterable[str] = (), all_metrics: bool = False) -> pd.DataFrame:
    """The comparison table of the newest pipeline runs; ValueError when there are none."""
    from tasks import tracking

    parents = pipeline_runs(experiment, max_runs, preset)
    if parents.empty:
        which = f" with preset '{preset}'" if preset else ""
        raise ValueError(f"no pipeline runs{which} in MLflow experiment '{experiment}' at {tracking.tracking_uri()}; "
                         "run `python -m flows.pipeline` first or pass --experiment")
    return comparison_table(parents, stage_runs(parents, (experiment, *STAGE_EXPERIMENTS)), extra=extra,
                            all_metrics=all_metrics)


def log_comparison(experiment: str, table: pd.DataFrame, fig, *, compared: list[str]) -> str:
    """Log the table (csv and markdown) and the plot as a ``compare`` run in the pipeline runs' experiment."""
    from tasks import tracking

    with tracking.start_run(experiment, "compare", tags={"stage": "compare", "compared_runs": ",".join(compared)[:4000]},
                            params={"runs_compared": len(table)}) as run_id:
        tracking.log_table(run_id, table, "comparison.csv")
        cells = [["" if pd.isna(v) else str(v) for v in row] for row in table.itertuples(index=False)]
        md = "\n".join(["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
                       + ["| " + " | ".join(row) + " |" for row in cells])
        tracking.log_text(run_id, md + "\n", "comparison.md")
        tracking.log_figure(run_id, fig, "comparison.png")
    return run_id
