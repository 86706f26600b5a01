"""DistillSpec objective on the shared training loop: teacher (no grad) -> student, with configurable data.

Where the distillation sequences ``y`` come from, chosen per example with the step's seeded RNG:

* ``fixed``: the task's ground-truth targets;
* ``teacher``: sampled from the teacher;
* ``student``: on-policy, sampled from the *current* student at this step (student in eval mode, so
  dropout is off; no gradient through sampling), at the deployment sampling temperature.

The loss is ``divergence(kind, teacher_logits, student_logits, mask)`` over the positions of ``y`` (both
models teacher-forced on the same ``y``). Every ``eval_every`` steps rank 0 measures, on held-out prompts and
the student's own rollouts, the SD acceptance rate ``mean sum_x min(p, q)`` (= 1 - TVD) at the sampling
temperature and the greedy (argmax) agreement, plus the student's task quality.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.speculative import check_compatible
from models.distillation import divergence, greedy_agreement, rollout_labels, token_acceptance_rate
from models.kv_cache import generate_cache
from models.training import global_batch_rows, step_seed
from engine.finetune_worker import encode, load_model_and_tokenizer, load_task_data, pad
from engine.jobs import DistillJob
from engine.train_loop import run, use_worker_threads

SOURCES = ("fixed", "teacher", "student")


def check_pair(teacher, student, where: str) -> None:
    """Refuse a student whose vocabulary differs from the teacher's (``models.speculative.check_compatible``):
    the student is the draft of speculative decoding later, so the rule is the same."""
    try:
        check_compatible(teacher, student, label="student")
    except ValueError as err:
        raise ValueError(f"{where}: {err} (distillation needs one shared vocabulary too)") from None


class DistillObjective:
    def __init__(self, cfg: DistillJob | dict[str, Any]):
        self.cfg = cfg = DistillJob.of(cfg)
        self.teacher, self.tok = load_model_and_tokenizer(cfg.teacher_dir)
        self.model, _ = load_model_and_tokenizer(cfg.student_dir)
        check_pair(self.teacher, self.model, f"{cfg.teacher_dir} vs {cfg.student_dir}")
        self.teacher.requires_grad_(False).eval()
        data, self.train_x, self.train_y = load_task_data(self.tok, cfg)
        val = data["validation"] if len(data["validation"]) else data["test"]
        n = min(len(val), cfg.eval_examples)
        self.val_x = encode(self.tok, list(val["input"])[:n], cfg.max_input_length)
        self.val_refs = list(val["target"])[:n]
        info = json.loads((Path(cfg.task_dir) / "task.json").read_text())["info"]
        self.task_info = info
        mix = np.array([cfg.data_mix.get(s, 0.0) for s in SOURCES], dtype=np.float64)
        self.mix = mix / mix.sum()
        self.device = torch.device("cpu")
        self.last_sources: list[str] = []

    # --- data ---------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, model, x: torch.Tensor, seed: int, *, do_sample: bool = True) -> torch.Tensor:
        """Sequences from ``model`` (eval mode, KV cache), as labels: decoder start dropped, after EOS -> -100."""
        was = model.training
        model.eval()
        torch.manual_seed(seed)
        out = model.generate(input_ids=x, attention_mask=x != self.tok.pad_token_id, do_sample=do_sample,
                             temperature=self.cfg.sample_temperature if do_sample else None,
                             top_k=0 if do_sample else None, max_new_tokens=self.cfg.max_target_length,
                             use_cache=True, **generate_cache(model))
        model.train(was)
        # only the positions after the first EOS are padding; a sampled pad id before it is kept
        return rollout_labels(out[:, 1:], self.tok.eos_token_id)

    def batch(self, model, step: int, micro: int, rank: int, world: int):
        c = self.cfg
        idx = global_batch_rows(n_rows=len(self.train_x), step=step, micro=micro, grad_accum=c.grad_accum,
                                rank=rank, world_size=world, batch_size=c.batch_size, seed=c.seed)
        rng = np.random.default_rng(step_seed(c.seed, step, micro, rank, stream=5))
        sources = rng.choice(len(SOURCES), size=len(idx), p=self.mix)
        self.last_sources = [SOURCES[s] for s in sources]
        x = pad([self.train_x[i] for i in idx], self.tok.pad_token_id).to(self.device)
        ys: list[list[int]] = []
        generated = {}
        for s_id, name in enumerate(SOURCES):
            rows = np.nonzero(sources == s_id)[0]
            if len(rows) == 0 or name == "fixed":
                continue
            src_model = self.teacher if name == "teacher" else _unwrap(model)
            generated[name] = (rows, self.sample(src_model, x[rows], step_seed(c.seed, step, micro, rank, 6 + s_id)))
        per_row: dict[int, list[int]] = {}
        for name, (rows, y) in generated.items():
            for r, seq in zip(rows, y.tolist()):
                per_row[int(r)] = [t for t in seq if t != -100] or [self.tok.eos_token_id]
        for r, i in enumerate(idx):
            ys.append(per_row.get(r, self.train_y[i]))
        return x, pad(ys, -100).to(self.device)

    # --- loss ---------------------------------------------------------------------------------
    def loss(self, model, step, micro, rank, world):
        self.device = next(self.model.parameters()).device
        x, y = self.batch(model, step, micro, rank, world)
        attn = x != self.tok.pad_token_id
        with torch.no_grad():
            t_logits = self.teacher(input_ids=x, attention_mask=attn, labels=y).logits
        s_logits = model(input_ids=x, attention_mask=attn, labels=y).logits
        mask = y != -100
        c = self.cfg
        loss = divergence(c.divergence, t_logits.float(), s_logits.float(), mask, beta=c.beta,
                          temperature=c.temperature, reduction=c.reduction)
        on_policy = sum(s == "student" for s in self.last_sources) / max(1, len(self.last_sources))
        return loss, {"distill_loss": loss.detach(), "on_policy_fraction": torch.tensor(on_policy)}

    def tokens_per_micro(self) -> int:
        return self.cfg.batch_size * (self.cfg.max_input_length + self.cfg.max_target_length)

    def step_flops(self, step, world) -> int:
        n_s = sum(p.numel() for p in self.model.parameters())
        n_t = sum(p.numel() for p in self.teacher.parameters())
        return (6 * n_s + 2 * n_t) * self.tokens_per_micro() * self.cfg.grad_accum * world

    # --- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def acceptance(self, do_sample: bool, seed: int = 0) -> dict[str, float]:
        """SD acceptance on the student's own rollouts of held-out prompts (p = teacher, q = student)."""
        bs = self.cfg.batch_size
        acc, agree, n = 0.0, 0.0, 0
        temp = self.cfg.sample_temperature if do_sample else 1.0
        for i in range(0, len(self.val_x), bs):
            x = pad(self.val_x[i:i + bs], self.tok.pad_token_id).to(self.device)
            y = self.sample(self.model, x, seed + i, do_sample=do_sample)
            if not bool((y != -100).any()):  # rollouts that emitted only padding: nothing to score
                continue
            attn = x != self.tok.pad_token_id
            t = self.teacher(input_ids=x, attention_mask=attn, labels=y).logits.float()
            s = self.model(input_ids=x, attention_mask=attn, labels=y).logits.float()
            m = y != -100
            k = int(m.sum())
            acc += float(token_acceptance_rate(t, s, m, temperature=temp)) * k
            agree += float(greedy_agreement(t, s, m)) * k
            n += k
        return {"acceptance_rate": acc / max(n, 1), "greedy_agreement": agree / max(n, 1)}

    @torch.no_grad()
    def evaluate(self, step) -> dict[str, float]:
        from models.generation import batched_generate
        from models.metrics import score

        was = self.model.training
        self.model.eval()
        out = {f"greedy.{k}": v for k, v in self.acceptance(False).items()}
        out.update({f"sampled.{k}": v for k, v in self.acceptance(True, seed=step).items()})
        texts = self.tok.batch_decode([[t for t in x] for x in self.val_x], skip_special_tokens=True)
        preds, _ = batched_generate(self.model, self.tok, texts, batch_size=self.cfg.batch_size,
                                    max_input_length=self.cfg.max_input_length,
                                    max_new_tokens=self.cfg.max_target_length)
        out.update({f"val.{k}": v for k, v in score(self.task_info["kind"], preds, self.val_refs,
                                                    self.task_info.get("labels")).items()})
        self.model.train(was)
        return out

    def periodic(self, step) -> dict[str, float]:
        return {}

    def save_final(self, out_dir: Path) -> None:
        self.model.save_pretrained(str(out_dir / "model"), safe_serialization=True)
        self.tok.save_pretrained(str(out_dir / "model"))


def _unwrap(model):
    return getattr(model, "module", model)


def distill_worker(job: DistillJob | dict[str, Any]) -> dict[str, Any]:
    """Ray Train worker entry point (also callable directly, with ``in_ray=False`` in the job's loop)."""
    job = DistillJob.of(job)
    use_worker_threads(job)
    return run(DistillObjective(job), job.loop)


distill_worker.job_type = DistillJob  # what tasks.tracked_run builds on the driver for this worker
