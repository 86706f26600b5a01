"""Packed rows as Parquet shards, and a reader that streams them from a folder or object storage.

Writing (:func:`write_shards`, run by corpus prep when ``shard_rows > 0``): a split's rows (int32, shape (N, L))
become ``shard-00000.parquet``, ``shard-00001.parquet``, ... of at most ``rows_per_shard`` rows each (one column
``input_ids`` of fixed-size lists), then ``index.json`` last, listing each shard's file name, row count and
sha256, and the row length L. The index is the completeness marker: a folder without one is not a sharded split.

Reading (:class:`ShardStream`): given the folder or ``s3://`` prefix of an index, ``stream.batch(step=..., ...)``
returns one worker's rows of a micro-batch in the order of :mod:`models.shard_order` (shards permuted per epoch,
rows shuffled within windows of ``window`` shards), a pure function of (seed, epoch, step, rank): resume needs
no reader state. Shards are fetched on demand into a private local cache folder, checked against the index's
sha256 while they stream in (a missing or mismatching shard raises one line naming it), and the cache keeps at
most ``max_cached_shards`` of them, least recently used out first: local disk holds at most that many shard
files, and memory that many decoded shards (``max_cached_shards * rows_per_shard * L * 4`` bytes).

    python -c "from engine.shards import ShardStream; print(len(ShardStream('s3://bucket/corpora/x/shards/train', \
tokens_length=141)))"
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import weakref
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

import numpy as np

from engine import storage
from engine.checkpoints import file_sha256
from models.shard_order import shard_batch_rows

INDEX = "index.json"
FORMAT = "spactor-shards/1"
COLUMN = "input_ids"


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.parquet"


def _write_one(rows: np.ndarray, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    flat = pa.array(np.ascontiguousarray(rows, dtype=np.int32).reshape(-1), type=pa.int32())
    column = pa.FixedSizeListArray.from_arrays(flat, rows.shape[1])
    pq.write_table(pa.table({COLUMN: column}), str(path))


def write_shards(chunks: Iterable[np.ndarray], out_dir: str | Path, *, rows_per_shard: int,
                 row_length: int) -> dict:
    """Write the rows of ``chunks`` (2-D int arrays of ``row_length`` columns, any number of rows each) as shards
    of ``rows_per_shard`` rows (the last may hold fewer) and then ``index.json``; returns the index.

    Memory: one shard's rows plus one chunk. A split with no rows gets an index of no shards."""
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard={rows_per_shard}: use at least 1 row per shard")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards: list[dict] = []
    pending: list[np.ndarray] = []
    n_pending = 0

    def flush(n: int) -> None:
        nonlocal pending, n_pending
        block = np.concatenate(pending) if len(pending) > 1 else pending[0]
        name = shard_name(len(shards))
        _write_one(block[:n], out / name)
        shards.append({"file": name, "rows": int(n), "sha256": file_sha256(out / name)})
        pending = [block[n:]] if n < len(block) else []
        n_pending = len(block) - n

    for chunk in chunks:
        chunk = np.asarray(chunk)
        if chunk.ndim != 2 or chunk.shape[1] != row_length:
            raise ValueError(f"{out}: rows of shape {chunk.shape} given, expected (n, {row_length})")
        if not len(chunk):
            continue
        pending.append(chunk.astype(np.int32, copy=False))
        n_pending += len(chunk)
        while n_pending >= rows_per_shard:
            flush(rows_per_shard)
    if n_pending:
        flush(n_pending)
    index = {"format": FORMAT, "row_length": int(row_length), "rows": sum(s["rows"] for s in shards),
             "shards": shards}
    tmp = out / (INDEX + ".tmp")
    tmp.write_text(json.dumps(index, indent=2))
    os.replace(tmp, out / INDEX)  # last: the completeness marker
    return index


