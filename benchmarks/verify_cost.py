"""Benchmark: what scoring k tokens in one call costs against one token, on this machine.

Speculative decoding pays off when the target's call that verifies gamma drafted tokens (gamma + 1
new decoder positions) costs about as much as one ordinary decoding step: on a GPU a step at batch 1
reads every weight once and does little arithmetic, so more rows per matmul are nearly free. This
script measures whether that premise holds here, in two tables:

  1. the bare linear layers of a T5 decoder step (x @ W.T with k rows) for the given shapes:
     microseconds and the ratio to one row. As in a decoding step, the weights come from memory, not
     from the CPU's caches: each call uses the next of several copies of the weight that together
     exceed ``--cold-mb`` (a weight that stays in cache makes one row look several times cheaper);
  2. one KV-cached decoder call of a random-init T5 of the given shape (``models.sd.kv_cache.
     CachedDecoder``, the SD engine's own call) feeding k new tokens: milliseconds and the ratio to
     one token, i.e. the "verify/step" column of the pipeline's SD table.

If the ratios grow with k roughly like k, the target is compute-bound at batch 1 and verification
eats most of SD's gain (the closed form assumes a ratio of 1).

    .venv/bin/python benchmarks/verify_cost.py                         # the laptop target's shape
    .venv/bin/python benchmarks/verify_cost.py --d-model 64 --d-ff 128 --layers 1 --heads 4   # its draft
    .venv/bin/python benchmarks/verify_cost.py --compile                # the engine's compiled fast path
    .venv/bin/python benchmarks/verify_cost.py --lean [--int8]          # the engine's lean T5 step (CPU fast path)
    .venv/bin/python benchmarks/verify_cost.py --device cuda --d-model 2048 --d-ff 5120 --layers 24 --heads 32
    .venv/bin/python benchmarks/verify_cost.py --model smollm2 [--int8 | --bf16]   # a real decoder-only LLM (SmolLM2-135M)

With ``--model`` (a decoder-only reference of ``engine.causal_lm``: ``smollm2``, ``gguf:PATH``, a folder, a hub
id), table 1 uses that model's shapes and table 2 times ``models.sd.kv_cache.CausalCachedDecoder`` on it.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script from anywhere

from transformers import T5ForConditionalGeneration  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from benchmarks._flags import add_shape_flags, t5_shape  # noqa: E402
from engine.sd_bench import sync  # noqa: E402
from models.sd.kv_cache import CachedDecoder, CausalCachedDecoder, compiled_forward  # noqa: E402
from models.sd.lean_t5 import LeanT5Decoder  # noqa: E402
from models.sd.quantization import at_precision  # noqa: E402
from models.spactor import t5_config  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_shape_flags(ap, d_model=256, d_ff=1024, heads=4, what="the random T5 (default: the laptop target's width)")
    ap.add_argument("--layers", type=int, default=4, help="encoder = decoder layers")
    ap.add_argument("--vocab", type=int, default=8000, help="vocabulary size (the LM head's rows)")
    ap.add_argument("--prompt-len", type=int, default=256, help="encoder length of the decoder's prompt")
    ap.add_argument("--max-k", type=int, default=7, help="largest number of new tokens per call (gamma + 1)")
    ap.add_argument("--calls", type=int, default=40, help="timed calls per k (the median is reported)")
    ap.add_argument("--cold-mb", type=int, default=128,
                    help="table 1: copies of each weight cycle through at least this many MiB (beyond the caches)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (the SD benchmark uses 1)")
    ap.add_argument("--compile", action="store_true",
                    help="table 2 on a static cache through torch.compile (the engine's fast path)")
    ap.add_argument("--lean", action="store_true",
                    help="table 2 with the engine's lean T5 decoder step (models.sd.lean_t5, cache_implementation='lean')")
    ap.add_argument("--device", default="cpu")
    weights = ap.add_mutually_exclusive_group()
    weights.add_argument("--int8", action="store_true",
                         help="table 2 with the model's linear layers dynamically quantised to int8 (models.sd.quantization)")
    weights.add_argument("--bf16", action="store_true", help="table 2 with a bfloat16 copy of the model")
    ap.add_argument("--decoder-layers", type=int, default=None, help="decoder layers (default: --layers)")
    ap.add_argument("--model", default=None,
                    help="a decoder-only LM reference (engine.causal_lm: smollm2, gguf:PATH, a folder, a hub id) "
                         "instead of a random T5")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for name in ("layers", "vocab", "prompt_len", "max_k", "calls", "threads", "cold_mb"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.model and (args.compile or args.lean):
        ap.error("--model times the eager dynamic cache: drop --compile and --lean")
    if args.lean and args.compile:
        ap.error("--lean runs its own eager step: drop --compile")
    if args.int8 and (args.compile or args.device != "cpu"):
        ap.error("--int8 is the CPU eager path: drop --compile and --device")
    try:
        t5_shape(args, layers=args.layers, decoder_layers=args.decoder_layers)
    except ValueError as err:
        ap.error(str(err))
    return args


def _median_us(fn, calls: int, device: torch.device) -> float:
    for _ in range(max(3, calls // 5)):
        fn()
    times = []
    for _ in range(calls):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(1e6 * (time.perf_counter() - t0))
    return statistics.median(times)


def linear_table(args: argparse.Namespace, device: torch.device, gen: torch.Generator) -> list[dict]:
    """Rows of table 1: one per (weight shape, k); bfloat16 weights and rows with ``--bf16``."""
    shapes = {
        "attention q/k/v/o": (args.d_model, args.d_model),
        "feed-forward in": (args.d_ff, args.d_model),
        "feed-forward out": (args.d_model, args.d_ff),
        "LM head": (args.vocab, args.d_model),
    }
    rows = []
    with torch.inference_mode():
        for name, (out_f, in_f) in shapes.items():
            dtype = torch.bfloat16 if args.bf16 else torch.float32
            copies = max(1, -(-(args.cold_mb << 20) // (out_f * in_f * dtype.itemsize)))
            w = torch.randn(out_f, in_f, generator=gen).to(device, dtype)
            weights = [w] + [w.clone() for _ in range(copies - 1)]
            base = None
            for k in range(1, args.max_k + 1):
                x = torch.randn(k, in_f, generator=gen).to(device, dtype)
                cycle = itertools.cycle(weights)
                us = _median_us(lambda: torch.nn.functional.linear(x, next(cycle)), max(args.calls * 5, 2 * copies),
                                device)
                base = base or us
                rows.append({"layer": name, "weight": f"{out_f} x {in_f}", "k": k, "us": us, "ratio": us / base})
    return rows


def _causal_decoder(args: argparse.Namespace, model, device: torch.device, gen: torch.Generator):
    """A decoder-only model's cached decoder on a prompt of ``--prompt-len`` tokens, and the tokens it is fed."""
    if args.int8 or args.bf16:
        model = at_precision(model, "int8" if args.int8 else "bf16")
    ids = torch.randint(2, model.config.vocab_size, (1, args.prompt_len), generator=gen).to(device)
    feed = [int(ids[0, -1])] + torch.randint(2, model.config.vocab_size, (32 + args.max_k,), generator=gen).tolist()
    return CausalCachedDecoder(model.to(device), ids, torch.ones_like(ids)), feed


