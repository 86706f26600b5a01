"""Prefect tasks of the active-learning flow: select, annotate, retrain, evaluate, log, plot, keep state.

Each task is a thin wrapper around ``models/`` (the segmenter, the scorers, the curve arithmetic) and
``tasks/thai/annotators.py``. Tasks take and return in-memory objects (models, items) with
``cache_policy=NONE``: nothing is hashed or persisted by Prefect; the flow's own state file
(:func:`save_state`) is what makes a run resumable.

Randomness: every draw comes from :func:`rng_for` / :func:`torch_generator_for`, stateless functions
of ``(seed, round, purpose[, arm])``, so a resumed run makes the same draws as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NONE

from models.al_scorers import char_ngrams, diverse_order, select_windows, sentence_scores, window_decisions
from models.curves import first_reach
from models.thai.metrics import boundary_prf, word_f1, word_starts
from models.thai_segmenter import SegmenterConfig, ThaiSegmenter
from tasks import tracking
from tasks.thai.annotators import HumanAnnotator, SimulatedAnnotator, apply_newmm_guideline, newmm_words
from tasks.thai.data import PoolItem

ARMS = ("random", "ranked", "partial")  # the order fixes each arm's random stream (rng_for)
_PURPOSE = {"seed_set": 1, "select": 2, "annotate": 3, "init": 4, "fit": 5, "pool": 6}


def rng_for(seed: int, round_no: int, purpose: str, arm: str = "") -> np.random.Generator:
    """A numpy Generator that depends only on its arguments (common random numbers across arms
    unless ``arm`` is given)."""
    arm_id = ARMS.index(arm) + 1 if arm else 0
    return np.random.default_rng([seed, round_no, _PURPOSE[purpose], arm_id])


def torch_generator_for(seed: int, round_no: int, purpose: str) -> torch.Generator:
    state = np.random.SeedSequence([seed, round_no, _PURPOSE[purpose]]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


@dataclass
class Arm:
    """One arm of the experiment: its segmenter, what it has had annotated, and its curve."""

    name: str
    model: Optional[ThaiSegmenter]  # None only before the seed round's training
    labelled: dict[str, list[str]] = field(default_factory=dict)  # item id -> words as annotated (in order)
    sentences: int = 0  # annotated sentences paid for (seed set included)
    chars: int = 0  # annotated characters paid for
    proxy: int = 0  # sentences answered by the newmm stand-in oracle (items without gold)
    history: list[dict[str, float]] = field(default_factory=list)  # one row per round
    partial: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # item id -> {known, starts}: partial arm


# ------------------------------------------------------------------------------------------------
# the environment schedule
# ------------------------------------------------------------------------------------------------


class Schedule:
    """The environment of the experiment round by round: the base settings plus the changes in force.

    ``events`` are the config's schedule entries (``kind`` guideline | pool | annotator | model, and
    ``round``, the first round they hold for). Everything is a function of the round, so a resumed
    run sees the same environment and pool as an uninterrupted one."""

    def __init__(self, events: Sequence[Any], *, seed: int, guideline: str, noise_rate: float,
                 segmenter: dict[str, Any]):
        self.listed = list(events)  # config order: the pool grows in this order
        self.events = sorted(self.listed, key=lambda e: e.round)
        self.seed = seed
        self.base = {"guideline": guideline, "noise_rate": noise_rate, "segmenter": dict(segmenter)}
        self._pools: dict[int, list[PoolItem]] = {}

    def environment(self, round_no: int) -> dict[str, Any]:
        """Annotator guideline and noise, and the segmenter config, in force at ``round_no``."""
        env = {**self.base, "segmenter": dict(self.base["segmenter"])}
        for ev in self.events:
            if ev.round > round_no:
                break
            if ev.kind == "guideline":
                env["guideline"] = ev.guideline
            elif ev.kind == "annotator":
                env["noise_rate"] = ev.noise_rate
            elif ev.kind == "model":
                env["segmenter"].update(ev.segmenter)
        return env

    def changes(self, round_no: int) -> list[dict[str, Any]]:
        """The changes that take effect at ``round_no``, as events: round, kind, detail, time."""
        before = self.environment(round_no - 1)
        return [{"round": round_no, "kind": ev.kind, "detail": self.describe(ev, before), "time": time.time()}
                for ev in self.events if ev.round == round_no]

    def new_model_at(self, round_no: int) -> bool:
        """True where a model change starts a fresh segmenter."""
        return any(ev.round == round_no and ev.kind == "model" for ev in self.events)

    def changes_guideline(self) -> bool:
        return self.base["guideline"] != "orchid" or any(ev.kind == "guideline" for ev in self.events)

    @staticmethod
    def describe(ev: Any, before: dict[str, Any]) -> str:
        if ev.kind == "guideline":
            return f"guideline {before['guideline']} -> {ev.guideline}"
        if ev.kind == "annotator":
            return f"annotator noise_rate {before['noise_rate']} -> {ev.noise_rate}"
        if ev.kind == "model":
            old = SegmenterConfig(**before["segmenter"])
            return "segmenter " + ", ".join(f"{k}: {getattr(old, k)} -> {v}" for k, v in ev.segmenter.items())
        return f"pool + {ev.max_items} items from {ev.source}" + (f" {ev.paths}" if ev.paths else "")

    def pool(self, initial: Sequence[PoolItem], round_no: int) -> list[PoolItem]:
        """The initial pool plus every pool change up to ``round_no``."""
        from tasks.thai.data import load_segmented_files, load_text_pool, load_wiki_titles

        pool, seen = list(initial), {it.id for it in initial}
        for i, ev in enumerate(self.listed):
            if ev.kind != "pool" or ev.round > round_no:
                continue
            if i not in self._pools:
                if ev.source == "wiki_titles":
                    self._pools[i] = load_wiki_titles(ev.max_items, rng=rng_for(self.seed, ev.round, "pool"))
                elif ev.source == "text":
                    self._pools[i] = load_text_pool(ev.paths)[: ev.max_items]
                else:
                    self._pools[i] = load_segmented_files(ev.paths)[: ev.max_items]
            pool += [it for it in self._pools[i] if it.id not in seen]
            seen.update(it.id for it in self._pools[i])
        return pool


# ------------------------------------------------------------------------------------------------
# selection
# ------------------------------------------------------------------------------------------------


def _take(order, items: Sequence[PoolItem], batch_size: int, batch_chars: int) -> list[int]:
    """The first ``batch_size`` indices of ``order``, or (``batch_chars > 0``) the shortest prefix of
    ``order`` holding at least ``batch_chars`` characters (the last sentence may cross the budget)."""
    if not batch_chars:
        return list(order[:batch_size])
    out, total = [], 0
    for i in order:
        if total >= batch_chars:
            break
        out.append(int(i))
        total += len(items[i].text)
    return out


def _novelty(texts: Sequence[str], covered: Sequence[str], ngram: int) -> float:
    """The fraction of the batch's distinct character n-grams that the labelled set does not already hold."""
    batch = set().union(*(char_ngrams(t, ngram) for t in texts)) if texts else set()
    known = set().union(*(char_ngrams(t, ngram) for t in covered)) if covered else set()
    return len(batch - known) / max(1, len(batch))


