"""SpacTor / SC pretraining objective and the Ray Train worker entry point.

``pretrain_worker(job)`` runs on every Ray Train worker (or as a plain function with
``in_ray=False``): it takes an :class:`engine.jobs.PretrainJob` (or a config dict, made into one), builds the T5 + generator + RTD head from the config and the corpus'
tokenizer, and hands a :class:`PretrainObjective` to the shared loop in ``engine/train_loop.py``.
Training rows come from the memory-mapped packed split (:func:`load_rows`) or, with ``stream_shards``, from the
corpus's Parquet shards fetched on demand (:class:`engine.shards.ShardStream`); validation rows are always mapped.
No Prefect import here; Ray is imported only by the loop.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.flops import spactor_step_flops
from models.span_corruption import SpanCorruptionCollator
from models.spactor import (SpacTorModel, curriculum_is_hybrid, generator_t5_config,
                            sc_rtd_gradient_cosine, t5_config)
from models.training import global_batch_rows, step_seed
import dataclasses

from engine import storage
from engine.jobs import PretrainJob
from engine.shards import ShardStream
from engine.train_loop import run, use_worker_threads

def build_t5(model_cfg: dict[str, Any], vocab_size: int):
    """A randomly initialised T5 of the pretraining config's shape (``models.spactor.t5_config``)."""
    from transformers import T5ForConditionalGeneration

    return T5ForConditionalGeneration(t5_config(vocab_size, **model_cfg))


STREAMED_CORPUS_PARTS = ("tokenizer/", "packed/validation/")
"""What a worker that streams its training shards copies of an ``s3://`` corpus (everything else stays there)."""

ROWS_NPY = "rows.npy"
"""A packed split may also be a plain int32 array (``export_rows``): readable without ``datasets``."""


def _under(path: str, root: str, local_root: Path) -> Path:
    """``path`` on this node: a path under the ``s3://`` corpus ``root`` maps into its local copy."""
    if storage.is_remote(root) and storage.is_remote(path) and path.startswith(root.rstrip("/") + "/"):
        return local_root / path[len(root.rstrip("/")) + 1:]
    return Path(path)


class PackedRows:
    """The packed rows of a split, read in place: memory stays constant in the corpus size.

    Backed by the split's Arrow file (``datasets`` saves it memory-mapped; each chunk of the ``input_ids``
    column is viewed as an (n, length) int32 array without a copy) or by ``rows.npy`` (``np.load`` with
    ``mmap_mode="r"``). ``rows[idx]`` (an index array or a slice) copies only the rows asked for, cut to
    ``tokens_length``; the page cache, not the worker's heap, holds the rest. ``len(rows)`` is the row count.
    """

    def __init__(self, chunks: list[np.ndarray], tokens_length: int, source: str):
        self.chunks = [c for c in chunks if len(c)]
        self.tokens_length = tokens_length
        self.source = source
        self.starts = np.cumsum([0] + [len(c) for c in self.chunks])

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), self.tokens_length

    def __getitem__(self, key) -> np.ndarray:
        idx = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key, dtype=np.int64)
        if idx.ndim != 1:
            raise IndexError("PackedRows takes a 1-D index array or a slice")
        if len(idx) and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} rows of {self.source}")
        idx = np.where(idx < 0, idx + len(self), idx)
        out = np.empty((len(idx), self.tokens_length), dtype=np.int32)
        which = np.searchsorted(self.starts, idx, side="right") - 1
        for c in np.unique(which):
            sel = which == c
            out[sel] = self.chunks[c][idx[sel] - self.starts[c], : self.tokens_length]
        return out


def _arrow_chunks(packed_dir: str | Path) -> list[np.ndarray]:
    import datasets
    import pyarrow.compute as pc

    table = datasets.load_from_disk(str(packed_dir)).data.table  # memory-mapped Arrow
    chunks = []
    for chunk in table.column("input_ids").chunks:
        n = len(chunk)
        if n == 0:
            continue
        lengths = pc.list_value_length(chunk)  # 4 bytes per row, no numpy temporaries
        width = int(lengths[0].as_py())
        if width <= 0 or pc.min_max(lengths).as_py() != {"min": width, "max": width}:
            raise ValueError(f"{packed_dir}: packed rows must all have the same length; rebuild the corpus")
        flat = chunk.flatten().to_numpy(zero_copy_only=True)  # a view of the mapped file
        chunks.append(flat.reshape(n, width))
    return chunks


