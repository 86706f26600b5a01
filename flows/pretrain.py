"""SpacTor pretraining flow: T5 span corruption + (for the first ``tau`` steps) generator + RTD, on Ray Train.

    python -m flows.pretrain --preset tiny [--set tau=0]            # tau=0: the SC baseline arm
    python -m flows.pretrain --preset tiny --set corpus_dir=/path/to/corpus

Without ``corpus_dir`` the flow first runs corpus prep with the same preset (cached when unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from prefect import flow

from engine import config
from engine.config import T5Shape
from flows._cli import build_config, documented, preset_type, run_cli, run_footer


class PretrainConfig(config.PretrainConfig):
    """The pretrain flow's config: the schema and its rules are ``engine.config.PretrainConfig`` (shared with the
    benchmarks); this flow adds its presets and command line."""


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
Preset = preset_type(PRESETS)


@dataclass
class PretrainResult:
    run_id: str
    model_uri: str
    model_dir: str
    arm: str
    evals: list
    cum_flops: int

    def summary(self) -> str:
        last = self.evals[-1]["val_sc_loss"] if self.evals else float("nan")
        return (f"pretrain ({self.arm}): final validation SC loss {last:.4f}, {self.cum_flops:.3e} training FLOPs\n"
                + run_footer(self.run_id, model_uri=self.model_uri))


@flow(name="pretrain")
@documented()
def pretrain_flow(preset: Preset = "tiny", overrides: Optional[dict[str, Any]] = None,
                  config: Optional[PretrainConfig] = None, parent_run_id: Optional[str] = None,
                  run_name: Optional[str] = None) -> PretrainResult:
    """Pretrain one arm (SpacTor if tau > 0, SC if tau == 0); ``run_name`` names the MLflow run (default
    ``<preset>-<arm>``)."""
    from tasks.pretrain import pretrain

    cfg = config or build_config(PretrainConfig, PRESETS, preset, overrides)
    corpus_dir = cfg.corpus_dir
    if corpus_dir is None:
        from flows.corpus_prep import PRESETS as CORPUS_PRESETS, corpus_prep

        ccfg = CORPUS_PRESETS.get(cfg.preset, CORPUS_PRESETS["tiny"])().model_copy(update={"pack_length": cfg.tokens_length})
        corpus_dir = corpus_prep(config=ccfg, parent_run_id=parent_run_id).corpus_dir
    out = pretrain(cfg.model_dump(), corpus_dir, parent_run_id=parent_run_id, run_name=run_name)
    return PretrainResult(**out)


if __name__ == "__main__":
    run_cli(lambda c: pretrain_flow(config=c), PretrainConfig, PRESETS,
            description="Pretrain a T5 with SpacTor (hybrid SC + RTD for tau steps, then SC) on Ray Train workers.")
