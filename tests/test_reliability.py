"""Fault injection and bad input (run by `make test-reliability`; also part of `make test`)."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from flows._cli import ConfigError, build_config

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.reliability


def test_unreachable_mlflow_server_fails_within_seconds_naming_the_uri():
    env = {**os.environ, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "flows.corpus_prep", "--preset", "tiny"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and time.time() - t0 < 60
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "http://127.0.0.1:9 is unreachable" in lines[0]


def test_metric_logging_retries_and_reports_what_it_could_not_log(monkeypatch, caplog):
    from tasks import tracking

    calls = []

    class Down:
        def log_batch(self, *a, **k):
            calls.append(1)
            raise ConnectionError("server went away")

    monkeypatch.setattr(tracking, "MlflowClient", lambda: Down())
    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)
    with caplog.at_level("WARNING"):
        assert tracking.log_metrics("some-run", {"loss": 1.0}, step=7) is False
    assert len(calls) == 3 and "could not log metrics at step 7" in caplog.text


def _pretrain_cmd(corpus, out, steps=40):
    return [sys.executable, "-m", "flows.pretrain", "--preset", "tiny", "--set", f"corpus_dir={corpus}",
            "--set", f"output_root={out}", "--set", f"total_steps={steps}", "--set", "tau=20", "--set", "batch_size=4",
            "--set", "checkpoint_every=50", "--set", "eval_every=100", "--set", "threads_per_worker=1",
            "--set", "inputs_length=64", "--set", "register_as=t5-killtest", "--set", "log_every=10"]


def test_pipeline_process_killed_mid_training_resumes_from_its_checkpoint(tiny_corpus, tmp_path):
    from mlflow import MlflowClient

    from tests.conftest import kill_when

    out = tmp_path / "runs"
    family = kill_when(_pretrain_cmd(tiny_corpus, out, steps=150), lambda: bool(list(out.rglob("step-*/checksums.json"))),
                       tmp_path / "first.log", cwd=ROOT)
    assert family, "the first run ended before it could be killed: " + (tmp_path / "first.log").read_text()[-2000:]
    ckpts = sorted(out.rglob("step-*/checksums.json"))
    assert ckpts and not list(out.rglob("final/trainer_state.json"))
    killed_at = int(ckpts[-1].parent.name.split("-")[1])
    assert killed_at < 150
    done = subprocess.run(_pretrain_cmd(tiny_corpus, out, steps=150), cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    state = json.loads(next(out.rglob("final/trainer_state.json")).read_text())
    assert state["step"] == 150
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("pretrain").experiment_id],
                              filter_string="params.register_as = 't5-killtest'")
    by_status = {r.info.status: r for r in runs}
    assert set(by_status) == {"KILLED", "FINISHED"}
    resumed = by_status["FINISHED"]
    assert resumed.data.tags["resumed_from"] == by_status["KILLED"].info.run_id
    logged = [m.step for m in client.get_metric_history(resumed.info.run_id, "sc_loss")]
    assert logged and min(logged) > killed_at  # it resumed from the checkpoint instead of starting over


def test_two_runs_with_different_configs_at_once_use_separate_folders(tmp_path, text_files):
    procs = [subprocess.Popen([sys.executable, "-m", "flows.corpus_prep", "--preset", "tiny", "--set", "source=files",
                               "--set", f'paths=["{text_files}/*.txt"]', "--set", f"vocab_size={v}",
                               "--set", f"output_root={tmp_path / 'out'}", "--set", "num_proc=1"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for v in (300, 400)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-500:] for o in outs]
    folders = sorted(d for d in (tmp_path / "out").iterdir())
    assert len(folders) == 2 and all((d / "_COMPLETE").exists() for d in folders)
    vocab = sorted(json.loads((d / "stats.json").read_text())["vocab_size"] for d in folders)
    assert vocab == [400, 500]


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet=st.characters(categories=["Ll"]), min_size=3, max_size=12))
def test_unknown_config_keys_are_refused_by_name(key):
    from engine.config.pretrain import PRESETS, PretrainConfig

    if key in PretrainConfig.model_fields:
        return
    with pytest.raises(ConfigError, match=f"unknown config key '{key}'"):
        build_config(PretrainConfig, PRESETS, "tiny", [f"{key}=1"])


@pytest.mark.parametrize("flow, override, field", [
    ("pretrain", "tau=-1", "tau"),
    ("pretrain", "noise_density=0", "noise_density"),
    ("pretrain", "noise_density=1.5", "noise_density"),
    ("pretrain", "total_steps=abc", "total_steps"),
    ("pretrain", "tau=100000", "tau"),
    ("pretrain", "model.d_model=-3", "model.d_model"),
    ("sd_benchmark", "gammas=[0]", "gammas"),
    ("sd_benchmark", "lenience=[1.5]", "lenience"),
    ("sd_benchmark", "lenience=[0]", "lenience"),
    ("distill", "divergence=kl", "divergence"),
    ("corpus_prep", "vocab_size=10", "vocab_size"),
    ("finetune", "lr=Infinity", "lr"),
    ("distill", "temperature=NaN", "temperature"),
    ("distill", "lr=-Infinity", "lr"),
    ("pretrain", "spactor.disc_weight=Infinity", "spactor.disc_weight"),
    ("sd_benchmark", "temperature=Infinity", "temperature"),
    ("pipeline", 'stages=["pretrain"]', "stages"),
    ("pipeline", 'stages=["corpus", "finetune"]', "stages"),
    ("pipeline", "stages=[]", "stages"),
    ("pipeline", "pretrain.lr=NaN", "pretrain.lr"),
    ("pretrain", "inputs_length=1810", "inputs_length"),
])
def test_out_of_range_or_mistyped_values_are_refused_naming_the_field(flow, override, field):
    import importlib

    mod = importlib.import_module(f"engine.config.{flow}")
    config_cls = next(v for k, v in vars(mod).items() if k.endswith("Config") and isinstance(v, type)
                      and v.__module__ == mod.__name__)
    with pytest.raises(ConfigError) as err:
        build_config(config_cls, mod.PRESETS, "tiny", [override])
    msg = str(err.value)
    assert f"'{field}" in msg or (field in ("tau", "inputs_length") and f"{field}=" in msg), msg
    assert "\n" not in msg


@given(st.floats(allow_nan=True, allow_infinity=True))
@settings(max_examples=60, deadline=None)
def test_noise_density_outside_the_open_unit_interval_is_always_refused(x):
    from engine.config.pretrain import PRESETS, PretrainConfig

    if 0 < x < 1:
        return
    with pytest.raises(ConfigError, match="noise_density"):
        build_config(PretrainConfig, PRESETS, "tiny", {"noise_density": x})


def test_malformed_corpora_are_counted_or_refused_and_never_leave_partial_output(prefect_harness, tmp_path,
                                                                                 text_files):
    import shutil

    from engine.config.corpus_prep import CorpusPrepConfig
    from flows.corpus_prep import corpus_prep

    src = tmp_path / "src"
    src.mkdir()
    (src / "empty.txt").write_text("")
    (src / "blank.txt").write_text("   \n\t\n  ")
    (src / "binary.txt").write_bytes(bytes(range(256)) * 40)
    (src / "latin1.txt").write_bytes("Ceci est un caf\xe9 tr\xe8s fran\xe7ais. ".encode("latin-1") * 20)
    words = "parliament debated the budget and the minister answered questions about schools ".split()
    (src / "huge.txt").write_text(" ".join(words[i % len(words)] for i in range(1_300_000)))  # one ~10 MB line
    for f in text_files.glob("*.txt"):
        shutil.copy(f, src / f.name)
    res = corpus_prep(config=CorpusPrepConfig(name="bad", source="files", paths=[str(src / "*.txt")], vocab_size=300,
                                              pack_length=64, num_proc=1, output_root=str(tmp_path / "out"),
                                              validation_fraction=0.1, test_fraction=0.1))
    stats = json.loads(Path(res.corpus_dir, "stats.json").read_text())
    assert stats["drops"] == {"empty": 2, "binary": 1, "undecodable": 1, "duplicate": 1}  # two pydoc topics share a body
    assert stats["documents_kept"] == 60 and sum(stats["characters"].values()) > 9_000_000
    assert [p.name for p in (tmp_path / "out").iterdir()] == [Path(res.corpus_dir).name]


def _sleepy_worker(cfg):
    import time as _t

    _t.sleep(cfg["seconds"])


def _ray_listening_sockets():
    import psutil

    out = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "ray" not in cmd:
            continue
        try:
            conns = proc.net_connections(kind="inet")
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
        out += [(c.laddr.ip, c.laddr.port, cmd[:60]) for c in conns if c.status == psutil.CONN_LISTEN]
    return out


def _all_reducing_worker(cfg):
    import time as _t

    import torch
    import torch.distributed as dist

    if cfg["workers"] > 1:
        total = torch.ones(1)
        dist.all_reduce(total)  # the DDP process group works: gloo over loopback
        assert int(total) == cfg["workers"]
    _t.sleep(cfg["seconds"])


@pytest.mark.reliability
@pytest.mark.parametrize("workers", [2])  # 2 covers 1: local Ray's own sockets plus gloo and the rendezvous store
def test_local_ray_and_its_training_workers_listen_only_on_loopback(tmp_path, workers):
    import ipaddress
    import threading

    from tasks.runtime.ray_train import ensure_ray, fit

    def loopback(ip: str) -> bool:
        a = ipaddress.ip_address(ip)
        return a.is_loopback or bool(getattr(a, "ipv4_mapped", None) and a.ipv4_mapped.is_loopback)

    ensure_ray()
    seen, errors = set(_ray_listening_sockets()), []

    def train():
        try:
            fit(_all_reducing_worker, {"seconds": 6, "workers": workers}, name=f"socket-check-{workers}",
                storage_path=tmp_path, num_workers=workers, max_failures=0)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    t = threading.Thread(target=train)
    t.start()
    while t.is_alive():
        seen |= set(_ray_listening_sockets())
        time.sleep(0.3)
    assert errors == []
    assert sum("RayTrainWorker" in cmd for _, _, cmd in {(0, 0, c) for _, _, c in seen}) >= 1, "no training worker"
    assert [x for x in seen if not loopback(x[0])] == []  # gloo, the TCPStore and Ray: 127.0.0.1 only


def test_local_ray_workers_and_detached_actors_do_not_log_the_dashboardless_state_api_warning():
    import logging

    import ray

    from tasks.runtime.ray_train import QUIETED_LOGGERS, ensure_ray

    ensure_ray()

    @ray.remote(num_cpus=0)
    class Probe:  # Ray Train's placement-group cleaner is a detached actor like this one
        def levels(self):
            return [logging.getLogger(name).getEffectiveLevel() for name in QUIETED_LOGGERS]

    probe = Probe.options(lifetime="detached").remote()
    try:
        assert ray.get(probe.levels.remote(), timeout=120) == [logging.ERROR] * len(QUIETED_LOGGERS)
    finally:
        ray.kill(probe)


@pytest.mark.reliability
@pytest.mark.parametrize("args, says", [
    (["flows.finetune", "--set", "model=models:/nope/1"], "is not in the model registry"),
    (["flows.finetune", "--set", "model=models:/nope"], "names no version"),
    (["flows.finetune", "--set", "model={tmp}"], "is a folder but not a model"),
    (["flows.corpus_prep", "--set", "source=files", "--set", 'paths=["/nonexistent/*.txt"]'], "no files match"),
    (["flows.pretrain", "--set", "corpus_dir={tmp}"], "is not a prepared corpus"),
    (["flows.import_model", "--set", "ref=hf:HuggingFaceTB/SmolLM2-135M"], "the hub is off"),
    (["flows.import_model", "--set", "ref=gguf:/nonexistent/model.gguf"], "no GGUF file at"),
])
def test_bad_input_inside_a_flow_gives_one_error_line_no_traceback_and_no_retry(tmp_path, args, says):
    env = {**os.environ, "SPACTOR_STATE_DIR": str(tmp_path / "state")}
    env.pop("SPACTOR_TRACEBACKS", None)
    cmd = [sys.executable, "-m", *[a.replace("{tmp}", str(tmp_path)) for a in args]]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    errors = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and says in errors[0], p.stderr[-2000:]
    assert "Traceback" not in p.stderr and "Retrying" not in p.stderr, p.stderr[-2000:]
    assert len(p.stderr.splitlines()) == 1, p.stderr  # the run's log lines go to stdout
    assert "Traceback" in (tmp_path / "state" / "logs" / "last-error.txt").read_text()  # kept for whoever needs it


def _counting_worker(cfg):
    from pathlib import Path as _P

    attempts = _P(cfg["dir"]) / "attempts"
    attempts.write_text(str(int(attempts.read_text()) + 1 if attempts.exists() else 1))
    if cfg["error"] == "value":
        raise ValueError("tokenizer at /x lacks T5 sentinels")
    if cfg["error"] == "nan":
        from engine.train_loop import NonFiniteTrainingError

        raise NonFiniteTrainingError("training stopped at step 3: loss nan")
    raise OSError("connection reset by peer")  # infrastructure: Ray may retry


@pytest.mark.reliability
@pytest.mark.parametrize("error, exc, attempts", [("value", ValueError, 1), ("nan", "NonFiniteTrainingError", 1),
                                                  ("os", Exception, 3)])
def test_ray_retries_infrastructure_failures_but_never_a_deterministic_error(tmp_path, error, exc, attempts):
    from engine.train_loop import NonFiniteTrainingError
    from tasks.runtime.ray_train import fit

    exc = NonFiniteTrainingError if exc == "NonFiniteTrainingError" else exc
    with pytest.raises(exc) as info:
        fit(_counting_worker, {"dir": str(tmp_path), "error": error}, name=f"retry-{error}",
            storage_path=tmp_path / "ray", num_workers=1, max_failures=2)
    assert int((tmp_path / "attempts").read_text()) == attempts
    if attempts == 1:  # the worker's message reaches the driver as the same error class, in one line
        assert "\n" not in str(info.value) and ("sentinels" in str(info.value) or "loss nan" in str(info.value))


_REGISTER = r'''
import os, sys
from pathlib import Path
from tasks.runtime.env import apply_embedded_defaults
apply_embedded_defaults()
from tasks import tracking

folder = Path(sys.argv[1])
with tracking.start_run("kill-register", "register") as run_id:
    for i in range(1000):
        print(tracking.register_model(run_id, folder, "kill-register-test", artifact_path=f"model-{os.getpid()}-{i}"),
              flush=True)
'''


def test_sigkill_during_model_registration_never_leaves_a_version_pointing_at_incomplete_files(tmp_path):
    """Writers registering a 12 MB model folder are killed at random moments (seeded): every version in the
    registry resolves and matches its sha256 tag, so a rerun's registration starts from a consistent registry."""
    import random

    from mlflow import MlflowClient

    from tasks import tracking

    folder = tmp_path / "model"
    folder.mkdir()
    rng = random.Random(7)
    for i in range(6):
        (folder / f"shard-{i}.bin").write_bytes(rng.randbytes(2 << 20))
    (tmp_path / "register.py").write_text(_REGISTER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, str(tmp_path / "register.py"), str(folder)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline().startswith("models:/"), proc.stderr.read()
        time.sleep(rng.uniform(0.0, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    versions = MlflowClient().search_model_versions("name = 'kill-register-test'")
    assert len(versions) >= 3
    for v in versions:  # resolve_model downloads each version and checks its sha256 tag
        got = tracking.resolve_model(f"models:/kill-register-test/{v.version}", dst_root=tmp_path / "cache")
        assert sorted(p.name for p in got.iterdir() if p.name != ".complete") == sorted(p.name for p in folder.iterdir())


def _newer_store(path: Path, table_sql: str, revision: str) -> str:
    import sqlite3

    con = sqlite3.connect(path)
    con.execute(table_sql)
    con.execute("insert into alembic_version values (?)", (revision,))
    con.commit()
    con.close()
    return str(path)


@pytest.mark.parametrize("var, value, says", [
    ("SPACTOR_STATE_DIR", "{file}/state", "is a file, not a folder"),
    ("SPACTOR_STATE_DIR", "/proc/spactor-state", "cannot be created"),
    ("SPACTOR_STAGE_DIR", "{file}", "is a file, not a folder"),
    ("SPACTOR_CACHE_DIR", "/sys/kernel", "is not writable"),
    ("PREFECT_HOME", "{file}/prefect", "is a file, not a folder"),
    ("HF_HOME", "/sys/kernel/hf", "cannot be created"),
    ("SPACTOR_ARTIFACT_ROOT", "{file}/artifacts", "is a file, not a folder"),
    ("MLFLOW_TRACKING_URI", "sqlite:///{file}/x/mlflow.db", "is a file, not a folder"),
    ("MLFLOW_TRACKING_URI", "sqlite:////sys/kernel/mlflow.db", "is not writable"),
    ("MLFLOW_TRACKING_URI", "sqlite:///{file}", "is not a readable SQLite database"),
    ("MLFLOW_TRACKING_URI", "sqlite:///{newer_mlflow}", "holds a store of a newer schema (revision ffff0000ffff"),
    ("MLFLOW_TRACKING_URI", "file://{file}/mlruns", "is a file, not a folder"),
    ("MLFLOW_TRACKING_URI", "{file}/mlruns", "is a file, not a folder"),
    ("PREFECT_HOME", "{newer_prefect}", "holds a store of a newer schema (revision ffff0000ffff"),
])
def test_an_environment_that_cannot_work_is_refused_in_one_line_naming_the_variable_before_any_work(
        tmp_path, var, value, says):
    file = tmp_path / "a-file"
    file.write_text("not a folder, not a database\n")
    newer_prefect = tmp_path / "prefect-home"
    newer_prefect.mkdir()
    subs = {"{file}": str(file),
            "{newer_mlflow}": _newer_store(tmp_path / "mlflow.db", "create table alembic_version (version_num text)",
                                           "ffff0000ffff"),
            "{newer_prefect}": str(newer_prefect)}
    _newer_store(newer_prefect / "prefect.db", "create table alembic_version (version_num text)", "ffff0000ffff")
    for k, v in subs.items():
        value = value.replace(k, v)
    env = {**os.environ, "SPACTOR_STATE_DIR": str(tmp_path / "state"), var: value}
    for k in ("SPACTOR_TRACEBACKS", "PREFECT_API_URL", "MLFLOW_TRACKING_URI", "PREFECT_HOME", "HF_HOME"):
        if k != var:
            env.pop(k, None)
    p = subprocess.run([sys.executable, "-m", "flows.pipeline"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    assert p.stderr.splitlines() == [p.stderr.strip()] and p.stderr.startswith(f"error: {var}={value} cannot be used"), \
        p.stderr[-2000:]
    assert says in p.stderr
    assert not (tmp_path / "state" / "stages").exists() and not (tmp_path / "state" / "runs").exists()  # no work began


def test_a_store_left_with_a_hot_journal_by_a_killed_writer_is_accepted_and_rolled_back(tmp_path):
    """A process killed mid-transaction (the resume tests kill the pipeline) leaves a hot journal beside the
    store; the environment check must roll it back as any SQLite client does, not call the store unreadable."""
    from tasks.runtime.env import _database_problem

    db = tmp_path / "mlflow.db"
    con = sqlite3.connect(db)
    con.execute("create table alembic_version (version_num text)")
    con.commit()
    con.close()
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, time\n"
        f"con = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
        "con.execute('pragma cache_size=1'); con.execute('begin immediate'); con.execute('create table big (x)')\n"
        "for _ in range(5000): con.execute('insert into big values (randomblob(1000))')\n"
        "print('mid-transaction', flush=True); time.sleep(120)\n")], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "mid-transaction"
    writer.kill()
    writer.wait()
    assert (tmp_path / "mlflow.db-journal").exists()  # the hot journal the killed writer left
    assert _database_problem(db, "mlflow", "store", "db_migrations", "versions") is None
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    tables = {r for (r,) in con.execute("select name from sqlite_master")}
    con.close()
    assert tables == {"alembic_version"}  # the half-written table was rolled back