def load_rows(packed_dir: str | Path, tokens_length: int) -> PackedRows:
    """The packed rows of a split (:class:`PackedRows`, read in place); longer rows are cut, shorter refused.

    Reads the split's Arrow dataset (``datasets.load_from_disk``), or ``rows.npy`` where the split
    was exported with :func:`export_rows` (machines without ``datasets``, e.g. a bare GPU box).
    """
    npy = Path(packed_dir) / ROWS_NPY
    if npy.exists():
        rows = np.load(npy, mmap_mode="r", allow_pickle=False)
        if rows.ndim != 2:
            raise ValueError(f"{npy}: expected a 2-D array of packed rows, got shape {rows.shape}")
        if rows.dtype != np.int32:
            rows = rows.astype(np.int32)
        chunks = [rows]
    else:
        chunks = _arrow_chunks(packed_dir)
    width = min((c.shape[1] for c in chunks if len(c)), default=tokens_length)
    if any(len(c) for c in chunks) and width < tokens_length:
        raise ValueError(f"{packed_dir}: rows have {width} tokens but span corruption needs "
                         f"{tokens_length}; rebuild the corpus with pack_length={tokens_length}")
    return PackedRows(chunks, tokens_length, str(packed_dir))


def export_rows(packed_dir: str | Path, out_dir: str | Path, max_rows: int | None = None) -> Path:
    """Write a packed split's rows to ``out_dir/rows.npy`` (atomically), for :func:`load_rows`."""
    import datasets

    ds = datasets.load_from_disk(str(packed_dir)).with_format("numpy")
    rows = np.asarray(ds["input_ids"][: max_rows if max_rows is not None else len(ds)], dtype=np.int32)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (ROWS_NPY + ".tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, rows, allow_pickle=False)
    tmp.replace(out / ROWS_NPY)
    return out / ROWS_NPY


class PretrainObjective:
    def __init__(self, cfg: PretrainJob | dict[str, Any]):
        from transformers import AutoTokenizer

        self.cfg = cfg = PretrainJob.of(cfg)
        # s3://: one verified download per node, then mmap; streamed training rows leave their split behind
        corpus = storage.local_folder(cfg.corpus_dir, only=STREAMED_CORPUS_PARTS if cfg.stream_shards else ())
        self.tokenizer_dir = _under(cfg.tokenizer_dir, cfg.corpus_dir, corpus)
        tok = AutoTokenizer.from_pretrained(self.tokenizer_dir)
        self.vocab_size = len(tok)
        sentinel0 = tok.convert_tokens_to_ids("<extra_id_0>")
        if sentinel0 != self.vocab_size - 1 or tok.mask_token_id is None:
            raise ValueError(f"tokenizer at {self.tokenizer_dir} lacks T5 sentinels at the top or a <mask> token")
        torch.manual_seed(cfg.seed)  # identical initial weights on every worker and both arms
        t5 = build_t5(cfg.model, self.vocab_size)
        self.spactor_config = cfg.spactor
        self.model = SpacTorModel(t5, self.spactor_config, mask_token_id=tok.mask_token_id,
                                  sentinel_start_id=self.vocab_size - 100)
        self.collator = SpanCorruptionCollator(vocab_size=self.vocab_size, inputs_length=cfg.inputs_length,
                                               noise_density=cfg.noise_density,
                                               mean_noise_span_length=cfg.mean_noise_span_length)
        if cfg.stream_shards:  # fetched shard by shard into a bounded cache (engine.shards)
            self.train_rows = ShardStream(storage.join(str(cfg.corpus_dir), "shards", "train"),
                                          tokens_length=self.collator.tokens_length, window=cfg.shard_window,
                                          max_cached_shards=cfg.max_cached_shards, prefetch=cfg.shard_prefetch)
        else:
            self.train_rows = load_rows(corpus / "packed" / "train", self.collator.tokens_length)
        self.val_rows = load_rows(corpus / "packed" / "validation", self.collator.tokens_length)
        if len(self.train_rows) == 0:
            raise ValueError(f"corpus {cfg.corpus_dir} has no training rows")
        self.gen_config = generator_t5_config(t5.config, self.spactor_config)
        self._flops = {h: spactor_step_flops(t5.config, self.gen_config, batch_size=1,
                                             inputs_length=cfg.inputs_length,
                                             targets_length=self.collator.targets_length, hybrid=h,
                                             mask_rate=self.spactor_config.mask_rate).total for h in (False, True)}
        self.device = torch.device("cpu")

    def _batch(self, rows: np.ndarray, seed: int) -> dict[str, torch.Tensor]:
        b = self.collator(rows, rng=np.random.default_rng(seed))
        return {k: v.to(self.device, non_blocking=True) for k, v in b.items()}

    def _train_batch(self, **where) -> np.ndarray:
        """The training rows at (step, micro, grad_accum, rank, world_size, batch_size, seed): the packed split's
        epoch permutation (``global_batch_rows``), or the shard stream's windowed order (``models.shard_order``)."""
        if isinstance(self.train_rows, ShardStream):
            return self.train_rows.batch(**where)
        return self.train_rows[global_batch_rows(n_rows=len(self.train_rows), **where)]

    def loss(self, model, step, micro, rank, world):
        self.device = next(self.model.parameters()).device
        c = self.cfg
        self._last_where = dict(step=step, micro=micro, grad_accum=c.grad_accum, rank=rank, world_size=world,
                                batch_size=c.batch_size, seed=c.seed)
        rows = self._train_batch(**self._last_where)
        batch = self._batch(rows, step_seed(c.seed, step, micro, rank, stream=0))
        gen = torch.Generator(self.device).manual_seed(step_seed(c.seed, step, micro, rank, stream=1))
        out = model(batch["input_ids"], batch["labels"], hybrid=curriculum_is_hybrid(step, c.tau), generator=gen)
        metrics = {"loss": out.loss, "sc_loss": out.sc_loss, "mlm_loss": out.mlm_loss, "rtd_loss": out.rtd_loss,
                   "gen_accuracy": out.gen_accuracy, "rtd_accuracy": out.rtd_accuracy,
                   "replaced_rate": out.replaced_rate}
        return out.loss, {k: v.detach() for k, v in metrics.items() if v is not None}

    def tokens_per_micro(self) -> int:
        return self.cfg.batch_size * (self.cfg.inputs_length + self.collator.targets_length)

    def step_flops(self, step, world) -> int:
        hybrid = curriculum_is_hybrid(step, self.cfg.tau)
        return self._flops[hybrid] * self.cfg.batch_size * self.cfg.grad_accum * world

    @torch.no_grad()
    def evaluate(self, step) -> dict[str, float]:
        """Validation SC loss on fixed batches (same rows and corruption for every eval and both arms)."""
        if len(self.val_rows) == 0:
            return {}
        was_training = self.model.training
        self.model.eval()
        bs, total, n = self.cfg.batch_size, 0.0, 0
        for i in range(self.cfg.eval_batches):
            start = (i * bs) % len(self.val_rows)
            rows = self.val_rows[start : start + bs]
            if len(rows) == 0:
                break
            b = self._batch(rows, step_seed(self.cfg.seed, 0, i, 0, stream=7))
            total += self.model.t5(input_ids=b["input_ids"], attention_mask=b["input_ids"] != 0, labels=b["labels"]).loss.item()
            n += 1
        self.model.train(was_training)
        return {"val_sc_loss": total / max(n, 1)}

    def periodic(self, step) -> dict[str, float]:
        """Cosine between SC and RTD gradients on the shared encoder (only meaningful while hybrid)."""
        if not curriculum_is_hybrid(step - 1, self.cfg.tau):
            return {}
        c = self.cfg
        if isinstance(self.train_rows, ShardStream):  # the rows this worker just trained on: their shards are cached
            rows = self.train_rows.batch(**self._last_where)
        else:
            rows = self._train_batch(step=step, micro=0, grad_accum=1, rank=0, world_size=1,
                                     batch_size=c.batch_size, seed=c.seed + 1)
        b = self._batch(rows, step_seed(c.seed, step, 0, 0, stream=3))
        gen = torch.Generator(self.device).manual_seed(step_seed(c.seed, step, 0, 0, stream=4))
        return {"grad_cosine_sc_rtd": float(sc_rtd_gradient_cosine(self.model, b["input_ids"], b["labels"], generator=gen))}

    def save_final(self, out_dir: Path) -> None:
        from transformers import AutoTokenizer

        self.model.t5.save_pretrained(str(out_dir / "model"), safe_serialization=True)
        AutoTokenizer.from_pretrained(self.tokenizer_dir).save_pretrained(str(out_dir / "model"))
        (out_dir / "spactor_config.json").write_text(json.dumps(dataclasses.asdict(self.cfg.spactor), indent=2))


def pretrain_worker(job: PretrainJob | dict[str, Any]) -> dict[str, Any]:
    """Ray Train worker entry point (also callable directly, with ``in_ray=False`` in the job's loop)."""
    job = PretrainJob.of(job)
    use_worker_threads(job)
    return run(PretrainObjective(job), job.loop)


pretrain_worker.job_type = PretrainJob  # what tasks.runtime.tracked_run builds on the driver for this worker
