"""Annotators behind one interface: ``annotate(items, round_no=..., rng=...) -> list of word lists``.

Every annotator returns, per item, a segmentation of exactly the item's characters.

``SimulatedAnnotator`` (guideline, noise_rate) answers from the gold segmentation:

- guideline ``"orchid"``: the gold words (ORCHID's convention).
- guideline ``"newmm"``: ORCHID's words, except that compounds and names that pythainlp's dictionary
  lists as one word are one word. Precisely (:func:`apply_newmm_guideline`): segment the text with
  pythainlp ``newmm``; each newmm word that (a) starts and ends on gold word edges, (b) covers two or
  more gold words and (c) is in ``pythainlp.corpus.thai_words()`` replaces the gold words it covers.
  Every other gold boundary is kept; newmm never adds one. (On ORCHID this merges ~5 % of the gold
  boundaries: การ|พัฒนา -> การพัฒนา, คณะ|รัฐมนตรี -> คณะรัฐมนตรี.)
- items without gold (an unlabelled pool that joined later, e.g. Wikipedia titles): the annotator
  answers with newmm's segmentation, a stand-in oracle (counted as ``proxy`` in the flow's metrics).
- ``noise_rate``: each decision position (a character where a word may start: not the first
  character, not a following vowel, tone or combining mark, not right after a leading vowel) has its
  label flipped with probability ``noise_rate``, drawn from the ``rng`` passed in.

``HumanAnnotator`` writes the batch to ``round-NNN.jsonl`` (or ``.csv``) with one row per sentence
(``id``, ``text``, ``sep``, ``segmented``: the text to cut with ``sep``), waits for
``round-NNN.annotated.jsonl`` (same rows, ``segmented`` cut into words, or a ``words`` list), reads it
back and checks that every sentence keeps its characters (an error names the line). Waiting:

- ``wait="pause"``: ``prefect.flow_runs.pause_flow_run(wait_for_input=AnnotationDone)``: the flow run
  shows as *Paused* in the Prefect UI with a form (the annotated file's path); *Resume* continues it.
  Headless: ``python -m tasks.thai.annotators resume <flow-run-id> <annotated-file>``.
- ``wait="poll"``: poll for the annotated file until ``timeout_s`` (for scripts, tests, cron).
  The file is read once it exists and reads completely; one that still fails to read after it
  stopped changing for ``settle_s`` is an error (so a file being written is not refused half-way).

Either way a timeout raises :class:`AnnotationTimeout` (a ``ValueError``); the flow has saved its
state after the last finished round, so ``resume=true`` continues with the same batch.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Optional, Protocol, Sequence

import numpy as np

from models.thai.chars import forbidden_starts
from models.thai.metrics import word_starts, words_from_starts
from tasks.thai.data import PoolItem

__all__ = ["Annotator", "SimulatedAnnotator", "HumanAnnotator", "AnnotationTimeout", "AnnotationError",
           "newmm_words", "apply_newmm_guideline", "flip_boundaries", "write_batch", "read_annotations",
           "SEPARATORS"]

#: Word separators for annotation files, in order of preference; the first one absent from a text is used.
SEPARATORS = ("|", "¦", "‖", "⁞")


class AnnotationError(ValueError):
    """The annotated file is wrong (bad row, changed characters, missing or unknown ids)."""


class AnnotationTimeout(ValueError):
    """Nobody delivered the annotations in time."""


class Annotator(Protocol):
    name: str

    def annotate(self, items: Sequence[PoolItem], *, round_no: int, rng: np.random.Generator,
                 windows: Optional[dict[str, list[tuple[int, int]]]] = None) -> list[list[str]]:
        """Words per item. ``windows`` (item id -> half-open character windows) asks only for the word starts
        inside those windows of those items (partial annotation); what is answered outside them is not used."""
        ...


# ------------------------------------------------------------------------------------------------
# Simulated annotator (pure functions first)
# ------------------------------------------------------------------------------------------------


def newmm_words(text: str) -> list[str]:
    """pythainlp's dictionary segmenter (maximal matching, ``engine="newmm"``), whitespace kept."""
    from pythainlp.tokenize import word_tokenize

    words = [w for w in word_tokenize(text, engine="newmm", keep_whitespace=True) if w]
    if "".join(words) != text:  # never seen; guard the invariant the flow relies on
        raise AssertionError(f"newmm changed the characters of {text[:40]!r}")
    return words


@lru_cache(maxsize=1)
def thai_dictionary() -> frozenset[str]:
    from pythainlp.corpus import thai_words

    return frozenset(thai_words())


