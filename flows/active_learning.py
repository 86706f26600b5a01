"""Live active learning for Thai word segmentation: a random arm and a model-ranked arm, side by side.

    python -m flows.active_learning --preset tiny                      # ~1 minute, every environment change
    python -m flows.active_learning --preset small                     # the measured experiment (README numbers)
    python -m flows.active_learning --preset tiny --set annotator.kind=human --set annotator.human.wait=pause
    python -m flows.active_learning --preset small --set run_name=exp1 --set resume=true   # continue a run

After arXiv 1907.00038 ("The Practical Challenges of Active Learning: Lessons Learned from Live
Experimentation"). Both arms start from the same seed set and the
same initial model; each round both select ``batch_size`` sentences from the same pool (one at random,
one by the uncertainty scorer of ``models/al_scorers.py``), the annotator answers both batches at once
(blind to the arm), both segmenters retrain, concurrently, and are scored on held-out ORCHID documents.
Cost is counted in sentences and in characters. The environment can change under the experiment at
given rounds (``schedule``): annotation guideline, pool, annotator noise, model. Each change is an
MLflow tag ``env.rNN.<kind>``, an entry of ``events.json`` and a mark on ``learning_curve.png``.

A state file (``<output_root>/<run_name>/state.json``) is written after every round; ``resume=true``
continues a stopped or failed run from the last finished round, into the same MLflow runs.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from prefect import flow, get_run_logger
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.config import FlowConfig
from engine.paths import LocalPath
from flows._cli import build_config, documented, preset_type, run_cli


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
Preset = preset_type(PRESETS)

# Fields that may differ between a run and its resumption (they do not change what is measured).
_RESUMABLE = {"resume", "stop_after_round", "rounds_per_call", "rounds", "torch_threads", "register_models",
              "schedule"}


@dataclass
class ActiveLearningResult:
    run_id: str
    run_dir: str
    rounds_done: int
    stopped: bool
    numbers: dict[str, float] = field(default_factory=dict)
    model_uris: dict[str, str] = field(default_factory=dict)
    arm_run_ids: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        from tasks.tracking import artifact_local_path

        n = self.numbers
        head = (f"stopped after round {self.rounds_done}; continue with --set run_name={Path(self.run_dir).name} "
                "--set resume=true" if self.stopped else f"{self.rounds_done} rounds done")
        lines = [f"active learning: {head}"]
        if "random_final_f1" in n:
            arms = [a for a in ("ranked", "partial") if f"{a}_final_f1" in n]
            lines.append(f"final word F1: random {n['random_final_f1']:.4f} ({n['random_final_chars']:.0f} chars), "
                         + "".join(f"{a} {n[f'{a}_final_f1']:.4f} ({n[f'{a}_final_chars']:.0f} chars"
                                   + (" shown" if a == "partial" else "") + "), " for a in arms)
                         + f"newmm {n.get('newmm_test_f1', float('nan')):.4f}")
            lines.append(f"boundary F1: random {n['random_final_boundary_f1']:.4f}, "
                         + "".join(f"{a} {n[f'{a}_final_boundary_f1']:.4f}, " for a in arms)
                         + f"newmm {n.get('newmm_test_boundary_f1', float('nan')):.4f}")
            for a in arms:
                fraction = n.get("chars_fraction" if a == "ranked" else f"{a}_chars_fraction")
                if fraction is None:
                    lines.append(f"{a} arm did not reach the random arm's final F1")
                elif a == "ranked":
                    lines.append(f"ranked arm reached the random arm's final F1 with {fraction:.0%} of its "
                                 f"characters ({n['ranked_chars_to_random_final']:.0f}) and "
                                 f"{n['sentences_fraction']:.0%} of its sentences")
                else:
                    lines.append(f"{a} arm reached the random arm's final F1 with {fraction:.0%} of its characters "
                                 f"({n[f'{a}_chars_to_random_final']:.0f} shown)")
            if n.get("environment_changes"):
                lines[-1] += (f" (note: {n['environment_changes']:.0f} environment changes happened during the run; "
                              "the curves are not comparable across them)")
        if self.model_uris:
            lines.append("registered: " + ", ".join(f"{a} {u}" for a, u in self.model_uris.items()))
        lines += [f"MLflow run id: {self.run_id}", f"artifacts: {artifact_local_path(self.run_id)} (learning_curve.png)",
                  f"state: {self.run_dir}/state.json"]
        return "\n".join(lines)


def _annotator(cfg: ActiveLearningConfig, env: dict[str, Any], run_dir: Path):
    from tasks.annotators import HumanAnnotator, SimulatedAnnotator

    if cfg.annotator.kind == "human":
        h = cfg.annotator.human
        return HumanAnnotator(Path(h.directory) if h.directory else run_dir / "annotation", fmt=h.format,
                              wait=h.wait, timeout_s=h.timeout_s, poll_interval_s=h.poll_interval_s)
    return SimulatedAnnotator(guideline=env["guideline"], noise_rate=env["noise_rate"])


@contextlib.contextmanager
def _mlflow_runs(cfg: ActiveLearningConfig, state: dict[str, Any], run_dir: Path, parent_run_id: Optional[str]):
    """The parent run and one child run per arm: new ones, or (on resume) the ones in the state file."""
    from tasks import tracking
    from tasks.active_learning import ARMS, write_json_atomic

    if state.get("mlflow"):
        # tracking.mark_status cannot set RUNNING again: until it ends, a resumed run keeps the status of
        # its last stop (KILLED or FAILED) and carries the tag al_status=running.
        ids = state["mlflow"]
        for rid in ids.values():
            tracking.set_tags(rid, {"al_status": "running"})
        try:
            yield ids
        except BaseException as err:
            for rid in ids.values():
                tracking.set_tags(rid, {"error": f"{err.__class__.__name__}: {err}"[:4000]})
                tracking.mark_status(rid, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
            raise
        for rid in ids.values():
            tracking.set_tags(rid, {"al_status": "stopped" if state.get("stopped") else "finished"})
            tracking.mark_status(rid, "KILLED" if state.get("stopped") else "FINISHED")
        return
    tags = {"stage": "active_learning", "preset": cfg.preset, "run_folder": str(run_dir)}
    with contextlib.ExitStack() as stack:
        pid = stack.enter_context(tracking.start_run(cfg.experiment, run_dir.name, params=cfg.model_dump(),
                                                     tags=tags, parent_run_id=parent_run_id))
        state["mlflow"] = {"parent": pid, **{arm: stack.enter_context(tracking.start_run(
            cfg.experiment, f"{run_dir.name}-{arm}", tags={**tags, "arm": arm}, parent_run_id=pid))
            for arm in cfg.arms}}
        assert all(arm in ARMS for arm in cfg.arms)
        write_json_atomic(run_dir / "state.json", state)  # round_done = -1: resumable from the seed round on
        yield state["mlflow"]
        if state.get("stopped"):  # a planned stop: the runs end KILLED (resumable), not FINISHED
            for rid in state["mlflow"].values():
                tracking.set_tags(rid, {"al_status": "stopped"})
    if state.get("stopped"):
        for rid in state["mlflow"].values():
            tracking.mark_status(rid, "KILLED")


def _open_run(cfg: ActiveLearningConfig) -> tuple[Path, dict[str, Any]]:
    from tasks.active_learning import load_state
    from tasks.env import state_dir

    root = Path(cfg.output_root) if cfg.output_root else state_dir() / "active_learning"
    run_dir = root / (cfg.run_name or f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}")
    state = load_state(run_dir)
    if cfg.resume and (state is not None or cfg.resume is True):
        if state is None:
            raise FileNotFoundError(f"no state file in {run_dir}; nothing to resume (check run_name/output_root)")
        stored, now = state["config"], cfg.model_dump(mode="json")
        for c in (stored, now):  # how long to wait for a person may change; who annotates may not
            c.get("annotator", {}).pop("human", None)
        changed = sorted(k for k in now if k not in _RESUMABLE and stored.get(k) != now[k])
        if changed:
            raise ValueError(f"resume: config differs from the stored run in {changed}; use the run's config "
                             f"(see {run_dir}/state.json) or a new run_name")
        if state["round_done"] >= cfg.rounds:
            raise ValueError(f"run {run_dir.name} has done all {state['round_done']} rounds; raise rounds to continue it")
        if [e for e in stored["schedule"] if e["round"] <= state["round_done"]] != \
                [e for e in now["schedule"] if e["round"] <= state["round_done"]]:
            raise ValueError("resume: the schedule changed for rounds already done; only later events may change")
        return run_dir, state
    if state is not None:
        raise ValueError(f"run folder {run_dir} already holds a run; pass resume=true to continue it "
                         "or another run_name")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, {"config": cfg.model_dump(mode="json"), "round_done": -1, "events": []}


@dataclass
class _Run:
    """What every round of one run reads and writes."""

    cfg: ActiveLearningConfig
    run_dir: Path
    state: dict[str, Any]
    runs: dict[str, str]  # MLflow run ids: parent, then one per arm
    initial: list  # the initial pool (PoolItem)
    test: list
    reference: dict[str, Any]  # newmm on the test set, and the newmm-guideline gold
    schedule: Any  # tasks.active_learning.Schedule
    log: Any


@flow(name="active-learning")
@documented()
def active_learning(preset: Preset = "tiny", overrides: Optional[dict[str, Any]] = None,
                    config: Optional[ActiveLearningConfig] = None,
                    parent_run_id: Optional[str] = None) -> ActiveLearningResult:
    """Seed round, then ``rounds`` of select -> annotate -> retrain -> evaluate for both arms."""
    import torch

    from tasks import active_learning as al
    from tasks import tracking
    from tasks.thai_data import load_experiment

    cfg = config or build_config(ActiveLearningConfig, PRESETS, preset, overrides)
    torch.set_num_threads(cfg.torch_threads)
    run_dir, state = _open_run(cfg)
    d = cfg.data
    initial, test = load_experiment(d.source, d.paths, test_fraction=d.test_fraction, split_seed=d.split_seed,
                                    max_pool=d.max_pool, max_test=d.max_test, min_chars=d.min_chars)
    reference = al.newmm_reference(test, run_dir / "newmm_test.json")
    schedule = al.Schedule(cfg.schedule, seed=cfg.seed, guideline=cfg.annotator.guideline,
                           noise_rate=cfg.annotator.noise_rate, segmenter=cfg.segmenter)
    log = get_run_logger()
    log.info("pool %d sentences, test %d sentences; newmm on test: word F1 %.4f, boundary F1 %.4f",
             len(initial), len(test), reference["scores"]["newmm_test_f1"], reference["scores"]["newmm_test_boundary_f1"])

    with _mlflow_runs(cfg, state, run_dir, parent_run_id) as runs:
        run = _Run(cfg, run_dir, state, runs, initial, test, reference, schedule, log)
        tracking.log_metrics(runs["parent"], reference["scores"])
        start, state["stopped"] = state["round_done"] + 1, False
        arms = al.restore_arms(state) if start > 0 else {}
        if start > 0:
            _record(run, {"round": start, "kind": "resumed", "detail": f"resumed at round {start}", "time": time.time()})
        for r in range(start, cfg.rounds + 1):
            arms = _seed_round(run) if r == 0 else _round(run, r, arms)
            al.save_state(run_dir, state, arms, r)
            if _planned_stop(cfg, r, done_here=r - start + 1):
                state["stopped"] = True
                tracking.set_tags(runs["parent"], {"stopped_after_round": r})
                return ActiveLearningResult(runs["parent"], str(run_dir), r, True, arm_run_ids=runs)
        numbers, uris = _finish(run, arms)
    return ActiveLearningResult(runs["parent"], str(run_dir), cfg.rounds, False, numbers, uris, runs)


def _record(run: _Run, event: dict[str, Any]) -> None:
    from tasks import active_learning as al

    run.state["events"].append(event)
    al.log_event(list(run.runs.values()), event, run.state["events"])


def _seed_round(run: _Run) -> dict:
    """Round 0: one random seed set, annotated and trained once, shared by both arms."""
    import copy

    from tasks import active_learning as al

    pool = run.schedule.pool(run.initial, 0)
    pick = al.rng_for(run.cfg.seed, 0, "seed_set").choice(len(pool), size=min(run.cfg.seed_size, len(pool)),
                                                          replace=False)
    seed = al.Arm("random", None)
    rows = _annotate_train_evaluate(run, 0, {"random": seed}, {"random": [pool[i] for i in sorted(pick.tolist())]},
                                    {"random": {}}, pool, fresh=True)
    arms = {"random": seed}
    for name in run.cfg.arms[1:]:  # the other arms start from the same model and seed set
        arms[name] = copy.deepcopy(seed)
        arms[name].name = name
    _log_round(run, 0, arms, {name: rows["random"] for name in arms})
    return arms


def _round(run: _Run, r: int, arms: dict) -> dict:
    """Round r >= 1: environment changes, then each arm selects from the same pool; one blind annotation;
    both arms retrain and are evaluated concurrently."""
    from tasks import active_learning as al

    for event in run.schedule.changes(r):
        _record(run, event)
        run.log.info("round %d: environment change: %s", r, event["detail"])
    cfg, pool = run.cfg, run.schedule.pool(run.initial, r)
    futures, cold_arms = {}, set()
    for name, arm in arms.items():
        rng = al.rng_for(cfg.seed, r, "select", name)
        if name == "partial":
            futures[name] = al.select_windows_batch.submit(
                arm.model, pool, arm.partial, arm.labelled, cfg.candidates, rng, cfg.batch_chars or 20 * cfg.batch_size,
                cfg.partial_windows, cfg.partial_half_width, cfg.scorer.method)
        else:
            cold = name == "ranked" and arm.chars < cfg.cold_start_chars
            if cold:
                cold_arms.add(name)
                run.log.info("round %d: ranked arm in its cold start (%d of %d characters labelled): random sentences",
                             r, arm.chars, cfg.cold_start_chars)
            futures[name] = al.select_batch.submit(
                "random" if cold else name, arm.model, [it for it in pool if it.id not in arm.labelled], cfg.batch_size,
                cfg.scorer.model_dump(), cfg.candidates, rng, cfg.batch_chars,
                labelled_texts=["".join(words) for words in arm.labelled.values()])
    picked = {name: f.result() for name, f in futures.items()}
    if "ranked" in picked:
        picked["ranked"][-1]["cold_start"] = float("ranked" in cold_arms)
    windows = {name: p[1] for name, p in picked.items() if name == "partial"}
    fresh = cfg.retrain == "scratch" or run.schedule.new_model_at(r)
    rows = _annotate_train_evaluate(run, r, arms, {n: p[0] for n, p in picked.items()},
                                    {n: p[-1] for n, p in picked.items()}, pool, fresh=fresh, windows=windows)
    _log_round(run, r, arms, rows)
    return arms


def _annotate_train_evaluate(run: _Run, r: int, arms: dict, batches: dict, stats: dict, pool: list, *,
                             fresh: bool, windows: Optional[dict] = None) -> dict[str, dict[str, float]]:
    """Annotate the arms' batches at once (blind to the arm), retrain and evaluate every arm concurrently;
    returns each arm's row of the learning curve. The partial arm keeps only what its ``windows`` show,
    and pays the characters shown."""
    from tasks import active_learning as al

    cfg, env = run.cfg, run.schedule.environment(r)
    windows, cost = windows or {}, {}
    answers = al.annotate(_annotator(cfg, env, run.run_dir), batches, r, al.rng_for(cfg.seed, r, "annotate"),
                          windows.get("partial"))
    for name, arm in arms.items():
        if name in windows:  # the partial arm pays the characters its windows show
            cost[name] = al.keep_windows(arm, windows[name], answers[name], {it.id: it.text for it in batches[name]})
        else:
            arm.labelled.update(answers[name])
            cost[name] = sum(len(it.text) for it in batches[name])
        arm.chars += cost[name]
        arm.sentences += len(batches[name])
        arm.proxy += sum(it.words is None for it in batches[name])
    texts = {it.id: it.text for it in pool}
    fits = {name: al.retrain.submit(None if fresh else arm.model, arm.labelled, segmenter=env["segmenter"],
                                    epochs=cfg.fresh_epochs if fresh else cfg.round_epochs,
                                    init_generator=al.torch_generator_for(cfg.seed, r, "init"),
                                    fit_generator=al.torch_generator_for(cfg.seed, r, "fit"),
                                    partial=[(texts[i], p["starts"], p["known"]) for i, p in arm.partial.items()
                                             if i in texts and i not in arm.labelled])
            for name, arm in arms.items()}
    fit_stats = {}
    for name, f in fits.items():
        arms[name].model, fit_stats[name] = f.result()
    evals = {name: al.evaluate.submit(arm.model, run.test, _gold(run, env)) for name, arm in arms.items()}
    rows = {}
    for name, arm in arms.items():
        rows[name] = {"round": float(r), "annotated_sentences": float(arm.sentences),
                      "annotated_chars": float(arm.chars), "batch_sentences": float(len(batches[name])),
                      "batch_chars": float(cost[name]),
                      "pool_size": float(len(pool)), "proxy_sentences": float(arm.proxy),
                      **stats[name], **fit_stats[name], **evals[name].result()}
        agreement = al.annotation_agreement(batches[name], answers[name])
        if agreement is not None:
            rows[name]["annotation_gold_boundary_f1"] = agreement
    return rows


def _gold(run: _Run, env: dict[str, Any]):
    """The test set's gold under the guideline in force (None: ORCHID's own, the default)."""
    if not run.schedule.changes_guideline():
        return None
    if env["guideline"] == "newmm":
        return run.reference["guideline_gold"]
    return [list(it.words) for it in run.test]


def _log_round(run: _Run, r: int, arms: dict, rows: dict[str, dict[str, float]]) -> None:
    from tasks import active_learning as al

    for name, arm in arms.items():
        arm.history.append(rows[name])
        al.log_round(run.runs[name], rows[name], r)
    run.log.info("round %d: word F1 %s", r, ", ".join(f"{name} {arm.history[-1]['test_f1']:.4f} ({arm.chars} chars)"
                                                     for name, arm in arms.items()))
    al.log_learning_curve(run.runs["parent"], {name: arm.history for name, arm in arms.items()}, run.state["events"],
                          run.reference["scores"]["newmm_test_f1"])


def _planned_stop(cfg: ActiveLearningConfig, r: int, *, done_here: int) -> bool:
    return r < cfg.rounds and ((cfg.stop_after_round is not None and r >= cfg.stop_after_round)
                               or bool(cfg.rounds_per_call and done_here >= cfg.rounds_per_call))


def _finish(run: _Run, arms: dict) -> tuple[dict[str, float], dict[str, str]]:
    """The comparison numbers on the parent run, the events file, and both segmenters registered."""
    from tasks import active_learning as al
    from tasks import tracking

    cfg, runs = run.cfg, run.runs
    numbers = {**al.comparison_numbers({n: a.history for n, a in arms.items()}), **run.reference["scores"],
               "environment_changes": float(len(cfg.schedule))}
    tracking.log_metrics(runs["parent"], numbers)
    tracking.log_dict(runs["parent"], run.state["events"], "events.json")
    uris = {}
    if cfg.register_models:
        for name, arm in arms.items():
            uris[name] = al.register_segmenter(
                runs[name], arm.model, f"thai-seg-{cfg.preset}-{name}",
                {"preset": cfg.preset, "arm": name, "test_f1": f"{arm.history[-1]['test_f1']:.4f}",
                 "annotated_chars": arm.chars}, run.run_dir)
    return numbers, uris


if __name__ == "__main__":
    run_cli(lambda c: active_learning(config=c), ActiveLearningConfig, PRESETS,
            description="Active learning for Thai word segmentation: random vs model-ranked arms, live environment.")
