"""The loop reports its metrics to the sink it is given (rank 0), and needs none."""

import pickle
import uuid
from pathlib import Path

import torch

from engine.train_loop import LoopSettings, run, settings_from


class _Toy:
    def __init__(self):
        torch.manual_seed(0)
        self.model = torch.nn.Linear(4, 1)

    def loss(self, model, step, micro, rank, world):
        loss = model(torch.ones(8, 4)).pow(2).mean()
        return loss, {"loss": loss.detach()}

    def tokens_per_micro(self):
        return 8

    def step_flops(self, step, world):
        return 1

    def evaluate(self, step):
        return {"val_loss": 1.0 / step}

    def periodic(self, step):
        return {}

    def save_final(self, out_dir: Path):
        torch.save(self.model.state_dict(), out_dir / "w.pt")


def test_the_loop_hands_training_and_validation_metrics_to_its_sink_with_their_steps(tmp_path):
    got = []
    settings = LoopSettings(total_steps=6, lr=1e-2, log_every=2, eval_every=3, checkpoint_dir=str(tmp_path),
                            in_ray=False, metrics_sink=lambda metrics, step: got.append((step, dict(metrics))))
    run(_Toy(), settings)
    assert [s for s, m in got if "loss" in m] == [2, 4, 6]
    assert [(s, m["val_loss"]) for s, m in got if "val_loss" in m] == [(3, 1 / 3), (6, 1 / 6)]
    assert all({"lr", "tokens_per_s", "cum_flops"} <= set(m) for s, m in got if "loss" in m)


def test_without_a_sink_the_loop_runs_and_keeps_its_curve_in_the_trainer_state(tmp_path):
    state = run(_Toy(), LoopSettings(total_steps=4, lr=1e-2, eval_every=2, checkpoint_dir=str(tmp_path), in_ray=False))
    assert [e["step"] for e in state["evals"]] == [2, 4]


def test_the_mlflow_sink_of_the_tasks_layer_travels_to_workers_inside_their_config():
    from tasks.tracking import MetricsSink

    sink = pickle.loads(pickle.dumps(MetricsSink("abc")))
    assert sink == MetricsSink("abc")
    assert settings_from({"total_steps": 3, "lr": 0.1, "metrics_sink": sink}).metrics_sink == sink


def test_the_mlflow_sink_never_blocks_a_training_step_when_mlflow_is_down_and_flushes_at_the_end(monkeypatch):
    import threading
    import time

    from tasks import tracking

    gate, logged = threading.Event(), []

    def slow_log(run_id, metrics, step=None):  # an MLflow outage: every call hangs until the gate opens
        gate.wait(30)
        logged.append((step, dict(metrics)))
        return True

    monkeypatch.setattr(tracking, "log_metrics", slow_log)
    sink = tracking.MetricsSink(f"run-x-{uuid.uuid4().hex}", max_pending=5, flush_s=10)
    t0 = time.perf_counter()
    for step in range(1, 21):
        sink({"loss": 1.0 / step}, step)
    assert time.perf_counter() - t0 < 1.0  # 20 calls while MLflow hangs: none waited for it
    assert sink.dropped >= 20 - 5 - 1  # the queue is bounded: the overflow goes to disk, not to memory
    gate.set()
    sink.close()
    import json

    kept = [json.loads(line) for line in sink.unlogged_path.read_text().splitlines()]
    assert logged and logged[0][0] == 1
    assert sorted([s for s, _ in logged] + [k["step"] for k in kept]) == list(range(1, 21))  # nothing lost


def test_batches_mlflow_refuses_are_kept_on_disk_with_their_steps(monkeypatch):
    import json

    from tasks import tracking

    monkeypatch.setattr(tracking, "log_metrics", lambda run_id, metrics, step=None: False)  # MLflow down
    sink = tracking.MetricsSink(f"run-down-{uuid.uuid4().hex}", flush_s=10)
    for step in (1, 2, 3):
        sink({"loss": float(step)}, step)
    sink.close()
    kept = [json.loads(line) for line in sink.unlogged_path.read_text().splitlines()]
    assert [(k["step"], k["metrics"]["loss"]) for k in kept] == [(1, 1.0), (2, 2.0), (3, 3.0)]


def test_batches_the_real_mlflow_store_takes_are_logged_once_and_not_kept_on_disk():
    from mlflow import MlflowClient

    from tasks import tracking

    with tracking.start_run("sink-test", "sink") as run_id:
        assert tracking.log_metrics(run_id, {"loss": 2.0}, step=1) is True
        sink = tracking.MetricsSink(run_id, flush_s=30)
        for step in (2, 3):
            sink({"loss": float(step)}, step)
        sink.close()
    history = MlflowClient().get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 2.0), (2, 2.0), (3, 3.0)]
    assert sink.kept == 0 and not sink.unlogged_path.exists()
