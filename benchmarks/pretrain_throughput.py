"""Pretraining step throughput: our training loop (SC and hybrid steps) next to a plain HF loop.

    .venv/bin/python benchmarks/pretrain_throughput.py [--d-model 256 --layers 4 --batch 16 --inputs-length 128]

Same model shape, batch and data for all rows. "plain HF" is a bare single-process loop over
``T5ForConditionalGeneration`` (pre-collated span-corruption batches, forward, backward, clip, AdamW).
"ours" is ``engine/train_loop.run`` with the pretraining objective (collation included) in one process,
without Ray. The hybrid row compares the measured hybrid/SC step-time ratio with the FLOP counter's; on a GPU
the last column is the row's peak allocated memory. Each row prints when measured (``--rows`` picks and orders
them); "verdict:" lines then check issue 37's targets (our step >= plain HF, hybrid/SC time within 25% of the
FLOP ratio, MFU against the 45% aim with ``--peak-tflops``).
Runs on CPU by default; ``--device cuda --bf16 --compile`` on a GPU machine.

A GPU machine without Prefect, Ray, MLflow or ``datasets``: export a bundle here (corpus rows as
numpy, tokenizer, the full training config), carry it, and run from it there. The bundle mode
imports only torch, transformers, numpy and safetensors::

    .venv/bin/python benchmarks/pretrain_throughput.py --d-model 768 --d-ff 2048 --layers 12 --heads 12 \
        --batch 64 --inputs-length 512 --vocab-size 32000 --max-documents 20000 \
        --export-bundle bench-bundle                                        # here (~15 s)
    python benchmarks/pretrain_throughput.py --bundle bench-bundle --device cuda --bf16 --compile \
        --peak-tflops 989                                                   # there; MFU against 989 TFLOP/s
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._flags import add_shape_flags, t5_shape  # noqa: E402
from tasks.runtime.env import apply_embedded_defaults  # noqa: E402

apply_embedded_defaults()

import numpy as np  # noqa: E402
import torch  # noqa: E402


def corpus_for(pack_length: int, tmp: Path, vocab_size: int = 2000, max_documents: int = 1500) -> str:
    from engine.config.corpus_prep import CorpusPrepConfig
    from tasks.corpus import build_corpus, source_fingerprint

    cfg = CorpusPrepConfig(name="bench", packaged=["wiki", "parl"], max_documents=max_documents,
                           vocab_size=vocab_size, pack_length=pack_length, character_coverage=1.0, num_proc=1,
                           output_root=str(tmp)).model_dump()
    return build_corpus.fn(cfg, source_fingerprint(cfg))


def prepare(args: argparse.Namespace, tmp: Path) -> tuple[dict, str]:
    """The full pretraining config for the CLI's shape (``PretrainConfig`` defaults), and a corpus."""
    from engine.config.base import T5Shape
    from engine.config.pretrain import PretrainConfig

    shape = T5Shape(**t5_shape(args, layers=args.layers))
    base = PretrainConfig(model=shape, inputs_length=args.inputs_length, batch_size=args.batch, total_steps=1,
                          tau=0, checkpoint_every=0, eval_every=0, log_every=10**9, cosine_every=0)
    return base.model_dump(), args.corpus_dir or corpus_for(base.tokens_length, tmp, args.vocab_size,
                                                            args.max_documents)


