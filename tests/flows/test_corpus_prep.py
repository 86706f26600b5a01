import json
import subprocess
import sys
from pathlib import Path

import pytest

from flows._cli import ConfigError, build_config
from engine.config.corpus_prep import PRESETS, CorpusPrepConfig
from flows.corpus_prep import corpus_prep

ROOT = Path(__file__).resolve().parents[2]


def _cfg(tmp_path, **kw):
    base = dict(name="t", vocab_size=400, pack_length=64, character_coverage=1.0, validation_fraction=0.1,
                test_fraction=0.1, output_root=str(tmp_path / "out"), num_proc=1)
    base.update(kw)
    return CorpusPrepConfig(**base)


def _leftovers(tmp_path):
    out = tmp_path / "out"
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


def test_files_source_gives_round_tripping_t5_tokenizer_with_100_sentinels(prefect_harness, text_files, tmp_path):
    from transformers import AutoTokenizer
    import datasets
    from tasks import tracking

    res = corpus_prep(config=_cfg(tmp_path, source="files", paths=[str(text_files / "*.txt")]))
    assert not res.cached
    tok = AutoTokenizer.from_pretrained(res.tokenizer_dir)
    text = "The for statement is used to iterate over the elements of a sequence."
    assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text
    sentinels = [tok.convert_tokens_to_ids(f"<extra_id_{i}>") for i in range(100)]
    assert sentinels == [len(tok) - 1 - i for i in range(100)]
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.mask_token_id is not None and tok.mask_token_id < min(sentinels)
    # split_digits (default): every digit its own piece; the symbols numbers are written with are in the vocabulary
    number = "in 2004 it cost £1,250.75 ; 5% or €3/$4"
    pieces = [p.lstrip("\u2581") for p in tok.tokenize(number)]
    assert not any(len(p) > 1 and any(c.isdigit() for c in p) for p in pieces)
    assert tok.unk_token_id not in tok(number).input_ids
    assert tok.decode(tok(number).input_ids, skip_special_tokens=True) == number
    rows = datasets.load_from_disk(f"{res.corpus_dir}/packed/train")
    assert len(rows) > 0 and all(len(r) == 64 for r in rows["input_ids"][:20])
    # the MLflow run holds the tokenizer, the stats and the dataset card
    art = Path(tracking.artifact_local_path(res.run_id))
    assert (art / "tokenizer" / "tokenizer.json").exists() and (art / "README.md").exists()
    stats = json.loads((art / "stats.json").read_text())
    assert stats["documents"]["train"] + stats["documents"]["validation"] + stats["documents"]["test"] == stats["documents_kept"]


def test_rerun_with_same_config_and_source_reuses_the_cached_corpus(prefect_harness, text_files, tmp_path):
    cfg = _cfg(tmp_path, source="files", paths=[str(text_files / "*.txt")])
    first = corpus_prep(config=cfg)
    second = corpus_prep(config=cfg)
    assert second.cached and second.corpus_dir == first.corpus_dir
    (text_files / "extra.txt").write_text("A new document changes the source fingerprint. " * 5)
    third = corpus_prep(config=cfg)
    assert not third.cached and third.corpus_dir != first.corpus_dir


def test_deleted_cached_output_is_rebuilt(prefect_harness, text_files, tmp_path):
    import shutil

    cfg = _cfg(tmp_path, source="files", paths=[str(text_files / "*.txt")], min_chars=25)
    first = corpus_prep(config=cfg)
    shutil.rmtree(first.corpus_dir)
    again = corpus_prep(config=cfg)
    assert not again.cached and Path(again.corpus_dir, "_COMPLETE").exists()


def test_packaged_source_holds_out_downstream_documents(prefect_harness, tmp_path):
    import datasets
    from tasks.sources import reserved_for_downstream

    res = corpus_prep(config=_cfg(tmp_path, packaged=["wiki", "bbc"], max_documents=300))
    stats = json.loads(Path(res.corpus_dir, "stats.json").read_text())
    assert stats["drops"]["reserved_downstream"] > 0
    for split in ("train", "validation", "test"):
        ids = datasets.load_from_disk(f"{res.corpus_dir}/docs/{split}")["id"]
        assert not any(reserved_for_downstream(i) for i in ids)


def test_jsonl_parquet_and_local_hf_dataset_sources(prefect_harness, text_files, tmp_path):
    import pandas as pd

    texts = [p.read_text() for p in sorted(text_files.glob("*.txt"))]
    jdir = tmp_path / "j"
    jdir.mkdir()
    with open(jdir / "a.jsonl", "w") as f:
        for t in texts:
            f.write(json.dumps({"body": t}) + "\n")
    pd.DataFrame({"body": texts}).to_parquet(tmp_path / "a.parquet")
    a = corpus_prep(config=_cfg(tmp_path, source="files", paths=[str(jdir / "a.jsonl")], text_field="body"))
    b = corpus_prep(config=_cfg(tmp_path, source="files", paths=[str(tmp_path / "a.parquet")], text_field="body"))
    c = corpus_prep(config=_cfg(tmp_path, source="hf", hf_name=str(jdir), text_field="body"))
    docs = [json.loads(Path(r.corpus_dir, "stats.json").read_text())["documents_kept"] for r in (a, b, c)]
    assert docs[0] == docs[1] == docs[2] > 0


