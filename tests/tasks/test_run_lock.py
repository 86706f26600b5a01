"""Two runs of one training config at once: the second is refused, naming the first, before it touches anything."""

import subprocess
import sys

import pytest

from tasks.tracked_run import RunLockedError, run_lock


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
    code = ("import os, sys; sys.path.insert(0, '.'); from pathlib import Path; from tasks.tracked_run import run_lock\n"
            f"with run_lock(Path({str(tmp_path / 'run')!r})): os.kill(os.getpid(), 9)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == -9, p.stderr
    with run_lock(tmp_path / "run"):  # nothing left behind
        pass
