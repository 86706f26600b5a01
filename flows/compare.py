"""Compare pipeline runs from MLflow: a table of presets, key metrics and durations, and a comparison plot.

    python -m flows.compare                                  # the last 20 runs of experiment `pipeline`
    python -m flows.compare --preset tiny --max-runs 5 --out /tmp/cmp.png
    python -m flows.compare --metric 'pretrain.val_*'        # add metrics by glob on <stage>.<metric>

Reads whatever MLFLOW_TRACKING_URI points at (the local SQLite store by default, or the server that
``infra/services.sh up`` starts). A pipeline run is a parent run tagged ``stage=pipeline``; it names the
MLflow run of each stage in its ``<stage>.run_id`` tags (for a stage skipped as cached, the earlier run
that produced its outputs), which is where the stage metrics are read from. Not a Prefect flow: it only reads.
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
from pathlib import Path
from typing import Iterable, Optional

import pandas as pd

# MLflow experiment of each pipeline stage (the stage flows' defaults); unknown stages are looked up in an
# experiment of their own name too. Run ids are unique across experiments, so searching a wrong one is harmless.
STAGE_EXPERIMENTS = {
    "corpus": "corpus-prep", "pretrain": "pretrain", "teacher": "pretrain", "target": "pretrain",
    "draft": "distill", "finetune": "finetune", "evaluate": "evaluate", "distill": "distill",
    "sd_benchmark": "sd-benchmark", "sd": "sd-benchmark", "active_learning": "thai-active-learning",
}

# The key metrics per stage (globs on the metric name). These names are the stable contract between the
# stages and this table; a stage not listed shows its final.* and test.* metrics.
KEY_METRICS = {
    "pipeline": ["stages_run", "stages_skipped"],
    "corpus": ["tokens.train", "tokens_per_word"],
    "pretrain": ["final_val_sc_loss", "final_cum_flops"],
    "finetune": ["test.accuracy", "test.macro_f1", "test.rougeL*"],
    "evaluate": ["test.accuracy", "test.macro_f1", "test.rougeL*"],
    "distill": ["final.*accept*", "final.*loss*"],
    "sd_benchmark": ["best_speedup", "best_speedup_gamma", "greedy.target_ms_per_token"],
}
DEFAULT_KEY_METRICS = ["final*", "test.*"]


def _seconds(start, end) -> float:
    if pd.isna(start) or pd.isna(end):
        return float("nan")
    return (end - start).total_seconds()


def pipeline_runs(experiment: str = "pipeline", max_runs: int = 20, preset: Optional[str] = None) -> pd.DataFrame:
    """The newest ``max_runs`` pipeline parent runs (one row each, straight from MLflow), oldest first."""
    from tasks import tracking

    query = "tags.stage = 'pipeline'" + (f" and tags.preset = '{preset}'" if preset else "")
    runs = tracking.search_runs(experiment, query, max_results=max_runs)
    if runs.empty:
        return runs
    return runs.sort_values("start_time").reset_index(drop=True)


def stage_names(runs: pd.DataFrame) -> list[str]:
    """Stages in the order the pipeline tagged them (``tags.<stage>.run_id``)."""
    return [c[len("tags."):-len(".run_id")] for c in runs.columns
            if c.startswith("tags.") and c.endswith(".run_id")]


def stage_runs(run_ids: Iterable[str], stages: Iterable[str]) -> dict[str, pd.Series]:
    """MLflow rows of the given stage runs, by run id, searched in the stages' experiments."""
    from tasks import tracking

    wanted = {r for r in run_ids if isinstance(r, str) and r}
    found: dict[str, pd.Series] = {}
    experiments: list[str] = []
    for s in stages:
        for e in (STAGE_EXPERIMENTS.get(s), s, s.replace("_", "-")):
            if e and e not in experiments:
                experiments.append(e)
    experiments += [e for e in dict.fromkeys(STAGE_EXPERIMENTS.values()) if e not in experiments]
    for exp in experiments:
        missing = sorted(wanted - found.keys())
        if not missing:
            break
        ids = ",".join(f"'{r}'" for r in missing)
        df = tracking.search_runs(exp, f"attributes.run_id IN ({ids})", max_results=len(missing))
        for _, row in df.iterrows():
            found[row["run_id"]] = row
    return found


def _pick(row: pd.Series, patterns: list[str]) -> dict[str, float]:
    names = [c[len("metrics."):] for c in row.index if c.startswith("metrics.") and pd.notna(row[c])]
    return {n: float(row[f"metrics.{n}"]) for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)}


