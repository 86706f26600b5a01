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

GPU (no Ray / Prefect / MLflow needed), a T5-XL-shaped target with a 2-layer draft, and a decoder-only pair
of SmolLM2-135M's shape (``--arch llama``: Llama layers, grouped-query attention) with a 4-layer draft:
    python benchmarks/sd_engine.py --device cuda --dtype bfloat16 --fast-path --d-model 2048 --d-ff 5120 \
        --heads 32 --target-layers 24 --draft-layers 2 --prompt-len 512 --max-new-tokens 128 --prompts 4
    python benchmarks/sd_engine.py --arch llama --device cuda --dtype bfloat16 --fast-path --d-model 576 \
        --d-ff 1536 --heads 9 --kv-heads 3 --target-layers 30 --draft-layers 4 --vocab 49152 --prompt-len 256

Models: by default a synthetic random-init pair whose agreement is a knob. The draft is a shallow
T5 (``--draft-layers``); the target is the draft's layers followed by ``--target-layers -
--draft-layers`` extra residual layers whose output projections are scaled by ``--perturbation``.
perturbation 0 makes the target compute the draft's function with more layers (alpha = 1); larger
values lower alpha. ``--arch llama`` builds the same kind of pair from Llama decoder layers (the extra
layers' ``o_proj`` and ``down_proj`` scaled). Real checkpoints: ``--target DIR --draft DIR``
(save_pretrained folders of the ``--arch``'s kind, same vocabulary); prompts are random token ids either way.

Each method's line is printed as soon as it is timed (with its first, untimed pass: compiling happens there),
so a run stopped by a time limit keeps what it measured; the table and the verdicts follow at the end:
our SD against transformers' assisted generation (greedy: both accept the same tokens, so alpha is equal),
and the measured SD speedup against the closed form on each path.

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

from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, T5ForConditionalGeneration  # noqa: E402
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
    ap.add_argument("--arch", choices=("t5", "llama"), default="t5",
                    help="t5: encoder-decoder pair; llama: decoder-only pair (the shape flags give its widths)")
    ap.add_argument("--kv-heads", type=int, default=None,
                    help="--arch llama: key/value heads (grouped-query attention; default --heads)")
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
    if args.kv_heads is not None and (args.arch != "llama" or args.kv_heads < 1 or args.heads % args.kv_heads):
        ap.error(f"--kv-heads ({args.kv_heads}) is for --arch llama and must divide --heads ({args.heads})")
    return args


#: the synthetic decoder-only pair's special ids; prompts are drawn above them
LLAMA_PAD, LLAMA_BOS, LLAMA_EOS = 0, 1, 2


def _llama(args: argparse.Namespace, layers: int) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.d_model, intermediate_size=args.d_ff,
                         num_hidden_layers=layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.kv_heads or args.heads, max_position_embeddings=8192,
                         rope_theta=100000.0, tie_word_embeddings=True, pad_token_id=LLAMA_PAD,
                         bos_token_id=LLAMA_BOS, eos_token_id=LLAMA_EOS)
    return LlamaForCausalLM(config).eval()


def _model(args: argparse.Namespace, layers: int) -> torch.nn.Module:
    return _llama(args, layers) if args.arch == "llama" else _t5(args, layers)


def _extra_blocks(target: torch.nn.Module, draft_layers: int) -> list[torch.nn.Module]:
    """The target's layers the draft does not have (T5: of the encoder and the decoder)."""
    if isinstance(target, LlamaForCausalLM):
        return list(target.model.layers[draft_layers:])
    return [block for stack in (target.encoder, target.decoder) for block in stack.block[draft_layers:]]


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
        target = _model(args, args.target_layers)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    with torch.no_grad():
        # A default init makes a random model repeat one token; wider weights give varied text.
        for param in target.parameters():
            if param.ndim == 2:
                param.normal_(0.0, 4.0 / param.shape[1] ** 0.5, generator=generator)
        # the extra layers' output projections (attention and feed-forward) write little to the residual stream
        for block in _extra_blocks(target, args.draft_layers):
            for name, module in block.named_modules():
                if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in ("o", "wo", "o_proj", "down_proj"):
                    module.weight.mul_(args.perturbation)
    with device:
        draft = _model(args, args.draft_layers)
    # Every draft parameter has the same name in the target (blocks 0..draft_layers-1).
    draft.load_state_dict({k: v for k, v in target.state_dict().items() if k in draft.state_dict()})
    return target, draft


def load_pair(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.nn.Module, int]:
    """(target, draft, vocab size): the --target/--draft folders or the synthetic pair, on --device/--dtype."""
    if args.target is not None:
        cls = AutoModelForCausalLM if args.arch == "llama" else T5ForConditionalGeneration
        target = cls.from_pretrained(args.target).eval()
        draft = cls.from_pretrained(args.draft).eval()
        vocab = target.config.vocab_size
    else:
        target, draft = synthetic_pair(args)
        vocab = args.vocab
    dtype = getattr(torch, args.dtype)
    return target.to(args.device, dtype), draft.to(args.device, dtype), vocab


def timed(fn: Callable[[torch.Tensor], object], prompts: list[torch.Tensor], warmup: int, repeats: int):
    """Median wall time of one pass over the prompts, the outputs of the last pass, and the wall time of the
    untimed warm-up passes (compiling, where there is any, happens there)."""
    device = prompts[0].device
    sync(device)
    t0 = time.perf_counter()
    for _ in range(warmup):
        for ids in prompts:
            fn(ids)
    sync(device)
    warm = time.perf_counter() - t0
    times, outputs = [], []
    for _ in range(repeats):
        outputs = []
        sync(device)
        t0 = time.perf_counter()
        for ids in prompts:
            outputs.append(fn(ids))
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), outputs, warm


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()  # assisted generation warns about its own internal generate kwargs
    target, draft, vocab = load_pair(args)
    n_params = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    generator = torch.Generator().manual_seed(args.seed)
    causal = args.arch == "llama"
    low = LLAMA_EOS + 1 if causal else 2  # no special id inside a prompt
    prompts = [torch.randint(low, vocab, (1, args.prompt_len), generator=generator).to(args.device)
               for _ in range(args.prompts)]
    n = args.max_new_tokens
    # transformers' assistant: a constant block of gamma tokens, no confidence-based early stop.
    draft.generation_config.num_assistant_tokens = args.gamma
    draft.generation_config.num_assistant_tokens_schedule = "constant"
    draft.generation_config.assistant_confidence_threshold = 0.0

    def as_seq(out):
        return out.tolist() if isinstance(out, torch.Tensor) else out.sequences.tolist()

    eager = {
        "hf_generate": lambda ids: target.generate(ids, max_new_tokens=n, do_sample=False),
        "engine_target": lambda ids: target_generate(target, ids, max_new_tokens=n),
        "engine_sd": lambda ids: speculative_generate(target, draft, ids, gamma=args.gamma, max_new_tokens=n),
        "engine_sd_adaptive": lambda ids: speculative_generate(
            target, draft, ids, gamma=args.gamma, max_new_tokens=n, adaptive_gamma=True
        ),
        "hf_assisted": lambda ids: target.generate(ids, max_new_tokens=n, do_sample=False, assistant_model=draft),
    }
    fast = dict(cache_implementation="static", compile=True)
    static = {
        "hf_generate_static": lambda ids: target.generate(
            ids, max_new_tokens=n, do_sample=False, cache_implementation="static"
        ),
        "engine_target_compiled": lambda ids: target_generate(target, ids, max_new_tokens=n, **fast),
        "engine_sd_compiled": lambda ids: speculative_generate(
            target, draft, ids, gamma=args.gamma, max_new_tokens=n, **fast
        ),
    }
    # (suffix, methods, our target-only method, our SD method) of each decoding path; each path's rows, c and
    # verdicts print before the next path starts, so a run stopped while compiling keeps the eager path whole
    paths = [("", eager, "engine_target", "engine_sd")]
    if args.fast_path:
        paths.append((" (static, compiled)", static, "engine_target_compiled", "engine_sd_compiled"))
    skip = args.prompt_len if causal else 1  # what precedes the new tokens in a sequence: prompt / start token
    print(
        f"target {n_params(target):.1f}M params, draft {n_params(draft):.1f}M params; {args.prompts} prompts x "
        f"{args.prompt_len} tokens, max_new_tokens={n}, gamma={args.gamma}, threads={args.threads}, "
        f"{args.device} {args.dtype}, median of {args.repeats}"
        + ("" if args.target else f", perturbation={args.perturbation}") + f"; torch {torch.__version__}",
        flush=True,
    )
    results: dict = {}
    reference = tokens = base_ms = None
    for suffix, methods, target_method, sd_method in paths:
        with torch.inference_mode():
            for name, fn in methods.items():
                results[name] = timed(fn, prompts, args.warmup, args.repeats)
                seconds, outs, warm = results[name]
                new = sum(len(as_seq(o)[0]) - skip for o in outs)
                print(f"timed {name}: {1e3 * seconds / max(new, 1):.2f} ms/token over {new} tokens; "
                      f"warm-up {warm:.1f} s (compiling included)", flush=True)
            # c as the SD benchmark defines it (engine.sd_bench.measure_step_costs): one-token KV-cached decoder
            # steps of each model, timed directly; verify_ratio = the (gamma+1)-token verification call / one step
            compiled = sd_method.endswith("compiled")
            costs = measure_step_costs(
                target, {"draft": draft}, prompts, steps=min(16, n), gammas=[args.gamma], repeats=1, warmup=1,
                cache_implementation="static" if compiled else "dynamic", compile=compiled,
                max_cache_len=n + 1)  # the decoding's cache size: the compiled probe reuses its graphs
        c = costs["draft_step_ms"]["draft"] / costs["target_step_ms"]
        if reference is None:
            reference = [as_seq(o) for o in results["hf_generate"][1]]
            tokens = sum(len(row[0]) - skip for row in reference)
            base_ms = 1e3 * results["hf_generate"][0] / tokens
            print(f"{'method':<23} {'ms/token':>9} {'speedup':>8} {'alpha':>6} {'tok/call':>9} {'predicted':>9} "
                  f"{'exact':>6}")
        for name in methods:
            seconds, outs, _ = results[name]
            ms = 1e3 * seconds / tokens
            exact = [as_seq(o) for o in outs] == reference
            alpha = block = predicted = "-"
            if name.startswith("engine_sd"):
                calls = sum(o.num_target_calls for o in outs)
                # alpha per verified position (verification stops at the first rejection), as in Eq. 1
                a = estimate_alpha([x for o in outs for x in o.accepted], [x for o in outs for x in o.drafted])
                alpha, block = f"{a:.2f}", f"{tokens / calls:.2f}"
                predicted = f"{expected_speedup(a, args.gamma, c):.2f}x"
                if name == sd_method:
                    a_sd = a
            print(f"{name:<23} {ms:>9.2f} {base_ms / ms:>7.2f}x {alpha:>6} {block:>9} {predicted:>9} {str(exact):>6}")
        print(
            f"c{suffix} = draft step / target step = {c:.3f}; target step {costs['target_step_ms']:.2f} ms, "
            f"verifying gamma+1 tokens costs {costs['verify_ratio'][args.gamma]:.2f} target steps (the closed form "
            "assumes 1)"
        )
        seconds = {k: v[0] for k, v in results.items()}
        for line in verdicts(seconds, suffix, target_method, sd_method, a_sd, c, args.gamma):
            print(line, flush=True)
    print(
        "predicted = expected_speedup(alpha, gamma, c), a speedup over our target-only decoding on the same path; "
        "exact = same tokens as hf_generate"
    )


def verdicts(seconds: dict[str, float], suffix: str, target_method: str, sd_method: str, alpha: float, c: float,
             gamma: int) -> list[str]:
    """Issue 37's SD targets on one decoding path, each with its numbers and met / not met: our SD at least
    matches transformers' assisted generation (greedy: the same accepted tokens, so equal alpha), and the measured
    speedup over our target-only decoding on the same path is within 15% of the closed form
    expected_speedup(alpha, gamma, c)."""
    met = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    vs_hf = seconds["hf_assisted"] / seconds[sd_method]
    measured = seconds[target_method] / seconds[sd_method]
    predicted = expected_speedup(alpha, gamma, c)
    return [
        f"verdict: our SD{suffix} vs HF assisted generation (dynamic cache, same draft, gamma {gamma}): "
        f"{vs_hf:.2f}x, target >= 1.00x: {met(vs_hf >= 1.0)}",
        f"verdict: our SD{suffix} speedup over our target-only decoding {measured:.2f}x vs closed form "
        f"{predicted:.2f}x (alpha {alpha:.2f}, c {c:.3f}): {measured / predicted:.0%} of it, target within 15%: "
        f"{met(abs(measured / predicted - 1) <= 0.15)}",
    ]


if __name__ == "__main__":
    main()
