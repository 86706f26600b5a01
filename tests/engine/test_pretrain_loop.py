"""The shared training loop run as a plain process: exact resume after SIGKILL, checkpoint fallback."""

import json
import multiprocessing as mp
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine import checkpoints
from engine.pretrain_worker import pretrain_worker
from tests.conftest import tiny_pretrain_config


def _worker_cfg(corpus, ckpt_dir, **kw):
    cfg = tiny_pretrain_config(**kw).model_dump()
    cfg.update(corpus_dir=corpus, tokenizer_dir=f"{corpus}/tokenizer", checkpoint_dir=str(ckpt_dir), in_ray=False)
    return cfg


def _final_weights(ckpt_dir):
    return load_file(str(Path(ckpt_dir) / "final" / "model" / "model.safetensors"))


def _run_in_child(cfg):
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=pretrain_worker, args=(cfg,))
    p.start()
    p.join(300)
    return p.exitcode


def test_resume_after_sigkill_gives_the_same_parameters_as_an_uninterrupted_run(tiny_corpus, tmp_path):
    straight = pretrain_worker(_worker_cfg(tiny_corpus, tmp_path / "a"))
    cfg = _worker_cfg(tiny_corpus, tmp_path / "b", fault_kill_at_step=6)
    assert _run_in_child(cfg) == -9  # killed by SIGKILL at step 6, after the checkpoint at step 4
    assert [p.name for p in checkpoints.list_checkpoints(tmp_path / "b")] == ["step-00000004"]
    resumed = pretrain_worker(cfg)
    assert resumed["step"] == straight["step"] == 12
    a, b = _final_weights(tmp_path / "a"), _final_weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [e["val_sc_loss"] for e in resumed["evals"]] == [e["val_sc_loss"] for e in straight["evals"]]


def test_truncated_checkpoint_is_detected_and_training_falls_back_to_the_previous_one(tiny_corpus, tmp_path, caplog):
    cfg = _worker_cfg(tiny_corpus, tmp_path / "c", total_steps=8, keep_checkpoints=3)
    pretrain_worker(cfg)
    ckpts = checkpoints.list_checkpoints(tmp_path / "c")
    assert [p.name for p in ckpts] == ["step-00000004", "step-00000008"]
    weights = ckpts[-1] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert "does not match its checksum" in checkpoints.verify(ckpts[-1])
    with caplog.at_level("WARNING"):
        assert checkpoints.latest_valid(tmp_path / "c") == ckpts[0]
    assert "falling back" in caplog.text
    state = pretrain_worker(cfg)  # resumes from step 4 and trains to 8 again
    assert state["step"] == 8 and json.loads((ckpts[-1] / "state.json").read_text())["step"] == 8
    assert checkpoints.verify(ckpts[-1]) is None


def test_checkpoint_of_another_architecture_is_refused_before_training(tiny_corpus, tmp_path):
    pretrain_worker(_worker_cfg(tiny_corpus, tmp_path / "d", total_steps=4, tau=2))
    bigger = _worker_cfg(tiny_corpus, tmp_path / "d", total_steps=8)
    bigger["model"]["d_model"] = 48
    with pytest.raises(ValueError, match="does not fit this model architecture"):
        pretrain_worker(bigger)


def test_sc_arm_never_runs_the_generator_and_counts_fewer_flops(tiny_corpus, tmp_path):
    sc = pretrain_worker(_worker_cfg(tiny_corpus, tmp_path / "sc", tau=0, total_steps=4, checkpoint_every=0))
    hy = pretrain_worker(_worker_cfg(tiny_corpus, tmp_path / "hy", tau=4, total_steps=4, checkpoint_every=0))
    assert hy["cum_flops"] > sc["cum_flops"] > 0