@task(name="select-batch", cache_policy=NONE)
def select_batch(arm: str, model: ThaiSegmenter, unlabelled: Sequence[PoolItem], batch_size: int,
                 scorer: dict[str, Any], candidates: int, rng: np.random.Generator, batch_chars: int = 0,
                 labelled_texts: Sequence[str] = ()) -> tuple[list[PoolItem], dict[str, float]]:
    """A batch of ``batch_size`` sentences (or, with ``batch_chars``, of about that many characters):
    in random order (arm ``random``) or in the scorer's order among ``candidates`` unlabelled items
    drawn at random (arm ``ranked``; 0 = the whole unlabelled pool), best first. With
    ``scorer["diversity"] > 0`` the ranked order discounts each sentence by how little of it is new against
    ``labelled_texts`` and the batch so far (``models.al_scorers.diverse_order``).

    Returns the batch and the selection-score statistics (the batch scored by the arm's own model,
    for both arms, so the two are comparable)."""
    t0 = time.perf_counter()
    stats: dict[str, float] = {}
    scorer = dict(scorer)
    diversity, ngram = float(scorer.pop("diversity", 0.0)), int(scorer.pop("ngram", 3))
    if arm == "partial":
        raise ValueError("the partial arm selects windows: use select_windows_batch")
    if arm == "random":
        picked = _take(rng.permutation(len(unlabelled)), unlabelled, batch_size, batch_chars)
        batch = [unlabelled[i] for i in sorted(picked)]
    else:
        idx = (np.arange(len(unlabelled)) if not candidates or candidates >= len(unlabelled)
               else np.sort(rng.choice(len(unlabelled), size=candidates, replace=False)))
        texts = [unlabelled[i].text for i in idx]
        scores = sentence_scores(texts, model, **scorer)
        if diversity > 0:
            order = idx[diverse_order(texts, scores, covered=labelled_texts, diversity=diversity, ngram=ngram,
                                      budget_chars=batch_chars or None, max_items=None if batch_chars else batch_size)]
            stats["batch_novelty"] = _novelty([unlabelled[i].text for i in order], labelled_texts, ngram)
        else:
            order = idx[np.lexsort((np.arange(len(idx)), -scores))]
        batch = [unlabelled[i] for i in _take(order, unlabelled, batch_size, batch_chars)]
        stats["candidates_score_mean"] = float(scores.mean()) if scores.size else 0.0
        stats["candidates"] = float(len(idx))
    s = sentence_scores([it.text for it in batch], model, **scorer) if batch else np.zeros(1)
    stats.update(sel_score_mean=float(s.mean()), sel_score_min=float(s.min()), sel_score_max=float(s.max()),
                 sel_score_std=float(s.std()), select_seconds=time.perf_counter() - t0)
    return batch, stats


