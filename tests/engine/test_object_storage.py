"""Checkpoints on S3, against a real S3 protocol server (moto in server mode) bound to 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("moto", reason="moto (S3 server for tests) is not installed")
boto3 = pytest.importorskip("boto3")

from engine import checkpoints, storage  # noqa: E402

BUCKET = "spactor-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                          region_name="us-east-1")
    for _ in range(100):
        try:
            client.create_bucket(Bucket=BUCKET)
            break
        except Exception:  # noqa: BLE001 - not listening yet
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("moto server did not start")
    yield endpoint
    proc.kill()
    proc.wait()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    for key, value in {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    return s3_server


def _checkpoint(root: Path, step: int, size: int = 1000) -> Path:
    model = torch.nn.Linear(size, 8)
    return checkpoints.save(root, step, model=model, optimizer=None, state={"cum_flops": step}, keep=0)


def test_an_uploaded_checkpoint_comes_back_byte_for_byte_and_the_newest_complete_one_wins(s3_env, tmp_path):
    uri = f"s3://{BUCKET}/roundtrip/checkpoints"
    for step in (10, 20):
        local = _checkpoint(tmp_path / "local", step)
        storage.upload_folder(local, storage.join(uri, local.name))
    assert storage.list_checkpoints(uri) == [f"{uri}/step-00000010", f"{uri}/step-00000020"]
    got = storage.fetch_latest_valid(uri, tmp_path / "cache")
    assert got.name == "step-00000020" and checkpoints.verify(got) is None
    for name in ("model.safetensors", "state.json", "checksums.json"):
        assert (got / name).read_bytes() == (tmp_path / "local" / "step-00000020" / name).read_bytes()
    storage.prune(uri, keep=1)
    assert storage.list_checkpoints(uri) == [f"{uri}/step-00000020"]


def test_a_checkpoint_whose_upload_was_cut_is_never_taken_for_complete(s3_env, tmp_path):
    """Uploads in any order (Ray's copy does not promise one): a folder missing a file, or holding a
    file cut short, fails its checksums, and resume falls back to the previous checkpoint."""
    uri = f"s3://{BUCKET}/partial/checkpoints"
    good = _checkpoint(tmp_path / "local", 10)
    storage.upload_folder(good, storage.join(uri, good.name))
    cut = _checkpoint(tmp_path / "local", 20)
    fs, path = storage.split(storage.join(uri, cut.name))
    for f in sorted(cut.iterdir(), key=lambda p: p.name != "checksums.json"):  # checksums first, as Ray might
        data = f.read_bytes()
        if f.name == "model.safetensors":
            data = data[: len(data) // 2]  # the kill came halfway through the weights
        with fs.open_output_stream(f"{path}/{f.name}") as out:
            out.write(data)
    assert storage.fetch_latest_valid(uri, tmp_path / "cache").name == "step-00000010"
    assert not (tmp_path / "cache" / "step-00000020").exists()  # nothing half-downloaded left either


def test_a_process_killed_during_an_upload_leaves_nothing_a_resume_would_take(s3_env, tmp_path):
    """A real SIGKILL in the middle of ``upload_folder`` (after the first file): the bucket then holds part
    of the folder but no checksums (they go last), and resume takes the previous checkpoint."""
    uri = f"s3://{BUCKET}/killed/checkpoints"
    good = _checkpoint(tmp_path / "local", 10)
    storage.upload_folder(good, storage.join(uri, good.name))
    victim = _checkpoint(tmp_path / "local", 20, size=20000)
    script = textwrap.dedent(f"""
        import os, shutil, signal, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from engine import storage
        real, copied = shutil.copyfileobj, []
        def copy_then_die(src, dst, length=0):
            if copied:
                os.kill(os.getpid(), signal.SIGKILL)
            real(src, dst, length)
            copied.append(1)
        shutil.copyfileobj = copy_then_die
        storage.upload_folder({str(victim)!r}, {storage.join(uri, victim.name)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=os.environ.copy(), timeout=120)
    assert proc.returncode == -9  # killed, not finished
    assert len(storage.list_checkpoints(uri)) == 2  # the cut folder is there ...
    assert not storage.exists(storage.join(uri, victim.name, "checksums.json"))
    assert storage.fetch_latest_valid(uri, tmp_path / "cache").name == "step-00000010"  # ... and never taken


def test_a_checkpoint_uri_without_a_prefix_is_refused_in_one_line(s3_env):
    with pytest.raises(ValueError, match="prefix"):
        storage.ray_storage(f"s3://{BUCKET}")


@pytest.mark.slow
def test_pretraining_on_s3_keeps_one_copy_of_each_checkpoint_and_a_killed_worker_resumes_from_the_bucket(
        prefect_harness, tiny_corpus, tmp_path, s3_env):
    """Ray Train uploads each step checkpoint to the bucket (its storage filesystem) and the local copy goes;
    a worker SIGKILLed mid-run restarts from the bucket's newest checkpoint and ends on the same weights as
    an uninterrupted local run; the final model is in the bucket and downloaded for MLflow."""
    from safetensors.torch import load_file

    from flows.pretrain import pretrain_flow
    from tests.conftest import tiny_pretrain_config

    kw = dict(corpus_dir=tiny_corpus, total_steps=8, tau=4, checkpoint_every=2)
    straight = pretrain_flow(config=tiny_pretrain_config(output_root=str(tmp_path / "local"), **kw))
    uri = f"s3://{BUCKET}/runs"
    killed = pretrain_flow(config=tiny_pretrain_config(output_root=str(tmp_path / "s3run"), checkpoint_uri=uri,
                                                        fault_kill_at_step=5, **kw))
    a = load_file(str(Path(straight.model_dir) / "model.safetensors"))
    b = load_file(str(Path(killed.model_dir) / "model.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    (key,) = [p.name for p in (tmp_path / "s3run").iterdir() if p.name.startswith("pretrain-")]
    root = storage.join(uri, key, "checkpoints")
    steps = [c.rsplit("/", 1)[1] for c in storage.list_checkpoints(root)]
    assert steps == ["step-00000006", "step-00000008"]  # Ray kept the newest two, in the bucket only
    assert storage.exists(storage.join(root, "final", "checksums.json"))
    local_steps = [p for p in (tmp_path / "s3run").rglob("step-*") if p.is_dir()]
    assert local_steps == []  # one copy of each checkpoint: none on local disk


# --- corpora (read-only published folders) on S3 ---------------------------------------------------------------

def _folder(root: Path, content: str) -> Path:
    (root / "packed" / "train").mkdir(parents=True)
    (root / "tokenizer").mkdir()
    (root / "packed" / "train" / "data-00000.arrow").write_bytes(content.encode() * 5000)
    (root / "tokenizer" / "tokenizer_config.json").write_text("{}")
    (root / "stats.json").write_text('{"fingerprint": "x"}')
    return root


def test_a_published_folder_is_downloaded_once_per_node_verified_and_byte_for_byte(s3_env, tmp_path, monkeypatch):
    import threading

    local = _folder(tmp_path / "corpus", "abc")
    uri = f"s3://{BUCKET}/corpora/c1"
    assert storage.publish_folder(local, uri) == uri
    downloads = []
    real = storage.download_folder
    monkeypatch.setattr(storage, "download_folder", lambda u, d: (downloads.append(u), real(u, d))[1])
    got = []
    threads = [threading.Thread(target=lambda: got.append(storage.cached_folder(uri, tmp_path / "cache")))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 1 and len(downloads) == 1  # three workers on one node share one download
    for f in local.rglob("*"):
        if f.is_file():
            assert (got[0] / f.relative_to(local)).read_bytes() == f.read_bytes()
    assert checkpoints.verify(got[0]) is None
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")] == [got[0].name]


def test_republishing_other_content_gives_a_new_cache_entry_never_the_stale_copy(s3_env, tmp_path):
    uri = f"s3://{BUCKET}/corpora/c2"
    storage.publish_folder(_folder(tmp_path / "v1", "old"), uri)
    first = storage.cached_folder(uri, tmp_path / "cache")
    storage.publish_folder(_folder(tmp_path / "v2", "new"), uri)
    second = storage.cached_folder(uri, tmp_path / "cache")
    assert first != second
    assert (second / "packed/train/data-00000.arrow").read_bytes().startswith(b"new")


def test_a_corpus_whose_upload_was_cut_or_corrupted_is_refused_and_nothing_is_cached(s3_env, tmp_path):
    local = _folder(tmp_path / "corpus", "abc")
    cut = f"s3://{BUCKET}/corpora/cut"
    storage.upload_folder(local, cut)  # no checksums.json: as if the publishing process died before the end
    with pytest.raises(FileNotFoundError, match="no checksums.json"):
        storage.cached_folder(cut, tmp_path / "cache")
    bad = f"s3://{BUCKET}/corpora/bad"
    storage.publish_folder(local, bad)
    fs, path = storage.split(storage.join(bad, "packed/train/data-00000.arrow"))
    with fs.open_output_stream(path) as out:
        out.write(b"abc")  # cut short after publishing
    with pytest.raises(ValueError, match="does not match its checksum"):
        storage.cached_folder(bad, tmp_path / "cache")
    assert [p for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []


def test_an_s3_corpus_dir_is_checked_on_the_driver_in_one_line(s3_env, tmp_path):
    from tasks.corpus import check_corpus_dir

    with pytest.raises(FileNotFoundError, match="holds no published corpus"):
        check_corpus_dir(f"s3://{BUCKET}/corpora/none")
    partial = tmp_path / "p"
    (partial / "tokenizer").mkdir(parents=True)
    (partial / "tokenizer" / "tokenizer_config.json").write_text("{}")
    storage.publish_folder(partial, f"s3://{BUCKET}/corpora/p")
    with pytest.raises(FileNotFoundError, match="missing packed/train, packed/validation"):
        check_corpus_dir(f"s3://{BUCKET}/corpora/p")


def test_corpus_dir_takes_a_folder_or_an_s3_uri_and_refuses_other_schemes():
    from engine.config.paths import folder_or_s3

    assert folder_or_s3("s3://b/corpora/x/") == "s3://b/corpora/x"
    assert folder_or_s3("relative").startswith("/")
    for bad in ("gs://b/x", "s3://bucket-only", "http://host/x"):
        with pytest.raises(ValueError, match="s3://bucket/prefix"):
            folder_or_s3(bad)


# --- MLflow artifacts on S3 -------------------------------------------------------------------------------------

def test_mlflow_artifacts_and_registered_models_live_in_the_bucket_and_load_back(s3_env, tmp_path, monkeypatch,
                                                                                 tiny_corpus):
    from tasks import tracking
    from tests.conftest import make_t5_dir

    monkeypatch.setenv("SPACTOR_ARTIFACT_ROOT", f"s3://{BUCKET}/mlflow")
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_env)
    model = make_t5_dir(f"{tiny_corpus}/tokenizer", tmp_path / "t5")
    with tracking.start_run("s3-artifacts-test", "r") as run_id:
        tracking.log_text(run_id, "hello", "notes/hello.txt")
        ref = tracking.register_model(run_id, model, "t5-s3-test")
    assert tracking.artifact_uri(run_id).startswith(f"s3://{BUCKET}/mlflow/s3-artifacts-test/")
    fs, path = storage.split(tracking.artifact_uri(run_id, "notes/hello.txt"))
    with fs.open_input_stream(path) as f:
        assert f.read() == b"hello"
    from mlflow import MlflowClient  # the version's files are its MLflow 3 logged model's, in the bucket

    client = MlflowClient()
    name, version = ref[len("models:/"):].rsplit("/", 1)
    logged = client.get_logged_model(client.get_model_version(name, version).source[len("models:/"):])
    assert logged.artifact_location.startswith(f"s3://{BUCKET}/mlflow/s3-artifacts-test/")
    assert storage.exists(f"{logged.artifact_location}/MLmodel")
    back = tracking.resolve_model(ref, tmp_path / "models")  # downloaded from the bucket, sha256-checked
    assert (back / "config.json").exists()



# --- the whole pretraining stage against the bucket, driver killed --------------------------------------------

def _valid_steps(uri: str, scratch: Path) -> list[int]:
    """The steps of the checkpoints anywhere under ``uri`` whose files all match their checksums. Ray Train
    uploads a checkpoint's files in no promised order, so ``checksums.json`` can land before the weights: its
    presence alone does not make a checkpoint one a resume can use (engine.storage.fetch_valid checks them all)."""
    from pyarrow import fs as pafs

    fs, root = storage.split(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    except FileNotFoundError:
        return []
    folders = sorted(i.path.rsplit("/", 1)[0] for i in infos if i.base_name == "checksums.json" and "/step-" in i.path)
    steps = []
    for folder in folders:  # a checkpoint is written once: one that verified is not fetched again on later polls
        name = folder.rsplit("/", 1)[1]
        verified = scratch / f"{name}.verified"
        if verified.exists() or storage.fetch_valid(f"s3://{folder}", scratch / name) is not None:
            verified.touch()
            steps.append(int(name[len("step-"):]))
    return steps


@pytest.mark.slow
def test_a_pretraining_run_with_corpus_checkpoints_and_artifacts_on_s3_killed_whole_resumes_from_the_bucket(
        s3_env, tmp_path):
    """Corpus prep publishes the corpus to the bucket; pretraining reads it from there (one download per
    node), checkpoints there, and MLflow keeps its artifacts there. The driver, its Ray head and workers are
    SIGKILLed together once a step checkpoint is complete in the bucket; the same command then resumes from the
    bucket's checkpoint instead of step 0, and the registered model's files are in the bucket."""
    from mlflow import MlflowClient

    from tests.conftest import kill_when

    root = Path(__file__).resolve().parents[2]
    state, cache, out = tmp_path / "state", tmp_path / "cache", tmp_path / "runs"
    env = {**os.environ, "SPACTOR_STATE_DIR": str(state), "SPACTOR_CACHE_DIR": str(cache),
           "SPACTOR_ARTIFACT_ROOT": f"s3://{BUCKET}/e2e/mlflow"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the subprocesses' own store under their state folder
    env.pop("MLFLOW_S3_ENDPOINT_URL", None)  # derived from AWS_ENDPOINT_URL by tasks.runtime.env
    corpus_uri, ckpt_uri = f"s3://{BUCKET}/e2e/corpus", f"s3://{BUCKET}/e2e/checkpoints"
    prep = subprocess.run(
        [sys.executable, "-m", "flows.corpus_prep", "--preset", "tiny", "--set", "name=s3", "--set",
         'packaged=["wiki","parl"]', "--set", "max_documents=500", "--set", "vocab_size=600", "--set",
         "pack_length=70", "--set", "num_proc=1", "--set", f"publish_uri={corpus_uri}"],
        cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert prep.returncode == 0, prep.stderr[-2000:]
    assert f"at {corpus_uri}" in prep.stdout
    cmd = [sys.executable, "-m", "flows.pretrain", "--preset", "tiny", "--set", f"corpus_dir={corpus_uri}",
           "--set", f"checkpoint_uri={ckpt_uri}", "--set", f"output_root={out}", "--set", "total_steps=150",
           "--set", "tau=20", "--set", "batch_size=4", "--set", "checkpoint_every=50", "--set", "eval_every=100",
           "--set", "threads_per_worker=1", "--set", "inputs_length=64", "--set", "register_as=t5-s3test",
           "--set", "log_every=10"]
    family = kill_when(cmd, lambda: bool(_valid_steps(ckpt_uri, tmp_path / "seen")), tmp_path / "first.log",
                       cwd=root, env=env)
    assert family, "the first run ended before it could be killed: " + (tmp_path / "first.log").read_text()[-2000:]
    killed_at = max(_valid_steps(ckpt_uri, tmp_path / "seen"))
    assert killed_at < 150
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]

    client = MlflowClient(tracking_uri=f"sqlite:///{state / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("pretrain").experiment_id],
                              filter_string="params.register_as = 't5-s3test'")
    by_status = {r.info.status: r for r in runs}
    assert set(by_status) == {"KILLED", "FINISHED"}
    resumed = by_status["FINISHED"]
    assert resumed.data.tags["resumed_from"] == by_status["KILLED"].info.run_id
    logged = [m.step for m in client.get_metric_history(resumed.info.run_id, "sc_loss")]
    said = [line for line in (done.stdout + done.stderr).splitlines()
            if "resum" in line or "skipping checkpoint" in line or "step-" in line]
    # resumed from the bucket's checkpoint, not from step 0 (the resumed run's own words on what it found, if not)
    assert logged and min(logged) > killed_at, (killed_at, said[-20:])
    (version,) = client.search_model_versions("name = 't5-s3test'")
    files = client.get_logged_model(version.source[len("models:/"):]).artifact_location  # its MLflow 3 logged model
    assert files.startswith(f"s3://{BUCKET}/e2e/mlflow/pretrain/")
    assert storage.exists(f"{files}/MLmodel")
    assert not [f for f in (state / "mlartifacts").rglob("*") if f.is_file()]  # nothing on local disk
    assert not [d for d in out.rglob("step-*") if d.is_dir()]  # step checkpoints only in the bucket
    assert len([d for d in (cache / "objects").iterdir() if d.is_dir() and not d.name.startswith(".")]) == 1
