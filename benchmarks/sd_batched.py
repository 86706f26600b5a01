"""Benchmark: batched speculative decoding (B prompts at once) vs transformers' batched generate.

Transformers' assisted generation is batch-1 only. ``speculative_generate`` with B > 1 verifies
every row in one target call and lets each row accept its own number of draft tokens (the caches
are realigned per row). This script measures, for each batch size B, with
``engine.sd_bench.run_batched_benchmark`` (the code behind the flow's ``batch_sizes`` field):

  hf_generate   target.generate(B prompts, do_sample=False)        batched greedy, the reference
  sd            speculative_generate(B prompts)                       batched SD
  sd_b1         speculative_generate, one prompt at a time            batch-1 SD over the same prompts

and prints a markdown table: throughput (generated tokens / s over all prompts), the speedup over
hf_generate at the same B (paired per pass), alpha, tokens per target call and row, and whether every
output equals hf_generate token for token. The pair is ``benchmarks/sd_engine.py``'s synthetic pair (or
``--target/--draft`` folders); prompts are random ids of different lengths (padded, with an attention
mask), so rows finish at different times.

    python benchmarks/sd_batched.py                       # ~2-3 minutes on one CPU thread
    python benchmarks/sd_batched.py --batches 1 4 16 --gamma 3 --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._flags import settings_from_flags  # noqa: E402
from benchmarks.sd_engine import load_pair, parse_args as engine_args  # noqa: E402
from engine.sd_bench import BATCH_SUMMARY, markdown_table, run_batched_benchmark  # noqa: E402
from models.sd.bench import BenchPrompt, BenchSettings  # noqa: E402


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 add_help=False)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8], help="batch sizes to time")
    ap.add_argument("--rounds", type=int, default=2, help="prompts = max(batches) x rounds, the same set for every B")
    ap.add_argument("-h", "--help", action="store_true")
    ours, rest = ap.parse_known_args(argv)
    if ours.help:
        ap.print_help()
        print("\nPair, prompt and timing options (benchmarks/sd_engine.py's):")
        engine_args(["--help"])
    return ours, rest


def main(argv: list[str] | None = None) -> None:
    ours, rest = parse_args(argv)
    args = engine_args(rest)
    hf_logging.set_verbosity_error()
    target, draft, vocab = load_pair(args)
    g = torch.Generator().manual_seed(args.seed)
    n_prompts = max(ours.batches) * ours.rounds
    lengths = torch.randint(max(2, args.prompt_len // 2), args.prompt_len + 1, (n_prompts,), generator=g).tolist()
    prompts = [BenchPrompt(input_ids=torch.randint(2, vocab, (length,), generator=g).tolist()) for length in lengths]
    settings = settings_from_flags(BenchSettings, args, gammas=(args.gamma,))  # sd_engine's flags
    print(f"target {sum(p.numel() for p in target.parameters()) / 1e6:.1f}M, draft "
          f"{sum(p.numel() for p in draft.parameters()) / 1e6:.1f}M params; gamma={args.gamma}, "
          f"max_new_tokens={args.max_new_tokens}, {n_prompts} prompts of {args.prompt_len // 2}-{args.prompt_len} "
          f"tokens (the same for every B), {args.device} {args.dtype}, threads={args.threads}, "
          f"median of {args.repeats} passes\n")
    # Every batch size decodes the same prompts, so alpha and the outputs are comparable across B.
    rows = run_batched_benchmark(target, {"draft": draft}, prompts, settings, batch_sizes=ours.batches,
                                 include_unbatched=True)
    print(markdown_table(rows, BATCH_SUMMARY), end="")  # rows, not a DataFrame: no pandas on a bare GPU box


if __name__ == "__main__":
    main()
