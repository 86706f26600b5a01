"""Thai segmentation: our character-level segmenter vs pythainlp ``newmm`` and nlpO3 on held-out ORCHID.

    .venv/bin/python benchmarks/thai_segment.py --model models:/thai-seg-small-ranked@final
    .venv/bin/python benchmarks/thai_segment.py --train-sentences 4000      # no model: fit one here first
    .venv/bin/python benchmarks/thai_segment.py --segmenter '{"hidden": 96, "ngram_buckets": 0}'  # the old default

Quality: word F1 and word-boundary precision/recall/F1 against ORCHID gold, on the test split the
active-learning flow uses (same ``--test-fraction`` and ``--split-seed`` give the same sentences).
Speed: characters per second over the whole test set, best of ``--repeats`` passes, after one warm-up
pass; ours both batched (``segment_batch``, texts packed by length) and one text per call (``segment``),
newmm one text per call (it has no batch mode), nlpO3 (newmm's algorithm in Rust, same word list) one
text per call. ``--threads`` sets torch's threads (newmm is pure Python and nlpO3 runs on one thread
here). ``--bf16`` also times ours with bf16 inference. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tasks.runtime.env import apply_embedded_defaults  # noqa: E402

apply_embedded_defaults()

import torch  # noqa: E402


def best_rate(fn, texts: list[str], repeats: int) -> tuple[float, list[list[str]]]:
    """(characters per second of the fastest of ``repeats`` timed passes, the last output)."""
    chars = sum(map(len, texts))
    out = fn(texts)  # warm-up (newmm builds its trie, torch allocates)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(texts)
        best = min(best, time.perf_counter() - t0)
    return chars / best, out


def _nlpo3():
    """nlpO3's segment function over pythainlp's word list (newmm's dictionary), or None if not installed."""
    import importlib.util

    if importlib.util.find_spec("nlpo3") is None or importlib.util.find_spec("pythainlp") is None:
        print("nlpo3 is not installed (requirements-data.txt): its row is left out", file=sys.stderr)
        return None
    import nlpo3

    words = Path(importlib.util.find_spec("pythainlp").origin).parent / "corpus" / "words_th.txt"
    nlpo3.load_dict(str(words), "pythainlp_words_th")
    return lambda text: nlpo3.segment(text, "pythainlp_words_th")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="models:/name@alias, models:/name/version, runs:/... or a saved folder")
    ap.add_argument("--train-sentences", type=int, default=4000, help="without --model: fit on this many pool sentences")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--test-fraction", type=float, default=0.1)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--max-test", type=int, default=0, help="subsample the test set (0 = all of it)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--segmenter", default="{}", help="without --model: SegmenterConfig fields as JSON, "
                    "e.g. '{\"hidden\": 96, \"ngram_buckets\": 0}' (the model before n-gram features)")
    ap.add_argument("--bf16", action="store_true", help="also time ours with inference_dtype=bfloat16")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from models.thai_segmenter import SegmenterConfig, ThaiSegmenter
    from tasks.thai.active_learning import segmentation_scores
    from tasks.thai.annotators import newmm_words
    from tasks.thai.data import load_experiment, subsample

    import json

    import numpy as np

    pool, test = load_experiment("orchid", [], test_fraction=args.test_fraction, split_seed=args.split_seed,
                                 max_test=args.max_test)
    if args.model:
        from tasks.tracking import resolve_model

        model, source = ThaiSegmenter.load(resolve_model(args.model)), args.model
    else:
        g = torch.Generator().manual_seed(0)
        model = ThaiSegmenter(SegmenterConfig(epochs=args.epochs, **json.loads(args.segmenter)), generator=g)
        train = subsample(pool, args.train_sentences, rng=np.random.default_rng(0))
        t0 = time.perf_counter()
        model.fit([list(it.words) for it in train], generator=g)
        source = (f"fitted here: {len(train)} random pool sentences ({sum(len(it.text) for it in train)} chars), "
                  f"{args.epochs} epochs, {time.perf_counter() - t0:.0f} s, config {args.segmenter}")
    texts, gold = [it.text for it in test], [list(it.words) for it in test]

    def ours_bf16(ts: list[str]) -> list[list[str]]:
        model.config.inference_dtype = "bfloat16"
        try:
            return model.segment_batch(ts)
        finally:
            model.config.inference_dtype = "float32"

    peers = [("ours, batched", model.segment_batch)]
    if args.bf16:
        peers.append(("ours, batched, bf16", ours_bf16))
    peers += [("ours, one text per call", lambda ts: [model.segment(t) for t in ts]),
              ("newmm (pythainlp 5.4), one text per call", lambda ts: [newmm_words(t) for t in ts])]
    nlpo3_words = _nlpo3()
    if nlpo3_words is not None:
        peers.append(("nlpO3 1.4 (newmm in Rust), one text per call", lambda ts: [nlpo3_words(t) for t in ts]))
    rows = []
    for name, fn in peers:
        rate, pred = best_rate(fn, texts, args.repeats)
        assert all("".join(p) == t for p, t in zip(pred, texts)), name
        s = segmentation_scores(gold, pred, prefix="")
        rows.append((name, rate, s))

    print(f"test: {len(test)} sentences, {sum(map(len, texts))} characters (held-out ORCHID documents, "
          f"split seed {args.split_seed}); model: {source}; torch threads {args.threads}\n")
    print("| segmenter | chars/s | word F1 | boundary P | boundary R | boundary F1 |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, rate, s in rows:
        print(f"| {name} | {rate:,.0f} | {s['f1']:.4f} | {s['boundary_precision']:.4f} | "
              f"{s['boundary_recall']:.4f} | {s['boundary_f1']:.4f} |")


if __name__ == "__main__":
    main()