@task(name="select-windows", cache_policy=NONE)
def select_windows_batch(model: ThaiSegmenter, pool: Sequence[PoolItem], known: dict[str, dict[str, list[int]]],
                         labelled: dict[str, list[str]], candidates: int, rng: np.random.Generator, batch_chars: int,
                         windows_per_text: int, half_width: int, method: str = "entropy"
                         ) -> tuple[list[PoolItem], dict[str, list[tuple[int, int]]], dict[str, float]]:
    """The partial arm's round: among ``candidates`` random pool items (0 = all) not fully annotated, the
    most uncertain boundary windows (``models.al_scorers.select_windows``) until ``batch_chars`` characters
    are shown; positions already annotated are no candidates. Returns the items, their windows and stats."""
    t0 = time.perf_counter()
    items = [it for it in pool if it.id not in labelled]
    idx = (np.arange(len(items)) if not candidates or candidates >= len(items)
           else np.sort(rng.choice(len(items), size=candidates, replace=False)))
    texts = [items[i].text for i in idx]
    probs = model.boundary_probs(texts)
    masks = model.decision_masks(texts)
    for j, i in enumerate(idx):
        done = known.get(items[i].id)
        if done:
            masks[j] = masks[j].copy()
            masks[j][done["known"]] = False
    chosen = select_windows(probs, masks, budget_chars=max(batch_chars, 1), windows_per_text=windows_per_text,
                            half_width=half_width, method=method)
    batch = [items[idx[j]] for j in sorted(chosen)]
    windows = {items[idx[j]].id: w for j, w in chosen.items()}
    shown = sum(e - s for w in windows.values() for s, e in w)
    return batch, windows, {"candidates": float(len(idx)), "windows": float(sum(len(w) for w in windows.values())),
                            "shown_chars": float(shown), "select_seconds": time.perf_counter() - t0}


def keep_windows(arm: "Arm", windows: dict[str, list[tuple[int, int]]], answers: dict[str, list[str]],
                 texts: dict[str, str]) -> int:
    """Record what the annotator decided inside ``windows`` (from its full answers) in ``arm.partial``;
    returns the characters shown (the cost)."""
    shown = 0
    for item_id, w in windows.items():
        text = texts[item_id]
        decided = window_decisions(w, len(text))
        starts = np.zeros(len(text), dtype=bool)
        starts[word_starts(list(answers[item_id]))] = True
        rec = arm.partial.setdefault(item_id, {"known": [], "starts": []})
        known = set(rec["known"]) | set(np.nonzero(decided)[0].tolist())
        rec["known"] = sorted(known)
        rec["starts"] = sorted(i for i in known if starts[i])
        shown += sum(e - s for s, e in w)
    return shown


# ------------------------------------------------------------------------------------------------
# annotation
# ------------------------------------------------------------------------------------------------


@task(name="annotate", cache_policy=NONE)
def annotate(annotator: SimulatedAnnotator | HumanAnnotator, batches: dict[str, list[PoolItem]], round_no: int,
             rng: np.random.Generator, windows: Optional[dict[str, list[tuple[int, int]]]] = None
             ) -> dict[str, dict[str, list[str]]]:
    """Annotate the union of the arms' batches once, in a shuffled order that hides which arm chose
    what; returns per arm ``{item id: words}``. A sentence chosen by both arms gets one answer.

    ``windows`` (the partial arm's: item id -> windows) go to the annotator for the items no whole-sentence
    arm chose too; a human then cuts only inside them (the file's ``windows`` column and the form say so)."""
    union: dict[str, PoolItem] = {}
    for arm in ARMS:
        for it in batches.get(arm, []):
            union.setdefault(it.id, it)
    items = [union[k] for k in sorted(union)]
    items = [items[i] for i in rng.permutation(len(items))]
    whole = {it.id for arm, b in batches.items() if arm != "partial" for it in b}
    asked = {k: list(w) for k, w in (windows or {}).items() if k not in whole and k in union}
    answers = dict(zip((it.id for it in items),
                       annotator.annotate(items, round_no=round_no, rng=rng, windows=asked or None)))
    for it in items:
        assert "".join(answers[it.id]) == it.text, it.id  # both annotators guarantee this
    return {arm: {it.id: answers[it.id] for it in batches.get(arm, [])} for arm in batches}


