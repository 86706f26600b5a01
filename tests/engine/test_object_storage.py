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
