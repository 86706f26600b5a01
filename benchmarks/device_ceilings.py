"""The card's two ceilings, measured, for reading the device run's MFU and step times: a large bf16 matrix product
(TFLOP/s) and a large device-to-device copy (GB/s, bytes read plus bytes written). Torch only.

    python benchmarks/device_ceilings.py              # on the GPU machine (a few seconds)
    python benchmarks/device_ceilings.py --size 256   # anywhere, as a smoke check (CPU)

Medians over ``--repeats`` timed runs after ``--warmup`` untimed ones, on random data (zeros can run faster),
timed with CUDA events on a GPU and the host clock elsewhere. The MFU column of ``pretrain_throughput.py`` is
against the datasheet peak (``--peak-tflops``, 989 for H100/H200 SXM dense bf16); this script says what the
card reached, so a reader can tell an MFU gap that is ours from one that is the card's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def timed_ms(fn, device: torch.device, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=8192, help="n of the n x n x n bf16 matrix product")
    ap.add_argument("--copy-gib", type=float, default=2.0, help="GiB copied device to device")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="the datasheet peak the MFU columns use")
    args = ap.parse_args(argv)
    if args.size < 1 or args.copy_gib <= 0 or args.repeats < 1 or args.warmup < 0:
        ap.error("--size, --copy-gib and --repeats must be positive, --warmup >= 0")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    g = torch.Generator(device=device).manual_seed(0)
    n = args.size
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=g)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=g)
    ms = timed_ms(lambda: a @ b, device, args.warmup, args.repeats)
    tflops = 2 * n**3 / (ms / 1e3) / 1e12
    del a, b
    elements = int(args.copy_gib * 2**30 // 2) if device.type == "cuda" else min(int(args.copy_gib * 2**30 // 2), 2**24)
    src = torch.randn(elements, device=device, dtype=torch.bfloat16, generator=g)
    dst = torch.empty_like(src)
    ms_copy = timed_ms(lambda: dst.copy_(src), device, args.warmup, args.repeats)
    gbps = 2 * src.numel() * src.element_size() / (ms_copy / 1e3) / 1e9
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}; medians of {args.repeats} after {args.warmup} warm-up runs")
    print("| ceiling | measured | note |")
    print("|---|---|---|")
    print(f"| bf16 matrix product {n}^3 | {tflops:,.1f} TFLOP/s | {tflops / args.peak_tflops:.0%} of the "
          f"{args.peak_tflops:g} TFLOP/s datasheet peak the MFU columns use |")
    print(f"| device-to-device copy, {src.numel() * 2 / 2**30:.2f} GiB | {gbps:,.0f} GB/s | bytes read + written |")


if __name__ == "__main__":
    main()
