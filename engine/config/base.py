"""The building blocks of every run config: the strict base, the fields of Ray-trained runs, the optimiser section
and the T5 shape.

The optimiser and schedule fields of the three training runs are declared once, in :func:`optimiser_section`;
each run picks its own defaults there (pretraining: cosine at 3e-3; fine-tuning and distillation: linear
at 1e-3).
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, create_model

from engine.config.paths import LocalPath

__all__ = ["FlowConfig", "Schedule", "T5Shape", "TrainRunFields", "optimiser_section"]

Schedule = Literal["cosine", "linear", "rsqrt", "constant"]


class FlowConfig(BaseModel):
    """Base of every flow config: unknown keys are an error, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)


class TrainRunFields(FlowConfig):
    """Fields every Ray-trained flow shares (pretraining, fine-tuning, distillation): where and how the run executes."""

    num_workers: int = Field(1, ge=1, description="Ray Train workers (data parallel)")
    threads_per_worker: int = Field(0, ge=0, description="torch threads per worker (0 = the CPUs divided among the workers)")
    use_gpu: bool = False
    bf16: bool = Field(True, description="bf16 autocast on GPU (ignored on CPU)")
    max_failures: int = Field(2, ge=0, description="worker-group restarts Ray may do")
    seed: int = 0
    register_as: Optional[str] = Field(None, description="registered model name (default: from preset and task)")
    output_root: Optional[LocalPath] = Field(None, description="checkpoint root (default <state>/runs)")
    checkpoint_uri: Optional[str] = Field(None, pattern=r"^s3://[^/]+/.+", description="s3://bucket/prefix: step "
                                          "checkpoints and the final model live there (one copy, uploaded by Ray "
                                          "Train); the final model is downloaded under output_root for MLflow")
    fault_kill_at_step: Optional[int] = Field(None, description="test hook: SIGKILL a worker once at this step")


def optimiser_section(*, total_steps: int, lr: float, warmup_steps: int, schedule: Schedule,
                      weight_decay: Optional[float] = 0.0, clip_norm: float = 1.0) -> type[FlowConfig]:
    """The optimiser and schedule fields (AdamW, warmup then decay), declared once with their bounds; a training
    config inherits the section built with its own defaults. ``weight_decay=None`` leaves that field out (a run
    that never decays its weights)."""
    fields = dict(
        total_steps=(int, Field(total_steps, ge=1, description="optimiser steps")),
        lr=(float, Field(lr, gt=0.0, description="peak learning rate (AdamW)")),
        warmup_steps=(int, Field(warmup_steps, ge=0, description="linear warmup steps")),
        schedule=(Schedule, Field(schedule, description="decay after the warmup")),
        clip_norm=(float, Field(clip_norm, ge=0.0, description="clip the global gradient norm (0 = off)")),
    )
    if weight_decay is not None:
        fields["weight_decay"] = (float, Field(weight_decay, ge=0.0, description="AdamW weight decay"))
    name = f"Optimiser_{schedule}_{lr:g}_{warmup_steps}_{total_steps}".replace(".", "_").replace("-", "_")
    return create_model(name, __base__=FlowConfig, **fields)


class T5Shape(BaseModel):
    """T5 architecture (T5 v1.1 conventions: gated-GELU, untied LM head, no dropout in pretraining)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    d_model: int = Field(64, ge=8)
    d_ff: int = Field(128, ge=8)
    d_kv: int = Field(16, ge=4)
    num_heads: int = Field(4, ge=1)
    num_layers: int = Field(2, ge=1)
    num_decoder_layers: int = Field(2, ge=1)
    feed_forward_proj: Literal["gated-gelu", "relu", "gated-silu"] = "gated-gelu"
    dropout_rate: float = Field(0.0, ge=0.0, lt=1.0)
    tie_word_embeddings: bool = False
