"""The active-learning round loop (``flows.active_learning``) and the per-seed runs of the study (``flows.al_study``).

Not a Prefect task: :func:`run_experiment` calls the tasks of ``tasks/thai/active_learning.py`` with ``.submit``,
so it runs inside the flow. It owns the run's lifecycle: the run folder and its state file (resume rules),
the parent and per-arm MLflow runs, the seed round, then ``rounds`` of select -> annotate -> retrain ->
evaluate for every arm, planned stops, and the final numbers and registered segmenters. See the flow's
module docstring for the experiment (arXiv 1907.00038).
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from engine.config.active_learning import RESUMABLE_FIELDS, ActiveLearningConfig
from engine.config.al_study import ALStudyConfig
from tasks.thai import active_learning as al
from tasks import tracking
from tasks.thai.annotators import HumanAnnotator, SimulatedAnnotator
from tasks.runtime.env import state_dir
from tasks.thai.data import load_experiment


def run_experiment(cfg: ActiveLearningConfig, parent_run_id: Optional[str], log) -> dict[str, Any]:
    """Seed round, then ``rounds`` of select -> annotate -> retrain -> evaluate for every arm; returns the
    fields of ``flows.active_learning.ActiveLearningResult`` (run_id, run_dir, rounds_done, stopped, numbers,
    model_uris, arm_run_ids)."""
    torch.set_num_threads(cfg.torch_threads)
    run_dir, state = _open_run(cfg)
    d = cfg.data
    initial, test = load_experiment(d.source, d.paths, test_fraction=d.test_fraction, split_seed=d.split_seed,
                                    max_pool=d.max_pool, max_test=d.max_test, min_chars=d.min_chars)
    reference = al.newmm_reference(test, run_dir / "newmm_test.json")
    schedule = al.Schedule(cfg.schedule, seed=cfg.seed, guideline=cfg.annotator.guideline,
                           noise_rate=cfg.annotator.noise_rate, segmenter=cfg.segmenter)
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
                return _result(runs, run_dir, r, True)
        numbers, uris = _finish(run, arms)
    return _result(runs, run_dir, cfg.rounds, False, numbers, uris)


def _result(runs: dict[str, str], run_dir: Path, rounds_done: int, stopped: bool,
            numbers: Optional[dict[str, float]] = None, uris: Optional[dict[str, str]] = None) -> dict[str, Any]:
    return {"run_id": runs["parent"], "run_dir": str(run_dir), "rounds_done": rounds_done, "stopped": stopped,
            "numbers": numbers or {}, "model_uris": uris or {}, "arm_run_ids": runs}


def _annotator(cfg: ActiveLearningConfig, env: dict[str, Any], run_dir: Path):
    if cfg.annotator.kind == "human":
        h = cfg.annotator.human
        return HumanAnnotator(Path(h.directory) if h.directory else run_dir / "annotation", fmt=h.format,
                              wait=h.wait, timeout_s=h.timeout_s, poll_interval_s=h.poll_interval_s)
    return SimulatedAnnotator(guideline=env["guideline"], noise_rate=env["noise_rate"])


@contextlib.contextmanager
def _mlflow_runs(cfg: ActiveLearningConfig, state: dict[str, Any], run_dir: Path, parent_run_id: Optional[str]):
    """The parent run and one child run per arm: new ones, or (on resume) the ones in the state file."""
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
        assert all(arm in al.ARMS for arm in cfg.arms)
        al.write_json_atomic(run_dir / "state.json", state)  # round_done = -1: resumable from the seed round on
        yield state["mlflow"]
        if state.get("stopped"):  # a planned stop: the runs end KILLED (resumable), not FINISHED
            for rid in state["mlflow"].values():
                tracking.set_tags(rid, {"al_status": "stopped"})
    if state.get("stopped"):
        for rid in state["mlflow"].values():
            tracking.mark_status(rid, "KILLED")


def _open_run(cfg: ActiveLearningConfig) -> tuple[Path, dict[str, Any]]:
    """The run folder and its state: a new one, or (``resume``) the stored one, refused where the config
    differs in a field a resumed run may not change."""
    root = Path(cfg.output_root) if cfg.output_root else state_dir() / "active_learning"
    run_dir = root / (cfg.run_name or f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}")
    state = al.load_state(run_dir)
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
    schedule: al.Schedule
    log: Any


def _record(run: _Run, event: dict[str, Any]) -> None:
    run.state["events"].append(event)
    al.log_event(list(run.runs.values()), event, run.state["events"])


def _seed_round(run: _Run) -> dict:
    """Round 0: one random seed set, annotated and trained once, shared by both arms."""
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


# ------------------------------------------------------------------------------------------------
# the study: one run per seed, the full-pool ceiling, the report
# ------------------------------------------------------------------------------------------------


def seed_run(cfg: ALStudyConfig, name: str, seed: int, parent: str, log, *,
             run_flow: Callable[..., Any]) -> tuple[dict[str, list[dict[str, float]]], list[dict[str, Any]]]:
    """The arms' curves of one seed and its environment changes: from its finished run folder, or by
    running (or resuming) it with ``run_flow`` (the ``active_learning`` flow, called as a sub-flow)."""
    run_cfg = cfg.active_learning.model_copy(update={"seed": seed, "run_name": f"{name}-seed{seed}",
                                                     "resume": "auto", "register_models": False})
    root = run_cfg.output_root or state_dir() / "active_learning"
    state = al.load_state(Path(root) / run_cfg.run_name)
    if state is not None and state.get("round_done", -1) >= run_cfg.rounds and not state.get("stopped"):
        log.info("seed %d: reusing the finished run %s", seed, run_cfg.run_name)
    else:
        run_flow(config=ActiveLearningConfig.model_validate(run_cfg.model_dump()), parent_run_id=parent)
        state = al.load_state(Path(root) / run_cfg.run_name)
    return {arm: s["history"] for arm, s in state["arms"].items()}, state.get("events", [])


def study_full_pool_f1(cfg: ALStudyConfig) -> float:
    """The ceiling: word F1 of one segmenter trained on the whole gold pool of the study's data."""
    a, d = cfg.active_learning, cfg.active_learning.data
    pool, test = load_experiment(d.source, d.paths, test_fraction=d.test_fraction, split_seed=d.split_seed,
                                 max_pool=d.max_pool, max_test=d.max_test, min_chars=d.min_chars)
    return al.full_pool_f1(pool, test, segmenter=a.segmenter, epochs=a.fresh_epochs, seed=a.seed)


