"""Cost model of SpacTor / SC pretraining past one machine: FLOPs, wall time and GPU-hours on 1, 8 and 64 GPUs.

    .venv/bin/python benchmarks/cost_model.py                      # the table of docs/scaling.md
    .venv/bin/python benchmarks/cost_model.py --mfu 0.3 --peak-tflops 312 --link-gbps 100

FLOPs come from the project's counter (``models.flops.spactor_step_flops``: matmuls of encoder, decoder,
LM head, generator and RTD head, x3 for forward + backward). Time = FLOPs / (GPUs x peak x MFU); the
DDP gradient all-reduce (ring: 2 (n-1)/n x gradient bytes per GPU per step) is printed beside it, and the
step takes the larger of the two (the all-reduce overlaps the backward pass). The span-corruption
collator is timed here, on this machine's CPU, to say how many CPU cores each GPU needs to be fed. Every
assumption is a flag; docs/scaling.md states their sources.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from models.flops import spactor_step_flops  # noqa: E402
from models.span_corruption import SpanCorruptionCollator  # noqa: E402
from models.spactor import SpacTorConfig, generator_t5_config, t5_config  # noqa: E402


@dataclass(frozen=True)
class Scenario:
    name: str
    d_model: int
    d_ff: int
    d_kv: int
    heads: int
    layers: int
    inputs_length: int
    global_batch: int  # sequences per step, all workers together
    steps: int
    tau: int
    vocab: int = 32128
    note: str = ""


def preset_scenario(name: str) -> Scenario:
    """The shape and budget of a pretraining preset, read from the config room (``engine/config/pretrain.py``)."""
    from engine.config.pretrain import PRESETS

    p = PRESETS[name]()
    m = p.model
    assert m.num_layers == m.num_decoder_layers, "the cost model takes one depth for encoder and decoder"
    workers = f", {p.num_workers} workers" if p.num_workers > 1 else ""
    return Scenario(f"{name} preset", m.d_model, m.d_ff, m.d_kv, m.num_heads, m.num_layers, p.inputs_length,
                    p.batch_size * p.num_workers, p.total_steps, p.tau, note=f"engine/config/pretrain.py::{name}{workers}")


#: The shapes and budgets of the small and base pretraining presets and of the SpacTor paper's T5-base run.
SCENARIOS = [
    preset_scenario("small"),
    preset_scenario("base"),
    Scenario("T5-base, paper budget", 768, 2048, 64, 12, 12, 512, 2048, 1_000_000, 120_000,
             note="1M steps, tau 120k; batch 2048 x 512 (T5's final-model setting, assumed)"),
]


def step_flops(sc: Scenario, hybrid: bool) -> tuple[float, int, int]:
    """(training FLOPs of one step at the global batch, T5 parameters, generator parameters)."""
    cfg = t5_config(sc.vocab, d_model=sc.d_model, d_ff=sc.d_ff, d_kv=sc.d_kv, num_heads=sc.heads,
                    num_layers=sc.layers, num_decoder_layers=sc.layers)
    spactor = SpacTorConfig()
    gen = generator_t5_config(cfg, spactor)
    targets = SpanCorruptionCollator(vocab_size=sc.vocab, inputs_length=sc.inputs_length).targets_length
    f = spactor_step_flops(cfg, gen, batch_size=sc.global_batch, inputs_length=sc.inputs_length,
                           targets_length=targets, hybrid=hybrid, mask_rate=spactor.mask_rate).total
    t5_params = _params(cfg, decoder=True)
    gen_params = _params(gen, decoder=False) - cfg.vocab_size * cfg.d_model  # shares the T5's embedding
    return float(f), t5_params, gen_params


def _params(cfg, *, decoder: bool) -> int:
    """Parameters of a T5 v1.1 (gated FFN) from its config: attention, FFN, norms, shared embedding."""
    d, ff, inner = cfg.d_model, cfg.d_ff, cfg.num_heads * cfg.d_kv
    attn = 4 * d * inner
    ffn = 3 * d * ff  # gated: wi_0, wi_1, wo
    enc = cfg.num_layers * (attn + ffn + 2 * d)
    dec = cfg.num_decoder_layers * (2 * attn + ffn + 3 * d) if decoder else 0
    return enc + dec + cfg.vocab_size * d


def collator_rows_per_s(inputs_length: int, vocab: int, seconds: float = 2.0) -> float:
    """Span-corruption rows per second on one CPU core of this machine (numpy, the workers' collator)."""
    col = SpanCorruptionCollator(vocab_size=vocab, inputs_length=inputs_length)
    rng = np.random.default_rng(0)
    rows = rng.integers(200, vocab - 200, size=(64, col.tokens_length), dtype=np.int32)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        col(rows, rng=rng)
        n += len(rows)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak per GPU (H100/H200 SXM: 989)")
    ap.add_argument("--mfu", type=float, default=0.40, help="model FLOPs utilisation reached by a training step")
    ap.add_argument("--link-gbps", type=float, default=400.0,
                    help="inter-node bandwidth per GPU, Gbit/s, for 64 GPUs (8 GPUs: NVLink, --nvlink-gbps)")
    ap.add_argument("--nvlink-gbps", type=float, default=3600.0, help="intra-node bandwidth per GPU, Gbit/s")
    ap.add_argument("--ckpt-write-gbs", type=float, default=1.0, help="checkpoint write bandwidth, GB/s (object storage)")
    ap.add_argument("--gpus", type=int, nargs="+", default=[1, 8, 64])
    args = ap.parse_args()

    peak = args.peak_tflops * 1e12 * args.mfu
    print(f"assumptions: {args.peak_tflops:g} TFLOP/s peak x MFU {args.mfu:g} = {peak / 1e12:.0f} TFLOP/s per GPU; "
          f"all-reduce over {args.nvlink_gbps:g} Gbit/s (<= 8 GPUs) or {args.link_gbps:g} Gbit/s (64 GPUs) per GPU; "
          f"checkpoints written at {args.ckpt_write_gbs:g} GB/s\n")
    print("| scenario | params (T5 + generator) | FLOPs/step SC / hybrid | total FLOPs SC | SpacTor, same steps | "
          "SpacTor at 50% steps | checkpoint (weights + AdamW) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    rows = []
    for sc in SCENARIOS:
        f_sc, p_t5, p_gen = step_flops(sc, hybrid=False)
        f_hy, _, _ = step_flops(sc, hybrid=True)
        total_sc = sc.steps * f_sc
        total_sp = sc.tau * f_hy + (sc.steps - sc.tau) * f_sc
        half = sc.steps // 2
        total_half = min(sc.tau, half) * f_hy + max(0, half - sc.tau) * f_sc
        ckpt_gb = (p_t5 + p_gen) * 12 / 1e9  # fp32 weights + AdamW's two moments
        rows.append((sc, f_sc, f_hy, total_sc, total_sp, total_half, p_t5, p_gen, ckpt_gb))
        print(f"| {sc.name} | {p_t5 / 1e6:.0f}M + {p_gen / 1e6:.0f}M | {f_sc:.3g} / {f_hy:.3g} ({f_hy / f_sc:.2f}x) | "
              f"{total_sc:.3g} | {total_sp:.3g} ({total_sp / total_sc:.0%}) | {total_half:.3g} ({total_half / total_sc:.0%}) | "
              f"{ckpt_gb:.1f} GB |")

    print("\n| scenario | GPUs | SC step: compute / all-reduce | SC wall time | SC GPU-hours | SpacTor at 50% steps: "
          "wall time | GPU-hours | checkpoint write |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for sc, f_sc, f_hy, total_sc, total_sp, total_half, p_t5, p_gen, ckpt_gb in rows:
        for n in args.gpus:
            compute = f_sc / (n * peak)
            bw = (args.nvlink_gbps if n <= 8 else args.link_gbps) * 1e9 / 8
            grad_bytes = (p_t5 + p_gen) * 4  # fp32 gradients
            comm = 0.0 if n == 1 else 2 * (n - 1) / n * grad_bytes / bw
            step = max(compute, comm)
            wall_sc = sc.steps * step
            ratio = total_half / total_sc
            wall_half = wall_sc * ratio if comm <= compute else (sc.steps // 2) * max(f_hy / (n * peak), comm)
            print(f"| {sc.name} | {n} | {compute * 1e3:.1f} ms / {comm * 1e3:.1f} ms | {_h(wall_sc)} | "
                  f"{wall_sc * n / 3600:,.1f} | {_h(wall_half)} | {wall_half * n / 3600:,.1f} | "
                  f"{ckpt_gb / args.ckpt_write_gbs:.1f} s |")

    print("\n| model | inputs_length | collator rows/s on one CPU core (measured here) | sequences/s one GPU trains "
          "| CPU cores per GPU for the collator |")
    print("|---|---:|---:|---:|---:|")
    for sc in SCENARIOS[:2]:
        r = collator_rows_per_s(sc.inputs_length, sc.vocab)
        f_sc, _, _ = step_flops(Scenario(**{**sc.__dict__, "global_batch": 1}), hybrid=False)
        need = peak / f_sc  # sequences per second one GPU trains at this MFU
        print(f"| {sc.name} | {sc.inputs_length} | {r:,.0f} | {need:,.0f} | {need / r:.1f} |")


def _h(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


if __name__ == "__main__":
    main()
