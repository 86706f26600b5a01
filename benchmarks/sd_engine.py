"""Benchmark: speculative decoding engine (models/speculative.py) vs transformers' generate.

Four greedy decoders on the same prompts, each checked against ``target.generate``:
  hf_generate      target.generate(do_sample=False)                      the reference
  engine_target    models.speculative.target_generate                    same engine, no draft
  engine_sd        models.speculative.speculative_generate(gamma)        (+ adaptive_gamma variant)
  hf_assisted      target.generate(assistant_model=draft), constant gamma
With ``--fast-path``, three more on static (preallocated) KV caches, the GPU fast path:
  hf_generate_static      target.generate(cache_implementation="static")
  engine_target_compiled  target_generate(cache_implementation="static", compile=True)
  engine_sd_compiled      speculative_generate(..., cache_implementation="static", compile=True)

GPU (no Ray / Prefect / MLflow needed), a T5-XL-shaped target with a 2-layer draft:
    python benchmarks/sd_engine.py --device cuda --dtype bfloat16 --fast-path --d-model 2048 --d-ff 5120 \
        --heads 32 --target-layers 24 --draft-layers 2 --prompt-len 512 --max-new-tokens 128 --prompts 4

Models: by default a synthetic random-init pair whose agreement is a knob. The draft is a shallow
T5 (``--draft-layers``); the target is the draft's layers followed by ``--target-layers -
--draft-layers`` extra residual layers whose output projections are scaled by ``--perturbation``.
perturbation 0 makes the target compute the draft's function with more layers (alpha = 1); larger
values lower alpha. Real checkpoints: ``--target DIR --draft DIR`` (save_pretrained folders, same
vocabulary); prompts are random token ids either way.

Timings: ``torch.set_num_threads(--threads)``, ``--warmup`` untimed passes, then the median of
``--repeats`` passes over all prompts. ms/token = wall time / generated tokens; speedup is against
hf_generate. alpha = accepted / verified positions (models.sd.bench.estimate_alpha), block efficiency = tokens per target call; the
predicted column is Leviathan et al.'s expected_speedup(alpha, gamma, c), a speedup over
engine_target, with c = draft step / target step measured directly on one-token KV-cached steps
(``engine.sd_bench.measure_step_costs``, the SD benchmark's definition).

    python benchmarks/sd_engine.py                 # ~15-25 s on one CPU thread
    python benchmarks/sd_engine.py --perturbation 0.03 --gamma 3    # lower alpha
    python benchmarks/sd_engine.py --target ckpt/t5-base --draft ckpt/t5-small
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script from anywhere

from transformers import T5ForConditionalGeneration  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from benchmarks._flags import add_settings_flags, add_shape_flags, settings_from_flags, t5_shape  # noqa: E402
from models.sd.bench import BenchSettings, estimate_alpha  # noqa: E402
from models.sd.verify import expected_speedup  # noqa: E402
from models.spactor import t5_config  # noqa: E402
from models.speculative import speculative_generate, target_generate  # noqa: E402
from engine.sd_bench import measure_step_costs, sync  # noqa: E402



def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--target", type=Path, help="save_pretrained folder of the target (default: synthetic)")
    ap.add_argument("--draft", type=Path, help="save_pretrained folder of the draft (default: synthetic)")
    add_shape_flags(ap, d_model=256, d_ff=1024, heads=4, what="the synthetic pair (shared)")
    ap.add_argument("--target-layers", type=int, default=12, help="synthetic target: encoder = decoder layers")
    ap.add_argument("--draft-layers", type=int, default=1, help="synthetic draft: its layers are the target's first")
    ap.add_argument("--vocab", type=int, default=4096, help="synthetic pair: vocabulary size")
    ap.add_argument(
        "--perturbation", type=float, default=0.01,
        help="synthetic target: scale of its extra layers' outputs (0 = same function as the draft, alpha 1)",
    )
    ap.add_argument("--prompts", type=int, default=2, help="number of random prompts")
    ap.add_argument("--prompt-len", type=int, default=32, help="prompt length in tokens")
    ap.add_argument("--gamma", type=int, default=4, help="draft tokens per target call")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument(
        "--fast-path", action="store_true",
        help="also time the static-cache paths: target.generate(cache_implementation='static') and our "
        "engine on a static cache with torch.compile (the GPU fast path; compiling takes a while on a CPU)",
    )
    add_settings_flags(ap, BenchSettings, "max_new_tokens", "warmup", "repeats", "threads", "seed")
    args = ap.parse_args(argv)
    try:  # the measurement settings' own checks (BenchSettings), as the flows apply them
        settings_from_flags(BenchSettings, args, gammas=(args.gamma,))
    except ValueError as err:
        ap.error(str(err))
    if (args.target is None) != (args.draft is None):
        ap.error("pass both --target and --draft, or neither for the synthetic pair")
    if not 1 <= args.draft_layers < args.target_layers:
        ap.error(f"need 1 <= --draft-layers ({args.draft_layers}) < --target-layers ({args.target_layers})")
    try:
        t5_shape(args, layers=args.target_layers)
    except ValueError as err:
        ap.error(str(err))
    return args


def _t5(args: argparse.Namespace, layers: int) -> T5ForConditionalGeneration:
    config = t5_config(args.vocab, **t5_shape(args, layers=layers, dropout_rate=0.0))
    return T5ForConditionalGeneration(config).eval()


def synthetic_pair(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Target = draft layers + extra residual layers scaled by --perturbation (see module doc).

    Built directly on ``--device`` (default cpu): a T5-XL-shaped pair initialises in seconds on a GPU
    instead of minutes on its host's CPU. The same seed gives the same weights on a given device type.
    """
    device = torch.device(getattr(args, "device", "cpu"))
    torch.manual_seed(args.seed)
    with device:
        target = _t5(args, args.target_layers)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    with torch.no_grad():
        # T5's default init makes a random model repeat one token; wider weights give varied text.
        for param in target.parameters():
            if param.ndim == 2:
                param.normal_(0.0, 4.0 / param.shape[1] ** 0.5, generator=generator)
        for stack in (target.encoder, target.decoder):
            for block in stack.block[args.draft_layers :]:
                for layer in block.layer:
                    for proj in ("o", "wo"):
                        for module in layer.modules():
                            if hasattr(module, proj) and isinstance(getattr(module, proj), torch.nn.Linear):
                                getattr(module, proj).weight.mul_(args.perturbation)
    with device:
        draft = _t5(args, args.draft_layers)
    # Every draft parameter has the same name in the target (blocks 0..draft_layers-1).
    draft.load_state_dict({k: v for k, v in target.state_dict().items() if k in draft.state_dict()})
    return target, draft