def report_study(run_id: str, runs: dict[int, tuple[dict, list]], full: Optional[float], *, goal_fraction: float,
                 log) -> tuple[dict[str, Any], str]:
    """The study's numbers, table (``study.md``), data (``study.json``), curves (``study_curves.png``) and
    headline metrics -> its MLflow run; returns the numbers and the table."""
    histories = {seed: h for seed, (h, _) in runs.items()}
    events = {seed: e for seed, (_, e) in runs.items()}
    numbers = al.study_numbers(histories, full, goal_fraction=goal_fraction, events=events)
    markdown = al.study_markdown(numbers)
    log.info("study:\n%s", markdown)
    tracking.log_text(run_id, markdown, "study.md")
    tracking.log_dict(run_id, {"numbers": numbers, "histories": {str(s): h for s, h in histories.items()}},
                      "study.json")
    tracking.log_figure(run_id, al.study_figure(histories, full, events=next(iter(events.values()), [])),
                        "study_curves.png")
    tracking.log_metrics(run_id, _headline(numbers))
    return numbers, markdown


def _headline(numbers: dict[str, Any]) -> dict[str, float]:
    out = {}
    if numbers["full_pool_f1"] is not None:
        out["full_pool_f1"] = numbers["full_pool_f1"]
    for arm, s in numbers["arms"].items():
        for key in ("final_f1", "final_chars", "fraction_of_random", "to_95_full"):
            if s[key].get("n"):
                out[f"{arm}.{key}.mean"], out[f"{arm}.{key}.std"] = s[key]["mean"], s[key]["std"]
    for arm, met in numbers["goal_met"].items():
        out[f"{arm}.goal_met"] = float(met)
    return out
