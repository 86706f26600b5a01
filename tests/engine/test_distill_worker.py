"""DistillSpec objective in a plain process: data sources, on-policy sampling, acceptance improves."""

import copy

import pytest
import torch

from engine.distill_worker import DistillObjective, distill_worker
from tasks.downstream import TaskSpec, task_dir
from tests.conftest import make_t5_dir


@pytest.fixture(scope="module")
def pair(tiny_corpus, tmp_path_factory):
    tok = f"{tiny_corpus}/tokenizer"
    return (make_t5_dir(tok, tmp_path_factory.mktemp("teacher"), d_model=48, seed=1),
            make_t5_dir(tok, tmp_path_factory.mktemp("student"), d_model=32, seed=2))


def _cfg(pair, copy_task, tmp_path, **kw):
    cfg = dict(preset="test", mode="draft", divergence="fkl", beta=0.5, temperature=1.0, data_mix={"student": 1.0},
               sample_temperature=1.0, total_steps=30, batch_size=8, grad_accum=1, lr=3e-3, warmup_steps=0,
               schedule="constant", clip_norm=1.0, max_input_length=16, max_target_length=6, eval_every=30,
               eval_examples=16, checkpoint_every=0, log_every=10, num_workers=1, threads_per_worker=1,
               use_gpu=False, bf16=False, max_failures=0, seed=0, in_ray=False,
               teacher_dir=pair[0], student_dir=pair[1], task_dir=str(task_dir(TaskSpec(**copy_task))),
               checkpoint_dir=str(tmp_path / "ckpt"), task=copy_task)
    cfg.update(kw)
    return cfg


def test_on_policy_data_is_sampled_from_the_current_student(pair, copy_task, tmp_path):
    obj = DistillObjective(_cfg(pair, copy_task, tmp_path))
    x, y = obj.batch(obj.model, step=3, micro=0, rank=0, world=1)
    assert obj.last_sources == ["student"] * 8
    from models.training import step_seed

    assert y == obj.sample(obj.model, x, step_seed(0, 3, 0, 0, 6 + 2))
    with torch.no_grad():  # the student changes -> its on-policy samples change
        for p in obj.model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    _, y2 = obj.batch(obj.model, step=3, micro=0, rank=0, world=1)
    assert y != y2


def test_fixed_data_is_the_ground_truth_and_teacher_data_comes_from_the_teacher(pair, copy_task, tmp_path):
    obj = DistillObjective(_cfg(pair, copy_task, tmp_path, data_mix={"fixed": 1.0}))
    x, y = obj.batch(obj.model, 0, 0, 0, 1)
    first = y[0]
    from models.training import global_batch_rows

    i = global_batch_rows(n_rows=len(obj.train_x), step=0, micro=0, grad_accum=1, rank=0, world_size=1,
                          batch_size=8, seed=0)[0]
    assert first == obj.train_y[i]
    obj_t = DistillObjective(_cfg(pair, copy_task, tmp_path, data_mix={"teacher": 1.0}))
    before = copy.deepcopy(obj_t.model.state_dict())
    with torch.no_grad():
        for p in obj_t.model.parameters():
            p.add_(torch.randn_like(p))
    _, y_a = obj_t.batch(obj_t.model, 0, 0, 0, 1)
    obj_t.model.load_state_dict(before)
    _, y_b = obj_t.batch(obj_t.model, 0, 0, 0, 1)
    assert y_a == y_b  # independent of the student: the teacher sampled them


def test_distillation_raises_the_acceptance_rate_on_held_out_prompts(pair, copy_task, tmp_path):
    cfg = _cfg(pair, copy_task, tmp_path, divergence="tvd", total_steps=40)
    before = DistillObjective(cfg).evaluate(0)
    state = distill_worker(cfg)
    after = state["evals"][-1]
    assert after["sampled.acceptance_rate"] > before["sampled.acceptance_rate"] + 0.05
    assert 0.0 <= after["greedy.greedy_agreement"] <= 1.0


def test_a_student_with_another_vocabulary_is_refused(pair, copy_task, tmp_path, tiny_corpus):
    from transformers import T5Config, T5ForConditionalGeneration
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(pair[1], bad)
    T5ForConditionalGeneration(T5Config(vocab_size=800, d_model=16, d_ff=16, d_kv=4, num_heads=2, num_layers=1,
                                        decoder_start_token_id=0)).save_pretrained(bad)
    with pytest.raises(ValueError, match="vocabulary"):
        DistillObjective(_cfg(pair, copy_task, tmp_path, student_dir=str(bad)))