def decoder_table(args: argparse.Namespace, device: torch.device, gen: torch.Generator, causal=None) -> list[dict]:
    """Rows of table 2: one KV-cached decoder call per k, on a cache of 32 decoded positions."""
    if causal is not None:
        with torch.inference_mode():
            dec, feed = _causal_decoder(args, causal, device, gen)
        return _time_calls(args, dec, feed, device)
    config = t5_config(args.vocab, **t5_shape(args, layers=args.layers, decoder_layers=args.decoder_layers,
                                              tie_word_embeddings=True))
    torch.manual_seed(args.seed)  # T5's initialisation draws from the global generator
    model = T5ForConditionalGeneration(config).to(device).eval()
    if args.int8 or args.bf16:
        model = at_precision(model, "int8" if args.int8 else "bf16")
    ids = torch.randint(2, args.vocab, (1, args.prompt_len), generator=gen).to(device)
    mask = torch.ones_like(ids)
    feed = [0] + torch.randint(2, args.vocab, (32 + args.max_k,), generator=gen).tolist()
    with torch.inference_mode():
        if args.compile:
            dec = CachedDecoder(model, ids, mask, cache_implementation="static", max_cache_len=32 + args.max_k,
                                forward=compiled_forward(model))
        elif args.lean:
            dec = LeanT5Decoder(model, ids, mask, max_cache_len=32 + args.max_k)
        else:
            dec = CachedDecoder(model, ids, mask)
    return _time_calls(args, dec, feed, device)


