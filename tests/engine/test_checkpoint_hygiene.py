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
