"""Fine-tuning objective (text-to-text cross-entropy) on the shared training loop; Ray worker entry point.

The same loop as pretraining (``engine/train_loop.py``): schedule, accumulation, clipping, DDP,
checkpoints with exact resume, early stopping on validation loss, rank-0 MLflow logging.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from models.training import global_batch_rows
from engine.jobs import FinetuneJob
from engine.train_loop import run, use_worker_threads


def check_tokenizer_matches(model, tokenizer, where: str) -> None:
    """Refuse a tokenizer whose vocabulary does not fit the model (before any work)."""
    n_tok, n_emb = len(tokenizer), model.get_input_embeddings().num_embeddings
    if n_tok > n_emb:
        raise ValueError(f"{where}: the tokenizer has {n_tok} tokens but the model's embedding has {n_emb} rows; "
                         "use the tokenizer saved with this model")
    if tokenizer.pad_token_id != model.config.pad_token_id or tokenizer.eos_token_id != model.config.eos_token_id:
        raise ValueError(f"{where}: tokenizer pad/eos ids ({tokenizer.pad_token_id}, {tokenizer.eos_token_id}) differ "
                         f"from the model's ({model.config.pad_token_id}, {model.config.eos_token_id})")


def load_model_and_tokenizer(model_dir: str, init: str = "pretrained", seed: int = 0):
    """A T5 and its tokenizer from a ``save_pretrained`` folder; ``init="random"`` keeps only the architecture."""
    from transformers import AutoConfig, AutoTokenizer, T5ForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(model_dir)
    if init == "random":
        torch.manual_seed(seed)
        model = T5ForConditionalGeneration(AutoConfig.from_pretrained(model_dir))
    else:
        model = T5ForConditionalGeneration.from_pretrained(model_dir)
    check_tokenizer_matches(model, tok, model_dir)
    return model, tok


def encode(tok, texts: list[str], max_length: int) -> list[list[int]]:
    return tok(texts, max_length=max_length, truncation=True, add_special_tokens=True).input_ids


def load_task_data(tok, cfg: FinetuneJob):
    """(the task's DatasetDict, encoded training inputs, encoded training targets) from ``cfg.task_dir``."""
    import datasets

    data = datasets.load_from_disk(str(Path(cfg.task_dir) / "data"))
    train = data["train"]
    return (data, encode(tok, list(train["input"]), cfg.max_input_length),
            encode(tok, list(train["target"]), cfg.max_target_length))


def pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    n = max(len(s) for s in seqs)
    out = torch.full((len(seqs), n), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


class FinetuneObjective:
    def __init__(self, cfg: FinetuneJob | dict[str, Any]):
        self.cfg = cfg = FinetuneJob.of(cfg)
        self.model, self.tok = load_model_and_tokenizer(cfg.model_dir, cfg.init, cfg.seed)
        self.model.config.dropout_rate = cfg.dropout_rate
        for m in self.model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = cfg.dropout_rate
        data, self.train_x, self.train_y = load_task_data(self.tok, cfg)
        val = data["validation"] if len(data["validation"]) else data["train"]
        n_val = min(len(val), cfg.eval_examples)
        self.val_x = encode(self.tok, list(val["input"])[:n_val], cfg.max_input_length)
        self.val_y = encode(self.tok, list(val["target"])[:n_val], cfg.max_target_length)
        self.device = torch.device("cpu")

    def _batch(self, xs, ys):
        x = pad(xs, self.tok.pad_token_id).to(self.device)
        y = pad(ys, -100).to(self.device)
        return x, y

    def loss(self, model, step, micro, rank, world):
        self.device = next(self.model.parameters()).device
        c = self.cfg
        idx = global_batch_rows(n_rows=len(self.train_x), step=step, micro=micro, grad_accum=c.grad_accum,
                                rank=rank, world_size=world, batch_size=c.batch_size, seed=c.seed)
        x, y = self._batch([self.train_x[i] for i in idx], [self.train_y[i] for i in idx])
        loss = model(input_ids=x, attention_mask=x != self.tok.pad_token_id, labels=y).loss
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
            x, y = self._batch(self.val_x[i:i + bs], self.val_y[i:i + bs])
            total += self.model(input_ids=x, attention_mask=x != self.tok.pad_token_id, labels=y).loss.item() * len(x)
            n += len(x)
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


finetune_worker.job_type = FinetuneJob  # what tasks.tracked_run builds on the driver for this worker
