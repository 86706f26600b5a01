"""Peak memory, local disk and speed of a pretraining worker against corpus size: the packed rows read in place,
loaded, or streamed from Parquet shards.

    .venv/bin/python benchmarks/data_memory.py --corpus .state/corpus/<name> --copies 1 10 50
    .venv/bin/python benchmarks/data_memory.py --corpus ... --copies 1 10 50 --loaders mapped streamed --shard-rows 2000

The corpus' packed train split is replicated ``copies`` times into a temporary corpus (same tokenizer),
then a training worker (``engine.pretrain_worker.PretrainObjective`` on the shared loop, a small T5, no
Ray) runs ``--steps`` SC steps in a fresh process, once with the rows read in place (``load_rows``:
memory-mapped Arrow, the default) and once with them loaded into the heap (``--eager`` behaviour, what
workers did before). The table gives each run's peak RSS (``ru_maxrss`` of the child), its anonymous
(heap) and file-backed RSS at the end (``/proc/self/status``; file-backed pages of the mapped corpus are
page cache the kernel can drop) and tokens/s. ``streamed``: the replicated train split is also written as Parquet
shards of ``--shard-rows`` rows (``engine.shards.write_shards``) and the worker reads them through
``ShardStream`` (``stream_shards``, window ``--shard-window``, at most ``--max-cached-shards`` in its cache);
"worker disk" is then the largest its shard cache grew (sampled after every step), against the corpus's size on
disk. ``--prefetch 0 2`` runs the streamed worker once per ``shard_prefetch`` value, and ``--fetch-latency-ms``
adds a simulated remote store's round trip to every shard fetch (in whichever thread fetches it):

    .venv/bin/python benchmarks/data_memory.py --corpus ... --copies 1 --loaders streamed --shard-rows 64 \
        --prefetch 0 2 --fetch-latency-ms 200
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from anywhere

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
import numpy as np, torch
torch.set_num_threads(1)
from engine import pretrain_worker
from engine.train_loop import run
cfg = json.loads({cfg!r})
disk = [0]
if cfg.get("stream_shards"):  # sample the shard cache's size after every step
    from engine.shards import ShardStream
    batch = ShardStream.batch
    def sampled(self, **kw):
        out = batch(self, **kw)
        disk[0] = max(disk[0], sum(f.stat().st_size for f in self.cache_dir.iterdir()))
        return out
    ShardStream.batch = sampled
latency = cfg.pop("fetch_latency_ms", 0) / 1000
if latency:  # an object store's round trip per shard, in whichever thread fetches it
    from engine.shards import ShardStream
    fetch = ShardStream._fetch
    def slow(self, s):
        time.sleep(latency)
        return fetch(self, s)
    ShardStream._fetch = slow
if cfg.pop("eager"):
    mapped = pretrain_worker.load_rows
    pretrain_worker.load_rows = lambda d, n: np.ascontiguousarray(mapped(d, n)[np.arange(len(mapped(d, n)))])
obj = pretrain_worker.PretrainObjective(cfg)
t0 = time.perf_counter()
state = run(obj, pretrain_worker.PretrainJob.of(cfg).loop)
dt = time.perf_counter() - t0
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
mib = lambda key: int(status[key].split()[0]) / 1024 if key in status else float("nan")
print(json.dumps({{"rows": len(obj.train_rows), "tokens_per_s": obj.tokens_per_micro() * cfg["total_steps"] / dt,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "anon_mib": mib("RssAnon"), "file_mib": mib("RssFile"), "disk_mib": disk[0] / 2**20}}))
"""


def replicate(corpus: Path, copies: int, out: Path, shard_rows: int) -> Path:
    import datasets
    import numpy as np

    from engine.shards import write_shards

    train = datasets.load_from_disk(str(corpus / "packed" / "train"))
    target = out / f"x{copies}"
    (target / "packed").mkdir(parents=True)
    shutil.copytree(corpus / "tokenizer", target / "tokenizer")
    big = datasets.concatenate_datasets([train] * copies)
    big.save_to_disk(str(target / "packed" / "train"))
    datasets.load_from_disk(str(corpus / "packed" / "validation")).save_to_disk(str(target / "packed" / "validation"))
    if shard_rows:
        rows = big.with_format("numpy")
        chunks = (np.asarray(rows[i:i + shard_rows]["input_ids"], dtype=np.int32)
                  for i in range(0, len(rows), shard_rows))
        write_shards(chunks, target / "shards" / "train", rows_per_shard=shard_rows,
                     row_length=len(big[0]["input_ids"]))
    return target


