"""Two runs of one training config at once: the second is refused, naming the first, before it touches anything."""

import subprocess
import sys

import pytest

from tasks.runtime.tracked_run import RunLockedError, run_lock


def test_a_second_holder_of_the_same_run_folder_is_refused_naming_the_first(tmp_path):
    with run_lock(tmp_path / "run"):
        with pytest.raises(RunLockedError, match=r"being trained right now by pid \d+ on .* since"):
            with run_lock(tmp_path / "run"):
                pass
        with run_lock(tmp_path / "other"):  # another config: its own folder, its own lock
            pass
    with run_lock(tmp_path / "run"):  # released on exit
        pass


def test_the_lock_dies_with_a_killed_process(tmp_path):
    code = ("import os, sys; sys.path.insert(0, '.'); from pathlib import Path; from tasks.runtime.tracked_run import run_lock\n"
            f"with run_lock(Path({str(tmp_path / 'run')!r})): os.kill(os.getpid(), 9)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == -9, p.stderr
    with run_lock(tmp_path / "run"):  # nothing left behind
        pass


def test_the_model_cache_replaces_a_half_written_copy_reuses_a_complete_one_and_leaves_no_temporary_folders(
        tmp_path, monkeypatch):
    """The cache folder is swapped in by rename; a complete copy is never deleted (another process may read it)."""
    import mlflow

    from tasks import tracking

    calls = []

    def fake_download(source, dst_path):  # stands in for the artifact store: writes a model folder
        import pathlib

        out = pathlib.Path(dst_path) / "model"
        out.mkdir()
        (out / "config.json").write_text("{}")
        calls.append(out)
        return str(out)

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", fake_download)
    first = tracking.resolve_model("runs:/abc/model", dst_root=tmp_path)
    marker = first / "in-use"
    marker.write_text("a reader has this open")
    (first / ".complete").unlink()  # as if the first copy were half-written: the next download replaces it
    second = tracking.resolve_model("runs:/abc/model", dst_root=tmp_path)
    assert second == first and not marker.exists() and (second / ".complete").exists()
    (second / "in-use").write_text("a reader has this open")
    assert tracking.resolve_model("runs:/abc/model", dst_root=tmp_path) == second and (second / "in-use").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [second.name]  # no tmp* or .stale-* folders left
    assert len(calls) == 2
