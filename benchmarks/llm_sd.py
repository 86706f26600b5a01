"""Benchmark: lossless SD of a decoder-only target with its drafts, each also with a frequent-token head (FR-Spec).

For a target (default the packaged SmolLM2-135M-Instruct) and draft folders (``save_pretrained``, e.g. the
``llm`` pipeline's registered drafts: ``python -c "from tasks.tracking import resolve_model; print(resolve_model(
'models:/smollm2-135m-instruct-draft@...'))"``), it builds for each draft a copy whose LM head scores only the
``--head-tokens`` ids most frequent in the task's training texts (``models.sd.drafts``: same layers, the
head's rows for those ids; nothing retrained), then times greedy decoding of the target alone, transformers'
``generate``, our SD with every draft and HF assisted generation and prompt lookup (``engine.sd_bench``), on the
task's held-out prompts through the chat template, batch 1, one thread:

    .venv/bin/python benchmarks/llm_sd.py --draft distilled=/path/to/draft --head-tokens 8192
    .venv/bin/python benchmarks/llm_sd.py --draft base=/path/a --draft distilled=/path/b --precision int8
    .venv/bin/python benchmarks/llm_sd.py --draft feature=/path/to/feature-draft --prompt-lookup 3 --precision bf16

A feature draft's folder (``models.sd.feature_draft``) is timed as it is (it has its own head);
``--prompt-lookup N`` adds our prompt-lookup draft alone and before each feature draft (``models.sd.lookup``).

Speedups are over the faster of our target-only decoding and ``generate`` in the same run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script from anywhere

from engine.causal_lm import load_causal_lm  # noqa: E402
from engine.sd_bench import markdown_table, run_benchmark  # noqa: E402
from models.sd.drafts import load_causal, make_causal_draft, task_frequent_token_ids  # noqa: E402
from models.sd.feature_draft import is_feature_draft_folder, load_feature_draft  # noqa: E402
from benchmarks._flags import add_settings_flags, settings_from_flags  # noqa: E402
from models.sd.bench import BenchPrompt, BenchSettings, prompts_from_texts  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="smollm2", help="decoder-only model reference (engine.causal_lm)")
    ap.add_argument("--draft", action="append", default=[], metavar="LABEL=FOLDER", help="a draft folder (repeat)")
    ap.add_argument("--head-tokens", type=int, default=8192, help="ids of the FR-Spec copies' heads (0: no copies)")
    ap.add_argument("--task", default="bbc_headline", help="built-in task: training texts count the ids, test "
                                                           "inputs are the prompts")
    ap.add_argument("--num-prompts", type=int, default=8)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--gammas", default="2,3,4", help="comma-separated draft tokens per target call")
    add_settings_flags(ap, BenchSettings, "max_new_tokens", "precision", "repeats", "threads", "prompt_lookup",
                       repeats=2)
    args = ap.parse_args(argv)
    if not args.draft:
        ap.error("give at least one --draft LABEL=FOLDER")
    try:  # checked before any model loads (BenchSettings' rules, as the flows apply them)
        settings = settings_from_flags(BenchSettings, args, gammas=tuple(int(g) for g in args.gammas.split(",")),
                                       modes=("greedy",), warmup=1)
    except ValueError as err:
        ap.error(str(err))

    import datasets

    from tasks.downstream import TaskSpec, task_dir

    data = datasets.load_from_disk(str(Path(task_dir(TaskSpec(name=args.task))) / "data"))
    target, tok = load_causal_lm(args.target)
    drafts = {}
    head = task_frequent_token_ids(tok, data["train"], args.head_tokens) if args.head_tokens else None
    for spec in args.draft:
        label, _, folder = spec.partition("=")
        if is_feature_draft_folder(folder):
            drafts[label] = load_feature_draft(folder)
            continue
        draft = load_causal(folder).eval()
        drafts[label] = draft
        if head is not None:
            drafts[f"{label}-fr{args.head_tokens}"] = make_causal_draft(draft, layers=draft.config.num_hidden_layers,
                                                                        init="target", head_tokens=head)
    test = data["test"].select(range(min(args.num_prompts, len(data["test"]))))
    prompts = prompts_from_texts(list(test["input"]), tok, prompt_tokens=args.prompt_tokens,
                                 references=list(test["target"]), causal=True)
    rows = run_benchmark(target, drafts, [BenchPrompt(input_ids=p.input_ids, reference=p.reference) for p in prompts],
                         settings, decode=lambda ids: tok.decode(ids, skip_special_tokens=True), log=print)
    print(f"\ntarget {args.target}, task {args.task}: {len(prompts)} prompts, {args.max_new_tokens} new tokens, "
          f"{args.precision}, {args.threads} thread(s), torch {torch.__version__}\n")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