def comparison_table(runs: pd.DataFrame, stages_by_id: dict[str, pd.Series], *,
                     extra: Iterable[str] = (), all_metrics: bool = False) -> pd.DataFrame:
    """One row per pipeline run: preset, status, durations (total and per stage), key metrics.

    A stage's duration is the parent's ``seconds.<stage>`` metric when the pipeline logs one, else the wall
    time of the stage's MLflow run plus its ``build_seconds`` metric (corpus prep opens its run after the
    build). A stage skipped as cached counts 0 s and is listed under ``skipped``.
    """
    extra = list(extra)
    stages = stage_names(runs)
    rows = []
    for _, run in runs.iterrows():
        row = {"run": run["run_id"][:8], "started": run["start_time"].strftime("%Y-%m-%d %H:%M"),
               "preset": run.get("tags.preset", run.get("params.preset")), "status": run["status"],
               "total_s": round(_seconds(run["start_time"], run["end_time"]), 1)}
        skipped = []
        metrics: dict[str, float] = {}
        for name, value in _pick(run, ["*"] if all_metrics else KEY_METRICS["pipeline"]).items():
            metrics[f"pipeline.{name}"] = value
        for stage in stages:
            rid = run.get(f"tags.{stage}.run_id")
            if not isinstance(rid, str) or not rid:
                continue
            was_skipped = str(run.get(f"tags.{stage}.skipped", "")).lower() == "true"
            srow = stages_by_id.get(rid)
            logged = run.get(f"metrics.seconds.{stage}")
            if was_skipped:
                skipped.append(stage)
                row[f"{stage}_s"] = 0.0
            elif pd.notna(logged):
                row[f"{stage}_s"] = round(float(logged), 1)
            elif srow is not None:
                build = srow.get("metrics.build_seconds")
                row[f"{stage}_s"] = round(_seconds(srow["start_time"], srow["end_time"])
                                          + (float(build) if pd.notna(build) else 0.0), 1)
            if srow is None:
                continue
            patterns = ["*"] if all_metrics else KEY_METRICS.get(stage, DEFAULT_KEY_METRICS)
            picked = _pick(srow, patterns)
            picked.update({n: v for n, v in _pick(srow, ["*"]).items()
                           if any(fnmatch.fnmatchcase(f"{stage}.{n}", p) for p in extra)})
            metrics.update({f"{stage}.{n}": v for n, v in sorted(picked.items())})
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
    metric_cols = [c for c in table.columns if "." in c][:8]
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

    runs = pipeline_runs(experiment, max_runs, preset)
    if runs.empty:
        which = f" with preset '{preset}'" if preset else ""
        raise ValueError(f"no pipeline runs{which} in MLflow experiment '{experiment}' at {tracking.tracking_uri()}; "
                         "run `python -m flows.pipeline` first or pass --experiment")
    stages = stage_names(runs)
    ids = [run.get(f"tags.{s}.run_id") for _, run in runs.iterrows() for s in stages]
    return comparison_table(runs, stage_runs(ids, stages), extra=extra, all_metrics=all_metrics)


def main(argv: Optional[list[str]] = None) -> int:
    from tasks.env import state_dir

    parser = argparse.ArgumentParser(prog="python -m flows.compare", description=__doc__.split("\n")[0],
                                     epilog="Reads MLFLOW_TRACKING_URI (default: the local SQLite store).")
    parser.add_argument("--experiment", default="pipeline", help="MLflow experiment of the pipeline runs")
    parser.add_argument("--max-runs", type=int, default=20, help="newest N runs (default 20)")
    parser.add_argument("--preset", default=None, help="only runs of this preset")
    parser.add_argument("--metric", action="append", default=[], metavar="GLOB",
                        help="also show <stage>.<metric> columns matching this glob (repeatable)")
    parser.add_argument("--all-metrics", action="store_true", help="show every metric of every stage")
    parser.add_argument("--out", default=None, help="plot path (default <state>/compare/<experiment>-comparison.png)")
    args = parser.parse_args(argv)
    if args.max_runs < 1:
        parser.error(f"--max-runs must be >= 1 (got {args.max_runs})")
    try:
        table = compare(args.experiment, args.max_runs, args.preset, args.metric, args.all_metrics)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with pd.option_context("display.max_columns", None, "display.width", 200):
        print(table.to_string(index=False))
    out = Path(args.out) if args.out else state_dir() / "compare" / f"{args.experiment}-comparison.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig = comparison_figure(table)
    fig.savefig(out, dpi=110)
    print(f"comparison plot: {out.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
