"""Peak memory of a pretraining worker against corpus size: the packed rows read in place vs loaded.

    .venv/bin/python benchmarks/data_memory.py --corpus .state/corpus/<name> --copies 1 10 50

The corpus' packed train split is replicated ``copies`` times into a temporary corpus (same tokenizer),
then a training worker (``engine.pretrain_worker.PretrainObjective`` on the shared loop, a small T5, no
Ray) runs ``--steps`` SC steps in a fresh process, once with the rows read in place (``load_rows``:
memory-mapped Arrow, the default) and once with them loaded into the heap (``--eager`` behaviour, what
workers did before). The table gives each run's peak RSS (``ru_maxrss`` of the child), its anonymous
(heap) and file-backed RSS at the end (``/proc/self/status``; file-backed pages of the mapped corpus are
page cache the kernel can drop) and tokens/s.
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

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
import numpy as np, torch
torch.set_num_threads(1)
from engine import pretrain_worker
from engine.train_loop import run
cfg = json.loads({cfg!r})
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
                  "anon_mib": mib("RssAnon"), "file_mib": mib("RssFile")}}))
"""


def replicate(corpus: Path, copies: int, out: Path) -> Path:
    import datasets

    train = datasets.load_from_disk(str(corpus / "packed" / "train"))
    target = out / f"x{copies}"
    (target / "packed").mkdir(parents=True)
    shutil.copytree(corpus / "tokenizer", target / "tokenizer")
    datasets.concatenate_datasets([train] * copies).save_to_disk(str(target / "packed" / "train"))
    datasets.load_from_disk(str(corpus / "packed" / "validation")).save_to_disk(str(target / "packed" / "validation"))
    return target


def worker_cfg(corpus: Path, steps: int, tokens_length: int) -> dict:
    return {"corpus_dir": str(corpus), "tokenizer_dir": str(corpus / "tokenizer"), "in_ray": False,
            "model": {"d_model": 64, "d_ff": 128, "d_kv": 16, "num_heads": 4, "num_layers": 2,
                      "num_decoder_layers": 2, "tie_word_embeddings": True},
            "spactor": {}, "tau": 0, "inputs_length": tokens_length, "noise_density": 0.15,
            "mean_noise_span_length": 3.0, "eval_batches": 1, "cosine_every": 0, "batch_size": 16, "seed": 0,
            "total_steps": steps, "lr": 1e-3, "eval_every": 0, "checkpoint_every": 0, "log_every": steps}


def measure(corpus: Path, steps: int, inputs_length: int, eager: bool) -> dict:
    cfg = {**worker_cfg(corpus, steps, inputs_length), "eager": eager}
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
    args = ap.parse_args()
    corpus = Path(args.corpus)
    print("| copies | rows | loader | peak RSS (MiB) | at the end: anonymous / file-backed RSS (MiB) | tokens/s |")
    print("|---:|---:|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory(dir=corpus.parent) as tmp:
        for copies in sorted(args.copies):
            rep = replicate(corpus, copies, Path(tmp)) if copies > 1 else corpus
            for eager in (False, True):
                m = measure(rep, args.steps, args.inputs_length, eager)
                print(f"| {copies} | {m['rows']:,} | {'loaded (before)' if eager else 'read in place'} | "
                      f"{m['peak_rss_mib']:,.0f} | {m['anon_mib']:,.0f} / {m['file_mib']:,.0f} | "
                      f"{m['tokens_per_s']:,.0f} |", flush=True)
            if copies > 1:
                shutil.rmtree(rep)


if __name__ == "__main__":
    main()
