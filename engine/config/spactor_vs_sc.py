"""The SpacTor-vs-SC study's config and presets (``flows.spactor_vs_sc`` wires the run)."""

from __future__ import annotations

from pydantic import Field, model_validator

from engine.config import corpus_prep as corpus_mod
from engine.config import finetune as finetune_mod
from engine.config import pretrain as pretrain_mod
from engine.config.base import FlowConfig, T5Shape
from engine.config.task import TaskSpec

__all__ = ["PRESETS", "SpacTorVsSCConfig", "laptop"]


class SpacTorVsSCConfig(FlowConfig):
    preset: str = "tiny"
    corpus: corpus_mod.CorpusPrepConfig = Field(default_factory=corpus_mod.tiny)
    pretrain: pretrain_mod.PretrainConfig = Field(default_factory=pretrain_mod.tiny,
                                                  description="shared settings; pretrain.tau is the SpacTor arm's tau")
    finetune_tasks: list[TaskSpec] = Field(default_factory=lambda: [TaskSpec(name="bbc_topic")],
                                           description="downstream tasks both arms are fine-tuned on ([] = none)")
    finetune: finetune_mod.FinetuneConfig = Field(default_factory=finetune_mod.tiny)
    seeds: list[int] = Field([0], min_length=1, description="one SC and SpacTor arm set per seed (data order and init)")
    taus: list[int] = Field([], description="tau sweep: one full-budget SpacTor arm per value ([] = pretrain.tau); "
                                            "include pretrain.total_steps for hybrid to the end")
    budget_fractions: list[float] = Field([], description="extra SpacTor arms (tau = pretrain.tau) with this fraction "
                                                          "of the steps, fine-tuned to find where SpacTor reaches SC's "
                                                          "downstream score (1.0 is always there)")
    experiment: str = "spactor-vs-sc"

    @model_validator(mode="after")
    def _check(self):
        if self.pretrain.tau == 0:
            raise ValueError("pretrain.tau must be > 0 for the SpacTor arm (the SC arm uses tau=0)")
        total = self.pretrain.total_steps
        for t in self.taus:
            if not 0 < t <= total:
                raise ValueError(f"taus: every tau must be in (0, pretrain.total_steps={total}], got {t}")
        for f in self.budget_fractions:
            if not 0.0 < f < 1.0:
                raise ValueError(f"budget_fractions must lie in (0, 1), got {f}")
            if self.pretrain.tau > round(f * total):
                raise ValueError(f"budget_fractions: {f} of {total} steps is {round(f * total)}, below "
                                 f"pretrain.tau={self.pretrain.tau}; use a larger fraction or a smaller tau")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        return self

    def sweep(self) -> list[int]:
        taus = list(dict.fromkeys(self.taus or [self.pretrain.tau]))
        return taus if self.pretrain.tau in taus else [self.pretrain.tau, *taus]

    def arms(self) -> list[tuple[str, int, int]]:
        """(arm label, tau, total steps) of every arm trained per seed."""
        total = self.pretrain.total_steps
        out = [("sc", 0, total)] + [(f"tau{t}", t, total) for t in self.sweep()]
        return out + [(f"tau{self.pretrain.tau}-x{f:g}", self.pretrain.tau, round(f * total))
                      for f in self.budget_fractions]


def _preset(name, corpus, pre):
    def make():
        p = pre()
        return SpacTorVsSCConfig(preset=name, corpus=corpus().model_copy(update={"pack_length": p.tokens_length}),
                                 pretrain=p, finetune=FINETUNE[name]())
    return make


def laptop() -> SpacTorVsSCConfig:
    """3 seeds x (SC, tau 60 / 150 / 600 = hybrid to the end, tau 150 at 50% and 75% of the steps) on 2 cores.

    A d_model 128, 3+3-layer T5 (the laptop corpus, 600 steps of 16 x 128 tokens), fine-tuned on bbc_topic.
    Measured: 2 h 12 min on 2 shared cores (about 1 h 45 min uncontended, estimated); numbers and verdict in
    docs/results.md."""
    p = pretrain_mod.laptop().model_copy(update=dict(
        model=T5Shape(d_model=128, d_ff=512, d_kv=32, num_heads=4, num_layers=3, num_decoder_layers=3,
                                   tie_word_embeddings=True),
        total_steps=600, tau=150, checkpoint_every=150, eval_every=50))
    return SpacTorVsSCConfig(preset="laptop", corpus=corpus_mod.laptop().model_copy(update={"pack_length": p.tokens_length}),
                             pretrain=p, finetune=finetune_mod.tiny().model_copy(update={"preset": "laptop"}),
                             seeds=[0, 1, 2], taus=[60, 150, 600], budget_fractions=[0.5, 0.75])


FINETUNE = {"tiny": finetune_mod.tiny, "small": finetune_mod.small, "base": finetune_mod.base}
PRESETS = {"tiny": _preset("tiny", corpus_mod.tiny, pretrain_mod.tiny), "laptop": laptop,
           "small": _preset("small", corpus_mod.small, pretrain_mod.small),
           "base": _preset("base", corpus_mod.base, pretrain_mod.base)}
