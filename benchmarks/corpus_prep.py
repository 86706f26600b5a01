"""Corpus-prep throughput on the packaged English corpus: MB/s of raw text and tokens/s, per phase.

    .venv/bin/python benchmarks/corpus_prep.py [--max-documents N] [--vocab-size 8000] [--num-proc 2]

Runs the same functions as the corpus-prep flow (no Prefect, no MLflow) in a temporary folder and
prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tasks.runtime.env import apply_embedded_defaults  # noqa: E402

apply_embedded_defaults()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-documents", type=int, default=None)
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument("--pack-length", type=int, default=568)
    ap.add_argument("--num-proc", type=int, default=2)
    args = ap.parse_args()

    from engine.config.corpus_prep import CorpusPrepConfig
    from tasks import corpus

    cfg = CorpusPrepConfig(name="bench", max_documents=args.max_documents, vocab_size=args.vocab_size,
                           pack_length=args.pack_length, num_proc=args.num_proc).model_dump()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        stats = corpus.collect_documents(cfg, work)
        t1 = time.perf_counter()
        corpus.train_tokenizer(cfg, work)
        t2 = time.perf_counter()
        stats.update(corpus.tokenize_and_pack(cfg, work))
        t3 = time.perf_counter()
    chars = sum(stats["characters"].values())
    tokens = sum(stats["tokens"].values())
    mb = chars / 1e6
    rows = [
        ("read + clean + dedup + split", t1 - t0, f"{mb / (t1 - t0):.2f} MB/s", f"{stats['documents_kept']} docs"),
        ("train tokenizer (train split)", t2 - t1, f"{stats['characters']['train'] / 1e6 / (t2 - t1):.2f} MB/s",
         f"vocab {args.vocab_size}+100"),
        ("tokenize + pack", t3 - t2, f"{tokens / (t3 - t2):,.0f} tokens/s", f"{tokens:,} tokens"),
        ("total", t3 - t0, f"{mb / (t3 - t0):.2f} MB/s", f"{mb:.1f} M chars"),
    ]
    print(f"| phase | seconds | throughput | size |\n|---|---|---|---|")
    for name, sec, thr, size in rows:
        print(f"| {name} | {sec:.1f} | {thr} | {size} |")
    print(json.dumps({"drops": stats["drops"], "tokens_per_word": tokens / max(1, sum(stats['words'].values()))}))


if __name__ == "__main__":
    main()