# ------------------------------------------------------------------------------------------------
# training and evaluation
# ------------------------------------------------------------------------------------------------


def new_model(segmenter: dict[str, Any], generator: torch.Generator) -> ThaiSegmenter:
    return ThaiSegmenter(SegmenterConfig(**segmenter), generator=generator)


@task(name="retrain", cache_policy=NONE)
def retrain(model: Optional[ThaiSegmenter], labelled: dict[str, list[str]], *, segmenter: dict[str, Any],
            epochs: int, init_generator: torch.Generator, fit_generator: torch.Generator,
            partial: Sequence[tuple[str, Sequence[int], Sequence[int]]] = ()
            ) -> tuple[ThaiSegmenter, dict[str, float]]:
    """Fit on everything annotated so far (whole sentences, and ``partial``: ``(text, starts, known)`` of
    partially annotated ones): continue from ``model`` or, when it is None, from a new model built from
    ``segmenter`` (first round, ``retrain=scratch``, or a model change)."""
    t0 = time.perf_counter()
    if model is None:
        model = new_model(segmenter, init_generator)
    fit = model.fit(list(labelled.values()), generator=fit_generator, epochs=epochs, partial=partial)
    return model, {"train_loss": fit.epoch_losses[-1] if fit.epoch_losses else float("nan"),
                   "train_sentences": float(fit.n_sentences), "train_seconds": time.perf_counter() - t0}


def segmentation_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], prefix: str = "test_"
                        ) -> dict[str, float]:
    p, r, f = boundary_prf([list(g) for g in gold], [list(x) for x in pred])
    return {f"{prefix}f1": word_f1([list(g) for g in gold], [list(x) for x in pred]),
            f"{prefix}boundary_f1": f, f"{prefix}boundary_precision": p, f"{prefix}boundary_recall": r}


@task(name="evaluate", cache_policy=NONE)
def evaluate(model: ThaiSegmenter, test: Sequence[PoolItem],
             guideline_gold: Optional[Sequence[Sequence[str]]] = None) -> dict[str, float]:
    """Word F1 and boundary P/R/F1 on the test set (ORCHID gold); with ``guideline_gold`` also
    ``test_guideline_f1`` / ``test_guideline_boundary_f1`` against the guideline now in force."""
    t0 = time.perf_counter()
    pred = model.segment_batch([it.text for it in test])
    out = segmentation_scores([it.words for it in test], pred)
    if guideline_gold is not None:
        g = segmentation_scores(guideline_gold, pred, prefix="test_guideline_")
        out.update({k: v for k, v in g.items() if k in ("test_guideline_f1", "test_guideline_boundary_f1")})
    out["eval_seconds"] = time.perf_counter() - t0
    return out


@task(name="newmm-reference", cache_policy=NONE)
def newmm_reference(test: Sequence[PoolItem], cache: Path) -> dict[str, Any]:
    """newmm on the test set: its scores against gold, and the test set under the newmm guideline.
    Cached in the run folder (newmm segments ~25k characters/s)."""
    if cache.is_file():
        return json.loads(cache.read_text(encoding="utf-8"))
    from tasks.thai.annotators import thai_dictionary

    t0 = time.perf_counter()
    nm = [newmm_words(it.text) for it in test]
    seconds = time.perf_counter() - t0
    out = {"scores": segmentation_scores([it.words for it in test], nm, prefix="newmm_test_"),
           "guideline_gold": [apply_newmm_guideline(it.words, w, thai_dictionary()) for it, w in zip(test, nm)]}
    out["scores"]["newmm_chars_per_s"] = sum(len(it.text) for it in test) / max(seconds, 1e-9)
    write_json_atomic(cache, out)
    return out


def annotation_agreement(items: Sequence[PoolItem], answers: dict[str, list[str]]) -> Optional[float]:
    """Boundary F1 of the delivered annotations against gold, over items that have gold (noise and
    guideline changes show up here)."""
    pairs = [(list(it.words), answers[it.id]) for it in items if it.words is not None and it.id in answers]
    if not pairs:
        return None
    return boundary_prf([g for g, _ in pairs], [a for _, a in pairs])[2]


# ------------------------------------------------------------------------------------------------
# logging and the learning curve
# ------------------------------------------------------------------------------------------------


