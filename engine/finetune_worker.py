"""Fine-tuning objective (cross-entropy over the response tokens) on the shared training loop; Ray worker entry
point. T5s and decoder-only LMs alike: ``models.text_io`` lays out each kind's examples (a decoder-only model's
prompts go through its chat template and only the response tokens are trained on).

The same loop as pretraining (``engine/train_loop.py``): schedule, accumulation, clipping, DDP,
checkpoints with exact resume, early stopping on validation loss, rank-0 MLflow logging.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from models.text_io import pad_right, text_io
from models.training import global_batch_rows
from engine.jobs import FinetuneJob
from engine.train_loop import run, use_worker_threads


def check_tokenizer_matches(model, tokenizer, where: str) -> None:
    """Refuse a tokenizer whose vocabulary does not fit the model (before any work). A decoder-only model whose
    config names no pad id takes the tokenizer's; a config may list several EOS ids."""
    n_tok, n_emb = len(tokenizer), model.get_input_embeddings().num_embeddings
    if n_tok > n_emb:
        raise ValueError(f"{where}: the tokenizer has {n_tok} tokens but the model's embedding has {n_emb} rows; "
                         "use the tokenizer saved with this model")
    pad, eos = model.config.pad_token_id, model.config.eos_token_id
    eos_ids = set(eos) if isinstance(eos, (list, tuple)) else {eos}
    pad_ok = tokenizer.pad_token_id == pad or (pad is None and not model.config.is_encoder_decoder)
    if not pad_ok or tokenizer.eos_token_id not in eos_ids:
        raise ValueError(f"{where}: tokenizer pad/eos ids ({tokenizer.pad_token_id}, {tokenizer.eos_token_id}) differ "
                         f"from the model's ({pad}, {eos})")


def load_model_and_tokenizer(model_dir: str, init: str = "pretrained", seed: int = 0):
    """A model and its tokenizer from a ``save_pretrained`` folder: a T5, or a decoder-only LM (its tokenizer
    then has a pad token, the EOS when it had none, and pads on the left); ``init="random"`` keeps only the
    architecture."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, T5ForConditionalGeneration

    from models.sd.drafts import FrequentHeadLlama, load_causal

    tok = AutoTokenizer.from_pretrained(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    if init == "random":
        torch.manual_seed(seed)
        if config.is_encoder_decoder:
            model = T5ForConditionalGeneration(config)
        else:
            model = (FrequentHeadLlama(config) if getattr(config, "head_token_ids", None)
                     else AutoModelForCausalLM.from_config(config))
    else:
        model = (T5ForConditionalGeneration.from_pretrained(model_dir) if config.is_encoder_decoder
                 else load_causal(model_dir))
    if not config.is_encoder_decoder:
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
    check_tokenizer_matches(model, tok, model_dir)
    return model, tok


def load_task_data(io, cfg: FinetuneJob):
    """(the task's DatasetDict, training prompts, training responses) from ``cfg.task_dir``, as token lists of
    the model's kind (``models.text_io``)."""
    import datasets

    data = datasets.load_from_disk(str(Path(cfg.task_dir) / "data"))
    train = data["train"]
    return (data, io.prompts(list(train["input"]), cfg.max_input_length),
            io.responses(list(train["target"]), cfg.max_target_length))


def response_loss(io, model, prompts, responses) -> torch.Tensor:
    """Mean cross-entropy over the response tokens (teacher forcing): the same value as a T5's ``.loss`` with
    labels, and for a decoder-only model the loss of supervised fine-tuning on responses only."""
    logits, mask = io.forced_logits(model, prompts, responses)
    targets = pad_right(responses, -100)[0].to(logits.device)
    return torch.nn.functional.cross_entropy(logits[mask].float(), targets[mask])


class FinetuneObjective:
    def __init__(self, cfg: FinetuneJob | dict[str, Any]):
        self.cfg = cfg = FinetuneJob.of(cfg)
        self.model, self.tok = load_model_and_tokenizer(cfg.model_dir, cfg.init, cfg.seed)
        self.model.config.dropout_rate = cfg.dropout_rate
        for m in self.model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = cfg.dropout_rate
        self.io = text_io(self.model, self.tok)
        data, self.train_x, self.train_y = load_task_data(self.io, cfg)
        val = data["validation"] if len(data["validation"]) else data["train"]
        n_val = min(len(val), cfg.eval_examples)
        self.val_x = self.io.prompts(list(val["input"])[:n_val], cfg.max_input_length)
        self.val_y = self.io.responses(list(val["target"])[:n_val], cfg.max_target_length)

    def loss(self, model, step, micro, rank, world):
        c = self.cfg
        idx = global_batch_rows(n_rows=len(self.train_x), step=step, micro=micro, grad_accum=c.grad_accum,
                                rank=rank, world_size=world, batch_size=c.batch_size, seed=c.seed)
        loss = response_loss(self.io, model, [self.train_x[i] for i in idx], [self.train_y[i] for i in idx])
        return loss, {"loss": loss.detach()}

    def tokens_per_micro(self) -> int:
        return self.cfg.batch_size * (self.cfg.max_input_length + self.cfg.max_target_length)

    def step_flops(self, step, world) -> int:
        n = sum(p.numel() for p in self.model.parameters())
        return 6 * n * self.tokens_per_micro() * self.cfg.grad_accum * world  # 6N per token (approximate)

    @torch.no_grad()
    def evaluate(self, step) -> dict[str, float]:
        was = self.model.training
        self.model.eval()
        bs, total, n = self.cfg.batch_size, 0.0, 0
        for i in range(0, len(self.val_x), bs):
            xs = self.val_x[i:i + bs]
            total += response_loss(self.io, self.model, xs, self.val_y[i:i + bs]).item() * len(xs)
            n += len(xs)
        self.model.train(was)
        return {"val_loss": total / max(n, 1)}

    def periodic(self, step) -> dict[str, float]:
        return {}

    def save_final(self, out_dir: Path) -> None:
        self.model.save_pretrained(str(out_dir / "model"), safe_serialization=True)
        self.tok.save_pretrained(str(out_dir / "model"))
        (out_dir / "lineage.json").write_text(json.dumps({k: getattr(self.cfg, k) for k in ("model_dir", "task_dir", "init")}))


def finetune_worker(job: FinetuneJob | dict[str, Any]) -> dict[str, Any]:
    """Ray Train worker entry point (also callable directly, with ``in_ray=False`` in the job's loop)."""
    job = FinetuneJob.of(job)
    use_worker_threads(job)
    return run(FinetuneObjective(job), job.loop)


finetune_worker.job_type = FinetuneJob  # what tasks.runtime.tracked_run builds on the driver for this worker
