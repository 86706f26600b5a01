"""The DistillSpec study table: drafts (divergence x data source) against one target, plus the model garden.

Pure pandas over the SD benchmark's rows (``models.sd.bench.COLUMNS``); the flow logs the result.
"""

from __future__ import annotations

from typing import Any

from prefect import task

from tasks import tracking
from tasks.runtime.orchestration import retry_transient


def study_table(sd_rows, undistilled: str):
    """Per (mode, draft, gamma) at lenience 1: alpha, block efficiency, speedup over target-only decoding and
    over SD with the undistilled draft (ratio of ms/token at the same mode and gamma)."""
    import pandas as pd

    df = pd.DataFrame(sd_rows)
    sd = df[(df["method"] == "sd") & (df["lenience"] == 1.0)].copy()
    base = sd[sd["draft"] == undistilled].set_index(["mode", "gamma"])["ms_per_token"]
    sd["speedup_vs_undistilled_sd"] = [base.get((m, g), float("nan")) / ms
                                      for m, g, ms in zip(sd["mode"], sd["gamma"], sd["ms_per_token"])]
    cols = ["mode", "draft", "gamma", "alpha", "block_efficiency", "speedup", "speedup_vs_undistilled_sd",
            "ms_per_token", "rougeL"]
    return sd[cols].sort_values(["mode", "gamma", "draft"]).reset_index(drop=True)


def best_draft(table, undistilled: str) -> str:
    """The distilled draft with the lowest greedy latency in a :func:`study_table` (the garden row's draft)."""
    greedy = table[(table["mode"] == "greedy") & (table["draft"] != undistilled)]
    return greedy.sort_values("ms_per_token").iloc[0]["draft"]


def garden_row(teacher_rows, target_rows, best_draft: str, precision: str = "fp32", *,
               teacher_outputs: dict[str, list[str]] | None = None,
               garden_outputs: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Teacher-only latency/quality vs distilled target + distilled draft with SD (greedy, best gamma), both
    decoded with ``precision`` weights (rows without a precision column are fp32).

    With each benchmark's greedy outputs (``SDBenchmarkResult.outputs``: precision -> one text per prompt, the
    same prompts) the row also says how far the garden reproduces its teacher: ``agreement_rougeL`` (ROUGE-L of
    the garden target's greedy outputs, which its lossless SD returns, against the teacher's) and
    ``agreement_exact`` (the share of prompts with the very same output)."""
    import pandas as pd

    from models.sd.bench import rouge_l

    def at(df):
        p = df["precision"].fillna("fp32") if "precision" in df else pd.Series("fp32", index=df.index)
        return df[p == precision]

    t = at(pd.DataFrame(teacher_rows))
    s = at(pd.DataFrame(target_rows))
    teacher = t[(t["method"] == "target") & (t["mode"] == "greedy")].iloc[0]
    sd = s[(s["method"] == "sd") & (s["mode"] == "greedy") & (s["draft"] == best_draft)]
    best = sd.sort_values("ms_per_token").iloc[0]
    row = {"teacher_ms_per_token": float(teacher["ms_per_token"]), "teacher_rougeL": teacher["rougeL"],
           "garden_ms_per_token": float(best["ms_per_token"]), "garden_rougeL": best["rougeL"],
           "garden_gamma": int(best["gamma"]), "garden_draft": best_draft,
           "latency_reduction": float(teacher["ms_per_token"]) / float(best["ms_per_token"]), "precision": precision}
    ref, out = (teacher_outputs or {}).get(precision), (garden_outputs or {}).get(precision)
    if ref and out and len(ref) == len(out):
        row["agreement_rougeL"] = rouge_l(out, ref)
        row["agreement_exact"] = sum(a == b for a, b in zip(out, ref)) / len(ref)
    return row


def markdown(df) -> str:
    """A pipe table (pandas' to_markdown needs tabulate, which we do not install)."""
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def study_figure(table):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for draft, g in table[table["mode"] == "greedy"].groupby("draft"):
        axes[0].plot(g["gamma"], g["alpha"], "-o", label=draft, ms=3)
        axes[1].plot(g["gamma"], g["speedup"], "-o", label=draft, ms=3)
    axes[0].set_ylabel("acceptance rate alpha (greedy)")
    axes[1].set_ylabel("speedup over target-only decoding")
    for ax in axes:
        ax.set_xlabel("gamma")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("DistillSpec drafts against one target")
    fig.tight_layout()
    return fig


@task(name="log-study", retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=2)
def log_study(run_id: str, table, garden: dict[str, Any] | None) -> str:
    tracking.log_table(run_id, table, "study.csv")
    tracking.log_figure(run_id, study_figure(table), "study.png")
    md = markdown(table)
    if garden:
        tracking.log_dict(run_id, garden, "model_garden.json")
        tracking.log_metrics(run_id, {f"garden.{k}": v for k, v in garden.items() if isinstance(v, (int, float))})
        md += ("\n\nmodel garden: teacher-only {teacher_ms_per_token:.2f} ms/token (ROUGE-L {teacher_rougeL}) vs "
               "distilled target + {garden_draft} with SD (gamma {garden_gamma}) {garden_ms_per_token:.2f} ms/token "
               "(ROUGE-L {garden_rougeL}): teacher/garden latency ratio {latency_reduction:.2f}x").format(**garden)
    tracking.log_text(run_id, md, "study.md")
    return md
