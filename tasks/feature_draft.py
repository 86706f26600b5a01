"""Train a feature-level draft (EAGLE; ``models.sd.feature_draft``) of a decoder-only LLM on the LLM's own greedy
responses to a task's training prompts (``engine.feature_draft``), and register it with its lineage."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from engine.config.llm_pipeline import FeatureDraftConfig
from tasks import tracking


@task(name="train-feature-draft")
def train_feature_draft(llm_dir: str, task_dir: str, cfg: FeatureDraftConfig, name: str, *, llm_ref: str,
                        experiment: str, parent_run_id: str | None = None,
                        run_name: str = "feature-draft") -> dict[str, Any]:
    """The LLM in ``llm_dir`` answers ``cfg.train_prompts`` training prompts of the task in ``task_dir`` (chat
    template, greedy, ``cfg.response_tokens`` tokens); its final hidden states over prompt + response are taken
    once; a draft of ``cfg.layers`` layers (head over the ``cfg.head_tokens`` most frequent tokens of the
    training texts) trains ``cfg.steps`` steps on them. Its loss curve goes to the run (one point every 50
    steps), the draft to the registry as ``name``. Returns the run id, the ``models:/`` URI and the final
    metrics."""
    import datasets
    import torch

    from engine.feature_draft import collect_features, target_greedy_sequences
    from engine.feature_draft import train_feature_draft as train
    from engine.finetune_worker import load_model_and_tokenizer
    from models.sd.bench import prompts_from_texts
    from models.sd.drafts import task_frequent_token_ids
    from models.sd.feature_draft import make_feature_draft, save_feature_draft

    logger = get_run_logger()
    torch.set_num_threads(cfg.threads)
    llm, tok = load_model_and_tokenizer(llm_dir)
    llm.eval()
    train_split = datasets.load_from_disk(str(Path(task_dir) / "data"))["train"]
    rows = train_split.select(range(min(cfg.train_prompts, len(train_split))))
    prompts = [p.input_ids for p in prompts_from_texts(list(rows["input"]), tok, prompt_tokens=cfg.prompt_tokens,
                                                       causal=True)]
    head = task_frequent_token_ids(tok, train_split, cfg.head_tokens) if cfg.head_tokens else None
    tags = {"stage": "feature_draft", "lineage.target": llm_ref, "architecture": "FeatureDraft (EAGLE)",
            "layers": cfg.layers, "head_tokens": cfg.head_tokens or "all"}
    with tracking.start_run(experiment, run_name, params=cfg.model_dump(), tags=tags,
                            parent_run_id=parent_run_id) as run_id, \
            tempfile.TemporaryDirectory(prefix="feature-draft-") as tmp:
        t0 = time.perf_counter()

        def responses(done: int, total: int) -> None:  # a line about every 128 prompts
            if done % 128 < 16 or done == total:
                logger.info("greedy responses of the LLM: %d/%d prompts (%.0f s)", done, total,
                            time.perf_counter() - t0)

        seqs = target_greedy_sequences(llm, prompts, max_new_tokens=cfg.response_tokens, batch_size=16,
                                       pad_id=tok.pad_token_id, progress=responses)
        examples = collect_features(llm, seqs, batch_size=8)
        data_s = time.perf_counter() - t0
        logger.info("the LLM's final hidden states over %d sequences (%d tokens) in %.0f s", len(seqs),
                    sum(len(s) for s, _ in seqs), data_s)

        def log(r: dict) -> None:
            tracking.log_metrics(run_id, {k: v for k, v in r.items() if k != "step"}, step=r["step"])
            logger.info("feature draft step %d/%d: loss %.3f, top-1 agreement %.3f (%.0f s)", r["step"], cfg.steps,
                        r["loss"], r["top1"], r["seconds"])

        draft = make_feature_draft(llm, layers=cfg.layers, head_token_ids=head,
                                   generator=torch.Generator().manual_seed(cfg.seed))
        history = train(draft, examples, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                        unroll=cfg.unroll, feature_noise=cfg.feature_noise,
                        generator=torch.Generator().manual_seed(cfg.seed + 1), log=log)
        final = history[-1]
        trained = sum(p.numel() for p in draft.parameters() if p.requires_grad)
        metrics = {"data_s": data_s, "train_s": final["seconds"], "final.top1": final["top1"],
                   "final.kl": final["kl"], "trained_parameters": float(trained),
                   "train_tokens": float(sum(len(s) for s, _ in seqs))}
        tracking.log_metrics(run_id, metrics)
        folder = save_feature_draft(draft, Path(tmp) / "model", tokenizer=tok)
        uri = tracking.register_model(
            run_id, folder, name, tags=tags, metrics={"final.top1": final["top1"]},
            description=f"feature-level (EAGLE) draft of {llm_ref}: {cfg.layers} layer(s), {trained / 1e6:.1f}M "
                        f"trained parameters over the target's final hidden states, head over "
                        f"{cfg.head_tokens or 'all'} tokens; {cfg.steps} steps on {len(seqs)} greedy responses "
                        f"of the target; top-1 agreement with the target {final['top1']:.3f} on its last steps. "
                        "Decodes with models.speculative.speculative_generate (batch 1) only.")
    return {"run_id": run_id, "model_uri": uri, "metrics": metrics}