def export_bundle(cfg: dict, corpus: str, out: Path) -> None:
    """config.json + tokenizer/ + packed/{train,validation}/rows.npy, written to a temporary folder first."""
    from engine.pretrain_worker import export_rows

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(Path(corpus) / "tokenizer", tmp / "tokenizer")
    for split in ("train", "validation"):
        export_rows(Path(corpus) / "packed" / split, tmp / "packed" / split)
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"bundle written to {out} ({size / 2**20:.1f} MiB); run it with --bundle {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_flags(ap, d_model=256, d_ff=512, heads=4)
    ap.add_argument("--layers", type=int, default=4, help="encoder = decoder layers")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--inputs-length", type=int, default=128)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--corpus-dir", default=None)
    ap.add_argument("--vocab-size", type=int, default=2000,
                    help="SentencePiece vocabulary of the corpus built for the benchmark (T5's is 32,000)")
    ap.add_argument("--max-documents", type=int, default=1500, help="documents of the corpus built for it")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--rows", default="plain,sc,hybrid",
                    type=lambda v: [r for r in v.split(",") if r],
                    help="loops to time, in this order (comma-separated from plain, sc, hybrid)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the accelerator's peak dense TFLOP/s at the training dtype; adds an MFU column")
    ap.add_argument("--export-bundle", metavar="DIR", default=None,
                    help="write corpus rows, tokenizer and config for this shape to DIR, then exit")
    ap.add_argument("--bundle", metavar="DIR", default=None,
                    help="run from an exported bundle (its shape, batch and lengths; no Prefect/datasets)")
    args = ap.parse_args()
    try:
        t5_shape(args, layers=args.layers)
    except ValueError as err:
        ap.error(str(err))
    if not args.rows or set(args.rows) - {"plain", "sc", "hybrid"}:
        ap.error(f"--rows {','.join(args.rows)}: give some of plain, sc, hybrid")
    torch.set_num_threads(args.threads)

    from engine.pretrain_worker import PretrainObjective
    from engine.train_loop import LoopSettings, run

    total = args.steps + args.warmup
    with tempfile.TemporaryDirectory() as tmp:
        if args.bundle:
            bundle = Path(args.bundle)
            base_cfg = json.loads((bundle / "config.json").read_text())
            corpus = str(bundle)
        else:
            base_cfg, corpus = prepare(args, Path(tmp))
            if args.export_bundle:
                export_bundle(base_cfg, corpus, Path(args.export_bundle))
                return
        base_cfg.update(total_steps=total, use_gpu=args.device == "cuda", bf16=args.bf16, compile=args.compile)
        shape = base_cfg["model"]
        args.batch, args.inputs_length = base_cfg["batch_size"], base_cfg["inputs_length"]
        common = {"corpus_dir": corpus, "tokenizer_dir": f"{corpus}/tokenizer", "checkpoint_dir": "", "in_ray": False}

        cuda = args.device == "cuda"

        def reset_peak() -> None:
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()

        def ours(tau: int) -> float:
            cfg = {**base_cfg, **common, "tau": tau}
            obj = PretrainObjective(cfg)
            times = []
            orig = obj.loss

            def timed(model, step, micro, rank, world):
                if cuda:
                    torch.cuda.synchronize()
                times.append(time.perf_counter())
                return orig(model, step, micro, rank, world)

            obj.loss = timed
            settings = LoopSettings(total_steps=total, lr=1e-3, warmup_steps=0, use_gpu=cuda,
                                    bf16=args.bf16, compile=args.compile, in_ray=False, log_every=10**9)
            run(obj, settings)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter())
            return float(statistics.median(np.diff(times)[args.warmup:]))

        def plain() -> float:
            from transformers import T5ForConditionalGeneration

            from models.spactor import t5_config

            obj = counter  # only for the collator and the data
            config = t5_config(obj.vocab_size, **shape)
            torch.manual_seed(0)
            model = T5ForConditionalGeneration(config).to(args.device)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            rng = np.random.default_rng(0)
            batches = [obj.collator(obj.train_rows[rng.integers(0, len(obj.train_rows), args.batch)], rng=rng)
                       for _ in range(total)]
            step_fn = torch.compile(model) if args.compile else model
            times = []
            for b in batches:
                if cuda:  # each step timed alone, as ours are
                    torch.cuda.synchronize()
                times.append(time.perf_counter())
                b = {k: v.to(args.device) for k, v in b.items()}
                with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.bf16):
                    loss = step_fn(input_ids=b["input_ids"], attention_mask=b["input_ids"] != 0, labels=b["labels"]).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter())
            return float(statistics.median(np.diff(times)[args.warmup:]))

        # tokens and FLOPs per step from the objective's counter, before any step runs; the plain loop takes its
        # collator and rows
        counter = PretrainObjective({**base_cfg, **common, "tau": 1})  # step 0 hybrid, step 1 SC
        tokens, f_hy, f_sc = counter.tokens_per_micro(), counter.step_flops(0, 1), counter.step_flops(1, 1)

        def mfu(flops: float, seconds: float) -> str:
            return f"{flops / seconds / (args.peak_tflops * 1e12):.1%}" if args.peak_tflops else ""

        print(f"model d_model={shape['d_model']} d_ff={shape['d_ff']} layers={shape['num_layers']}+"
              f"{shape['num_decoder_layers']}, batch {args.batch} x ({args.inputs_length}+targets), device "
              f"{args.device}{' bf16' if args.bf16 else ''}{' compiled' if args.compile else ''}, threads "
              f"{args.threads}, median of {args.steps} steps after {args.warmup} warm-up steps (compiling there); "
              f"torch {torch.__version__}")
        print("| loop | step time (s) | tokens/s | vs plain HF | hybrid/SC time | hybrid/SC FLOPs | MFU | peak memory |")
        print("|---|---|---|---|---|---|---|---|", flush=True)
        measured: dict[str, float] = {}
        names = {"plain": "plain HF T5 loop", "sc": "ours, SC step", "hybrid": "ours, hybrid step"}
        for row in args.rows:  # each row printed when measured: a run stopped by a time limit keeps it
            reset_peak()
            t = plain() if row == "plain" else ours(0 if row == "sc" else total)
            measured[row] = t
            flops = f_hy if row == "hybrid" else f_sc
            vs = f"{measured['plain'] / t:.2f}x" if "plain" in measured else ""
            ratio = (f"{t / measured['sc']:.2f} | {f_hy / f_sc:.2f}" if row == "hybrid" and "sc" in measured
                     else " | ")
            peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if cuda else "-"
            print(f"| {names[row]} | {t:.4f} | {tokens / t:,.0f} | {vs} | {ratio} | {mfu(flops, t)} | {peak} |",
                  flush=True)
        for line in verdicts(measured, f_sc, f_hy, tokens, args):
            print(line)


