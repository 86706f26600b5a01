"""Packed rows as Parquet shards streamed from a folder or S3: exact rows, a stateless order, checked shards, a
bounded cache, and a streamed pretraining run that resumes after SIGKILL to the weights of an uninterrupted one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.shards import INDEX, ShardStream, read_index, write_shards
from tests.engine.test_object_storage import BUCKET, s3_env, s3_server  # noqa: F401 - the moto S3 fixtures


def _tagged_rows(n: int, length: int = 6) -> np.ndarray:
    """Rows whose first token is their row number (so a row read back says which it is)."""
    rows = np.random.default_rng(0).integers(4, 500, size=(n, length), dtype=np.int32)
    rows[:, 0] = np.arange(n)
    return rows


def _stream(folder, tmp_path, **kw) -> ShardStream:
    kw = {"tokens_length": 6, "window": 2, "max_cached_shards": 3, "cache_dir": tmp_path / "cache", **kw}
    return ShardStream(folder, **kw)


def _sharded_copy(corpus: str, dest: Path, shard_rows: int) -> Path:
    """A copy of the corpus with its packed splits sharded, as corpus prep writes them with shard_rows > 0."""
    from tasks.corpus import shard_splits

    shutil.copytree(corpus, dest)
    cfg = json.loads((dest / "config.json").read_text())
    shard_splits({**cfg, "shard_rows": shard_rows}, dest)
    return dest


def test_corpus_prep_shards_give_back_the_packed_rows_exactly_in_order(tiny_corpus, tmp_path):
    from engine.pretrain_worker import load_rows

    corpus = _sharded_copy(tiny_corpus, tmp_path / "corpus", shard_rows=100)
    packed = load_rows(corpus / "packed" / "train", 70)
    index = read_index(corpus / "shards" / "train")
    assert index["row_length"] == 70 and index["rows"] == len(packed)
    assert [s["rows"] for s in index["shards"]][:-1] == [100] * (len(index["shards"]) - 1)
    assert [s["file"] for s in index["shards"]][:2] == ["shard-00000.parquet", "shard-00001.parquet"]
    stream = _stream(corpus / "shards" / "train", tmp_path, tokens_length=70, window=1,
                     max_cached_shards=len(index["shards"]))
    back = np.concatenate([stream._rows(s) for s in range(len(index["shards"]))])
    assert back.dtype == np.int32 and np.array_equal(back, packed[:])
    for split in ("validation", "test"):
        assert read_index(corpus / "shards" / split)["rows"] == len(load_rows(corpus / "packed" / split, 70))


def test_corpus_prep_with_shard_rows_writes_the_shards_inside_the_finished_corpus(tmp_path):
    from engine.config.corpus_prep import CorpusPrepConfig, corpus_identity
    from tasks.corpus import build_corpus, source_fingerprint

    cfg = corpus_identity(CorpusPrepConfig(name="sharded", packaged=["wiki"], max_documents=200, vocab_size=400,
                                           pack_length=70, character_coverage=1.0, num_proc=1, shard_rows=64,
                                           output_root=str(tmp_path)))
    corpus = Path(build_corpus.fn(cfg, source_fingerprint(cfg)))
    stats = json.loads((corpus / "stats.json").read_text())
    for split in ("train", "validation", "test"):
        index = read_index(corpus / "shards" / split)
        assert index["rows"] == stats["rows"][split] and len(index["shards"]) == stats["shards"][split]
        assert all((corpus / "shards" / split / s["file"]).is_file() for s in index["shards"])


def test_a_streamed_epoch_reads_every_row_once_and_ranks_never_share_a_row_in_a_step(tmp_path):
    rows = _tagged_rows(50)
    write_shards([rows[:13], rows[13:]], tmp_path / "split", rows_per_shard=7, row_length=6)
    world, batch = 2, 5  # 10 rows a step: 5 steps an epoch
    streams = [_stream(tmp_path / "split", tmp_path) for _ in range(world)]  # one per worker, own cache
    seen = []
    for step in range(5):
        got = [streams[r].batch(step=step, micro=0, grad_accum=1, rank=r, world_size=world, batch_size=batch,
                                seed=3) for r in range(world)]
        ids = [set(g[:, 0].tolist()) for g in got]
        assert len(ids[0]) == len(ids[1]) == batch and not ids[0] & ids[1]
        for g in got:
            assert np.array_equal(g, rows[g[:, 0]])  # whole rows, as written
            seen.extend(g[:, 0].tolist())
    assert sorted(seen) == list(range(50))


def test_the_streamed_order_is_a_function_of_seed_step_and_rank_alone(tmp_path):
    rows = _tagged_rows(40)
    write_shards([rows], tmp_path / "split", rows_per_shard=5, row_length=6)
    kw = dict(micro=1, grad_accum=2, rank=1, world_size=2, batch_size=3, seed=7)
    a = _stream(tmp_path / "split", tmp_path).batch(step=9, **kw)
    with_history = _stream(tmp_path / "split", tmp_path)
    for step in range(9):
        with_history.batch(step=step, **kw)  # a reader that has read steps 0-8 ...
    assert np.array_equal(with_history.batch(step=9, **kw), a)  # ... reads at step 9 what a fresh one reads
    other_window = _stream(tmp_path / "split", tmp_path, max_cached_shards=8, window=4)
    assert not np.array_equal(other_window.batch(step=9, **kw), a)  # the window is part of the order


def test_the_cache_never_holds_more_than_max_cached_shards_files(tmp_path):
    rows = _tagged_rows(120)
    write_shards([rows], tmp_path / "split", rows_per_shard=6, row_length=6)  # 20 shards
    stream = _stream(tmp_path / "split", tmp_path, window=2, max_cached_shards=3)
    most = 0
    for step in range(60):  # 4 rows a step: two epochs of 120 rows
        stream.batch(step=step, micro=0, grad_accum=1, rank=0, world_size=1, batch_size=4, seed=0)
        files = [p for p in stream.cache_dir.iterdir() if p.suffix == ".parquet"]
        most = max(most, len(files))
        assert len(files) <= 3 and len(stream._cached) <= 3
    assert most == 3 and 20 <= stream.fetches < 60  # every shard fetched, not one per batch
    cache = stream.cache_dir
    stream.close()
    assert not cache.exists()


def test_prefetching_reads_the_same_rows_and_fetches_the_next_micro_batches_shards_in_the_background(tmp_path):
    rows = _tagged_rows(120)
    write_shards([rows], tmp_path / "split", rows_per_shard=6, row_length=6)  # 20 shards
    kw = dict(grad_accum=2, rank=1, world_size=2, batch_size=4, seed=3)
    plain = _stream(tmp_path / "split", tmp_path / "a", window=2, max_cached_shards=3)
    ahead = _stream(tmp_path / "split", tmp_path / "b", window=2, max_cached_shards=3, prefetch=2)
    for step in range(30):  # two epochs: 2 micro-batches x 2 workers x 4 rows a step
        for micro in range(2):
            assert np.array_equal(ahead.batch(step=step, micro=micro, **kw), plain.batch(step=step, micro=micro, **kw))
            for fetch in list(ahead._pending.values()):
                fetch.result()  # let the background fetches land, as a training step's compute would
    assert ahead.waits == 0  # after the first batch, every shard was there before a batch asked for it
    assert ahead.fetches <= plain.fetches + 2 * 4  # no more than the lookahead's shards beyond what was read
    assert len(list(ahead.cache_dir.glob("*.parquet"))) <= 3 + 2 * 4
    ahead.close()
    assert not ahead.cache_dir.exists()


def test_a_background_fetch_error_is_raised_by_the_batch_that_needs_the_shard(tmp_path):
    from models.shard_order import shard_batch_rows

    rows = _tagged_rows(24)
    folder = tmp_path / "split"
    write_shards([rows], folder, rows_per_shard=6, row_length=6)  # 4 shards of 6 rows, 6 rows a step
    stream = _stream(folder, tmp_path, window=1, max_cached_shards=2, prefetch=1)
    kw = dict(micro=0, grad_accum=1, rank=0, world_size=1, batch_size=6, seed=0)
    (first,) = set(shard_batch_rows(shard_rows=stream.shard_rows, window=1, step=0, **kw)[0].tolist())
    for i, entry in enumerate(stream.index["shards"]):
        if i != first:  # every shard but step 0's is corrupted after the index was read
            (folder / entry["file"]).write_bytes(b"not a shard")
    assert stream.batch(step=0, **kw).shape == (6, 6)  # the failing background fetch of step 1's shard is silent
    with pytest.raises(ValueError, match=r"^shard shard-0000\d.parquet of .* does not match its sha256") as err:
        stream.batch(step=1, **kw)  # ... until a batch needs that shard
    assert "\n" not in str(err.value)
    stream.close()


def test_a_corrupted_or_missing_shard_is_refused_in_one_line_naming_it(tmp_path):
    rows = _tagged_rows(12)
    folder = tmp_path / "split"
    write_shards([rows], folder, rows_per_shard=6, row_length=6)
    data = (folder / "shard-00001.parquet").read_bytes()
    (folder / "shard-00001.parquet").write_bytes(data[:-10] + b"0123456789")
    kw = dict(step=0, micro=0, grad_accum=1, rank=0, world_size=1, batch_size=12, seed=0)
    with pytest.raises(ValueError, match=r"^shard shard-00001.parquet of .* does not match its sha256") as err:
        _stream(folder, tmp_path).batch(**kw)
    assert "\n" not in str(err.value)
    (folder / "shard-00001.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"^shard shard-00001.parquet of .* is missing") as err:
        _stream(folder, tmp_path).batch(**kw)
    assert "\n" not in str(err.value)
    (folder / INDEX).unlink()
    with pytest.raises(FileNotFoundError, match="index.json does not exist: not a sharded split"):
        _stream(folder, tmp_path)


def test_short_rows_a_small_cache_and_a_corpus_without_shards_are_refused_in_one_line(tiny_corpus, tmp_path):
    from engine.config.pretrain import PretrainConfig
    from tasks.corpus import check_corpus_dir

    write_shards([_tagged_rows(10)], tmp_path / "split", rows_per_shard=5, row_length=6)
    with pytest.raises(ValueError, match="rebuild the corpus with pack_length=8"):
        _stream(tmp_path / "split", tmp_path, tokens_length=8)
    with pytest.raises(ValueError, match="max_cached_shards=1 is below shard_window=2"):
        _stream(tmp_path / "split", tmp_path, max_cached_shards=1)
    with pytest.raises(ValueError, match="max_cached_shards=2 is below shard_window=4"):
        PretrainConfig(stream_shards=True, shard_window=4, max_cached_shards=2)
    check_corpus_dir(tiny_corpus)
    with pytest.raises(FileNotFoundError, match="missing shards/train/index.json.*--set shard_rows=N"):
        check_corpus_dir(tiny_corpus, shards=True)


def test_unsharded_corpora_keep_their_cache_key_and_sharded_ones_get_their_own():
    from engine.config.corpus_prep import corpus_identity, tiny
    from tasks.corpus import output_dir_for

    plain = tiny()
    assert corpus_identity(plain) == plain.model_dump(exclude={"publish_uri", "shard_rows"})  # the key before shards
    sharded = tiny()
    sharded.shard_rows = 64
    assert corpus_identity(sharded)["shard_rows"] == 64
    assert output_dir_for(corpus_identity(plain), "fp") != output_dir_for(corpus_identity(sharded), "fp")


def _worker_cfg(corpus, ckpt_dir, **kw):
    from tests.conftest import tiny_pretrain_config

    cfg = tiny_pretrain_config(**kw).model_dump()
    cfg.update(corpus_dir=corpus, tokenizer_dir=f"{corpus}/tokenizer", checkpoint_dir=str(ckpt_dir), in_ray=False)
    return cfg


def test_streamed_pretraining_from_s3_resumes_after_sigkill_to_the_weights_of_an_uninterrupted_run(
        tiny_corpus, tmp_path, s3_env, monkeypatch):
    from safetensors.torch import load_file

    from engine import checkpoints, storage
    from engine.pretrain_worker import pretrain_worker
    from tests.engine.test_pretrain_loop import _run_in_child

    monkeypatch.setenv("SPACTOR_CACHE_DIR", str(tmp_path / "node-cache"))
    uri = storage.publish_folder(_sharded_copy(tiny_corpus, tmp_path / "corpus", shard_rows=8),
                                 f"s3://{BUCKET}/corpora/sharded")
    kw = dict(stream_shards=True, shard_window=2, max_cached_shards=3, total_steps=8, tau=4, checkpoint_every=4,
              eval_every=4, cosine_every=2)
    straight = pretrain_worker(_worker_cfg(uri, tmp_path / "a", **kw))
    cfg = _worker_cfg(uri, tmp_path / "b", fault_kill_at_step=6, **kw)
    assert _run_in_child(cfg) == -9  # SIGKILLed at step 6, after the checkpoint at step 4
    assert [p.name for p in checkpoints.list_checkpoints(tmp_path / "b")] == ["step-00000004"]
    resumed = pretrain_worker(cfg)  # a fresh process's reader: no state but (seed, step, rank)
    assert resumed["step"] == straight["step"] == 8
    a = load_file(str(tmp_path / "a" / "final" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "final" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [e["val_sc_loss"] for e in resumed["evals"]] == [e["val_sc_loss"] for e in straight["evals"]]
    # the node copied the tokenizer and the validation split, never the training rows
    (copy,) = (tmp_path / "node-cache" / "objects").glob("sharded-*")
    assert (copy / "tokenizer").is_dir() and (copy / "packed" / "validation").is_dir()
    assert not (copy / "packed" / "train").exists() and not (copy / "shards").exists()
