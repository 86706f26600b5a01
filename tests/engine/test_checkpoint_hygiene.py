"""Checkpoint writers: durable, atomic, safe when two runs of one config write the same folder, and they clean
up after killed writers without touching live ones."""

import multiprocessing as mp
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import checkpoints


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(4, 2)


def _write_same_steps(root: str, rounds: int, q, barrier) -> None:
    try:
        model = _model()
        opt = torch.optim.AdamW(model.parameters())
        barrier.wait(60)  # both writers start together, so their saves overlap
        for r in range(rounds):
            for step in (10, 20, 30):
                checkpoints.save(root, step, model=model, optimizer=opt, state={"step": step}, keep=2)
        q.put("ok")
    except BaseException as err:  # noqa: BLE001 - reported to the parent
        import traceback

        q.put(f"{type(err).__name__}: {err}\n{traceback.format_exc()}")


@pytest.mark.reliability
def test_two_writers_of_the_same_checkpoints_at_once_both_succeed_and_leave_valid_checkpoints(tmp_path):
    ctx = mp.get_context("spawn")
    q, barrier = ctx.Queue(), ctx.Barrier(2)
    procs = [ctx.Process(target=_write_same_steps, args=(str(tmp_path), 40, q, barrier)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert sorted(q.get(timeout=5) for _ in procs) == ["ok", "ok"]
    ckpts = checkpoints.list_checkpoints(tmp_path)
    assert ckpts and all(checkpoints.verify(c) is None for c in ckpts)
    assert checkpoints.latest_valid(tmp_path).name == "step-00000030"
    assert not [d for d in tmp_path.iterdir() if d.name.startswith(".tmp-")]


def test_an_existing_valid_checkpoint_is_kept_and_an_invalid_one_is_replaced(tmp_path):
    model = _model()
    first = checkpoints.save(tmp_path, 5, model=model, optimizer=None, state={})
    inode = first.stat().st_ino
    assert checkpoints.save(tmp_path, 5, model=model, optimizer=None, state={}).stat().st_ino == inode
    (first / "model.safetensors").write_bytes(b"cut")
    assert checkpoints.verify(first) is not None
    again = checkpoints.save(tmp_path, 5, model=model, optimizer=None, state={})
    assert checkpoints.verify(again) is None


def test_final_carries_checksums_over_all_its_files_and_a_truncated_file_is_detected(tmp_path):
    def write(folder: Path) -> None:
        (folder / "model").mkdir()
        (folder / "model" / "weights.bin").write_bytes(b"x" * 1000)

    final = checkpoints.save_final(tmp_path, write, {"step": 3})
    assert checkpoints.verify(final) is None
    assert {"model/weights.bin", "trainer_state.json"} <= set(
        __import__("json").loads((final / checkpoints.CHECKSUMS).read_text()))
    (final / "model" / "weights.bin").write_bytes(b"x" * 10)
    assert "model/weights.bin" in checkpoints.verify(final)


def test_a_writer_that_fails_leaves_neither_final_nor_a_temporary_folder(tmp_path):
    def write(folder: Path) -> None:
        (folder / "half").write_text("...")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        checkpoints.save_final(tmp_path, write, {})
    assert list(tmp_path.iterdir()) == []


def test_temporary_folders_of_killed_writers_are_removed_and_live_writers_folders_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    host = socket.gethostname()
    stale = tmp_path / f".tmp-step-00000010-{host}-{dead_pid}-abc"
    live = tmp_path / f".tmp-step-00000010-{host}-{os.getppid()}-def"
    other_host = tmp_path / f".tmp-step-00000010-elsewhere-{dead_pid}-ghi"
    for d in (stale, live, other_host):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"partial")
    checkpoints.save(tmp_path, 20, model=_model(), optimizer=None, state={})
    assert not stale.exists() and live.exists() and other_host.exists()
    assert [c.name for c in checkpoints.list_checkpoints(tmp_path)] == ["step-00000020"]


# --- a SIGKILL at random moments, and a full disk -------------------------------------------------------------

_WRITER = r'''
import json, sys
from pathlib import Path
import torch
from engine import checkpoints

root, start = Path(sys.argv[1]), int(sys.argv[2])

def model_at(step):  # the weights a run has after `step` steps (deterministic), ~1.6 MB of safetensors
    torch.manual_seed(step)
    return torch.nn.Linear(640, 640)

for step in range(start, start + 10_000):
    m = model_at(step)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    checkpoints.save(root / "ckpt", step, model=m, optimizer=opt, state={"step": step}, keep=2)
    checkpoints.save_final(root / "finals" / f"{step:08d}",
                           lambda d: checkpoints.save_model(m, str(d / "model.safetensors")), {"step": step})
    print(step, flush=True)
'''


@pytest.mark.reliability
def test_sigkill_at_random_moments_while_saving_leaves_only_valid_checkpoints_and_resume_is_exact(tmp_path):
    """Six writers killed at random moments (seeded) while they save step checkpoints, prune old ones and publish
    final/: every folder in place is complete, the stale temporary folders are cleaned on the next start, and
    the newest checkpoint restores exactly the weights of its step."""
    import random
    import signal
    import time

    from safetensors.torch import load_file

    rng = random.Random(1234)
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    start, kills = 1, 0
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, str(script), str(tmp_path), str(start)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip(), proc.stderr.read()  # started and saved a step: now kill it at random
        time.sleep(rng.uniform(0.0, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += proc.returncode == -signal.SIGKILL
        ckpts = checkpoints.list_checkpoints(tmp_path / "ckpt")
        assert ckpts and all(checkpoints.verify(c) is None for c in ckpts), [(c, checkpoints.verify(c)) for c in ckpts]
        for d in (tmp_path / "finals").iterdir():  # final/ is there complete, or not there at all
            assert not (d / "final").exists() or checkpoints.verify(d / "final") is None, d
        latest = checkpoints.latest_valid(tmp_path / "ckpt")
        step = int(latest.name.split("-")[1])
        torch.manual_seed(step)
        expected = torch.nn.Linear(640, 640).state_dict()
        restored = load_file(str(latest / "model.safetensors"))
        assert all(torch.equal(restored[k], v) for k, v in expected.items())
        start = step + 1  # the rerun resumes after the newest valid checkpoint
    assert kills == 6
    left = [d for root in (tmp_path / "ckpt", *(tmp_path / "finals").iterdir()) for d in root.glob(".tmp-*")]
    removed = [p for root in (tmp_path / "ckpt", *(tmp_path / "finals").iterdir())
               for p in checkpoints.clean_stale_tmp(root)]
    assert sorted(removed) == sorted(left)  # all writers are dead: every temporary folder is stale
    assert not [d for root in (tmp_path / "ckpt", *(tmp_path / "finals").iterdir()) for d in root.glob(".tmp-*")]


_FULL_DISK = r'''
import json, resource, signal, sys
from pathlib import Path
import torch
from engine import checkpoints

root = Path(sys.argv[1])
small = torch.nn.Linear(8, 8)
checkpoints.save(root, 1, model=small, optimizer=None, state={})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write fails with EFBIG, like ENOSPC
resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, 256 << 10))
big = torch.nn.Linear(512, 512)
opt = torch.optim.Adam(big.parameters())
big(torch.ones(1, 512)).sum().backward()
opt.step()  # Adam's moments: an optimizer state of 2 x 1 MB
out = {}
for what, call in (("step", lambda: checkpoints.save(root, 2, model=big, optimizer=None, state={})),
                   ("optimizer", lambda: checkpoints.save(root, 3, model=small, optimizer=opt, state={})),
                   ("final", lambda: checkpoints.save_final(root, lambda d: checkpoints.save_model(
                       big, str(d / "model.safetensors")), {}))):
    try:
        call()
        out[what] = None
    except Exception as err:
        out[what] = [type(err).__name__, str(err)]
print(json.dumps(out))
'''


@pytest.mark.reliability
def test_a_full_disk_while_saving_is_one_line_naming_the_folder_and_leaves_nothing_half_written(tmp_path):
    import json

    from tasks.runtime.orchestration import DETERMINISTIC_ERRORS

    script = tmp_path / "full.py"
    script.write_text(_FULL_DISK)
    root = tmp_path / "ckpt"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    res = subprocess.run([sys.executable, str(script), str(root)], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    for what, name in (("step", "step-00000002"), ("optimizer", "step-00000003"), ("final", "final")):
        kind, message = out[what]
        assert kind == "StorageFullError" and "\n" not in message, (what, message)
        assert f"no space left writing {root / name}" in message and "step-00000001 is intact" in message
    # nothing half-written: no temporary folder, no step 2 or 3, no final; step 1 still verifies
    assert sorted(p.name for p in root.iterdir()) == ["step-00000001"]
    assert checkpoints.verify(root / "step-00000001") is None
    assert issubclass(checkpoints.StorageFullError, DETERMINISTIC_ERRORS)  # not retried by Ray or Prefect