def test_undecodable_files_are_counted_and_skipped_or_refused_by_name(prefect_harness, text_files, tmp_path):
    (text_files / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 20)
    (text_files / "blob.txt").write_bytes(b"\x00\x01\x02" * 100)
    res = corpus_prep(config=_cfg(tmp_path, source="files", paths=[str(text_files / "*.txt")]))
    drops = json.loads(Path(res.corpus_dir, "stats.json").read_text())["drops"]
    assert drops["undecodable"] == 1 and drops["binary"] == 1
    with pytest.raises(ValueError, match="blob.txt|latin1.txt"):
        corpus_prep(config=_cfg(tmp_path, name="strict", source="files", paths=[str(text_files / "*.txt")],
                                on_decode_error="fail"))
    assert not [n for n in _leftovers(tmp_path) if n.startswith(("strict", ".tmp"))]


@pytest.mark.parametrize(
    "kw, error, match",
    [
        (dict(source="files", paths=["/nonexistent/dir/*.txt"]), FileNotFoundError, "no files match"),
        (dict(source="files", paths=["EMPTY"]), ValueError, "no usable documents"),
        (dict(source="files", paths=["TEXTS"], vocab_size=100000), ValueError, "vocab_size=100000 is too large"),
        (dict(source="hf", hf_name="some-org/some-dataset"), ValueError, "cannot load Hugging Face dataset 'some-org/some-dataset'.*offline"),
    ],
)
def test_bad_input_gives_a_clear_error_and_leaves_no_partial_output(prefect_harness, text_files, tmp_path, kw, error, match):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("   \n\n")
    if kw.get("paths") == ["EMPTY"]:
        kw["paths"] = [str(empty / "*.txt")]
    if kw.get("paths") == ["TEXTS"]:
        kw["paths"] = [str(text_files / "*.txt")]
    with pytest.raises(error, match=match):
        corpus_prep(config=_cfg(tmp_path, **kw))
    assert _leftovers(tmp_path) == []


def test_unknown_preset_and_unknown_or_invalid_keys_are_refused_by_name():
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        build_config(CorpusPrepConfig, PRESETS, "huge")
    with pytest.raises(ConfigError, match="unknown config key 'vocab_sise'"):
        build_config(CorpusPrepConfig, PRESETS, "tiny", ["vocab_sise=100"])
    with pytest.raises(ConfigError, match="config field 'validation_fraction'"):
        build_config(CorpusPrepConfig, PRESETS, "tiny", ["validation_fraction=1.5"])
    assert build_config(CorpusPrepConfig, PRESETS, "tiny", ["vocab_size=3000"]).vocab_size == 3000


def test_cli_help_and_one_line_config_errors():
    help_ = subprocess.run([sys.executable, "-m", "flows.corpus_prep", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert help_.returncode == 0 and "--preset" in help_.stdout and "vocab_size" in help_.stdout
    bad = subprocess.run([sys.executable, "-m", "flows.corpus_prep", "--set", "bogus=1"], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == ["error: unknown config key 'bogus' (check the spelling; see --help for the fields)"]


def test_a_corpus_finished_by_another_run_meanwhile_is_kept_not_replaced(prefect_harness, text_files, tmp_path,
                                                                          monkeypatch):
    """Two runs of one config at once: the second to finish must not delete the folder the first published
    (a pretraining run may already be reading it); it drops its own copy and returns the same path."""
    from tasks import corpus

    cfg = _cfg(tmp_path, source="files", paths=[str(text_files / "*.txt")]).model_dump()
    fp = corpus.source_fingerprint(cfg)
    real_collect = corpus.collect_documents
    first = {}

    def collect_while_another_run_finishes(c, work):
        if not first:  # the other run completes the same corpus while this one is still collecting
            monkeypatch.setattr(corpus, "collect_documents", real_collect)
            first["dir"] = corpus.build_corpus.fn(cfg, fp)
            first["inode"] = Path(first["dir"]).stat().st_ino
            first["marker"] = Path(first["dir"], corpus.COMPLETE).read_text()
        return real_collect(c, work)

    monkeypatch.setattr(corpus, "collect_documents", collect_while_another_run_finishes)
    second = corpus.build_corpus.fn(cfg, fp)
    assert second == first["dir"]
    assert Path(second).stat().st_ino == first["inode"] and Path(second, corpus.COMPLETE).read_text() == first["marker"]
    assert [p for p in _leftovers(tmp_path) if p.startswith(".tmp")] == []


def test_a_tokenizer_that_merges_digits_is_refused_when_split_digits_is_asked(tmp_path):
    import datasets
    from pydoc_data.topics import topics

    from tasks.corpus import check_tokenizer, train_tokenizer

    texts = list(topics.values())[:150] + [f"In {1900 + i} it cost {i * 37} and {i * 1234} came." for i in range(400)]
    cfg = {"vocab_size": 600, "character_coverage": 1.0, "tokenizer_sample_sentences": 10000}
    built = {}
    for split_digits in (False, True):
        work = tmp_path / f"split-{split_digits}"
        datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(work / "docs" / "train"))
        built[split_digits] = train_tokenizer({**cfg, "split_digits": split_digits}, work)
    with pytest.raises(RuntimeError, match="split_digits: digits share pieces"):
        check_tokenizer(built[False], split_digits=True)
    check_tokenizer(built[True], split_digits=True)
