"""Workers get typed jobs built on the driver: a missing or renamed field fails before Ray, in one line."""

import pickle

import pytest

from engine.jobs import DistillJob, FinetuneJob, PretrainJob
from engine.train_loop import LoopSettings
from models.spactor import SpacTorConfig

PATHS = {
    PretrainJob: {"corpus_dir": "/c", "tokenizer_dir": "/c/tokenizer"},
    FinetuneJob: {"model_dir": "/m", "task_dir": "/t"},
    DistillJob: {"teacher_dir": "/a", "student_dir": "/b", "task_dir": "/t"},
}


def _flow_presets():
    from engine.config import distill, finetune, pretrain

    for job, module in ((PretrainJob, pretrain), (FinetuneJob, finetune), (DistillJob, distill)):
        for name, preset in module.PRESETS.items():
            yield pytest.param(job, preset, id=f"{job.__name__}-{name}")


@pytest.mark.parametrize("job_type, preset", list(_flow_presets()))
def test_every_preset_of_every_training_flow_gives_its_workers_a_complete_typed_job(job_type, preset):
    cfg = preset()
    job = job_type.of(cfg.model_dump(), **PATHS[job_type], checkpoint_dir="/ckpt")
    assert isinstance(job.loop, LoopSettings)
    assert (job.loop.total_steps, job.loop.lr, job.loop.checkpoint_dir) == (cfg.total_steps, cfg.lr, "/ckpt")
    assert (job.batch_size, job.seed, job.grad_accum) == (cfg.batch_size, cfg.seed, cfg.grad_accum)
    if job_type is PretrainJob:
        assert isinstance(job.spactor, SpacTorConfig) and job.spactor == cfg.spactor
        assert job.loop.diag_every == cfg.cosine_every
    assert pickle.loads(pickle.dumps(job)) == job  # what Ray sends to every worker


def test_a_missing_field_fails_on_the_driver_naming_it():
    from engine.config.finetune import tiny

    values = tiny().model_dump()
    del values["max_target_length"]
    with pytest.raises(ValueError, match="FinetuneJob needs max_target_length"):
        FinetuneJob.of(values, **PATHS[FinetuneJob])
    with pytest.raises(ValueError, match="model_dir, task_dir"):
        FinetuneJob.of(tiny().model_dump())


def test_a_job_passes_through_and_the_fixed_loop_settings_of_an_objective_win():
    from engine.config import distill, finetune

    job = DistillJob.of({**distill.tiny().model_dump(), "weight_decay": 0.3}, **PATHS[DistillJob])
    assert DistillJob.of(job) is job
    assert job.loop.weight_decay == 0.0 and job.loop.keep_checkpoints == 2  # distillation never decays weights
    ft = FinetuneJob.of(finetune.tiny().model_dump(), **PATHS[FinetuneJob])
    assert ft.loop.early_stop_metric == "val_loss"
    with pytest.raises(TypeError, match="DistillJob expected"):
        DistillJob.of(ft)
