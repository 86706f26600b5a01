"""The pretraining run's config and presets (``flows.pretrain`` wires the run; benchmarks build their settings
from the same class)."""

from __future__ import annotations

from typing import Optional

from pydantic import Field, model_validator

from engine.config.base import T5Shape, TrainRunFields, optimiser_section
from engine.config.paths import FolderOrS3
from models.spactor import SpacTorConfig

__all__ = ["PRESETS", "PretrainConfig", "base", "laptop", "small", "tiny"]


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
    shard_prefetch: int = Field(2, ge=0, description="with stream_shards: micro-batches ahead whose shards a "
                                "background thread fetches while the model trains (0 = fetch on demand only)")

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


def tiny() -> PretrainConfig:
    """2-layer, d_model 64, tied embeddings (a sane initial loss at this size): 1-2 minutes on 2 cores.

    800 steps of 16 rows is what it takes for pretraining to matter downstream at this size (measured:
    bbc_topic accuracy 0.645 vs 0.585 from random init after the same fine-tuning)."""
    return PretrainConfig(model=T5Shape(tie_word_embeddings=True), total_steps=800, tau=400, batch_size=16, lr=2e-3,
                          warmup_steps=20, checkpoint_every=200, eval_every=100, log_every=20, cosine_every=100,
                          threads_per_worker=1)  # measured: a d_model-64 model trains slower on 2 threads than 1


def laptop() -> PretrainConfig:
    """The pipeline's laptop scale: 150 steps of 16 x 128 tokens (tau = 75), all cores of one machine.

    Sized for the pipeline's 90-minute budget on 2 cores, where since 2026-12-06 most minutes go to fine-tuning
    and distillation (the task is learned there). Measured on 2026-12-02: a hybrid step of a d_model-256, 4+4
    model takes about 2.2 s, of a d_model-384, 6+6 one about 4.1 s."""
    return PretrainConfig(preset="laptop", model=T5Shape(d_model=256, d_ff=1024, d_kv=64, num_heads=4, num_layers=4,
                                                         num_decoder_layers=4, tie_word_embeddings=True),
                          inputs_length=128, batch_size=16, total_steps=150, tau=75, lr=2e-3, warmup_steps=20,
                          checkpoint_every=75, eval_every=50, eval_batches=8, log_every=20, cosine_every=100)


def small() -> PretrainConfig:
    """T5-small-like (v1.1 shapes, 8+8 layers) on one GPU."""
    return PretrainConfig(preset="small", model=T5Shape(d_model=512, d_ff=1024, d_kv=64, num_heads=6, num_layers=8,
                                                        num_decoder_layers=8),
                          inputs_length=256, batch_size=64, total_steps=20000, tau=5000, lr=1e-3, warmup_steps=1000,
                          use_gpu=True, compile=True, checkpoint_every=1000, eval_every=500, eval_batches=20,
                          log_every=50, cosine_every=500)


def base() -> PretrainConfig:
    """T5 v1.1 base shapes, 512 input tokens, batch 64 per GPU worker (the paper's setting, scaled by workers)."""
    return PretrainConfig(preset="base", model=T5Shape(d_model=768, d_ff=2048, d_kv=64, num_heads=12, num_layers=12,
                                                       num_decoder_layers=12),
                          inputs_length=512, batch_size=64, total_steps=500000, tau=60000, lr=1e-3,
                          warmup_steps=10000, schedule="rsqrt", use_gpu=True, compile=True, num_workers=8,
                          checkpoint_every=5000, eval_every=5000, eval_batches=50, log_every=100, cosine_every=5000)


PRESETS = {"tiny": tiny, "laptop": laptop, "small": small, "base": base}
