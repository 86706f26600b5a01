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

T5s and decoder-only LMs alike (``models.text_io``): a decoder-only pair sees chat-templated prompts and the
divergence covers the response tokens only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.speculative import check_compatible
from models.distillation import divergence, greedy_agreement, token_acceptance_rate
from models.text_io import text_io
from models.training import global_batch_rows, step_seed
from engine.finetune_worker import load_model_and_tokenizer, load_task_data
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
        self.io = text_io(self.teacher, self.tok)
        data, self.train_x, self.train_y = load_task_data(self.io, cfg)
        val = data["validation"] if len(data["validation"]) else data["test"]
        n = min(len(val), cfg.eval_examples)
        self.val_inputs = list(val["input"])[:n]
        self.val_x = self.io.prompts(self.val_inputs, cfg.max_input_length)
        self.val_refs = list(val["target"])[:n]
        info = json.loads((Path(cfg.task_dir) / "task.json").read_text())["info"]
        self.task_info = info
        mix = np.array([cfg.data_mix.get(s, 0.0) for s in SOURCES], dtype=np.float64)
        self.mix = mix / mix.sum()
        self.last_sources: list[str] = []

    # --- data ---------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, model, prompts: list[list[int]], seed: int, *, do_sample: bool = True) -> list[list[int]]:
        """Responses from ``model`` (eval mode, KV cache) to ``prompts``, each cut after its first EOS."""
        was = model.training
        model.eval()
        torch.manual_seed(seed)
        out = self.io.sample(model, prompts, do_sample=do_sample, temperature=self.cfg.sample_temperature,
                             max_new_tokens=self.cfg.max_target_length)
        model.train(was)
        return [r or [self.io.eos] for r in out]

    def batch(self, model, step: int, micro: int, rank: int, world: int) -> tuple[list[list[int]], list[list[int]]]:
        """``(prompts, responses)`` of this micro-batch: each row's response from its source."""
        c = self.cfg
        idx = global_batch_rows(n_rows=len(self.train_x), step=step, micro=micro, grad_accum=c.grad_accum,
                                rank=rank, world_size=world, batch_size=c.batch_size, seed=c.seed)
        rng = np.random.default_rng(step_seed(c.seed, step, micro, rank, stream=5))
        sources = rng.choice(len(SOURCES), size=len(idx), p=self.mix)
        self.last_sources = [SOURCES[s] for s in sources]
        prompts = [self.train_x[i] for i in idx]
        ys = [self.train_y[i] for i in idx]
        for s_id, name in enumerate(SOURCES):
            rows = np.nonzero(sources == s_id)[0]
            if len(rows) == 0 or name == "fixed":
                continue
            src_model = self.teacher if name == "teacher" else _unwrap(model)
            sampled = self.sample(src_model, [prompts[r] for r in rows], step_seed(c.seed, step, micro, rank, 6 + s_id))
            for r, seq in zip(rows, sampled):
                ys[int(r)] = seq
        return prompts, ys

    # --- loss ---------------------------------------------------------------------------------
    def loss(self, model, step, micro, rank, world):
        prompts, ys = self.batch(model, step, micro, rank, world)
        with torch.no_grad():
            t_logits, mask = self.io.forced_logits(self.teacher, prompts, ys)
        s_logits, _ = self.io.forced_logits(model, prompts, ys)
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
            x = self.val_x[i:i + bs]
            y = self.sample(self.model, x, seed + i, do_sample=do_sample)
            t, m = self.io.forced_logits(self.teacher, x, y)
            s, _ = self.io.forced_logits(self.model, x, y)
            t, s = t.float(), s.float()
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
        preds, _ = batched_generate(self.model, self.tok, self.val_inputs, batch_size=self.cfg.batch_size,
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


distill_worker.job_type = DistillJob  # what tasks.runtime.tracked_run builds on the driver for this worker