@task(name="log-round", cache_policy=NONE)
def log_round(run_id: str, row: dict[str, float], round_no: int) -> None:
    tracking.log_metrics(run_id, {k: v for k, v in row.items() if k != "round"}, step=round_no)


def log_event(run_ids: Sequence[str], event: dict[str, Any], events: list[dict[str, Any]]) -> None:
    """An environment change: a tag ``env.rNN.<kind>`` on every run and the ``events.json`` artifact."""
    tag = {f"env.r{event['round']:02d}.{event['kind']}": event["detail"]}
    for rid in run_ids:
        tracking.set_tags(rid, tag)
    tracking.log_dict(run_ids[0], events, "events.json")


_METRIC_LABELS = {"test_f1": "word F1", "test_boundary_f1": "word-boundary F1"}
_MARKERS = {"guideline": "G", "pool": "P", "annotator": "A", "model": "M", "resumed": "R"}


def learning_curve_figure(histories: dict[str, list[dict[str, float]]], events: Sequence[dict[str, Any]],
                          newmm_f1: Optional[float], metric: str = "test_f1"):
    """F1 vs annotated characters and vs annotated sentences for both arms; newmm as a reference
    line; each environment change as a dotted vertical line labelled G/P/A/M (guideline, pool,
    annotator, model) at the round where it took effect."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = {"random": "tab:blue", "ranked": "tab:orange"}
    for ax, xkey, xlabel in ((axes[0], "annotated_chars", "annotated characters"),
                             (axes[1], "annotated_sentences", "annotated sentences")):
        for arm, rows in histories.items():
            ax.plot([r[xkey] for r in rows], [r[metric] for r in rows], "-o", ms=3, color=colours.get(arm),
                    label=f"{arm} arm")
            by_round = {int(r["round"]): r for r in rows}
            labels: dict[int, str] = {}
            for ev in events:
                if ev["kind"] != "resumed":
                    labels[int(ev["round"])] = labels.get(int(ev["round"]), "") + _MARKERS.get(ev["kind"], "?")
            for round_no, label in labels.items():
                if round_no not in by_round:
                    continue
                x = by_round[round_no][xkey]
                ax.axvline(x, color=colours.get(arm), ls=":", lw=1)
                ax.annotate(label, (x, 1.0), xycoords=("data", "axes fraction"), ha="center", va="bottom",
                            fontsize=8, color=colours.get(arm))
        if newmm_f1 is not None:
            ax.axhline(newmm_f1, color="grey", ls="--", lw=1, label=f"newmm ({newmm_f1:.3f})")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{_METRIC_LABELS.get(metric, metric)} (held-out ORCHID)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    kinds = sorted({e["kind"] for e in events if e["kind"] != "resumed"})
    note = ("  environment changes: " + ", ".join(f"{_MARKERS[k]}={k}" for k in kinds)) if kinds else ""
    fig.suptitle(f"Active learning for Thai word segmentation: random vs model-ranked{note}", fontsize=10)
    fig.tight_layout()
    return fig


def comparison_numbers(histories: dict[str, list[dict[str, float]]], metric: str = "test_f1") -> dict[str, float]:
    """Where each other arm first reaches the random arm's final ``metric`` (linear interpolation between
    rounds, ``models.curves.first_reach``), in characters (for the partial arm: characters shown) and, for
    the ranked arm, sentences. The ranked arm's keys keep their first names (``chars_fraction``...)."""
    rnd = histories["random"]
    target = rnd[-1][metric]
    out = {"random_final_f1": target, "random_final_boundary_f1": rnd[-1]["test_boundary_f1"],
           "random_final_chars": rnd[-1]["annotated_chars"], "random_final_sentences": rnd[-1]["annotated_sentences"]}
    for arm, rows in histories.items():
        if arm == "random":
            continue
        out.update({f"{arm}_final_f1": rows[-1][metric], f"{arm}_final_boundary_f1": rows[-1]["test_boundary_f1"],
                    f"{arm}_final_chars": rows[-1]["annotated_chars"]})
        ys = [r[metric] for r in rows]
        chars = first_reach([r["annotated_chars"] for r in rows], ys, target, lower_is_better=False)
        if chars is None:
            continue
        fraction = chars / rnd[-1]["annotated_chars"]
        if arm == "ranked":
            sents = first_reach([r["annotated_sentences"] for r in rows], ys, target, lower_is_better=False)
            out.update(ranked_chars_to_random_final=chars, ranked_sentences_to_random_final=sents,
                       chars_fraction=fraction, sentences_fraction=sents / rnd[-1]["annotated_sentences"])
        else:
            out.update({f"{arm}_chars_to_random_final": chars, f"{arm}_chars_fraction": fraction})
    return out


