"""The typed configs of the training and corpus runs, below ``flows/`` so that benchmarks and tasks share them.

One pydantic model per run kind, strict (``extra="forbid"``, no inf/NaN, assignments validated); the flows add
their presets (plain functions) and the command line. A config becomes a typed job for the workers with
:meth:`engine.jobs.Job.of` on the driver.

The optimiser and schedule fields of the three training runs are declared once, in :func:`optimiser_section`;
each run picks its own defaults there (pretraining: cosine at 3e-3; fine-tuning and distillation: linear
at 1e-3).

This module needs pydantic; the bare GPU machine of ``benchmarks/device_check.sh`` has none, so nothing on
the device path imports it (the jobs there are built from plain dicts).
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from engine.paths import FolderOrS3, LocalPath
from models.spactor import SpacTorConfig

__all__ = ["CorpusPrepConfig", "FlowConfig", "PretrainConfig", "T5Shape", "TrainRunFields", "optimiser_section"]

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


class PretrainConfig(TrainRunFields, optimiser_section(total_steps=60, lr=3e-3, warmup_steps=6, schedule="cosine")):
    preset: str = Field("tiny", description="name recorded in tags and the registered model name")
    corpus_dir: Optional[FolderOrS3] = Field(None, description="a corpus-prep output folder, or the s3://bucket/prefix "
                                             "it was published to (default: run corpus prep)")
    model: T5Shape = Field(default_factory=T5Shape)
    spactor: SpacTorConfig = Field(default_factory=SpacTorConfig,
                                   description="the hybrid objective's settings (models.spactor.SpacTorConfig, validated there)")
    tau: int = Field(30, ge=0, description="hybrid steps before plain SC (0 = SC baseline arm)")
    inputs_length: int = Field(128, ge=8, description="encoder tokens after corruption (T5: 512)")
    noise_density: float = Field(0.15, gt=0.0, lt=1.0)
    mean_noise_span_length: float = Field(3.0, ge=1.0)
    batch_size: int = Field(8, ge=1, description="rows per worker per micro-batch")
    grad_accum: int = Field(1, ge=1)
    compile: bool = Field(False, description="torch.compile the model (GPU presets)")
    checkpoint_every: int = Field(20, ge=0)
    keep_checkpoints: int = Field(2, ge=1)
    eval_every: int = Field(10, ge=0)
    eval_batches: int = Field(4, ge=1)
    log_every: int = Field(5, ge=1)
    cosine_every: int = Field(10, ge=0, description="log the SC/RTD gradient cosine every K steps (0 = never)")
    register_as: Optional[str] = Field(None, description="registered model name (default t5-<preset>-<arm>)")
    stream_shards: bool = Field(False, description="read the training rows from the corpus's Parquet shards "
                                "(<corpus>/shards/train, written by corpus prep with shard_rows > 0), fetched on "
                                "demand into a bounded per-worker cache (engine.shards), instead of memory-mapping the "
                                "packed split; an s3:// corpus is then not copied whole to each node, only its "
                                "tokenizer and validation split")
    shard_window: int = Field(4, ge=1, description="with stream_shards: shards whose rows are shuffled together "
                              "(models.shard_order; the epoch permutes the shards, then each window's rows)")
    max_cached_shards: int = Field(8, ge=1, description="with stream_shards: shard files a worker keeps on local disk "
                                   "and decoded in memory (least recently used out first); at least shard_window")

    @model_validator(mode="after")
    def _check(self):
        if self.tau > self.total_steps:
            raise ValueError(f"tau={self.tau} exceeds total_steps={self.total_steps}; use tau <= total_steps")
        if self.max_cached_shards < self.shard_window:
            raise ValueError(f"max_cached_shards={self.max_cached_shards} is below shard_window={self.shard_window}; "
                             "a window's shards must fit in the cache")
        from models.span_corruption import SpanCorruptionCollator

        SpanCorruptionCollator(vocab_size=1000, inputs_length=self.inputs_length, noise_density=self.noise_density,
                               mean_noise_span_length=self.mean_noise_span_length)
        return self

    @property
    def tokens_length(self) -> int:
        from models.span_corruption import compute_input_and_target_lengths

        return compute_input_and_target_lengths(self.inputs_length, self.noise_density, self.mean_noise_span_length)[0]


class CorpusPrepConfig(FlowConfig):
    name: str = Field("corpus", description="name of the corpus (output folder and MLflow run name)")
    source: Literal["packaged", "files", "hf"] = Field("packaged", description="where documents come from")
    packaged: list[str] = Field(["wiki", "news", "parl", "bbc", "dialog"], description="packaged sources to mix")
    paths: list[LocalPath] = Field([], description="globs of local .txt/.jsonl/.parquet files (source=files)")
    txt_unit: Literal["file", "paragraph", "line"] = Field("file", description="what one document is in a .txt file")
    on_decode_error: Literal["skip", "fail"] = Field("skip", description="undecodable/binary files: count+skip or refuse")
    hf_name: Optional[str] = Field(None, description="Hugging Face dataset name or local folder (source=hf)")
    hf_config: Optional[str] = None
    hf_split: str = "train"
    hf_revision: Optional[str] = None
    text_field: str = Field("text", description="field/column with the text (jsonl, parquet, hf)")
    max_documents: Optional[int] = Field(None, ge=1, description="stop after this many kept documents")
    unicode_form: Literal["NFKC", "NFC", "NFKD", "NFD", "none"] = "NFKC"
    min_chars: int = Field(20, ge=1, description="drop documents shorter than this after cleaning")
    hold_out_downstream: bool = Field(True, description="exclude documents reserved for downstream tasks")
    validation_fraction: float = Field(0.02, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.02, ge=0.0, lt=1.0)
    vocab_size: int = Field(8000, ge=200, le=1_000_000, description="SentencePiece pieces (+100 sentinels)")
    character_coverage: float = Field(0.9999, gt=0.0, le=1.0)
    split_digits: bool = Field(True, description="SentencePiece split_digits: every digit its own piece (numbers are "
                                                 "read digit by digit; text_normalization cannot be learned without)")
    tokenizer_sample_sentences: int = Field(1_000_000, ge=1000, description="sentences sampled to train the tokenizer")
    pack_length: int = Field(568, ge=8, description="tokens per packed row (span corruption's tokens_length)")
    shard_rows: int = Field(0, ge=0, description="also write each packed split as Parquet shards of this many rows "
                            "(<corpus>/shards/<split>/, with index.json), for pretraining's stream_shards; 0 = off "
                            "(then not part of the corpus's cache key, so existing corpora keep theirs)")
    num_proc: int = Field(2, ge=1, description="processes for tokenization")
    output_root: Optional[LocalPath] = Field(None, description="where corpora are written (default <state>/corpus)")
    publish_uri: Optional[str] = Field(None, pattern=r"^s3://[^/]+/.+", description="s3://bucket/prefix: also publish "
                                       "the corpus there (checksums last) and hand that URI to pretraining, whose "
                                       "workers download it once per node (no shared disk needed); not part of the "
                                       "corpus's cache key")

    @model_validator(mode="after")
    def _check_source(self):
        if self.source == "files" and not self.paths:
            raise ValueError("source=files needs paths (a list of globs)")
        if self.source == "hf" and not self.hf_name:
            raise ValueError("source=hf needs hf_name")
        if self.validation_fraction + self.test_fraction >= 0.9:
            raise ValueError("validation_fraction + test_fraction must leave a train split (< 0.9)")
        return self
