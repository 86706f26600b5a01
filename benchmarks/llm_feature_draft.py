"""Benchmark: a feature-level draft (EAGLE; ``models.sd.feature_draft``) for a decoder-only target, trained here
from the target's own greedy responses, and lossless greedy SD with it against the target alone, ``generate``,
prompt-lookup decoding and the same draft untrained.

Steps: task prompts (training split, through the chat template) -> the target's greedy responses (batched
``generate``) -> the target's final hidden states over prompt + response, once -> ``--steps`` AdamW steps of the
draft on them (``engine.feature_draft``) -> the SD table on the test split's prompts (``engine.sd_bench``, the
table the SD benchmark flow prints). One thread decodes, as in the pipeline's SD stage.

    .venv/bin/python benchmarks/llm_feature_draft.py                        # SmolLM2, bbc_headline, 600 steps
    .venv/bin/python benchmarks/llm_feature_draft.py --train-prompts 64 --steps 50 --num-prompts 2   # a smoke run
    .venv/bin/python benchmarks/llm_feature_draft.py --out /tmp/fd --precision int8

The prompts are the task's (``tasks.downstream``, built on first use from the packaged data).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script from anywhere

from benchmarks._flags import add_settings_flags, settings_from_flags  # noqa: E402
from engine.causal_lm import load_causal_lm  # noqa: E402
from engine.feature_draft import collect_features, target_greedy_sequences, train_feature_draft  # noqa: E402
from engine.sd_bench import markdown_table, run_benchmark  # noqa: E402
from models.sd.bench import BenchSettings, prompts_from_texts  # noqa: E402
from models.sd.drafts import task_frequent_token_ids  # noqa: E402
from models.sd.feature_draft import make_feature_draft, save_feature_draft  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="smollm2", help="decoder-only model reference (engine.causal_lm)")
    ap.add_argument("--task", default="bbc_headline", help="built-in task: training inputs train, test inputs time")
    ap.add_argument("--train-prompts", type=int, default=256, help="training prompts the target answers")
    ap.add_argument("--response-tokens", type=int, default=32, help="greedy response length of the training data")
    ap.add_argument("--layers", type=int, default=1, help="decoder layers of the draft")
    ap.add_argument("--head-tokens", type=int, default=8192,
                    help="> 0: the draft's head covers the most frequent ids of the task's training texts (FR-Spec)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--feature-noise", type=float, default=0.0, help="std of noise on input features (EAGLE)")
    ap.add_argument("--unroll", type=int, default=1,
                    help="> 1: also train drafting steps 2..unroll on the draft's own predicted features")
    ap.add_argument("--train-threads", type=int, default=2)
    ap.add_argument("--num-prompts", type=int, default=8, help="test prompts timed")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--gammas", default="2,3,4")
    ap.add_argument("--out", default=None, help="save the trained draft to this folder")
    ap.add_argument("--responses-cache", default=None,
                    help="a .pt file: the target's responses are read from it when it exists, else written to it")
    ap.add_argument("--seed", type=int, default=0)
    add_settings_flags(ap, BenchSettings, "max_new_tokens", "precision", "repeats", "threads", repeats=2)
    args = ap.parse_args(argv)
    try:
        settings = settings_from_flags(BenchSettings, args, gammas=tuple(int(g) for g in args.gammas.split(",")),
                                       modes=("greedy",), warmup=1)
    except ValueError as err:
        ap.error(str(err))

    import datasets

    from tasks.downstream import TaskSpec, task_dir

    torch.set_num_threads(args.train_threads)
    data = datasets.load_from_disk(str(Path(task_dir(TaskSpec(name=args.task))) / "data"))
    target, tok = load_causal_lm(args.target)
    target.eval()
    train = data["train"].select(range(min(args.train_prompts, len(data["train"]))))
    train_prompts = [p.input_ids for p in prompts_from_texts(list(train["input"]), tok,
                                                              prompt_tokens=args.prompt_tokens, causal=True)]
    t0 = time.perf_counter()
    cache = Path(args.responses_cache) if args.responses_cache else None
    key = {"target": args.target, "task": args.task, "prompts": train_prompts, "response_tokens": args.response_tokens}
    cached = torch.load(cache) if cache is not None and cache.is_file() else None
    if cached is not None and cached["key"] == key:
        seqs = cached["sequences"]
    else:
        seqs = target_greedy_sequences(target, train_prompts, max_new_tokens=args.response_tokens, batch_size=16,
                                       pad_id=tok.pad_token_id,
                                       progress=lambda i, n: print(f"  target responses {i}/{n}", flush=True))
        if cache is not None:
            torch.save({"key": key, "sequences": seqs}, cache)
    t_gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    examples = collect_features(target, seqs, batch_size=8)
    t_feat = time.perf_counter() - t0
    head = task_frequent_token_ids(tok, data["train"], args.head_tokens) if args.head_tokens else None
    gen = torch.Generator().manual_seed(args.seed)  # the draft's initial weights, then its training batches
    draft = make_feature_draft(target, layers=args.layers, head_token_ids=head, generator=gen)
    untrained = copy.deepcopy(draft).eval()  # the same initial weights, never trained
    t0 = time.perf_counter()
    history = train_feature_draft(draft, examples, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                  generator=gen, feature_noise=args.feature_noise, unroll=args.unroll,
                                  log=lambda r: print("  step {step}: loss {loss:.3f} feature {feature:.4f} kl {kl:.3f} "
                                                      "top1 {top1:.3f} ({seconds:.0f} s)".format(**r), flush=True))
    t_train = time.perf_counter() - t0
    if args.out:
        save_feature_draft(draft, args.out)
    trainable = sum(p.numel() for p in draft.parameters() if p.requires_grad) / 1e6
    print(f"\ndata: {len(seqs)} prompts + target greedy responses ({sum(len(s) for s, _ in seqs)} tokens; "
          f"generate {t_gen:.0f} s, features {t_feat:.0f} s); draft: {args.layers} layer(s), {trainable:.1f}M trained "
          f"parameters, head over {len(head) if head else 'all'} ids; training {args.steps} steps of "
          f"{args.batch_size}, unroll {args.unroll} ({t_train:.0f} s, {t_train / max(args.steps, 1):.2f} s/step), final top-1 agreement "
          f"{history[-1]['top1']:.3f}\n", flush=True)

    test = data["test"].select(range(min(args.num_prompts, len(data["test"]))))
    prompts = prompts_from_texts(list(test["input"]), tok, prompt_tokens=args.prompt_tokens,
                                 references=list(test["target"]), causal=True)
    rows = run_benchmark(target, {"feature-distilled": draft, "feature-untrained": untrained}, prompts, settings,
                         decode=lambda ids: tok.decode(ids, skip_special_tokens=True), log=print)
    print(f"\ntarget {args.target}, task {args.task}: {len(prompts)} prompts, {args.max_new_tokens} new tokens, "
          f"{args.precision}, {args.threads} thread(s), torch {torch.__version__}\n")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