def apply_newmm_guideline(words: Sequence[str], newmm: Sequence[str], dictionary: frozenset[str] | set[str]
                          ) -> list[str]:
    """Gold ``words`` with the compounds/names of ``newmm`` merged (see the module docstring).

    ``newmm`` must segment the same text. A newmm word is merged only if it is in ``dictionary``,
    starts and ends on gold edges and covers >= 2 gold words.
    """
    text = "".join(words)
    if "".join(newmm) != text:
        raise ValueError("words and newmm segment different texts")
    gold = set(word_starts(list(words)))
    edges = gold | {len(text)}
    drop: set[int] = set()
    offset = 0
    for w in newmm:
        start, end = offset, offset + len(w)
        offset = end
        inner = [b for b in range(start + 1, end) if b in gold]
        if inner and start in edges and end in edges and w in dictionary:
            drop.update(inner)
    return words_from_starts(text, sorted(gold - drop))


def flip_boundaries(words: Sequence[str], noise_rate: float, rng: np.random.Generator) -> list[str]:
    """Flip the word-start label of each decision position with probability ``noise_rate``.

    Decision positions are those where orthography allows a word start (index >= 1); the
    characters never change."""
    if not 0.0 <= noise_rate <= 1.0:
        raise ValueError(f"noise_rate must be in [0, 1], got {noise_rate!r}")
    text = "".join(words)
    if noise_rate == 0.0 or len(text) < 2:
        return list(words)
    labels = np.zeros(len(text), dtype=bool)
    labels[word_starts(list(words))] = True
    free = ~forbidden_starts(text)
    free[0] = False
    flip = (rng.random(len(text)) < noise_rate) & free
    labels ^= flip
    return words_from_starts(text, np.flatnonzero(labels))


@dataclass
class SimulatedAnnotator:
    """Answers from gold (see the module docstring); ``proxy_count`` counts items answered by newmm."""

    guideline: str = "orchid"
    noise_rate: float = 0.0
    name: str = "simulated"
    proxy_count: int = 0

    def __post_init__(self) -> None:
        if self.guideline not in ("orchid", "newmm"):
            raise ValueError(f"guideline must be 'orchid' or 'newmm', got {self.guideline!r}")
        if not 0.0 <= self.noise_rate <= 0.5:
            raise ValueError(f"noise_rate must be in [0, 0.5], got {self.noise_rate!r}")

    def reference(self, item: PoolItem) -> list[str]:
        """The noise-free answer under the current guideline."""
        if item.words is None:
            return newmm_words(item.text)
        if self.guideline == "newmm":
            return apply_newmm_guideline(item.words, newmm_words(item.text), thai_dictionary())
        return list(item.words)

    def annotate(self, items: Sequence[PoolItem], *, round_no: int, rng: np.random.Generator,
                 windows: Optional[dict[str, list[tuple[int, int]]]] = None) -> list[list[str]]:
        # the gold answer is whole; the caller keeps only the decisions inside the windows
        self.proxy_count = sum(it.words is None for it in items)
        return [flip_boundaries(self.reference(it), self.noise_rate, rng) for it in items]


# ------------------------------------------------------------------------------------------------
# Human annotator: files + Prefect pause
# ------------------------------------------------------------------------------------------------


def _separator(text: str) -> str:
    for sep in SEPARATORS:
        if sep not in text:
            return sep
    raise ValueError(f"text {text[:40]!r} contains every separator {SEPARATORS}; cannot write it for annotation")


def write_batch(items: Sequence[PoolItem], path: Path, *, prefill: Optional[list[list[str]]] = None,
                windows: Optional[dict[str, list[tuple[int, int]]]] = None) -> Path:
    """Write the batch for annotators (jsonl or csv by suffix), atomically; returns ``path``.

    ``segmented`` holds the text (or, with ``prefill``, a suggested segmentation) cut with ``sep``. With
    ``windows``, a row of a windowed item also has ``windows`` (``[[start, end], ...]``, half-open character
    offsets) and ``window_text`` (the text of each window): only the cuts inside them are asked for."""
    rows = []
    windows = windows or {}
    for i, it in enumerate(items):
        sep = _separator(it.text)
        seg = sep.join(prefill[i]) if prefill is not None else it.text
        row = {"id": it.id, "text": it.text, "sep": sep, "segmented": seg}
        if windows:
            w = [[int(a), int(b)] for a, b in windows.get(it.id, [])]
            row.update(windows=w, window_text=[it.text[a:b] for a, b in w])
        rows.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".csv":
        buf = io.StringIO()
        fields = ["id", "text", "sep", "segmented"] + (["windows", "window_text"] if windows else [])
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        writer.writerows([{k: json.dumps(v, ensure_ascii=False) if isinstance(v, list) else v for k, v in r.items()}
                          for r in rows])
        tmp.write_text(buf.getvalue(), encoding="utf-8")
    else:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)
    return path