def _time_calls(args: argparse.Namespace, dec, feed: list[int], device: torch.device) -> list[dict]:
    rows = []
    with torch.inference_mode():
        dec.advance(feed[:32])
        base = None
        for k in range(1, args.max_k + 1):
            def call(k=k):
                dec.advance(feed[: 32 + k])
                dec.crop(32)

            us = _median_us(call, args.calls, device)
            base = base or us
            rows.append({"k": k, "ms": us / 1e3, "ratio": us / base})
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(args.seed)
    causal = None
    if args.model:
        from engine.causal_lm import load_causal_lm

        causal, _ = load_causal_lm(args.model)
        c = causal.config
        args.d_model, args.d_ff, args.layers, args.vocab = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size
        print(f"# torch {torch.__version__}, device {device}, {args.threads} thread(s); {args.model}: "
              f"{type(causal).__name__}, d_model {c.hidden_size}, d_ff {c.intermediate_size}, {c.num_hidden_layers} "
              f"layers, vocab {c.vocab_size}, prompt {args.prompt_len}")
    else:
        print(f"# torch {torch.__version__}, device {device}, {args.threads} thread(s); T5 d_model {args.d_model}, "
              f"d_ff {args.d_ff}, {args.layers}+{args.decoder_layers or args.layers} layers, vocab {args.vocab}, "
              f"prompt {args.prompt_len}")
    print(f"\n## 1. linear layers, {'bf16' if args.bf16 else 'fp32'} weights from memory (> {args.cold_mb} MiB cycled): "
          "k rows against 1\n")
    print("| layer | weight | " + " | ".join(f"k={k}" for k in range(1, args.max_k + 1)) + " |")
    print("|---|---|" + "---:|" * args.max_k)
    lin = linear_table(args, device, gen)
    for name in dict.fromkeys(r["layer"] for r in lin):
        rs = [r for r in lin if r["layer"] == name]
        cells = [f"{rs[0]['us']:.1f} us"] + [f"{r['ratio']:.2f}x" for r in rs[1:]]
        print(f"| {name} | {rs[0]['weight']} | " + " | ".join(cells) + " |")
    precision = ", int8" if args.int8 else ", bf16" if args.bf16 else ""
    how = ("static cache, torch.compile" if args.compile else "lean step" if args.lean else "dynamic cache, eager") + precision
    kind = ("kv_cache.CausalCachedDecoder" if causal is not None else "lean_t5.LeanT5Decoder" if args.lean
            else "kv_cache.CachedDecoder")
    print(f"\n## 2. one KV-cached decoder call (models.sd.{kind}, {how}) with k new tokens\n")
    dec = decoder_table(args, device, gen, causal)
    print("| k new tokens | ms/call | vs k=1 | per token |")
    print("|---:|---:|---:|---:|")
    for r in dec:
        print(f"| {r['k']} | {r['ms']:.2f} | {r['ratio']:.2f}x | {r['ms'] / r['k']:.2f} ms |")
    worst = dec[-1]["ratio"]
    print(f"\nverifying {args.max_k - 1} drafted tokens (k={args.max_k}) costs {worst:.2f} one-token steps "
          f"(the closed form assumes 1.00); the linear layers alone scale "
          f"{statistics.mean(r['ratio'] for r in lin if r['k'] == args.max_k):.2f}x on average.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
