"""Which downstream task a run uses: a built-in name, local jsonl files, or a Hugging Face dataset
(``tasks.downstream`` builds its data)."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.config.paths import LocalPath

__all__ = ["BUILTIN", "KINDS", "TaskSpec"]

BUILTIN = {
    "bbc_headline": {"kind": "generation", "prefix": "summarize: "},
    "wiki_description": {"kind": "generation", "prefix": "describe: "},
    "bbc_topic": {"kind": "classification", "prefix": "topic: ",
                  "labels": ["business", "entertainment", "politics", "sports", "tech"]},
    "sentiment": {"kind": "classification", "prefix": "sentiment: ", "labels": ["negative", "neutral", "positive"]},
    "text_normalization": {"kind": "normalization", "prefix": "normalize: "},
}
KINDS = ("generation", "classification", "normalization")


class TaskSpec(BaseModel):
    """Which task: a built-in name, local jsonl files, or a Hugging Face dataset."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: str = Field("bbc_topic", description=f"built-in: {', '.join(BUILTIN)}; or any name with jsonl/hf_name")
    jsonl: Optional[dict[str, LocalPath]] = Field(None, description="split -> jsonl path with input/target fields")
    hf_name: Optional[str] = Field(None, description="Hugging Face dataset name or local data folder")
    hf_config: Optional[str] = None
    input_field: str = "input"
    target_field: str = "target"
    kind: Optional[str] = Field(None, description="generation | classification | normalization (custom tasks)")
    labels: Optional[list[str]] = Field(None, description="label set of a custom classification task")
    max_examples: Optional[int] = Field(None, ge=1, description="cap per split (quick runs)")
    spans: Optional[tuple[int, int]] = Field(None, description="text_normalization: fewest and most spans per "
                                             "example (default 2, 4)")
    context: Optional[int] = Field(None, ge=0, le=5, description="text_normalization: context words either side of "
                                   "a span (default 2)")
    synthetic: Optional[int] = Field(None, ge=0, le=20, description="text_normalization: copies of each train "
                                     "document with its digits redrawn, whose spans join the train split "
                                     "(validation and test stay real; default 0)")

    @model_validator(mode="after")
    def _check(self):
        custom = self.jsonl is not None or self.hf_name is not None
        if not custom and self.name not in BUILTIN:
            raise ValueError(f"unknown task '{self.name}'; choose one of {', '.join(BUILTIN)} "
                             "or give jsonl files / hf_name for a custom task")
        if self.jsonl is not None and "train" not in self.jsonl:
            raise ValueError("jsonl needs at least a 'train' file (and ideally 'validation' and 'test')")
        if (self.spans is not None or self.context is not None or self.synthetic is not None) \
                and self.name != "text_normalization":
            raise ValueError("spans, context and synthetic are options of the text_normalization task")
        if self.spans is not None and not 1 <= self.spans[0] <= self.spans[1] <= 8:
            raise ValueError(f"spans must be (fewest, most) with 1 <= fewest <= most <= 8, got {list(self.spans)}")
        if self.kind is not None and self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got '{self.kind}'")
        return self

    def info(self) -> dict[str, Any]:
        if self.name in BUILTIN and self.jsonl is None and self.hf_name is None:
            return dict(BUILTIN[self.name])
        return {"kind": self.kind or ("classification" if self.labels else "generation"), "prefix": "",
                "labels": self.labels}
