"""The GPU measurement scripts run with torch and transformers alone, as on the lent GPU machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.benchmarks.test_sd_scripts import table_rows

ROOT = Path(__file__).resolve().parents[2]
GUARD = [sys.executable, str(ROOT / "benchmarks" / "_without_services.py")]


def test_the_import_guard_makes_prefect_and_datasets_unimportable(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import torch, transformers\nfor name in ('prefect', 'datasets'):\n"
                     "    try:\n        __import__(name)\n    except ImportError:\n        print(name, 'missing')\n")
    run = subprocess.run([*GUARD, str(probe)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.split("\n")[:2] == ["prefect missing", "datasets missing"]


@pytest.mark.slow
def test_device_check_runs_every_gpu_benchmark_without_services_at_toy_sizes(tmp_path):
    bundle = tmp_path / "bundle"
    export = subprocess.run(
        [sys.executable, "benchmarks/pretrain_throughput.py", "--d-model", "32", "--d-ff", "64", "--layers", "1",
         "--heads", "4", "--batch", "2", "--inputs-length", "32", "--export-bundle", str(bundle)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert export.returncode == 0, export.stderr[-2000:]
    assert (bundle / "packed" / "train" / "rows.npy").exists() and (bundle / "config.json").exists()
    env = {**os.environ, "SMOKE": "1", "OUT": str(tmp_path / "out"), "PY": " ".join(GUARD)}
    run = subprocess.run(["bash", "benchmarks/device_check.sh", str(bundle)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    out = tmp_path / "out"
    assert "| torch " in (out / "env.md").read_text()
    assert "| bf16 matrix product 128^3 |" in (out / "ceilings.md").read_text()
    for loop in ("pretrain_eager", "pretrain_compiled"):
        text = (out / f"{loop}.md").read_text()
        assert "| ours, hybrid step |" in text and "verdict: hybrid/SC step time" in text
    for pair in ("sd_t5", "sd_causal"):  # the encoder-decoder and the decoder-only pair: same table, same verdicts
        lines = (out / f"{pair}.md").read_text().splitlines()
        rows = {line.split()[0]: line.split() for line in lines if line.startswith(("hf_", "engine_"))}
        assert {"hf_generate", "engine_target", "engine_sd", "hf_assisted"} <= set(rows)
        assert all(row[-1] == "True" for row in rows.values())  # every method's tokens equal target.generate's
        assert sum(line.startswith("verdict: our SD") for line in lines) == 2
    batched = table_rows((out / "sd_batched.md").read_text())
    assert [r[:2] for r in batched if r[0] == "2"] == [["2", "hf_generate"], ["2", "sd"], ["2", "sd_b1"]]
    assert all(r[-1] == "True" for r in batched)


def test_the_device_scripts_print_their_usage_with_help_and_touch_nothing(tmp_path):
    for script in ("device_check.sh", "device_prepare.sh"):
        run = subprocess.run(["bash", str(ROOT / "benchmarks" / script), "--help"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=30)
        assert run.returncode == 0 and "bench-bundles" in run.stdout and "set -" not in run.stdout, run.stderr
    assert list(tmp_path.iterdir()) == []  # no output folder, no bundle
