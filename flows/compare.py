"""Compare pipeline runs from MLflow: a table of presets, key metrics and durations, and a comparison plot.

    python -m flows.compare                                  # the last 20 runs of experiment `pipeline`
    python -m flows.compare --preset tiny --max-runs 5 --out /tmp/cmp.png
    python -m flows.compare --metric 'pretrain*.val_*'       # add columns by glob on <stage>[<role>].<metric>

Reads whatever MLFLOW_TRACKING_URI points at (the local SQLite store by default, or the server that
``infra/services.sh up`` starts). A pipeline run is a parent run tagged ``stage=pipeline`` with a
``<stage>.skipped`` tag per stage; its stage runs are the runs nested under it (``mlflow.parentRunId``), in
the pipeline's own experiment (one run tree per pipeline run) or, for runs made before that, in the stages'
experiments. Not a Prefect flow: it only reads.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional


def main(argv: Optional[list[str]] = None) -> int:
    from tasks.report.runs import comparison_figure, compare, log_comparison
    from tasks.runtime.env import state_dir

    parser = argparse.ArgumentParser(prog="python -m flows.compare", description=__doc__.split("\n")[0],
                                     epilog="Reads MLFLOW_TRACKING_URI (default: the local SQLite store).")
    parser.add_argument("--experiment", default="pipeline", help="MLflow experiment of the pipeline runs")
    parser.add_argument("--max-runs", type=int, default=20, help="newest N runs (default 20)")
    parser.add_argument("--preset", default=None, help="only runs of this preset")
    parser.add_argument("--metric", action="append", default=[], metavar="GLOB",
                        help="also show metrics matching this glob on <stage>[<role>].<metric> (repeatable)")
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
    print(table.to_string(index=False))  # every column, never truncated
    out = Path(args.out) if args.out else state_dir() / "compare" / f"{args.experiment}-comparison.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig = comparison_figure(table)
    fig.savefig(out, dpi=110)
    print(f"comparison plot: {out.resolve()}")
    run_id = log_comparison(args.experiment, table, fig, compared=[str(r) for r in table.get("run", [])])
    print(f"logged to MLflow run {run_id} (experiment {args.experiment}): comparison.csv, comparison.md, comparison.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
