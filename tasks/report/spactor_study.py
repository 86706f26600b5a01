"""Prefect task: compare the SC and SpacTor arms (validation SC loss vs steps and vs FLOPs) in MLflow."""

from __future__ import annotations

from typing import Any

from prefect import task

from models.curves import first_reach
from tasks import tracking
from tasks.runtime.orchestration import retry_transient


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


@task(name="compare-arms", retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=2)
def compare_arms(sc: dict[str, Any], spactor: dict[str, Any], tau: int, run_id: str) -> dict[str, float]:
    import pandas as pd

    numbers = comparison_numbers(sc, spactor)
    tracking.log_metrics(run_id, numbers)
    rows = [{"arm": a, **e} for a, r in (("sc", sc), ("spactor", spactor)) for e in r["evals"]]
    tracking.log_table(run_id, pd.DataFrame(rows), "comparison.csv")
    tracking.log_figure(run_id, comparison_figure(sc, spactor, tau), "comparison.png")
    return numbers


@task(name="log-task-scores", retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=2)
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


# --- the multi-seed study: SC against a tau sweep of SpacTor arms -----------------------------------------
#: SpacTor's claim (Ye et al. 2024): SC's quality at ~50% of the steps and ~60% of the FLOPs
PAPER_STEPS_FRACTION, PAPER_FLOPS_FRACTION = 0.5, 0.6


def mean_scores(per_arm: dict[str, dict[tuple[str, int], dict[str, float]]], task_names: list[str], seeds: list[int],
                main: str) -> dict[str, dict[str, dict[str, float]]]:
    """task -> metric -> {"sc": mean over seeds, "spactor": mean over seeds of the ``main`` arm (full budget)}, from
    ``per_arm``: task -> (arm label, seed) -> the fine-tuned model's test metrics (quality metrics only, no
    baselines)."""
    scores: dict[str, dict[str, dict[str, float]]] = {}
    for task_name in task_names:
        for arm, label in (("sc", "sc"), ("spactor", main)):
            vals: dict[str, list[float]] = {}
            for seed in seeds:
                for metric, value in per_arm.get(task_name, {}).get((label, seed), {}).items():
                    quality = metric.endswith(("rouge1", "rouge2", "rougeL", "accuracy", "macro_f1"))
                    if quality and ".baseline." not in metric:
                        vals.setdefault(metric, []).append(value)
            for metric, v in vals.items():
                scores.setdefault(task_name, {}).setdefault(metric, {})[arm] = sum(v) / len(v)
    return scores


def primary_metric(metrics: dict[str, float]) -> str | None:
    """The metric a downstream comparison reads: test accuracy (classification), exact match (normalization) or
    ROUGE-L (generation)."""
    from models.metrics import PRIMARY

    for name in (f"test.{PRIMARY[k]}" for k in ("classification", "normalization", "generation")):
        if name in metrics:
            return name
    return None