def verdicts(measured: dict[str, float], f_sc: float, f_hy: float, tokens: int, args: argparse.Namespace) -> list[str]:
    """Issue 37's pretraining targets, each with its numbers and met / not met: our step at least as fast as the
    plain HF loop on the same path, hybrid/SC step time within 25% of the FLOP counter's ratio, and (with
    ``--peak-tflops``) MFU against the 45% aim."""
    met = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    path = "compiled" if args.compile else "eager"
    lines = []
    if "plain" in measured and "sc" in measured:
        vs = measured["plain"] / measured["sc"]
        lines.append(f"verdict: our SC step vs the plain HF loop ({path}): {vs:.2f}x "
                     f"({tokens / measured['sc']:,.0f} vs {tokens / measured['plain']:,.0f} tokens/s), target >= 1.00x: "
                     f"{met(vs >= 1.0)}")
    if "sc" in measured and "hybrid" in measured:
        time_ratio, flop_ratio = measured["hybrid"] / measured["sc"], f_hy / f_sc
        lines.append(f"verdict: hybrid/SC step time {time_ratio:.2f} vs FLOP counter {flop_ratio:.2f} ({path}): "
                     f"{time_ratio / flop_ratio:.0%} of it, target within 25%: {met(abs(time_ratio / flop_ratio - 1) <= 0.25)}")
    if args.peak_tflops:
        for row, flops in (("sc", f_sc), ("hybrid", f_hy)):
            if row in measured:
                share = flops / measured[row] / (args.peak_tflops * 1e12)
                lines.append(f"verdict: MFU of our {row} step ({path}) {share:.1%} of {args.peak_tflops:g} TFLOP/s, "
                             f"aim 45%: {met(share >= 0.45)}")
    return lines


if __name__ == "__main__":
    main()