def _rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) pairs; line numbers are the file's (1-based, the csv header is line 1)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        out = []
        for row in reader:
            if None in row:
                raise AnnotationError(f"{path} line {reader.line_num}: more fields than the header's "
                                      "(quote fields that contain commas)")
            out.append((reader.line_num, row))
        return out
    from tasks.jsonl import iter_jsonl

    return list(iter_jsonl(path, "annotated file", AnnotationError))


def read_annotations(path: str | Path, items: Sequence[PoolItem]) -> list[list[str]]:
    """Words per item (in ``items`` order) from an annotated file; raises AnnotationError naming the line."""
    path = Path(path)
    expected = {it.id: it.text for it in items}
    got: dict[str, list[str]] = {}
    for n, row in _rows(path):
        rid = row.get("id")
        if rid not in expected:
            raise AnnotationError(f"{path} line {n}: unknown id {rid!r} (not in this batch)")
        if rid in got:
            raise AnnotationError(f"{path} line {n}: id {rid!r} appears twice")
        if isinstance(row.get("words"), list):
            words = [str(w) for w in row["words"] if w]
        elif isinstance(row.get("segmented"), str):
            sep = row.get("sep") or "|"
            words = [w for w in row["segmented"].split(sep) if w]
        else:
            raise AnnotationError(f"{path} line {n} (id {rid}): needs 'segmented' (text cut with sep) or 'words'")
        text, joined = expected[rid], "".join(words)
        if joined != text:
            k = next((i for i, (a, b) in enumerate(zip(text, joined)) if a != b), min(len(text), len(joined)))
            raise AnnotationError(
                f"{path} line {n} (id {rid}): the characters changed (only separators may be added); first "
                f"difference at offset {k}: expected {text[k:k + 10]!r}, got {joined[k:k + 10]!r}")
        got[rid] = words
    missing = [it.id for it in items if it.id not in got]
    if missing:
        raise AnnotationError(f"{path}: {len(missing)} of {len(items)} sentences have no annotation "
                              f"(first: {missing[:3]})")
    return [got[it.id] for it in items]


def _prefect_available() -> bool:
    try:
        from prefect.context import FlowRunContext

        return FlowRunContext.get() is not None
    except Exception:  # noqa: BLE001
        return False


def _announce(batch: Path, annotated: Path, n: int, round_no: int, wait: str, windowed: int = 0) -> None:
    """Make the wait visible: a Prefect log line and a markdown artifact on the flow run."""
    try:
        from prefect.runtime import flow_run

        run_id = flow_run.get_id() or "<flow-run-id>"
    except Exception:  # noqa: BLE001
        run_id = "<flow-run-id>"
    how = ("then press **Resume** on this flow run in the Prefect UI (or run "
           f"`python -m tasks.thai.annotators resume {run_id} {annotated}`)" if wait == "pause"
           else "the flow polls for it")
    part = (f" In {windowed} of them only the cuts inside the row's `windows` (character offsets; their text is "
            "in `window_text`) are needed: cut there and leave the rest as it is." if windowed else "")
    msg = (f"Round {round_no}: {n} sentences wait for annotation.{part}\n\n"
           f"1. Open `{batch}`; in each row cut `segmented` into words with the row's `sep`, "
           f"changing no character.\n2. Save it as `{annotated}`.\n3. {how}.")
    try:
        from prefect import get_run_logger
        from prefect.artifacts import create_markdown_artifact

        get_run_logger().info(msg.replace("\n\n", " ").replace("\n", " "))
        create_markdown_artifact(msg, key=f"annotation-round-{round_no}", description="annotation batch")
    except Exception:  # noqa: BLE001 - outside a Prefect run (plain scripts, unit tests)
        import logging

        logging.getLogger(__name__).info(msg)


