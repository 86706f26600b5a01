"""The live active-learning run's config and presets (``flows.active_learning`` wires the run; the round loop
is ``tasks.thai.al_loop``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.config.base import FlowConfig
from engine.config.paths import LocalPath

__all__ = [
    "PRESETS", "RESUMABLE_FIELDS", "ActiveLearningConfig", "AnnotatorChange", "AnnotatorSettings", "DataSettings",
    "Event", "GuidelineChange", "HumanSettings", "ModelChange", "PoolChange", "ScorerSettings", "base", "small",
    "tiny",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DataSettings(_Strict):
    source: Literal["orchid", "segmented"] = Field("orchid", description="labelled corpus (ORCHID or word|word files)")
    paths: list[LocalPath] = Field(default_factory=list, description="files/globs (orchid: optional, default the package's)")
    test_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="share of sentences in held-out test documents")
    split_seed: int = Field(0, description="seed of the document split (fixes the test set)")
    max_pool: int = Field(0, ge=0, description="subsample the initial pool to this many sentences (0 = all)")
    max_test: int = Field(0, ge=0, description="subsample the test set to this many sentences (0 = all)")
    min_chars: int = Field(1, ge=1, description="drop sentences shorter than this")


class ScorerSettings(_Strict):
    """Settings of models.al_scorers.sentence_score (see its docstring for the formulas)."""

    method: Literal["entropy", "margin", "least_confidence"] = "entropy"
    aggregate: Literal["mean", "max", "sum"] = "mean"
    length_normalize: bool = False
    cost_aware: bool = Field(False, description="divide by the sentence's characters (uncertainty per annotated char)")
    diversity: float = Field(0.0, ge=0.0, description="ranked arm: weight of n-gram novelty against the labelled set "
                             "and the batch so far (models.al_scorers.diverse_order; 0 = plain score order)")
    ngram: int = Field(3, ge=1, description="character n-grams of the novelty measure")

    @model_validator(mode="after")
    def _one_division(self):
        if self.length_normalize and self.cost_aware:
            raise ValueError("scorer.length_normalize and scorer.cost_aware both divide the score; set one")
        return self


class HumanSettings(_Strict):
    format: Literal["jsonl", "csv"] = "jsonl"
    wait: Literal["pause", "poll"] = Field("pause", description="pause: Prefect pause + UI form; poll: wait for the file")
    timeout_s: float = Field(86400.0, gt=0.0, description="give up waiting after this long (the run can be resumed)")
    poll_interval_s: float = Field(5.0, gt=0.0)
    directory: Optional[str] = Field(None, description="batch folder (default <run folder>/annotation)")
    prefill: Literal["none", "newmm"] = Field("none", description="pre-segment the batch file with newmm")


class AnnotatorSettings(_Strict):
    kind: Literal["simulated", "human"] = "simulated"
    guideline: Literal["orchid", "newmm"] = Field("orchid", description="simulated: convention of the answers")
    noise_rate: float = Field(0.0, ge=0.0, le=0.5, description="simulated: flip probability per decision position")
    human: HumanSettings = Field(default_factory=HumanSettings)


class _Event(_Strict):
    round: int = Field(..., ge=1, description="the round from which the change holds")


class GuidelineChange(_Event):
    kind: Literal["guideline"] = "guideline"
    guideline: Literal["orchid", "newmm"] = "newmm"


class PoolChange(_Event):
    kind: Literal["pool"] = "pool"
    source: Literal["wiki_titles", "text", "segmented"] = "wiki_titles"
    paths: list[LocalPath] = Field(default_factory=list, description="text/segmented: files or globs")
    max_items: int = Field(500, ge=1)


class AnnotatorChange(_Event):
    kind: Literal["annotator"] = "annotator"
    noise_rate: float = Field(..., ge=0.0, le=0.5)


class ModelChange(_Event):
    kind: Literal["model"] = "model"
    segmenter: dict[str, Any] = Field(..., description="SegmenterConfig fields to change, e.g. {'arch': 'bilstm'}")


Event = Annotated[Union[GuidelineChange, PoolChange, AnnotatorChange, ModelChange], Field(discriminator="kind")]


def _check_segmenter(overrides: dict[str, Any], where: str) -> None:
    from models.thai_segmenter import SegmenterConfig

    try:
        SegmenterConfig(**overrides)
    except TypeError as err:  # unknown field
        raise ValueError(f"{where}: {err}".replace("__init__() ", "")) from None


class ActiveLearningConfig(FlowConfig):
    preset: str = "tiny"
    experiment: str = "thai-active-learning"
    data: DataSettings = Field(default_factory=DataSettings)
    segmenter: dict[str, Any] = Field(default_factory=dict, description="SegmenterConfig fields (models/thai_segmenter.py)")
    scorer: ScorerSettings = Field(default_factory=ScorerSettings)
    annotator: AnnotatorSettings = Field(default_factory=AnnotatorSettings)
    seed: int = 0
    seed_size: int = Field(40, ge=1, description="sentences of the seed set, shared by both arms (round 0)")
    batch_size: int = Field(40, ge=1, description="sentences each arm selects per round (if batch_chars is 0)")
    batch_chars: int = Field(0, ge=0, description="characters each arm selects per round (0 = use batch_size): "
                             "equal annotation cost per round for both arms")
    rounds: int = Field(4, ge=1, description="selection rounds after the seed round")
    candidates: int = Field(0, ge=0, description="ranked arm scores this many random unlabelled items (0 = all)")
    cold_start_chars: int = Field(0, ge=0, description="cold start: the ranked arm takes random sentences until it "
                                  "has labelled this many characters (seed set included), then ranks with a model "
                                  "trained on them; 0 = rank from round 1 with the seed-set model")
    arms: list[Literal["random", "ranked", "partial"]] = Field(
        ["random", "ranked"], description="arms after the shared seed round: random (always first), ranked "
        "(whole sentences by the scorer) and partial (the most uncertain boundary windows; a human annotator gets "
        "them in the batch file's windows column)")
    partial_windows: int = Field(3, ge=1, description="partial arm: at most this many windows per sentence")
    partial_half_width: int = Field(2, ge=1, description="partial arm: a window shows this many characters on "
                                    "each side of the uncertain position")
    retrain: Literal["continue", "scratch"] = Field("continue", description="warm-start each round, or refit from scratch")
    fresh_epochs: int = Field(3, ge=1, description="epochs for a new model (seed round, scratch, model change)")
    round_epochs: int = Field(1, ge=1, description="epochs over all labelled data when continuing")
    schedule: list[Event] = Field(default_factory=list, description=(
        "environment changes, a JSON list: {kind: guideline, round, guideline: orchid|newmm}, {kind: pool, round, "
        "source: wiki_titles|text|segmented, paths, max_items}, {kind: annotator, round, noise_rate}, "
        "{kind: model, round, segmenter: {SegmenterConfig fields}}"))
    torch_threads: int = Field(1, ge=1, description="torch threads; the two arms run in two threads")
    run_name: Optional[str] = Field(None, description="run folder under output_root (default <preset>-<time>)")
    resume: Union[bool, Literal["auto"]] = Field(False, description="continue run_name from its state file "
                                                 "('auto': continue if there is one, else start it)")
    stop_after_round: Optional[int] = Field(None, ge=0, description="stop (resumably) after this round")
    rounds_per_call: int = Field(0, ge=0, description="stop (resumably) after this many rounds per call "
                                 "(0 = no limit); with resume='auto', one scheduled run = N rounds")
    output_root: Optional[LocalPath] = Field(None, description="default <state>/active_learning")
    register_models: bool = Field(True, description="register both final segmenters as thai-seg-<preset>-<arm>")

    @field_validator("segmenter")
    @classmethod
    def _segmenter_ok(cls, v):
        _check_segmenter(v, "segmenter")
        return v

    @model_validator(mode="after")
    def _check(self):
        for i, ev in enumerate(self.schedule):
            if ev.round > self.rounds:
                raise ValueError(f"schedule[{i}] ({ev.kind}) is at round {ev.round} but rounds={self.rounds}; "
                                 "use a round in 1..rounds")
            if isinstance(ev, ModelChange):
                _check_segmenter({**self.segmenter, **ev.segmenter}, f"schedule[{i}].segmenter")
            if isinstance(ev, PoolChange) and ev.source != "wiki_titles" and not ev.paths:
                raise ValueError(f"schedule[{i}]: a pool change from '{ev.source}' needs paths=[...]")
        if not self.arms or self.arms[0] != "random" or len(set(self.arms)) != len(self.arms):
            raise ValueError(f"arms must start with 'random' and list each arm once, got {self.arms}")
        if self.resume and not self.run_name:
            raise ValueError(f"resume={self.resume} needs run_name (the folder of the run to continue)")
        if self.stop_after_round is not None and self.stop_after_round > self.rounds:
            raise ValueError(f"stop_after_round={self.stop_after_round} exceeds rounds={self.rounds}")
        return self


_TINY_SEGMENTER = dict(embed_dim=16, class_dim=4, hidden=32, layers=3, kernel=5, batch_size=16)


def tiny() -> ActiveLearningConfig:
    """~1 minute on one core: 3k-sentence pool, 300 test sentences, 4 rounds, every kind of change."""
    return ActiveLearningConfig(
        data=DataSettings(max_pool=3000, max_test=300), segmenter=_TINY_SEGMENTER, seed_size=40, batch_chars=2500,
        rounds=4, candidates=800, fresh_epochs=3, round_epochs=2,
        schedule=[PoolChange(round=2, max_items=300), AnnotatorChange(round=2, noise_rate=0.03),
                  GuidelineChange(round=3), ModelChange(round=4, segmenter={"hidden": 48})])


def small() -> ActiveLearningConfig:
    """The measured experiment: ORCHID's whole pool and test split, 12 rounds of 20k characters per arm
    (~250k characters, ~3.7k sentences in the end), no environment change (a clean comparison)."""
    return ActiveLearningConfig(preset="small", seed_size=100, batch_chars=20000, rounds=12, candidates=4000,
                                fresh_epochs=3, round_epochs=1)


def base() -> ActiveLearningConfig:
    """A live-sized run: 30 rounds of 40k characters, the whole pool scored, a changing environment."""
    return ActiveLearningConfig(
        preset="base", seed_size=200, batch_chars=40000, rounds=30, candidates=0, fresh_epochs=4, round_epochs=1,
        torch_threads=2,
        schedule=[PoolChange(round=8, max_items=3000), AnnotatorChange(round=14, noise_rate=0.02),
                  GuidelineChange(round=20), ModelChange(round=26, segmenter={"arch": "bilstm", "hidden": 128})])


PRESETS = {"tiny": tiny, "small": small, "base": base}

# Fields that may differ between a run and its resumption (they do not change what is measured).
RESUMABLE_FIELDS = {"resume", "stop_after_round", "rounds_per_call", "rounds", "torch_threads", "register_models",
                    "schedule"}
