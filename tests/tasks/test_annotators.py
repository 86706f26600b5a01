"""Annotators (simulated: guideline + noise; human: files, polling, Prefect pause) and the Thai data loaders."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from models.thai.chars import char_class
from models.thai.metrics import word_starts
from tasks.thai.annotators import (
    AnnotationError,
    AnnotationTimeout,
    HumanAnnotator,
    SimulatedAnnotator,
    apply_newmm_guideline,
    flip_boundaries,
    read_annotations,
    write_batch,
)
from tasks.thai.data import PoolItem, load_segmented_files, load_text_pool, split_items

GOLD = [("การ", "พัฒนา", "ประเทศ", " ", "ไทย"), ("คณะ", "รัฐมนตรี", "มี", "มติ"), ("ฉัน", "กิน", "ข้าว")]


def _items(words_list=GOLD) -> list[PoolItem]:
    return [PoolItem(f"s{i}", "".join(w), tuple(w), "orchid", f"d{i}") for i, w in enumerate(words_list)]


# -- simulated annotator ----------------------------------------------------------------------------


def test_newmm_guideline_merges_only_dictionary_words_that_start_and_end_on_gold_edges():
    gold = ["การ", "พัฒนา", "ประเทศ", "ไทย"]
    newmm = ["การพัฒนา", "ประเทศไทย"]
    assert apply_newmm_guideline(gold, newmm, {"การพัฒนา", "ประเทศไทย"}) == ["การพัฒนา", "ประเทศไทย"]
    assert apply_newmm_guideline(gold, newmm, {"การพัฒนา"}) == ["การพัฒนา", "ประเทศ", "ไทย"]
    # a newmm word that ends inside a gold word merges nothing
    assert apply_newmm_guideline(["ab", "cd", "ef"], ["abc", "def"], {"abc", "def"}) == ["ab", "cd", "ef"]
    # newmm splitting a gold word never adds a boundary
    assert apply_newmm_guideline(["abcd"], ["ab", "cd"], {"ab", "cd"}) == ["abcd"]


def test_simulated_annotator_answers_gold_and_newmm_guideline_merges_compounds():
    items = _items()
    orchid = SimulatedAnnotator().annotate(items, round_no=1, rng=np.random.default_rng(0))
    assert orchid == [list(w) for w in GOLD]
    newmm = SimulatedAnnotator(guideline="newmm").annotate(items, round_no=1, rng=np.random.default_rng(0))
    assert newmm[1][0] == "คณะรัฐมนตรี"  # a name in pythainlp's dictionary: one word under the guideline
    for got, gold in zip(newmm, GOLD):
        assert "".join(got) == "".join(gold)
        assert set(word_starts(got)) <= set(word_starts(list(gold)))  # only merges


def test_items_without_gold_are_answered_by_newmm_and_counted_as_proxy():
    ann = SimulatedAnnotator()
    items = [PoolItem("w1", "ฉันกินข้าว", None, "wiki_titles", "w1"), *_items()[:1]]
    out = ann.annotate(items, round_no=2, rng=np.random.default_rng(0))
    assert "".join(out[0]) == "ฉันกินข้าว" and len(out[0]) >= 2 and ann.proxy_count == 1


def test_noise_flips_exactly_the_orthographically_free_positions_at_rate_one():
    words = ["ฉัน", "กิน", "ข้าว"]
    flipped = flip_boundaries(words, 1.0, np.random.default_rng(0))
    assert "".join(flipped) == "".join(words)
    # ฉันกินข้าว has no leading vowel: the free positions are its consonants after index 0
    text = "".join(words)
    free = {i for i in range(1, len(text)) if char_class(text[i]) == "consonant"}
    gold = set(word_starts(words)[1:])
    assert set(word_starts(flipped)[1:]) == free - gold


def test_noise_is_reproducible_and_keeps_characters():
    words = list(GOLD[0])
    a = flip_boundaries(words, 0.3, np.random.default_rng(7))
    b = flip_boundaries(words, 0.3, np.random.default_rng(7))
    assert a == b and "".join(a) == "".join(words)
    assert flip_boundaries(words, 0.0, np.random.default_rng(7)) == words
    with pytest.raises(ValueError, match="noise_rate"):
        SimulatedAnnotator(noise_rate=0.9)


# -- human annotator: files -------------------------------------------------------------------------


def _annotate_file(batch: Path, out: Path, words_of: dict[str, list[str]], *, delay: float = 0.3,
                   halves: bool = False) -> threading.Thread:
    """A stand-in person: reads the batch, writes the annotated file (optionally in two halves)."""

    def work():
        time.sleep(delay)
        deadline = time.time() + 20  # on a loaded machine the batch may appear after the delay
        while not batch.exists() and time.time() < deadline:
            time.sleep(0.05)
        rows = [json.loads(line) for line in batch.read_text(encoding="utf-8").splitlines()]
        lines = [json.dumps({**r, "segmented": r["sep"].join(words_of[r["id"]])}, ensure_ascii=False) + "\n"
                 for r in rows]
        text = "".join(lines)
        if halves:
            out.write_text(text[: len(text) // 2], encoding="utf-8")
            time.sleep(0.25)
        out.write_text(text, encoding="utf-8")

    t = threading.Thread(target=work)
    t.start()
    return t


@pytest.mark.parametrize("halves", [False, True])
def test_human_annotator_round_trips_a_batch_through_files_by_polling(tmp_path, halves):
    items = _items()
    ann = HumanAnnotator(tmp_path, wait="poll", timeout_s=20, poll_interval_s=0.1)
    batch, annotated = ann.paths(3)
    thread = _annotate_file(batch, annotated, {it.id: list(it.words) for it in items}, halves=halves)
    got = ann.annotate(items, round_no=3)
    thread.join()
    assert got == [list(w) for w in GOLD]
    rows = [json.loads(line) for line in batch.read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in rows] == [it.text for it in items] and rows[0]["segmented"] == items[0].text


def test_a_windowed_batch_shows_each_window_and_a_human_cutting_only_there_is_read_back(tmp_path):
    """Partial annotation by a person: the batch row names the windows (offsets and their text); the person
    cuts inside them only, and the answer keeps every character (the flow uses only the windows' decisions)."""
    items = _items()
    windows = {"s0": [(2, 6)], "s2": [(0, 4), (6, 9)]}
    ann = HumanAnnotator(tmp_path, wait="poll", timeout_s=20, poll_interval_s=0.1)
    batch, annotated = ann.paths(1)
    cut = {"s0": ["กา", "รพัฒ", "นาประเทศ ไทย"], "s1": list(GOLD[1]), "s2": ["ฉัน", "กิน", "ข้าว"]}
    thread = _annotate_file(batch, annotated, cut)
    got = ann.annotate(items, round_no=1, windows=windows)
    thread.join()
    assert ["".join(w) for w in got] == [it.text for it in items]
    rows = {r["id"]: r for r in map(json.loads, batch.read_text(encoding="utf-8").splitlines())}
    assert rows["s0"]["windows"] == [[2, 6]] and rows["s0"]["window_text"] == [items[0].text[2:6]]
    assert rows["s1"]["windows"] == [] and rows["s2"]["window_text"] == [items[2].text[0:4], items[2].text[6:9]]
    write_batch(items, tmp_path / "w.csv", windows=windows)  # csv: the lists as JSON cells
    import csv as _csv

    with open(tmp_path / "w.csv", encoding="utf-8") as fh:
        first = next(_csv.DictReader(fh))
    assert json.loads(first["windows"]) == [[2, 6]]


def test_the_al_annotate_task_asks_windows_only_for_sentences_no_whole_sentence_arm_chose():
    from tasks.thai.active_learning import annotate

    items = _items()
    seen = {}

    class Recorder:
        name = "recorder"

        def annotate(self, its, *, round_no, rng, windows=None):
            seen["windows"] = windows
            return [list(it.words) for it in its]

    batches = {"ranked": [items[0]], "partial": [items[0], items[1]]}
    out = annotate.fn(Recorder(), batches, 1, np.random.default_rng(0), {"s0": [(0, 3)], "s1": [(1, 4)]})
    assert seen["windows"] == {"s1": [(1, 4)]}  # s0 is annotated whole for the ranked arm anyway
    assert out["partial"]["s1"] == list(GOLD[1])


def test_csv_batch_with_words_list_or_segmented_column_reads_back(tmp_path):
    items = _items()
    write_batch(items, tmp_path / "b.csv")
    text = (tmp_path / "b.csv").read_text(encoding="utf-8")
    for it in items:
        text = text.replace(f",{it.text}\n", "," + "|".join(it.words) + "\n", 1)
    (tmp_path / "b.annotated.csv").write_text(text, encoding="utf-8")
    assert read_annotations(tmp_path / "b.annotated.csv", items) == [list(w) for w in GOLD]
    jl = tmp_path / "w.jsonl"
    jl.write_text("".join(json.dumps({"id": it.id, "words": list(it.words)}) + "\n" for it in items[::-1]))
    assert read_annotations(jl, items) == [list(w) for w in GOLD]


def test_a_text_containing_the_separator_gets_another_one(tmp_path):
    item = PoolItem("x", "a|bก", ("a|b", "ก"), "segmented", "d")
    write_batch([item], tmp_path / "b.jsonl")
    row = json.loads((tmp_path / "b.jsonl").read_text(encoding="utf-8"))
    assert row["sep"] != "|" and row["sep"] not in item.text


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("rows, match", [
    ([{"id": "s0", "segmented": "การ|พัฒนา|ประเทศ| |ไทย"}, {"id": "s1", "segmented": "คณะ|รัฐมนตรี|มี|มติ"},
      {"id": "s2", "segmented": "ฉัน|กิน|ข้าวว"}], r"line 3 \(id s2\): the characters changed"),
    ([{"id": "s0", "segmented": "การพัฒนาประเทศ|ไทย"}], r"line 1 \(id s0\): the characters changed.*offset 14"),
    ([{"id": "zz", "segmented": "x"}], r"line 1: unknown id 'zz'"),
    ([{"id": "s0", "words": list(GOLD[0])}, {"id": "s0", "words": list(GOLD[0])}], r"line 2: id 's0' appears twice"),
    ([{"id": "s0", "words": list(GOLD[0])}], r"2 of 3 sentences have no annotation"),
])
def test_bad_annotated_files_are_refused_naming_the_line(tmp_path, rows, match):
    with pytest.raises(AnnotationError, match=match):
        read_annotations(_write(tmp_path / "a.jsonl", rows), _items())


def test_polling_gives_up_after_the_timeout_and_refuses_a_wrong_file(tmp_path):
    ann = HumanAnnotator(tmp_path, wait="poll", timeout_s=0.3, poll_interval_s=0.1)
    with pytest.raises(AnnotationTimeout, match="resume=true"):
        ann.annotate(_items(), round_no=1)
    _write(ann.paths(2)[1], [{"id": "s0", "segmented": "wrong"}])
    with pytest.raises(AnnotationError, match="characters changed"):
        ann.annotate(_items(), round_no=2)


def test_pause_mode_outside_a_flow_run_is_refused(tmp_path):
    with pytest.raises(ValueError, match="wait='poll'"):
        HumanAnnotator(tmp_path, wait="pause").annotate(_items(), round_no=1)


def test_pause_mode_shows_the_flow_run_paused_and_resumes_with_the_form_input(prefect_harness, tmp_path):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.flow_runs import resume_flow_run

    items = _items()
    ann = HumanAnnotator(tmp_path, wait="pause", timeout_s=30, poll_interval_s=1)
    seen = {}

    def person():
        deadline = time.monotonic() + 25
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                paused = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
                if paused:
                    seen["state"] = paused[0].state.type
                    out = _write(tmp_path / "elsewhere.jsonl",
                                 [{"id": it.id, "words": list(it.words)} for it in items])
                    resume_flow_run(paused[0].id, run_input={"annotated_file": str(out)})
                    return
                time.sleep(0.2)

    @flow
    def waits_for_a_person():
        return ann.annotate(items, round_no=1)

    thread = threading.Thread(target=person)
    thread.start()
    got = waits_for_a_person()
    thread.join()
    assert seen["state"] == StateType.PAUSED
    assert got == [list(w) for w in GOLD]


# -- data loaders -------------------------------------------------------------------------------------


def test_segmented_files_split_into_documents_at_blank_lines(tmp_path):
    (tmp_path / "a.txt").write_text("ฉัน|กิน|ข้าว\nคุณ|ไป\n\nเขา|มา\n", encoding="utf-8")
    items = load_segmented_files([str(tmp_path / "*.txt")])
    assert [it.words for it in items] == [("ฉัน", "กิน", "ข้าว"), ("คุณ", "ไป"), ("เขา", "มา")]
    assert [it.doc_id for it in items] == ["a.txt#0", "a.txt#0", "a.txt#1"]
    pool, test = split_items(items, 0.3, rng=np.random.default_rng(0))
    assert {it.doc_id for it in pool}.isdisjoint({it.doc_id for it in test}) and len(pool) + len(test) == 3
    with pytest.raises(FileNotFoundError, match="no file matches"):
        load_segmented_files([str(tmp_path / "missing*.txt")])


def test_text_pool_cuts_long_lines_at_spaces_without_losing_characters(tmp_path):
    line = "ประเทศไทย มี ประชากร " * 20
    (tmp_path / "t.txt").write_text(line + "\n\n# a comment\nสั้น\n", encoding="utf-8")
    items = load_text_pool([str(tmp_path / "t.txt")], max_chars=50)
    assert all(len(it.text) <= 50 and it.words is None for it in items)
    assert "".join(it.text for it in items[:-1]) == line.strip() and items[-1].text == "สั้น"