@task(name="log-learning-curve", cache_policy=NONE)
def log_learning_curve(run_id: str, histories: dict[str, list[dict[str, float]]], events: list[dict[str, Any]],
                       newmm_f1: Optional[float]) -> None:
    import matplotlib.pyplot as plt
    import pandas as pd

    fig = learning_curve_figure(histories, events, newmm_f1)
    tracking.log_figure(run_id, fig, "learning_curve.png")
    plt.close(fig)
    rows = [{"arm": arm, **r} for arm, rs in histories.items() for r in rs]
    tracking.log_table(run_id, pd.DataFrame(rows), "learning_curve.csv")


# ------------------------------------------------------------------------------------------------
# state
# ------------------------------------------------------------------------------------------------


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def save_models(run_dir: Path, arms: dict[str, Arm], round_no: int) -> dict[str, str]:
    """Each arm's model to ``models/<arm>/r<round>`` (a new folder per round, so the state file
    always points at a complete one); returns the folders."""
    out = {}
    for name, arm in arms.items():
        folder = run_dir / "models" / name / f"r{round_no:03d}"
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        arm.model.save(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        out[name] = str(folder)
    return out


def save_state(run_dir: Path, state: dict[str, Any], arms: dict[str, Arm], round_no: int) -> None:
    """Write the models, then ``state.json`` (atomically), then drop the previous rounds' models."""
    folders = save_models(run_dir, arms, round_no)
    state["round_done"] = round_no
    state["arms"] = {name: {"labelled": arm.labelled, "sentences": arm.sentences, "chars": arm.chars,
                            "proxy": arm.proxy, "history": arm.history, "model_dir": folders[name],
                            "partial": arm.partial}
                     for name, arm in arms.items()}
    write_json_atomic(run_dir / "state.json", state)
    for name in arms:
        for old in (run_dir / "models" / name).iterdir():
            if str(old) != folders[name]:
                shutil.rmtree(old, ignore_errors=True)


def load_state(run_dir: Path) -> Optional[dict[str, Any]]:
    path = run_dir / "state.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def restore_arms(state: dict[str, Any]) -> dict[str, Arm]:
    arms = {}
    for name, s in state["arms"].items():
        arms[name] = Arm(name, ThaiSegmenter.load(s["model_dir"]), labelled=s["labelled"], sentences=s["sentences"],
                         chars=s["chars"], proxy=s["proxy"], history=s["history"], partial=s.get("partial", {}))
    return arms


@task(name="register-segmenter", cache_policy=NONE)
def register_segmenter(run_id: str, model: ThaiSegmenter, name: str, tags: dict[str, Any], workdir: Path) -> str:
    """Save with ``ThaiSegmenter.save`` (safetensors + JSON) and register with the alias ``final``."""
    folder = workdir / "final" / name
    shutil.rmtree(folder, ignore_errors=True)
    model.save(folder)
    return tracking.register_model(run_id, folder, name, artifact_path="segmenter", tags=tags, aliases=("final",))


# ------------------------------------------------------------------------------------------------
# several seeds: the study
# ------------------------------------------------------------------------------------------------


def study_numbers(histories: dict[int, dict[str, list[dict[str, float]]]], full_pool_f1: Optional[float], *,
                  goal_fraction: float = 0.7, metric: str = "test_f1",
                  events: Optional[dict[int, Sequence[dict[str, Any]]]] = None) -> dict[str, Any]:
    """Per arm and seed, the characters needed to reach (a) the random arm's final F1 of the same seed and
    (b) 95% of the full-pool F1 (``models.curves.first_reach``, linear between rounds; None = never), with
    the spread across seeds; and whether an arm other than random reaches (a) with at most
    ``goal_fraction`` of random's characters (on the mean over seeds, and in every seed)."""
    from models.curves import spread

    arms = sorted({a for h in histories.values() for a in h}, key=lambda a: (a != "random", a))
    per: dict[str, dict[str, list]] = {a: {"final_f1": [], "final_chars": [], "to_random_final": [],
                                           "fraction_of_random": [], "to_95_full": []} for a in arms}
    for seed, h in histories.items():
        target = h["random"][-1][metric]
        for a in arms:
            rows = h[a]
            xs, ys = [r["annotated_chars"] for r in rows], [r[metric] for r in rows]
            p = per[a]
            p["final_f1"].append(ys[-1])
            p["final_chars"].append(xs[-1])
            reach = first_reach(xs, ys, target, lower_is_better=False)
            p["to_random_final"].append(reach)
            p["fraction_of_random"].append(None if reach is None else reach / h["random"][-1]["annotated_chars"])
            p["to_95_full"].append(None if full_pool_f1 is None else
                                   first_reach(xs, ys, 0.95 * full_pool_f1, lower_is_better=False))
    out: dict[str, Any] = {"seeds": sorted(histories), "full_pool_f1": full_pool_f1, "goal_fraction": goal_fraction,
                           "arms": {}}
    for a in arms:
        p = per[a]
        out["arms"][a] = {k: {"values": v, **spread([x for x in v if x is not None]),
                              "reached": sum(x is not None for x in v)} for k, v in p.items()}
    others = [a for a in arms if a != "random"]
    out["goal_met"] = {a: bool(out["arms"][a]["fraction_of_random"]["reached"] == len(histories)
                               and out["arms"][a]["fraction_of_random"]["mean"] <= goal_fraction
                               and out["arms"][a]["fraction_of_random"]["max"] <= goal_fraction) for a in others}
    out["recovery"] = recovery_numbers(histories, events or {})
    return out


def recovery_numbers(histories: dict[int, dict[str, list[dict[str, float]]]],
                     events: dict[int, Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per environment change and arm, how the curve recovers (``models.curves.recovery``), with the
    spread across seeds: the F1 before the change and at it, the dip, and the rounds until the curve is
    back at its value before the change. The window of a change ends at the next change. A guideline
    change is measured on ``test_guideline_f1`` (the test set under the guideline in force, what the
    arms now learn); the others on ``test_f1``."""
    from models.curves import recovery, spread

    changes_by_seed = {seed: sorted({(int(e["round"]), e["kind"], str(e.get("detail", ""))) for e in evs
                                     if e["kind"] != "resumed"}) for seed, evs in events.items()}
    if not changes_by_seed:
        return []
    changes = next(iter(changes_by_seed.values()))
    rounds_of_changes = sorted({r for r, _, _ in changes})
    out = []
    for round_no, kind, detail in changes:
        later = [r for r in rounds_of_changes if r > round_no]
        until = later[0] if later else None
        row: dict[str, Any] = {"round": round_no, "kind": kind, "detail": detail, "arms": {}}
        for seed, h in histories.items():
            if (round_no, kind, detail) not in changes_by_seed.get(seed, ()):
                continue
            for arm, rows in h.items():
                metric = "test_guideline_f1" if kind == "guideline" and "test_guideline_f1" in rows[-1] else "test_f1"
                row["metric"] = metric
                r = recovery([x["round"] for x in rows], [x[metric] for x in rows], round_no, until_round=until)
                acc = row["arms"].setdefault(arm, {"before": [], "after": [], "dip": [], "rounds_to_recover": [],
                                                   "window_rounds": r["window_rounds"]})
                for key in ("before", "after", "dip", "rounds_to_recover"):
                    acc[key].append(r[key])
        for arm, acc in row["arms"].items():
            n = len(acc["dip"])
            for key in ("before", "after", "dip", "rounds_to_recover"):
                vals = acc[key]
                acc[key] = {"values": vals, **spread([v for v in vals if v is not None]),
                            "reached": sum(v is not None for v in vals), "seeds": n}
        out.append(row)
    return out


def recovery_markdown(rows: list[dict[str, Any]]) -> str:
    """The recovery table: one line per change and arm."""
    if not rows:
        return ""

    def cell(s: dict, fmt: str) -> str:
        if not s.get("n"):
            return "not within the window"
        text = f"{s['mean']:{fmt}} ± {s['std']:{fmt}}"
        return text if s["reached"] == s["seeds"] else f"{text} ({s['reached']}/{s['seeds']} seeds)"

    lines = ["Recovery after each environment change (mean ± std across seeds; a change's window ends at the "
             "next change):", "",
             "| round | change | arm | metric | F1 before | F1 at the change | dip | rounds to recover |",
             "|---:|---|---|---|---:|---:|---:|---:|"]
    for row in rows:
        for arm, a in row["arms"].items():
            lines.append(f"| {row['round']} | {row['kind']}: {row['detail']} | {arm} | {row.get('metric', 'test_f1')} | "
                         f"{cell(a['before'], '.4f')} | {cell(a['after'], '.4f')} | {cell(a['dip'], '.4f')} | "
                         f"{cell(a['rounds_to_recover'], '.1f')} (of {a['window_rounds']}) |")
    return "\n".join(lines)


def study_markdown(numbers: dict[str, Any]) -> str:
    """The study's table and verdict, as printed and logged (``study.md``)."""
    n = len(numbers["seeds"])
    full = numbers["full_pool_f1"]

    def cell(s: dict, fmt: str) -> str:
        if not s.get("n"):
            return "never"
        text = f"{s['mean']:{fmt}} ± {s['std']:{fmt}}"
        return text if s["reached"] == n else f"{text} ({s['reached']}/{n} seeds)"

    lines = [f"Active learning over {n} seed(s) {numbers['seeds']}; mean ± sample std across seeds"
             + (f"; full-pool word F1 {full:.4f} (95%: {0.95 * full:.4f})" if full is not None else ""), "",
             "| arm | final word F1 | final chars | chars to random's final F1 | fraction of random's chars "
             "| chars to 95% of full-pool F1 |", "|---|---:|---:|---:|---:|---:|"]
    for a, s in numbers["arms"].items():
        own = a == "random"  # random against its own final F1: only the noise of its curve, not a result
        lines.append(f"| {a} | {cell(s['final_f1'], '.4f')} | {cell(s['final_chars'], ',.0f')} | "
                     f"{'(itself)' if own else cell(s['to_random_final'], ',.0f')} | "
                     f"{'1' if own else cell(s['fraction_of_random'], '.2f')} | {cell(s['to_95_full'], ',.0f')} |")
    lines.append("")
    goal = numbers["goal_fraction"]
    for a, met in numbers["goal_met"].items():
        s = numbers["arms"][a]["fraction_of_random"]
        per_seed = " / ".join("never" if v is None else f"{v:.2f}" for v in s["values"])
        got = (f"{s['mean']:.2f} of random's characters (per seed {per_seed})" if s.get("n")
               else "never reaches random's final F1")
        lines.append(f"- **{a}**: {got} (goal: at most {goal:.2f}, in every seed): "
                     + ("**goal met**" if met else "**goal not met**"))
    if numbers.get("recovery"):
        lines += ["", recovery_markdown(numbers["recovery"])]
    return "\n".join(lines)


def study_figure(histories: dict[int, dict[str, list[dict[str, float]]]], full_pool_f1: Optional[float],
                 metric: str = "test_f1", events: Sequence[dict[str, Any]] = ()):
    """Word F1 against annotated characters: per arm the mean over seeds, round by round, with a band of
    one standard deviation; the full-pool F1 and 95% of it as reference lines; each environment change
    as a dotted line labelled G/P/A/M at the random arm's characters of its round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    arms = sorted({a for h in histories.values() for a in h}, key=lambda a: (a != "random", a))
    for a in arms:
        curves = [h[a] for h in histories.values()]
        n = min(len(c) for c in curves)
        xs = np.array([[c[i]["annotated_chars"] for i in range(n)] for c in curves]).mean(axis=0)
        ys = np.array([[c[i][metric] for i in range(n)] for c in curves])
        mean, std = ys.mean(axis=0), ys.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros(n)
        ax.plot(xs, mean, "-o", ms=3, label=f"{a} (mean of {len(curves)} seeds)")
        ax.fill_between(xs, mean - std, mean + std, alpha=0.2)
    if full_pool_f1 is not None:
        ax.axhline(full_pool_f1, color="grey", ls="--", lw=1, label=f"full pool ({full_pool_f1:.3f})")
        ax.axhline(0.95 * full_pool_f1, color="grey", ls=":", lw=1, label="95% of full pool")
    labels: dict[int, str] = {}
    for ev in events:
        if ev["kind"] != "resumed":
            labels[int(ev["round"])] = labels.get(int(ev["round"]), "") + _MARKERS.get(ev["kind"], "?")
    reference = arms[0] if arms else None
    for round_no, label in sorted(labels.items()):
        xs_at = [r["annotated_chars"] for h in histories.values() for r in h.get(reference, []) if r["round"] == round_no]
        if xs_at:
            x = float(np.mean(xs_at))
            ax.axvline(x, color="black", ls=":", lw=1)
            ax.annotate(label, (x, 1.0), xycoords=("data", "axes fraction"), ha="center", va="bottom", fontsize=8)
    ax.set_xlabel("annotated characters")
    ax.set_ylabel(f"{_METRIC_LABELS.get(metric, metric)} (held-out ORCHID)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


@task(name="full-pool-segmenter", cache_policy=NONE)
def full_pool_f1(pool: Sequence[PoolItem], test: Sequence[PoolItem], *, segmenter: dict[str, Any], epochs: int,
                 seed: int) -> float:
    """Word F1 on the test set of a segmenter trained on the whole gold pool: the ceiling of the curves."""
    labelled = {it.id: list(it.words) for it in pool if it.words}
    model, _ = retrain.fn(None, labelled, segmenter=segmenter, epochs=epochs,
                          init_generator=torch_generator_for(seed, 0, "init"),
                          fit_generator=torch_generator_for(seed, 0, "fit"))
    return evaluate.fn(model, test)["test_f1"]
