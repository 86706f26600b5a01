"""The typed jobs the training workers receive: one frozen dataclass per objective, built on the driver.

A run's typed config (pydantic, from the config room ``engine/config/``), joined with the paths its tasks
resolved (corpus, tokenizer, model and task folders, the checkpoint folder, the metrics sink), is turned into a
job by :meth:`Job.of` once, on the driver, *before* anything is sent to Ray: a field that is missing or renamed
fails there, in one line naming it, not on a worker minutes later. The job then travels as it is (Ray's loop
config holds it; the worker and its objective take it unchanged). Workers read attributes (``job.tau``), never
strings.

Defaults live in one place, the typed configs; a job's fields have none beyond how it runs.
The loop's own settings (optimiser, schedule, checkpoints, evaluation cadence) travel as one
:class:`engine.train_loop.LoopSettings` in ``job.loop``; ``batch_size``, ``grad_accum`` and ``seed``
stay on the job because the objectives draw their batches with them.

Plain dataclasses, no pydantic: the bare GPU box of ``benchmarks/device_check.sh`` has only torch and
transformers, and builds its jobs from plain dicts with the same :meth:`Job.of`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from engine.train_loop import LoopSettings, settings_from
from models.spactor import SpacTorConfig

__all__ = ["DistillJob", "FinetuneJob", "Job", "PretrainJob"]


@dataclass(frozen=True, kw_only=True)
class Job:
    """What every training job has: the loop settings, how batches are drawn, where it runs."""

    loop: LoopSettings
    batch_size: int
    grad_accum: int = 1
    seed: int = 0
    threads_per_worker: int = 0
    num_workers: int = 1

    #: loop settings this objective always uses, whatever the flow config says
    LOOP_FIXED: ClassVar[dict[str, Any]] = {}

    @classmethod
    def loop_overrides(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        return dict(cls.LOOP_FIXED)

    @classmethod
    def of(cls, values: "Job | Any", **extra: Any) -> "Job":
        """The job from a typed run config (``engine.config``: its attributes are read by name) or a plain dict
        (the bare GPU machine has no pydantic), plus ``extra`` (paths, checkpoint_dir, metrics_sink, in_ray...).

        A job passes through unchanged. Fields no job field takes are ignored (a run config holds more than
        its workers read); a field without a default that is missing raises ``ValueError`` naming it."""
        if isinstance(values, cls):
            return dataclasses.replace(values, **extra) if extra else values
        if isinstance(values, Job):
            raise TypeError(f"{cls.__name__} expected, got a {type(values).__name__}")
        if not isinstance(values, Mapping):  # a typed config: read the fields a job or its loop takes
            wanted = {f.name for f in dataclasses.fields(cls)} | {f.name for f in dataclasses.fields(LoopSettings)}
            values = {name: getattr(values, name) for name in wanted if hasattr(values, name)}
        values = {**values, **extra}
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {k: cls._convert(k, v) for k, v in values.items() if k in fields and k != "loop"}
        loop = values.get("loop")
        kwargs["loop"] = loop if isinstance(loop, LoopSettings) else \
            settings_from(values, **cls.loop_overrides(values))
        missing = sorted(n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
                         and f.default_factory is dataclasses.MISSING)
        if missing:
            raise ValueError(f"{cls.__name__} needs {', '.join(missing)} (not in the config given to the worker)")
        return cls(**kwargs)

    @classmethod
    def _convert(cls, name: str, value: Any) -> Any:
        return value


@dataclass(frozen=True, kw_only=True)
class PretrainJob(Job):
    """SpacTor / SC pretraining (``engine.pretrain_worker``)."""

    corpus_dir: str
    tokenizer_dir: str
    model: dict[str, Any]  # T5 shape: keyword arguments of models.spactor.t5_config
    spactor: SpacTorConfig
    tau: int
    inputs_length: int
    noise_density: float
    mean_noise_span_length: float
    eval_batches: int
    cosine_every: int
    # how the training rows are read (engine.shards); configs and bundles written before streaming lack them
    stream_shards: bool = False
    shard_window: int = 4
    max_cached_shards: int = 8
    shard_prefetch: int = 0

    @classmethod
    def loop_overrides(cls, values):
        return {"diag_every": values.get("cosine_every") or 0}

    @classmethod
    def _convert(cls, name, value):
        if name == "spactor" and not isinstance(value, SpacTorConfig):
            return SpacTorConfig(**value)
        if name == "model" and not isinstance(value, dict):
            return dict(value)
        return value


@dataclass(frozen=True, kw_only=True)
class FinetuneJob(Job):
    """Supervised fine-tuning on a downstream task (``engine.finetune_worker``)."""

    model_dir: str
    task_dir: str
    init: str
    dropout_rate: float
    eval_examples: int
    max_input_length: int
    max_target_length: int

    LOOP_FIXED: ClassVar[dict[str, Any]] = {"keep_checkpoints": 2, "early_stop_metric": "val_loss"}


@dataclass(frozen=True, kw_only=True)
class DistillJob(Job):
    """Distillation of a student towards a teacher (``engine.distill_worker``)."""

    teacher_dir: str
    student_dir: str
    task_dir: str
    divergence: str
    beta: float
    temperature: float
    reduction: str = "token"  # configs written before sequence-level averaging existed
    data_mix: dict[str, float]
    sample_temperature: float
    eval_examples: int
    max_input_length: int
    max_target_length: int

    LOOP_FIXED: ClassVar[dict[str, Any]] = {"keep_checkpoints": 2, "weight_decay": 0.0}