def study_numbers(runs: dict[tuple[str, int], dict[str, Any]], taus: list[int], main_tau: int,
                  fractions: list[float], scores: dict[tuple[str, int], dict[str, float]] | None = None,
                  total_steps: int | None = None) -> dict[str, Any]:
    """Per-seed and across-seed numbers of the study (pure; ``runs`` maps (arm, seed) to a pretrain result).

    Arms are ``sc``, ``tau<T>`` (one per swept tau, full budget) and ``tau<main>-x<f>`` (the main tau with a
    fraction ``f`` of the steps). ``scores`` maps (arm, seed) to the arm's fine-tuned test metrics.
    """
    from models.curves import first_fraction_reaching, spread

    seeds = sorted({s for _, s in runs})
    out: dict[str, Any] = {"seeds": seeds, "taus": {}, "sc": {}}
    out["sc"]["final_val_sc_loss"] = spread([runs[("sc", s)]["evals"][-1]["val_sc_loss"] for s in seeds])
    for tau in taus:
        per_seed = [comparison_numbers(runs[("sc", s)], runs[(f"tau{tau}", s)]) for s in seeds]
        reached = [n for n in per_seed if "steps_fraction" in n]
        out["taus"][tau] = {
            "final_val_sc_loss": spread([n["spactor_final_val_sc_loss"] for n in per_seed]),
            "reached": len(reached), "seeds": len(per_seed),
            "steps_fraction": spread([n["steps_fraction"] for n in reached]),
            "flops_fraction": spread([n["flops_fraction"] for n in reached]),
            "hybrid_to_the_end": total_steps is not None and tau == total_steps,
        }
    if scores:
        down: dict[str, Any] = {"per_seed": []}
        for s in seeds:
            sc_m = scores.get(("sc", s), {})
            metric = primary_metric(sc_m)
            if metric is None:
                continue
            sc_flops = runs[("sc", s)]["cum_flops"]
            cands = [(1.0, runs[(f"tau{main_tau}", s)]["cum_flops"] / sc_flops, scores[(f"tau{main_tau}", s)][metric])]
            cands += [(f, runs[(f"tau{main_tau}-x{f:g}", s)]["cum_flops"] / sc_flops,
                       scores[(f"tau{main_tau}-x{f:g}", s)][metric]) for f in fractions]
            hit = first_fraction_reaching(cands, sc_m[metric])
            down["per_seed"].append({"seed": s, "metric": metric, "sc": sc_m[metric],
                                     "spactor": {f"{f:g}": v for f, _, v in cands},
                                     "steps_fraction": hit[0] if hit else None, "flops_fraction": hit[1] if hit else None})
        hits = [d for d in down["per_seed"] if d["steps_fraction"] is not None]
        down.update(reached=len(hits), seeds=len(down["per_seed"]),
                    steps_fraction=spread([d["steps_fraction"] for d in hits]),
                    flops_fraction=spread([d["flops_fraction"] for d in hits]))
        out["downstream"] = down
    return out


def _pm(s: dict[str, float], fmt: str = ".0%") -> str:
    if not s.get("n"):
        return "n/a"
    return f"{format(s['mean'], fmt)} ± {format(s['std'], fmt)}" if s["n"] > 1 else format(s["mean"], fmt)


def study_verdict(numbers: dict[str, Any], main_tau: int) -> str:
    """The claim in its own terms, per tau and downstream, with the spread across seeds; 'holds' or not."""
    n_seeds = len(numbers["seeds"])
    lines = [f"## SpacTor vs SC ({n_seeds} seed{'s' if n_seeds > 1 else ''})", "",
             f"SC final validation SC loss: {_pm(numbers['sc']['final_val_sc_loss'], '.4f')}.", "",
             "| tau | final val SC loss | reached SC's final loss | at fraction of steps | of FLOPs |",
             "|---:|---:|---:|---:|---:|"]
    for tau, t in numbers["taus"].items():
        label = f"{tau} (hybrid to the end)" if t["hybrid_to_the_end"] else f"{tau}"
        lines.append(f"| {label} | {_pm(t['final_val_sc_loss'], '.4f')} | {t['reached']}/{t['seeds']} seeds | "
                     f"{_pm(t['steps_fraction'])} | {_pm(t['flops_fraction'])} |")
    m = numbers["taus"].get(main_tau)
    if m is not None:
        if m["reached"] == m["seeds"] and m["steps_fraction"]["mean"] <= PAPER_STEPS_FRACTION + 1e-9 \
                and m["flops_fraction"]["mean"] <= PAPER_FLOPS_FRACTION + 1e-9:
            verdict = "**holds at this scale**"
        elif m["reached"]:
            verdict = (f"**does not hold at this scale**: SpacTor reaches SC's final loss in {m['reached']}/{m['seeds']} "
                       f"seeds, at {_pm(m['steps_fraction'])} of the steps and {_pm(m['flops_fraction'])} of the FLOPs")
        else:
            verdict = "**does not hold at this scale**: SpacTor never reaches SC's final validation loss"
        lines += ["", f"Claim (validation loss, tau = {main_tau}; paper: ~{PAPER_STEPS_FRACTION:.0%} of the steps, "
                      f"~{PAPER_FLOPS_FRACTION:.0%} of the FLOPs): {verdict}."]
    ends = [t for t in numbers["taus"].values() if t["hybrid_to_the_end"]]
    switching = [(tau, t) for tau, t in numbers["taus"].items() if not t["hybrid_to_the_end"]]
    if ends and switching:
        best_tau, best = min(switching, key=lambda x: x[1]["final_val_sc_loss"]["mean"])
        worse = ends[0]["final_val_sc_loss"]["mean"] > best["final_val_sc_loss"]["mean"]
        lines.append(f"Hybrid to the end vs switching at tau = {best_tau}: final loss "
                     f"{_pm(ends[0]['final_val_sc_loss'], '.4f')} vs {_pm(best['final_val_sc_loss'], '.4f')}: "
                     f"{'worse, as the paper reports' if worse else '**not worse** (the paper reports worse)'}.")
    d = numbers.get("downstream")
    if d and d["seeds"]:
        metric = d["per_seed"][0]["metric"]
        lines += ["", f"Downstream ({metric}, fine-tuned): " + "; ".join(
            f"seed {p['seed']}: SC {p['sc']:.3f}, SpacTor by budget " +
            ", ".join(f"{k}: {v:.3f}" for k, v in sorted(p["spactor"].items(), key=lambda kv: float(kv[0])))
            for p in d["per_seed"])]
        if d["reached"]:
            lines.append(f"SpacTor first reaches SC's score at {_pm(d['steps_fraction'])} of the steps and "
                         f"{_pm(d['flops_fraction'])} of the FLOPs ({d['reached']}/{d['seeds']} seeds).")
        else:
            lines.append("SpacTor does not reach SC's downstream score at any budget tried: **does not hold at this scale**.")
    return "\n".join(lines) + "\n"


