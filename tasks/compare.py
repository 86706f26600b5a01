"""Prefect task: compare the SC and SpacTor arms (validation SC loss vs steps and vs FLOPs) in MLflow."""

from __future__ import annotations

from typing import Any

from prefect import task

from models.curves import first_reach
from tasks import tracking


def comparison_numbers(sc: dict[str, Any], spactor: dict[str, Any]) -> dict[str, float]:
    sc_evals, sp_evals = sc["evals"], spactor["evals"]
    target = sc_evals[-1]["val_sc_loss"]
    steps = first_reach([e["step"] for e in sp_evals], [e["val_sc_loss"] for e in sp_evals], target)
    flops = first_reach([e["cum_flops"] for e in sp_evals], [e["val_sc_loss"] for e in sp_evals], target)
    out = {"sc_final_val_sc_loss": target, "spactor_final_val_sc_loss": sp_evals[-1]["val_sc_loss"],
           "sc_total_steps": sc_evals[-1]["step"], "sc_total_flops": sc_evals[-1]["cum_flops"]}
    if steps is not None:
        out.update(spactor_steps_to_sc_final=steps, spactor_flops_to_sc_final=flops,
                   steps_fraction=steps / sc_evals[-1]["step"], flops_fraction=flops / sc_evals[-1]["cum_flops"])
    return out


def comparison_figure(sc: dict[str, Any], spactor: dict[str, Any], tau: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for arm, res, style in (("SC", sc, "-o"), (f"SpacTor (tau={tau})", spactor, "-s")):
        ev = res["evals"]
        axes[0].plot([e["step"] for e in ev], [e["val_sc_loss"] for e in ev], style, label=arm, ms=3)
        axes[1].plot([e["cum_flops"] for e in ev], [e["val_sc_loss"] for e in ev], style, label=arm, ms=3)
    target = sc["evals"][-1]["val_sc_loss"]
    for ax, xl in zip(axes, ("training steps", "training FLOPs")):
        ax.axhline(target, color="grey", ls=":", lw=1, label="SC final")
        ax.set_xlabel(xl)
        ax.set_ylabel("validation SC loss")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].axvline(tau, color="tab:orange", ls="--", lw=1)
    fig.suptitle("SpacTor vs span corruption")
    fig.tight_layout()
    return fig


@task(name="compare-arms", retries=2, retry_delay_seconds=2)
def compare_arms(sc: dict[str, Any], spactor: dict[str, Any], tau: int, run_id: str) -> dict[str, float]:
    import pandas as pd

    numbers = comparison_numbers(sc, spactor)
    tracking.log_metrics(run_id, numbers)
    rows = [{"arm": a, **e} for a, r in (("sc", sc), ("spactor", spactor)) for e in r["evals"]]
    tracking.log_table(run_id, pd.DataFrame(rows), "comparison.csv")
    tracking.log_figure(run_id, comparison_figure(sc, spactor, tau), "comparison.png")
    return numbers


@task(name="log-task-scores", retries=2, retry_delay_seconds=2)
def log_task_scores(run_id: str, scores: dict[str, dict[str, dict[str, float]]]) -> None:
    """Downstream scores of both arms, side by side: ``<task>.<metric>.<arm>`` metrics and a table."""
    import pandas as pd

    rows = [{"task": t, "metric": m, "sc": v.get("sc"), "spactor": v.get("spactor")}
            for t, ms in scores.items() for m, v in ms.items()]
    if not rows:
        return
    tracking.log_metrics(run_id, {f"{r['task']}.{r['metric']}.{arm}": r[arm] for r in rows for arm in ("sc", "spactor")
                                  if r[arm] is not None})
    tracking.log_table(run_id, pd.DataFrame(rows), "task_scores.csv")
