"""Benchmark: which draft for a decoder-only target learns faster under DistillSpec, and what it costs.

For a target (default the packaged SmolLM2-135M-Instruct) it builds drafts (``models.sd.drafts``): copied from
the target's first layers (``target``) or fresh at a given width (``fresh``); times each one's KV-cached decoder
step against the target's (``c``); measures on held-out task prompts, through the chat template, the SD
acceptance rate (``alpha`` = mean sum_x min(p, q) on the draft's own greedy rollouts) and the greedy agreement
with the target; then distils each for ``--steps`` steps (on-policy, ``--divergence``, the engine's own
DistillSpec objective, ``engine.distill_worker``) and measures again. The column that decides the speedup is
``SD alpha``: the acceptance rate of lossless greedy SD of the target with the draft on those prompts
(``models.speculative.speculative_generate``). One row per draft:

    .venv/bin/python benchmarks/llm_draft.py                              # SmolLM2, 2-layer drafts, 60 steps
    .venv/bin/python benchmarks/llm_draft.py --layers 1 --steps 200 --task wiki_description
    .venv/bin/python benchmarks/llm_draft.py --target path/to/causal_lm_folder --fresh-width 256

The prompts are the task's (``tasks.downstream``, built on first use from the packaged data).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script from anywhere

from engine.causal_lm import load_causal_lm  # noqa: E402
from engine.distill_worker import DistillObjective, distill_worker  # noqa: E402
from models.sd.drafts import head_share, load_causal, make_causal_draft, task_frequent_token_ids  # noqa: E402
from models.sd.kv_cache import cached_decoder  # noqa: E402


def step_ms(model, ids: torch.Tensor, steps: int = 16) -> float:
    """Median ms of one KV-cached decoder step of ``model`` after the prompt ``ids`` (1, S)."""
    times = []
    with torch.inference_mode():
        dec = cached_decoder(model, ids, torch.ones_like(ids))
        feed = [int(ids[0, -1])] + ids[0].tolist() * (steps // ids.shape[1] + 2)
        for j in range(1, steps + 1):
            t0 = time.perf_counter()
            dec.advance(feed[:j])
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times[2:])


def sd_alpha(target, draft, prompts: list[list[int]], gamma: int, max_new_tokens: int) -> float:
    """The acceptance rate of lossless greedy SD of ``target`` with ``draft`` over ``prompts`` (batch 1): the
    number that decides the speedup, measured on the target's own greedy path."""
    from models.sd.bench import estimate_alpha
    from models.speculative import speculative_generate

    accepted, drafted = [], []
    for p in prompts:
        out = speculative_generate(target, draft, torch.tensor([p]), gamma=gamma, max_new_tokens=max_new_tokens)
        accepted += out.accepted
        drafted += out.drafted
    return estimate_alpha(accepted, drafted)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="smollm2", help="decoder-only model reference (engine.causal_lm)")
    ap.add_argument("--task", default="bbc_headline", help="built-in task whose prompts are used")
    ap.add_argument("--layers", type=int, default=2, help="decoder layers of each draft")
    ap.add_argument("--inits", default="target,fresh", help="comma list of target / fresh")
    ap.add_argument("--fresh-width", type=int, default=256, help="hidden size of the fresh draft")
    ap.add_argument("--steps", type=int, default=60, help="distillation steps per draft")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--divergence", default="fkl", choices=["fkl", "rkl", "jsd", "tvd"])
    ap.add_argument("--data", default="student", choices=["student", "teacher", "fixed"],
                    help="distillation sequences: on-policy (student), sampled from the target, or the task's")
    ap.add_argument("--head-tokens", type=int, default=0,
                    help="> 0: a frequent-token head (FR-Spec) over that many ids, counted on the task's training texts")
    ap.add_argument("--gamma", type=int, default=3, help="draft tokens per target call of the SD alpha column")
    ap.add_argument("--max-input-length", type=int, default=96)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--eval-examples", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from tasks.downstream import TaskSpec, task_dir

    folder = task_dir(TaskSpec(name=args.task))
    target, tok = load_causal_lm(args.target)
    head = None
    if args.head_tokens:  # counted once, for every draft
        import datasets

        head = task_frequent_token_ids(tok, datasets.load_from_disk(str(Path(folder) / "data"))["train"],
                                       args.head_tokens)
    rows = []
    with tempfile.TemporaryDirectory(prefix="llm-draft-") as tmp:
        tdir = Path(tmp) / "target"
        target.config.pad_token_id = tok.pad_token_id
        target.save_pretrained(tdir)
        tok.save_pretrained(tdir)
        for init in args.inits.split(","):
            extra = {} if init == "target" else {"hidden_size": args.fresh_width,
                                                 "intermediate_size": 8 * args.fresh_width // 3,
                                                 "num_attention_heads": max(1, args.fresh_width // 64),
                                                 "num_key_value_heads": 1}
            draft = make_causal_draft(target, layers=args.layers, init=init, head_tokens=head,
                                      generator=torch.Generator().manual_seed(args.seed), **extra)
            ddir = Path(tmp) / f"draft-{init}"
            draft.save_pretrained(ddir)
            tok.save_pretrained(ddir)
            job = dict(preset="bench", mode="draft", divergence=args.divergence, beta=0.5, temperature=1.0,
                       data_mix={args.data: 1.0}, sample_temperature=1.0, total_steps=args.steps,
                       batch_size=args.batch_size, grad_accum=1, lr=args.lr, warmup_steps=min(10, args.steps // 5),
                       schedule="linear", clip_norm=1.0, max_input_length=args.max_input_length,
                       max_target_length=args.max_new_tokens, eval_every=args.steps, eval_examples=args.eval_examples,
                       checkpoint_every=0, log_every=max(1, args.steps // 10), num_workers=1,
                       threads_per_worker=args.threads, use_gpu=False, bf16=False, max_failures=0, seed=args.seed,
                       in_ray=False, teacher_dir=str(tdir), student_dir=str(ddir), task_dir=str(folder),
                       checkpoint_dir=str(Path(tmp) / f"ckpt-{init}"), task={"name": args.task})
            obj = DistillObjective(job)
            ids = torch.tensor([obj.val_x[0]])
            c = step_ms(draft, ids) / step_ms(target, ids)
            before = obj.acceptance(False)
            prompts = obj.val_x
            sd_before = sd_alpha(target, draft, prompts, args.gamma, args.max_new_tokens)
            del obj
            t0 = time.perf_counter()
            state = distill_worker(job)
            seconds = time.perf_counter() - t0
            after = state["evals"][-1]
            distilled = load_causal(Path(job["checkpoint_dir"]) / "final" / "model").eval()
            sd_after = sd_alpha(target, distilled, prompts, args.gamma, args.max_new_tokens)
            rows.append((init, args.layers, draft.config.hidden_size, sum(p.numel() for p in draft.parameters()) / 1e6,
                         head_share(draft), c, sd_before, sd_after, before["acceptance_rate"],
                         after["greedy.acceptance_rate"], seconds / max(args.steps, 1)))
    print(f"\ntarget {args.target}, task {args.task}, {args.steps} steps of {args.batch_size} {args.data} sequences "
          f"({args.divergence}, lr {args.lr}), {args.threads} threads; SD alpha: greedy SD at gamma {args.gamma} on "
          f"{args.eval_examples} held-out prompts; sum min(p, q): on the draft's own greedy rollouts\n")
    print("| init | layers | width | M params | head share | c | SD alpha before | SD alpha after | sum min(p,q) "
          "before | after | s/step |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.1f} | {r[4]:.2f} | {r[5]:.3f} | {r[6]:.3f} | {r[7]:.3f} | "
              f"{r[8]:.3f} | {r[9]:.3f} | {r[10]:.2f} |")


if __name__ == "__main__":
    main()
