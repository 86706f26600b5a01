"""Corpus-prep flow: source -> clean, de-duplicated, split documents -> T5 SentencePiece tokenizer ->
packed token rows (Arrow) -> MLflow run with stats, tokenizer and dataset card.

    python -m flows.corpus_prep --preset tiny [--set vocab_size=4000 --set source=files --set 'paths=["data/*.txt"]']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from prefect import flow, get_run_logger

from engine.config.corpus_prep import PRESETS, CorpusPrepConfig, corpus_identity
from flows._cli import build_config, documented, preset_type, run_cli, run_footer
from tasks.corpus import build_corpus, fingerprint_source, is_complete, log_corpus, publish_corpus


Preset = preset_type(PRESETS)


@dataclass
class CorpusPrepResult:
    run_id: str
    corpus_dir: str
    cached: bool

    @property
    def tokenizer_dir(self) -> str:
        return f"{self.corpus_dir}/tokenizer"

    def summary(self) -> str:
        state = "reused the cached corpus" if self.cached else "built the corpus"
        return f"corpus-prep: {state} at {self.corpus_dir}\n" + run_footer(self.run_id)


@flow(name="corpus-prep")
@documented()
def corpus_prep(preset: Preset = "tiny", overrides: Optional[dict[str, Any]] = None,
                config: Optional[CorpusPrepConfig] = None, parent_run_id: Optional[str] = None) -> CorpusPrepResult:
    """Prepare a pretraining corpus (see module docstring)."""
    cfg = config or build_config(CorpusPrepConfig, PRESETS, preset, overrides)
    logger = get_run_logger()
    c = corpus_identity(cfg)
    fingerprint = fingerprint_source(c)
    state = build_corpus(c, fingerprint, return_state=True)
    corpus_dir, cached = state.result(), state.name == "Cached"
    if not is_complete(corpus_dir):  # the cached result points at a folder that was deleted since
        corpus_dir, cached = build_corpus.with_options(refresh_cache=True)(c, fingerprint), False
    if cached:
        logger.info("reusing cached corpus %s (same config and source fingerprint)", corpus_dir)
    run_id = log_corpus(corpus_dir, c, cached=cached, parent_run_id=parent_run_id)
    if cfg.publish_uri:
        corpus_dir = publish_corpus(corpus_dir, cfg.publish_uri, run_id)
    return CorpusPrepResult(run_id=run_id, corpus_dir=corpus_dir, cached=cached)


if __name__ == "__main__":
    run_cli(lambda c: corpus_prep(config=c), CorpusPrepConfig, PRESETS,
            description="Prepare a pretraining corpus: clean, split, tokenizer, packed Arrow rows, MLflow run.")
