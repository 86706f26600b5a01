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
from typing import Any, Optional

from prefect import flow, get_run_logger

from engine.config.active_learning import PRESETS, RESUMABLE_FIELDS, ActiveLearningConfig
from flows._cli import build_config, documented, preset_type, run_cli


Preset = preset_type(PRESETS)

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
        changed = sorted(k for k in now if k not in RESUMABLE_FIELDS and stored.get(k) != now[k])
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
