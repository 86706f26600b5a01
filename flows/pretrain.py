"""SpacTor pretraining flow: T5 span corruption + (for the first ``tau`` steps) generator + RTD, on Ray Train.

    python -m flows.pretrain --preset tiny [--set tau=0]            # tau=0: the SC baseline arm
    python -m flows.pretrain --preset tiny --set corpus_dir=/path/to/corpus

Without ``corpus_dir`` the flow first runs corpus prep with the same preset (cached when unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from prefect import flow

from engine.config.pretrain import PRESETS, PretrainConfig
from flows._cli import build_config, documented, preset_type, run_cli, run_footer


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
        from engine.config.corpus_prep import PRESETS as CORPUS_PRESETS
        from flows.corpus_prep import corpus_prep

        ccfg = CORPUS_PRESETS.get(cfg.preset, CORPUS_PRESETS["tiny"])().model_copy(update={"pack_length": cfg.tokens_length})
        corpus_dir = corpus_prep(config=ccfg, parent_run_id=parent_run_id).corpus_dir
    out = pretrain(cfg, corpus_dir, parent_run_id=parent_run_id, run_name=run_name)
    return PretrainResult(**out)


if __name__ == "__main__":
    run_cli(lambda c: pretrain_flow(config=c), PretrainConfig, PRESETS,
            description="Pretrain a T5 with SpacTor (hybrid SC + RTD for tau steps, then SC) on Ray Train workers.")