def read_index(location: str | Path) -> dict:
    """The ``index.json`` of a sharded split at a folder or ``s3://`` prefix (FileNotFoundError naming it if absent)."""
    uri = storage.join(str(location), INDEX)
    try:
        index = json.loads(storage.read_bytes(uri))
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri} does not exist: not a sharded split; build the corpus with "
                                "--set shard_rows=N (flows.corpus_prep)") from None
    except json.JSONDecodeError:
        raise ValueError(f"{uri} is not valid JSON; rebuild the corpus's shards") from None
    if index.get("format") != FORMAT:
        raise ValueError(f"{uri}: format {index.get('format')!r}, expected {FORMAT!r}; rebuild the corpus's shards")
    return index


def _remove_stale_caches(root: Path) -> None:
    """Private cache folders left by killed processes (named ``stream-<pid>-*``) on this node."""
    for folder in root.glob("stream-*-*"):
        try:
            pid = int(folder.name.split("-")[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except (ValueError, PermissionError):  # not ours, or another user's live process
            continue


class ShardStream:
    """One worker's view of a sharded split (module docstring): ``batch(...)`` gives its rows of a micro-batch.

    ``tokens_length``: the row length span corruption needs (longer rows are cut, shorter refused);
    ``window``: shards whose rows are shuffled together (``models.shard_order``);
    ``max_cached_shards``: shard files kept on local disk, and decoded in memory (at least ``window``, so one
    window's shards fit); ``cache_dir``: where this stream's private cache folder goes (default
    ``<SPACTOR_CACHE_DIR>/shards``), removed by :meth:`close` or when the stream is collected;
    ``prefetch``: after each batch, the shards of the next ``prefetch`` micro-batches (the order is a pure
    function of the step, so they are known) are fetched by one background thread while the model trains; a
    batch that needs a shard still in flight waits for it, and a fetch's error is raised there, by the batch that
    needs the shard. Shards in flight are held beside the cache, so disk and memory hold at most
    ``max_cached_shards`` plus the shards the next ``prefetch`` micro-batches add. 0 = fetch on demand only.
    """

    def __init__(self, location: str | Path, *, tokens_length: int, window: int = 4, max_cached_shards: int = 8,
                 cache_dir: str | Path | None = None, prefetch: int = 0):
        if window < 1:
            raise ValueError(f"shard_window={window}: use at least 1")
        if prefetch < 0:
            raise ValueError(f"shard_prefetch={prefetch}: use 0 (off) or more micro-batches ahead")
        if max_cached_shards < window:
            raise ValueError(f"max_cached_shards={max_cached_shards} is below shard_window={window}: a window's "
                             "shards must fit in the cache; raise max_cached_shards")
        self.location = str(location)
        self.index = read_index(self.location)
        self.row_length = int(self.index["row_length"])
        if self.row_length < tokens_length:
            raise ValueError(f"{self.location}: rows have {self.row_length} tokens but span corruption needs "
                             f"{tokens_length}; rebuild the corpus with pack_length={tokens_length}")
        self.tokens_length, self.window, self.max_cached_shards = tokens_length, window, max_cached_shards
        self.shard_rows = tuple(int(s["rows"]) for s in self.index["shards"])
        if sum(self.shard_rows) == 0:
            raise ValueError(f"{self.location} holds no rows; prepare a larger corpus or lower pack_length")
        root = Path(cache_dir) if cache_dir is not None else storage.cache_root() / "shards"
        root.mkdir(parents=True, exist_ok=True)
        _remove_stale_caches(root)
        self.cache_dir = Path(tempfile.mkdtemp(prefix=f"stream-{os.getpid()}-", dir=root))
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.cache_dir, True)
        self._cached: OrderedDict[int, np.ndarray] = OrderedDict()  # shard -> its rows, oldest use first
        self.fetches = 0  # shard downloads so far (for tests and logs)
        self.prefetch = prefetch
        self.waits = 0  # batches that needed a shard no background fetch had brought in yet (for tests and logs)
        self._lock = threading.Lock()
        self._pending: dict[int, Future] = {}  # shard -> its background fetch
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="shard-prefetch") if prefetch else None
        if self._pool is not None:
            weakref.finalize(self, self._pool.shutdown, wait=False, cancel_futures=True)

    def __len__(self) -> int:
        return sum(self.shard_rows)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            self._cached.clear()
            self._pending.clear()
        self._finalizer()

    def batch(self, *, step: int, micro: int, grad_accum: int, rank: int, world_size: int, batch_size: int,
              seed: int) -> np.ndarray:
        """This worker's rows of one micro-batch, (batch_size, tokens_length) int32 (``models.shard_order``)."""
        shard, row = shard_batch_rows(shard_rows=self.shard_rows, window=self.window, step=step, micro=micro,
                                      grad_accum=grad_accum, rank=rank, world_size=world_size,
                                      batch_size=batch_size, seed=seed)
        out = np.empty((batch_size, self.tokens_length), dtype=np.int32)
        for s in dict.fromkeys(shard.tolist()):  # each shard once, in the order the batch first needs it
            sel = shard == s
            out[sel] = self._rows(s)[row[sel], : self.tokens_length]
        if self.prefetch:
            self._prefetch_after(step=step, micro=micro, grad_accum=grad_accum, rank=rank, world_size=world_size,
                                 batch_size=batch_size, seed=seed)
        return out

    def _prefetch_after(self, *, step: int, micro: int, grad_accum: int, **where) -> None:
        """Start background fetches of the shards the next ``prefetch`` micro-batches read."""
        ahead: dict[int, None] = {}
        for k in range(1, self.prefetch + 1):
            n = step * grad_accum + micro + k
            shard, _ = shard_batch_rows(shard_rows=self.shard_rows, window=self.window, step=n // grad_accum,
                                        micro=n % grad_accum, grad_accum=grad_accum, **where)
            ahead.update(dict.fromkeys(shard.tolist()))
        with self._lock:
            for s in ahead:
                if s not in self._cached and s not in self._pending:
                    self._pending[s] = self._pool.submit(self._fetch, s)

    def _rows(self, s: int) -> np.ndarray:
        with self._lock:
            if s in self._cached:
                self._cached.move_to_end(s)
                return self._cached[s]
            fetching = self._pending.pop(s, None)
        if fetching is not None and not fetching.done():
            self.waits += 1
        rows = fetching.result() if fetching is not None else self._fetch(s)  # a background error is raised here
        with self._lock:
            self._cached[s] = rows
            while len(self._cached) > self.max_cached_shards:
                old, _ = self._cached.popitem(last=False)
                (self.cache_dir / self.index["shards"][old]["file"]).unlink(missing_ok=True)
        return rows

    def _fetch(self, s: int) -> np.ndarray:
        """Download shard ``s`` into the cache folder, checking its sha256 on the way; its decoded rows."""
        import pyarrow.parquet as pq

        entry = self.index["shards"][s]
        name = entry["file"]
        fs, path = storage.split(storage.join(self.location, name))
        target = self.cache_dir / name
        tmp = self.cache_dir / f".tmp-{name}"
        h = hashlib.sha256()
        try:
            with fs.open_input_stream(path) as src, open(tmp, "wb") as out:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    h.update(chunk)
                    out.write(chunk)
        except FileNotFoundError:
            tmp.unlink(missing_ok=True)
            raise FileNotFoundError(f"shard {name} of {self.location} is missing (listed in {INDEX}); "
                                    "republish the corpus") from None
        if h.hexdigest() != entry["sha256"]:
            tmp.unlink(missing_ok=True)
            raise ValueError(f"shard {name} of {self.location} does not match its sha256 in {INDEX} (corrupted "
                             "or replaced); republish the corpus")
        os.replace(tmp, target)
        self.fetches += 1
        column = pq.read_table(str(target), columns=[COLUMN]).column(COLUMN).combine_chunks()
        rows = column.flatten().to_numpy().reshape(len(column), self.row_length)
        if len(rows) != entry["rows"]:
            raise ValueError(f"shard {name} of {self.location} holds {len(rows)} rows, {INDEX} says "
                             f"{entry['rows']}; rebuild the corpus's shards")
        return rows