@dataclass
class HumanAnnotator:
    """A person annotates the batch through files (see the module docstring)."""

    directory: Path
    fmt: str = "jsonl"
    wait: str = "poll"
    timeout_s: float = 86400.0
    poll_interval_s: float = 5.0
    settle_s: float = 2.0  # poll: a file that fails to read is an error once unchanged this long
    name: str = "human"
    last_batch: Optional[Path] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        if self.fmt not in ("jsonl", "csv"):
            raise ValueError(f"format must be 'jsonl' or 'csv', got {self.fmt!r}")
        if self.wait not in ("pause", "poll"):
            raise ValueError(f"wait must be 'pause' or 'poll', got {self.wait!r}")

    def paths(self, round_no: int) -> tuple[Path, Path]:
        stem = f"round-{round_no:03d}"
        return self.directory / f"{stem}.{self.fmt}", self.directory / f"{stem}.annotated.{self.fmt}"

    def annotate(self, items: Sequence[PoolItem], *, round_no: int, rng: Optional[np.random.Generator] = None,
                 prefill: Optional[list[list[str]]] = None,
                 windows: Optional[dict[str, list[tuple[int, int]]]] = None) -> list[list[str]]:
        batch, annotated = self.paths(round_no)
        if not (batch.exists() and annotated.exists()):  # a resumed round keeps the delivered file
            write_batch(items, batch, prefill=prefill, windows=windows)
        self.last_batch = batch
        windowed = sum(1 for it in items if (windows or {}).get(it.id))
        _announce(batch, annotated, len(items), round_no, self.wait, windowed)
        if self.wait == "pause":
            annotated = self._pause(annotated, round_no, windowed)
            return read_annotations(annotated, items)
        return self._poll(annotated, items)

    def _pause(self, annotated: Path, round_no: int, windowed: int = 0) -> Path:
        if not _prefect_available():
            raise ValueError("annotator.human.wait='pause' needs a Prefect flow run; use wait='poll' outside flows")
        from prefect.exceptions import FlowPauseTimeout
        from prefect.flow_runs import pause_flow_run

        form = AnnotationDone.with_initial_data(
            description=f"Annotate round {round_no}: save the annotated file, check its path, resume."
                        + (f" {windowed} sentences need cuts only inside their `windows`." if windowed else ""),
            annotated_file=str(annotated))
        try:
            done = pause_flow_run(wait_for_input=form, timeout=int(self.timeout_s),
                                  poll_interval=max(1, int(self.poll_interval_s)), key=f"annotation-{round_no}")
        except FlowPauseTimeout:
            raise AnnotationTimeout(f"round {round_no}: the flow was not resumed within {self.timeout_s:.0f} s; "
                                    f"annotate {annotated.name} and rerun with resume=true") from None
        path = Path(done.annotated_file)
        if not path.is_file():
            raise FileNotFoundError(f"round {round_no}: the annotated file {path} given on resume does not exist")
        return path

    def _poll(self, annotated: Path, items: Sequence[PoolItem]) -> list[list[str]]:
        deadline = time.monotonic() + self.timeout_s
        last_sig, since, last_error = None, 0.0, None
        while True:
            if annotated.is_file():
                st = annotated.stat()
                try:
                    return read_annotations(annotated, items)
                except (AnnotationError, UnicodeDecodeError) as err:
                    sig = (st.st_size, st.st_mtime_ns)
                    if sig != last_sig:
                        last_sig, since = sig, time.monotonic()
                    elif time.monotonic() - since >= self.settle_s:
                        raise  # unchanged for settle_s and still wrong: not a file being written
                    last_error = err
            if time.monotonic() >= deadline:
                if last_error is not None:
                    raise last_error
                raise AnnotationTimeout(f"no annotated file {annotated} after {self.timeout_s:.0f} s; "
                                        f"annotate {annotated.name.replace('.annotated', '')} and rerun "
                                        "with resume=true")
            time.sleep(self.poll_interval_s)


try:  # the form shown in the Prefect UI when the flow pauses for annotation
    from prefect.input import RunInput

    class AnnotationDone(RunInput):
        annotated_file: str
        note: str = ""
except ImportError:  # pragma: no cover - prefect is a hard dependency of tasks/
    AnnotationDone = None  # type: ignore[assignment,misc]


def _resume_cli(argv: list[str]) -> None:
    """``python -m tasks.thai.annotators resume FLOW_RUN_ID ANNOTATED_FILE``: resume a paused flow run."""
    import uuid

    from prefect.flow_runs import resume_flow_run

    if len(argv) != 3 or argv[0] != "resume":
        raise SystemExit("usage: python -m tasks.thai.annotators resume FLOW_RUN_ID ANNOTATED_FILE")
    path = Path(argv[2]).resolve()
    if not path.is_file():
        raise SystemExit(f"error: annotated file {path} does not exist")
    resume_flow_run(uuid.UUID(argv[1]), run_input={"annotated_file": str(path)})
    print(f"resumed flow run {argv[1]} with {path}")


if __name__ == "__main__":
    import sys

    from tasks.runtime.env import apply_embedded_defaults

    apply_embedded_defaults()
    _resume_cli(sys.argv[1:])