def load_pair(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.nn.Module, int]:
    """(target, draft, vocab size): the --target/--draft folders or the synthetic pair, on --device/--dtype."""
    if args.target is not None:
        target = T5ForConditionalGeneration.from_pretrained(args.target).eval()
        draft = T5ForConditionalGeneration.from_pretrained(args.draft).eval()
        vocab = target.config.vocab_size
    else:
        target, draft = synthetic_pair(args)
        vocab = args.vocab
    dtype = getattr(torch, args.dtype)
    return target.to(args.device, dtype), draft.to(args.device, dtype), vocab


def timed(fn: Callable[[torch.Tensor], object], prompts: list[torch.Tensor], warmup: int, repeats: int):
    """Median wall time of one pass over the prompts, and the outputs of the last pass."""
    for _ in range(warmup):
        for ids in prompts:
            fn(ids)
    times, outputs = [], []
    device = prompts[0].device
    for _ in range(repeats):
        outputs = []
        sync(device)
        t0 = time.perf_counter()
        for ids in prompts:
            outputs.append(fn(ids))
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), outputs


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()  # assisted generation warns about its own internal generate kwargs
    target, draft, vocab = load_pair(args)
    n_params = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    generator = torch.Generator().manual_seed(args.seed)
    prompts = [torch.randint(2, vocab, (1, args.prompt_len), generator=generator).to(args.device)
               for _ in range(args.prompts)]
    n = args.max_new_tokens
    # transformers' assistant: a constant block of gamma tokens, no confidence-based early stop.
    draft.generation_config.num_assistant_tokens = args.gamma
    draft.generation_config.num_assistant_tokens_schedule = "constant"
    draft.generation_config.assistant_confidence_threshold = 0.0

    def as_seq(out):
        return out.tolist() if isinstance(out, torch.Tensor) else out.sequences.tolist()

    methods = {
        "hf_generate": lambda ids: target.generate(ids, max_new_tokens=n, do_sample=False),
        "engine_target": lambda ids: target_generate(target, ids, max_new_tokens=n),
        "engine_sd": lambda ids: speculative_generate(target, draft, ids, gamma=args.gamma, max_new_tokens=n),
        "engine_sd_adaptive": lambda ids: speculative_generate(
            target, draft, ids, gamma=args.gamma, max_new_tokens=n, adaptive_gamma=True
        ),
        "hf_assisted": lambda ids: target.generate(ids, max_new_tokens=n, do_sample=False, assistant_model=draft),
    }
    if args.fast_path:
        fast = dict(cache_implementation="static", compile=True)
        methods.update({
            "hf_generate_static": lambda ids: target.generate(
                ids, max_new_tokens=n, do_sample=False, cache_implementation="static"
            ),
            "engine_target_compiled": lambda ids: target_generate(target, ids, max_new_tokens=n, **fast),
            "engine_sd_compiled": lambda ids: speculative_generate(
                target, draft, ids, gamma=args.gamma, max_new_tokens=n, **fast
            ),
        })
    results = {}
    with torch.inference_mode():
        for name, fn in methods.items():
            results[name] = timed(fn, prompts, args.warmup, args.repeats)

    reference = [as_seq(o) for o in results["hf_generate"][1]]
    tokens = sum(len(s[0]) - 1 for s in reference)
    base_ms = 1e3 * results["hf_generate"][0] / tokens
    def paths():  # (suffix, our target-only method, our SD method) of each decoding path that was timed
        yield "", "engine_target", "engine_sd"
        if args.fast_path:
            yield " (static, compiled)", "engine_target_compiled", "engine_sd_compiled"

    # c as the SD benchmark defines it (engine.sd_bench.measure_step_costs): one-token KV-cached decoder steps
    # of each model, timed directly; verify_ratio = the target's (gamma+1)-token verification call / one step
    costs = {}
    with torch.inference_mode():
        for _, _, sd_method in paths():
            fast = sd_method.endswith("compiled")
            costs[sd_method] = measure_step_costs(
                target, {"draft": draft}, prompts, steps=min(16, n), gammas=[args.gamma], repeats=1, warmup=1,
                cache_implementation="static" if fast else "dynamic", compile=fast)
    c_of = {k: v["draft_step_ms"]["draft"] / v["target_step_ms"] for k, v in costs.items()}

    print(
        f"target {n_params(target):.1f}M params, draft {n_params(draft):.1f}M params; {args.prompts} prompts x "
        f"{args.prompt_len} tokens, max_new_tokens={n}, gamma={args.gamma}, threads={args.threads}, "
        f"{args.device} {args.dtype}, "
        f"median of {args.repeats}" + ("" if args.target else f", perturbation={args.perturbation}")
    )
    print(f"{'method':<23} {'ms/token':>9} {'speedup':>8} {'alpha':>6} {'tok/call':>9} {'predicted':>9} {'exact':>6}")
    for name, (seconds, outs) in results.items():
        ms = 1e3 * seconds / tokens
        exact = [as_seq(o) for o in outs] == reference
        alpha = block = predicted = "-"
        if name.startswith("engine_sd"):
            calls = sum(o.num_target_calls for o in outs)
            # alpha per verified position (verification stops at the first rejection), as in Eq. 1
            a = estimate_alpha([x for o in outs for x in o.accepted], [x for o in outs for x in o.drafted])
            path = "engine_sd_compiled" if name.endswith("compiled") else "engine_sd"
            c = c_of[path]
            alpha, block = f"{a:.2f}", f"{tokens / calls:.2f}"
            predicted = f"{expected_speedup(a, args.gamma, c):.2f}x"
        print(f"{name:<23} {ms:>9.2f} {base_ms / ms:>7.2f}x {alpha:>6} {block:>9} {predicted:>9} {str(exact):>6}")
    for suffix, target_method, sd_method in paths():
        k = costs[sd_method]
        print(
            f"c{suffix} = draft step / target step = {c_of[sd_method]:.3f}; target step {k['target_step_ms']:.2f} ms, "
            f"verifying gamma+1 tokens costs {k['verify_ratio'][args.gamma]:.2f} target steps (the closed form assumes 1)"
        )
    print(
        "predicted = expected_speedup(alpha, gamma, c), a speedup over our target-only decoding on the same path; "
        "exact = same tokens as hf_generate"
    )


if __name__ == "__main__":
    main()
