"""Benchmark: batched speculative decoding (B prompts at once) vs transformers' batched generate.

Transformers' assisted generation is batch-1 only. ``speculative_generate`` with B > 1 verifies
every row in one target call and lets each row accept its own number of draft tokens (the caches
are realigned per row). This script measures, for each batch size B:

  hf_generate   target.generate(B prompts, do_sample=False)        batched greedy, the reference
  engine_sd_b1  speculative_generate, one prompt at a time            batch-1 SD over the same prompts
  engine_sd     speculative_generate(B prompts)                       batched SD

and prints throughput (generated tokens / s over all prompts), the speedup over hf_generate at the
same B, alpha, tokens per target call and whether every output equals hf_generate token for token.
The pair is ``benchmarks/sd_engine.py``'s synthetic pair (or ``--target/--draft`` folders); prompts
are random ids of different lengths (padded, with an attention mask) so rows finish at different times.

    python benchmarks/sd_batched.py                       # ~2-3 minutes on one CPU thread
    python benchmarks/sd_batched.py --batches 1 4 16 --gamma 3 --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.sd_engine import PAD, load_pair, parse_args as engine_args  # noqa: E402
from models.sd_bench import estimate_alpha  # noqa: E402
from models.speculative import speculative_generate  # noqa: E402


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 add_help=False)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8], help="batch sizes to time")
    ap.add_argument("--rounds", type=int, default=2, help="batches per batch size (prompts = B x rounds)")
    ap.add_argument("-h", "--help", action="store_true")
    ours, rest = ap.parse_known_args(argv)
    if ours.help:
        ap.print_help()
        print("\nPair, prompt and timing options (benchmarks/sd_engine.py's):")
        engine_args(["--help"])
    return ours, rest


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> None:
    ours, rest = parse_args(argv)
    args = engine_args(rest)
    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    target, draft, vocab = load_pair(args)
    device = torch.device(args.device)
    n, gamma = args.max_new_tokens, args.gamma
    g = torch.Generator().manual_seed(args.seed)

    def batch_of(b: int) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = torch.randint(max(2, args.prompt_len // 2), args.prompt_len + 1, (b,), generator=g).tolist()
        ids = torch.full((b, max(lengths)), PAD, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, length in enumerate(lengths):
            ids[i, :length] = torch.randint(2, vocab, (length,), generator=g)
            mask[i, :length] = 1
        return ids.to(device), mask.to(device)

    print(f"target {sum(p.numel() for p in target.parameters()) / 1e6:.1f}M, draft "
          f"{sum(p.numel() for p in draft.parameters()) / 1e6:.1f}M params; gamma={gamma}, max_new_tokens={n}, "
          f"prompts of {args.prompt_len // 2}-{args.prompt_len} tokens, {args.device} {args.dtype}, "
          f"threads={args.threads}, median of {args.repeats} passes")
    print(f"{'B':>3} {'method':<13} {'tokens/s':>9} {'vs hf':>7} {'alpha':>6} {'tok/call':>9} {'exact':>6}")
    with torch.inference_mode():
        for b in ours.batches:
            batches = [batch_of(b) for _ in range(ours.rounds)]

            def hf(ids, mask):
                return [row for row in target.generate(ids, attention_mask=mask, max_new_tokens=n,
                                                       do_sample=False).tolist()], None

            def sd(ids, mask):
                out = speculative_generate(target, draft, ids, mask, gamma=gamma, max_new_tokens=n)
                return out.sequences.tolist(), [out]

            def sd_b1(ids, mask):
                rows, outs = [], []
                for i in range(ids.shape[0]):
                    keep = mask[i].bool()
                    out = speculative_generate(target, draft, ids[i : i + 1, keep], gamma=gamma, max_new_tokens=n)
                    rows.append(out.sequences[0].tolist())
                    outs.append(out)
                return rows, outs

            results = {}
            for name, fn in (("hf_generate", hf), ("engine_sd_b1", sd_b1), ("engine_sd", sd)):
                for _ in range(args.warmup):
                    for ids, mask in batches:
                        fn(ids, mask)
                times = []
                for _ in range(args.repeats):
                    rows, stats = [], []
                    _sync(device)
                    t0 = time.perf_counter()
                    for ids, mask in batches:
                        r, s = fn(ids, mask)
                        rows.extend(r)
                        stats.extend(s or [])
                    _sync(device)
                    times.append(time.perf_counter() - t0)
                results[name] = (statistics.median(times), rows, stats)

            def strip(row: list[int]) -> list[int]:  # drop the padding after EOS
                while len(row) > 1 and row[-1] == PAD:
                    row = row[:-1]
                return row

            reference = [strip(r) for r in results["hf_generate"][1]]
            tokens = sum(len(r) - 1 for r in reference)
            base = tokens / results["hf_generate"][0]
            for name, (seconds, rows, stats) in results.items():
                rate = tokens / seconds
                exact = [strip(r) for r in rows] == reference
                alpha = block = "-"
                if stats:
                    alpha = f"{estimate_alpha([a for o in stats for a in o.accepted], [d for o in stats for d in o.drafted]):.2f}"
                    block = f"{tokens / sum(len(o.accepted) for o in stats):.2f}"  # per row and call
                print(f"{b:>3} {name:<13} {rate:>9.1f} {rate / base:>6.2f}x {alpha:>6} {block:>9} {str(exact):>6}")


if __name__ == "__main__":
    main()