def study_figure(runs: dict[tuple[str, int], dict[str, Any]], arms: list[str], total_steps: int):
    """Validation SC loss against steps and against FLOPs, mean over seeds with a min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    seeds = sorted({s for _, s in runs})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for arm in arms:
        curves = [runs[(arm, s)]["evals"] for s in seeds]
        n = min(len(c) for c in curves)
        steps = np.array([e["step"] for e in curves[0][:n]], dtype=float)
        flops = np.array([[e["cum_flops"] for e in c[:n]] for c in curves], dtype=float).mean(0)
        loss = np.array([[e["val_sc_loss"] for e in c[:n]] for c in curves], dtype=float)
        label = "SC" if arm == "sc" else f"SpacTor {arm}"
        for ax, x in zip(axes, (steps, flops)):
            (line,) = ax.plot(x, loss.mean(0), "-o", ms=3, label=label)
            ax.fill_between(x, loss.min(0), loss.max(0), color=line.get_color(), alpha=0.15)
    target = float(np.mean([runs[("sc", s)]["evals"][-1]["val_sc_loss"] for s in seeds]))
    for ax, xl in zip(axes, ("training steps", "training FLOPs")):
        ax.axhline(target, color="grey", ls=":", lw=1, label="SC final (mean)")
        ax.set_xlabel(xl)
        ax.set_ylabel("validation SC loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"SpacTor vs span corruption: mean over {len(seeds)} seed(s), band = min-max")
    fig.tight_layout()
    return fig


@task(name="log-spactor-study", retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=2)
def log_study(run_id: str, runs: dict[tuple[str, int], dict[str, Any]], arms: list[str], numbers: dict[str, Any],
              verdict: str, total_steps: int) -> None:
    import pandas as pd

    rows = [{"arm": a, "seed": s, **e} for (a, s), r in runs.items() for e in r["evals"]]
    tracking.log_table(run_id, pd.DataFrame(rows), "comparison.csv")
    tracking.log_figure(run_id, study_figure(runs, arms, total_steps), "comparison.png")
    tracking.log_dict(run_id, numbers, "study.json")
    tracking.log_text(run_id, verdict, "summary.md")
    flat = {}
    for tau, t in numbers["taus"].items():
        for k in ("steps_fraction", "flops_fraction", "final_val_sc_loss"):
            for stat in ("mean", "std"):
                if stat in t[k]:
                    flat[f"tau{tau}.{k}.{stat}"] = t[k][stat]
        flat[f"tau{tau}.seeds_reached"] = t["reached"]
    d = numbers.get("downstream")
    if d:
        for k in ("steps_fraction", "flops_fraction"):
            if "mean" in d[k]:
                flat[f"downstream.{k}.mean"] = d[k]["mean"]
        flat["downstream.seeds_reached"] = d["reached"]
    tracking.log_metrics(run_id, flat)
