"""Past one machine: on a Ray cluster the pipeline trains its three pretraining runs side by side.

A real local Ray cluster (``ray start --head`` on 127.0.0.1, 3 CPUs) stands in for the cluster. The pipeline
runs as the command a user types, in its own process, with ``RAY_ADDRESS`` pointing at the cluster: each
pretraining run is its own Prefect task run (``side-by-side-<size>``) holding its subflow, and their Ray Train
fits overlap in time, each with the resources its config asks for. Without ``RAY_ADDRESS`` (a laptop) the
same pipeline trains them one after another (tests/flows/test_pipeline.py).
"""

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).parent / "ray"
FAST = ['stages=["corpus", "pretrain"]', "experiment=pipeline-cluster", "corpus.max_documents=300",
        "corpus.vocab_size=400", "corpus.name=cluster", "pretrain.total_steps=8", "pretrain.tau=4",
        "pretrain.eval_every=8", "pretrain.checkpoint_every=8", "pretrain.cosine_every=0", "pretrain.log_every=4",
        "pretrain.threads_per_worker=1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def ray_cluster():
    """A local Ray cluster with 3 CPUs on 127.0.0.1 (its address); stopped afterwards."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    start = subprocess.run([str(RAY), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                            "--num-cpus=3", "--include-dashboard=false", "--disable-usage-stats",
                            f"--temp-dir=/tmp/rc-{port}"], env=env, capture_output=True, text=True, timeout=180)
    assert start.returncode == 0, start.stdout + start.stderr
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(RAY), "stop", "--force"], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.serial  # its fixture ends with `ray stop --force`, which stops every Ray instance on the machine
def test_on_a_ray_cluster_the_three_pretraining_runs_train_side_by_side(ray_cluster, tmp_path):
    from mlflow import MlflowClient

    env = {**os.environ, "RAY_ADDRESS": ray_cluster, "SPACTOR_STAGE_DIR": str(tmp_path / "stages"),
           "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)  # the command's own temporary Prefect API
    cmd = [sys.executable, "-m", "flows.pipeline", "--preset", "tiny"]
    for item in FAST + [f"pretrain.output_root={tmp_path / 'runs'}"]:
        cmd += ["--set", item]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    # each pretraining run in its own task run, submitted together
    assert {m for m in re.findall(r"Task run '(side-by-side-(?:teacher|target|draft))-", log)} == {
        "side-by-side-teacher", "side-by-side-target", "side-by-side-draft"}
    client = MlflowClient()
    (parent,) = client.search_runs([client.get_experiment_by_name("pipeline-cluster").experiment_id],
                                   filter_string="tags.stage = 'pipeline'")
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}' and "
                                                "tags.stage = 'pretrain'")
    assert len(children) == 3 and all(r.info.status == "FINISHED" for r in children)
    # side by side: every run started before any of them ended
    assert max(r.info.start_time for r in children) < min(r.info.end_time for r in children), \
        [(r.info.run_name, r.info.start_time, r.info.end_time) for r in children]
