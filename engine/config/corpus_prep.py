"""The corpus-prep run's config and presets (``flows.corpus_prep`` wires the run)."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, model_validator

from engine.config.base import FlowConfig
from engine.config.paths import LocalPath

__all__ = ["PRESETS", "CorpusPrepConfig", "base", "corpus_identity", "laptop", "small", "tiny"]


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


def tiny() -> CorpusPrepConfig:
    """A few thousand documents, 2k-piece vocabulary: seconds on a laptop."""
    return CorpusPrepConfig(name="tiny", max_documents=3000, vocab_size=2000, pack_length=141,
                            validation_fraction=0.05, test_fraction=0.05, character_coverage=1.0)


def laptop() -> CorpusPrepConfig:
    """The whole packaged English mix, 8k vocabulary, rows for inputs_length 128 (~20 s on 2 cores)."""
    return CorpusPrepConfig(name="laptop", vocab_size=8000, pack_length=141)


def small() -> CorpusPrepConfig:
    """The whole packaged English mix, 8k vocabulary, rows for inputs_length 256."""
    return CorpusPrepConfig(name="small", vocab_size=8000, pack_length=284)


def base() -> CorpusPrepConfig:
    """The whole packaged mix, 32k vocabulary (T5's size), rows for inputs_length 512."""
    return CorpusPrepConfig(name="base", vocab_size=32000, pack_length=568)


PRESETS = {"tiny": tiny, "laptop": laptop, "small": small, "base": base}


def corpus_identity(cfg: CorpusPrepConfig) -> dict[str, Any]:
    """The fields that make the corpus (its build task's input and cache key). Where a copy is published does
    not change it; ``shard_rows=0`` (no shards) is left out, so corpora built before sharding keep their key."""
    return cfg.model_dump(exclude={"publish_uri"} | ({"shard_rows"} if cfg.shard_rows == 0 else set()))
