"""flows.compare: pipeline runs from MLflow -> one row per run (preset, durations, key stage metrics) + a plot.

The runs are written with tasks.tracking in the layout flows/pipeline.py writes: a parent run tagged
stage=pipeline with a ``<stage>.skipped`` tag per stage, and the stage runs nested under it, each in its
stage's experiment with a ``stage`` tag (pretraining has one run per model size).
"""

from __future__ import annotations

import math
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from flows.compare import main as compare_main
from tasks import tracking
from tasks.report import runs as compare

ROOT = Path(__file__).resolve().parents[2]


def _stage(experiment: str, stage: str, metrics: dict, parent: str, *, register_as: str | None = None) -> str:
    params = {"register_as": register_as} if register_as else None
    with tracking.start_run(experiment, stage, params=params, tags={"stage": stage, "preset": "tiny"},
                            parent_run_id=parent) as run_id:
        tracking.log_metrics(run_id, metrics)
    return run_id


def _pipeline(experiment: str, preset: str, *, corpus_cached: bool = False, loss: float = 5.0) -> str:
    """One pipeline run: corpus prep (or a cached corpus stage) and pretraining of two model sizes."""
    with tracking.start_run(experiment, f"pipeline-{preset}", tags={"stage": "pipeline", "preset": preset}) as run_id:
        if not corpus_cached:
            _stage("corpus-prep", "corpus_prep", {"tokens.train": 1000.0, "tokens_per_word": 1.25,
                                                  "build_seconds": 12.5, "rows.train": 7.0}, run_id)
        for size, delta in (("teacher", 0.0), ("draft", 1.0)):
            _stage("pretrain", "pretrain", {"final_val_sc_loss": loss + delta, "val_sc_loss": loss + delta + 0.5},
                   run_id, register_as=f"t5-tiny-{size}-pretrained")
        tracking.set_tags(run_id, {"corpus.skipped": corpus_cached, "pretrain.skipped": False})
        tracking.log_metrics(run_id, {"stages_run": 1 + (not corpus_cached), "stages_skipped": int(corpus_cached)})
    return run_id


@pytest.fixture(scope="module")
def runs():
    exp = f"pipeline-test-{uuid.uuid4().hex[:8]}"
    ids = [_pipeline(exp, "tiny", loss=5.0), _pipeline(exp, "tiny", corpus_cached=True, loss=4.0),
           _pipeline(exp, "small", loss=3.0)]
    with tracking.start_run(exp, "not-a-pipeline", tags={"stage": "other"}):
        pass
    return exp, [i[:8] for i in ids]


def test_table_has_one_row_per_pipeline_run_oldest_first_with_key_metrics_per_stage_and_size(runs):
    exp, ids = runs
    table = compare.compare(exp)
    assert table["run"].tolist() == ids  # the run without stage=pipeline is left out
    assert table["preset"].tolist() == ["tiny", "tiny", "small"]
    assert table["pretrain[teacher].final_val_sc_loss"].tolist() == [5.0, 4.0, 3.0]
    assert table["pretrain[draft].final_val_sc_loss"].tolist() == [6.0, 5.0, 4.0]
    assert table["corpus.tokens.train"].tolist()[0] == 1000.0
    assert not any(c.endswith(("rows.train", ".val_sc_loss")) for c in table.columns)  # only the key metrics
    assert (table["status"] == "FINISHED").all()


def test_cached_stages_count_zero_seconds_and_are_listed_as_skipped(runs):
    exp, _ = runs
    first, second, _ = compare.compare(exp).to_dict("records")
    assert second["skipped"] == "corpus" and second["corpus_s"] == 0.0
    assert math.isnan(second["corpus.tokens.train"])  # a cached stage has no run of its own in this pipeline run
    assert first["skipped"] == "-"
    # the corpus run is opened after the build, so its duration adds the logged build_seconds
    assert 12.5 <= first["corpus_s"] < 12.5 + 30
    assert 0 <= first["pretrain_s"] <= first["total_s"]


def test_preset_max_runs_and_metric_globs_select_runs_and_columns(runs):
    exp, ids = runs
    assert compare.compare(exp, preset="small")["run"].tolist() == [ids[2]]
    assert compare.compare(exp, max_runs=2)["run"].tolist() == ids[1:]  # the newest two
    wide = compare.compare(exp, extra=["pretrain?teacher?.val_*"])  # globs: ? and [[] match the brackets
    assert wide["pretrain[teacher].val_sc_loss"].tolist() == [5.5, 4.5, 3.5]
    assert "pretrain[draft].val_sc_loss" not in wide
    assert "corpus.rows.train" in compare.compare(exp, all_metrics=True)


def test_main_prints_the_table_and_writes_a_png_plot(runs, tmp_path, capsys):
    exp, ids = runs
    out = tmp_path / "cmp.png"
    assert compare_main(["--experiment", exp, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert ids[0] in printed and "pretrain[teacher].final_val_sc_loss" in printed
    assert f"comparison plot: {out.resolve()}" in printed
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    # the same table and plot are logged to MLflow, as a `compare` run beside the pipeline runs
    from mlflow import MlflowClient

    logged = printed.split("logged to MLflow run ")[1].split()[0]
    client = MlflowClient()
    assert {f.path for f in client.list_artifacts(logged)} >= {"comparison.csv", "comparison.md", "comparison.png"}
    assert client.get_run(logged).data.tags["stage"] == "compare"
    assert len(compare.pipeline_runs(exp)) == len(ids)  # the compare run is not counted as a pipeline run


def test_an_experiment_without_pipeline_runs_is_a_one_line_error(capsys):
    assert compare_main(["--experiment", f"empty-{uuid.uuid4().hex[:8]}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no pipeline runs in MLflow experiment") and "\n" not in err


def test_cli_help_lists_the_options():
    out = subprocess.run([sys.executable, "-m", "flows.compare", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0
    for opt in ("--experiment", "--max-runs", "--preset", "--metric", "--out"):
        assert opt in out.stdout