def size_mib(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def worker_cfg(corpus: Path, steps: int, tokens_length: int) -> dict:
    return {"corpus_dir": str(corpus), "tokenizer_dir": str(corpus / "tokenizer"), "in_ray": False,
            "model": {"d_model": 64, "d_ff": 128, "d_kv": 16, "num_heads": 4, "num_layers": 2,
                      "num_decoder_layers": 2, "tie_word_embeddings": True},
            "spactor": {}, "tau": 0, "inputs_length": tokens_length, "noise_density": 0.15,
            "mean_noise_span_length": 3.0, "eval_batches": 1, "cosine_every": 0, "batch_size": 16, "seed": 0,
            "total_steps": steps, "lr": 1e-3, "eval_every": 0, "checkpoint_every": 0, "log_every": steps}


def measure(corpus: Path, steps: int, inputs_length: int, eager: bool, stream: dict | None = None) -> dict:
    cfg = {**worker_cfg(corpus, steps, inputs_length), "eager": eager, **(stream or {})}
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), cfg=json.dumps(cfg))],
                       capture_output=True, text=True, check=True)
    out = json.loads(p.stdout.strip().splitlines()[-1])  # the child's own peak RSS (ru_maxrss)
    out["wall_s"] = time.perf_counter() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", required=True, help="a corpus folder (corpus_prep's output: packed/, tokenizer/)")
    ap.add_argument("--copies", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--inputs-length", type=int, default=114, help="span-corruption input length (rows are cut)")
    ap.add_argument("--loaders", nargs="+", default=["mapped", "loaded"], choices=["mapped", "loaded", "streamed"])
    ap.add_argument("--shard-rows", type=int, default=2000, help="streamed: rows per Parquet shard")
    ap.add_argument("--shard-window", type=int, default=2, help="streamed: shards shuffled together")
    ap.add_argument("--max-cached-shards", type=int, default=3, help="streamed: shard files a worker keeps")
    ap.add_argument("--prefetch", type=int, nargs="+", default=[2],
                    help="streamed: one run per value of shard_prefetch (micro-batches fetched ahead; 0 = on demand)")
    ap.add_argument("--fetch-latency-ms", type=float, default=0.0,
                    help="streamed: added to every shard fetch (a remote store's round trip, simulated)")
    args = ap.parse_args()
    corpus = Path(args.corpus)
    names = {"mapped": "read in place", "loaded": "loaded (before)", "streamed": "streamed shards"}
    stream = {"stream_shards": True, "shard_window": args.shard_window, "max_cached_shards": args.max_cached_shards}
    latency = f", +{args.fetch_latency_ms:g} ms a fetch" if args.fetch_latency_ms else ""
    print("| copies | rows | train split on disk (MiB) | loader | peak RSS (MiB) | at the end: anonymous / file-backed "
          "RSS (MiB) | worker disk (MiB) | tokens/s |")
    print("|---:|---:|---:|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(dir=corpus.parent) as tmp:
        for copies in sorted(args.copies):
            shards = args.shard_rows if "streamed" in args.loaders else 0
            rep = replicate(corpus, copies, Path(tmp), shards) if copies > 1 or shards else corpus
            on_disk = size_mib(rep / "packed" / "train")
            runs = [(loader, p) for loader in args.loaders for p in (args.prefetch if loader == "streamed" else [0])]
            for loader, prefetch in runs:
                m = measure(rep, args.steps, args.inputs_length, loader == "loaded",
                            {**stream, "shard_prefetch": prefetch, "fetch_latency_ms": args.fetch_latency_ms}
                            if loader == "streamed" else None)
                disk = f"{m['disk_mib']:,.1f}" if loader == "streamed" else "0 (reads the corpus in place)"
                name = names[loader] + (f" (prefetch {prefetch}{latency})" if loader == "streamed" else "")
                print(f"| {copies} | {m['rows']:,} | {on_disk:,.0f} | {name} | {m['peak_rss_mib']:,.0f} | "
                      f"{m['anon_mib']:,.0f} / {m['file_mib']:,.0f} | {disk} | {m['tokens_per_s']:,.0f} |", flush=True)
            if rep != corpus:
                shutil.rmtree(rep)


if __name__ == "__main__":
    main()
