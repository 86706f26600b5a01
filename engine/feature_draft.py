"""Training a feature-level draft (``models.sd.feature_draft``, EAGLE) for a decoder-only target.

The data are sequences the target would decode: task prompts and the target's own greedy responses (the path
greedy SD verifies, which DistillSpec finds the best data for greedy decoding). The target runs once over them,
teacher-forced, and its final hidden states are kept: the draft then trains on those features for as many
steps as wanted, each step costing only the draft's layer and head (no target call per step). That is what
makes it trainable on 2 CPU cores in minutes, where on-policy DistillSpec of a stand-alone draft calls the
target every step.

    data = target_greedy_sequences(target, prompts, max_new_tokens=32, batch_size=16, pad_id=tok.pad_token_id)
    feats = collect_features(target, data, batch_size=8)
    history = train_feature_draft(draft, feats, steps=600, batch_size=8, lr=1e-3,
                                  generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from models.sd.feature_draft import FeatureDraft, feature_draft_loss

__all__ = ["FeatureExample", "collect_features", "target_greedy_sequences", "train_feature_draft"]


@dataclass
class FeatureExample:
    """One teacher-forced sequence: its tokens (T,), the target's final hidden states (T, d), and which positions
    the loss covers (T,): position ``i`` predicts feature ``i + 1``, so the last position never counts."""

    input_ids: torch.Tensor
    features: torch.Tensor
    loss_mask: torch.Tensor


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(list(r), dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask


@torch.inference_mode()
def target_greedy_sequences(target: nn.Module, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                            batch_size: int, pad_id: int,
                            progress: Callable[[int, int], None] | None = None) -> list[tuple[list[int], int]]:
    """(prompt + the target's greedy response, prompt length) per prompt: batched ``generate``, left-padded,
    the response cut after its first EOS (pad tokens that follow it dropped)."""
    eos = target.generation_config.eos_token_id
    eos = set([eos] if isinstance(eos, int) else (eos or []))
    out: list[tuple[list[int], int]] = []
    for b in range(0, len(prompts), batch_size):
        chunk = prompts[b:b + batch_size]
        ids, mask = _left_pad(chunk, pad_id)
        seqs = target.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                               pad_token_id=pad_id)
        for p, row in zip(chunk, seqs[:, ids.shape[1]:].tolist()):
            cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
            out.append((list(p) + row[:cut], len(p)))
        if progress:
            progress(min(b + batch_size, len(prompts)), len(prompts))
    return out


@torch.inference_mode()
def collect_features(target: nn.Module, sequences: Sequence[tuple[Sequence[int], int]], *, batch_size: int,
                     response_only: bool = False, dtype: torch.dtype = torch.float32) -> list[FeatureExample]:
    """The target's final hidden states over each (tokens, prompt length) sequence, teacher-forced in batches
    (left-padded; each row's real positions kept). ``response_only``: the loss covers the response positions
    only (by default every position: the prompt's text teaches the draft the target's language too)."""
    out: list[FeatureExample] = []
    decoder = target.get_decoder()
    for b in range(0, len(sequences), batch_size):
        chunk = sequences[b:b + batch_size]
        ids, mask = _left_pad([s for s, _ in chunk], 0)
        pos = (mask.cumsum(dim=1) - 1).clamp_min(0)
        hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
        for row, (seq, plen) in enumerate(chunk):
            n = len(seq)
            f = hidden[row, ids.shape[1] - n:].to(dtype).clone()
            lm = torch.ones(n, dtype=torch.bool)
            if response_only:
                lm[: max(plen - 1, 0)] = False
            lm[-2:] = False  # pair i = (f_i, x_{i+1}) predicts f_{i+1}: the last two positions have no target
            out.append(FeatureExample(torch.tensor(list(seq), dtype=torch.long), f, lm))
    return out


def _batch(examples: Sequence[FeatureExample]) -> tuple[torch.Tensor, ...]:
    """Right-padded (features f_1..f_{T-1}, tokens x_2..x_T, next features f_2..f_T, loss mask) of a batch."""
    width = max(len(e.input_ids) for e in examples) - 1
    d = examples[0].features.shape[-1]
    feats = torch.zeros((len(examples), width, d))
    nxt = torch.zeros((len(examples), width, d))
    ids = torch.zeros((len(examples), width), dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.bool)
    for i, e in enumerate(examples):
        n = len(e.input_ids) - 1
        feats[i, :n] = e.features[:-1].float()
        nxt[i, :n] = e.features[1:].float()
        ids[i, :n] = e.input_ids[1:]
        mask[i, :n] = e.loss_mask[:-1]
    return feats, ids, nxt, mask


def train_feature_draft(draft: FeatureDraft, examples: Sequence[FeatureExample], *, steps: int, batch_size: int,
                        lr: float, generator: torch.Generator, warmup_steps: int = 20, feature_noise: float = 0.0,
                        feature_weight: float = 1.0, clip_norm: float = 1.0, unroll: int = 1,
                        log: Callable[[dict], None] | None = None, log_every: int = 50) -> list[dict]:
    """AdamW on ``feature_draft_loss`` over random batches of ``examples`` (drawn from ``generator``), linear
    warm-up then cosine decay; ``feature_noise``: std of Gaussian noise added to the input features (EAGLE's
    augmentation: at decoding time the draft reads its own, imperfect features after the first step).
    ``unroll`` > 1 trains the later drafting steps as they run (after EAGLE-3's training-time test): pass k reads,
    at each position, the feature that pass k - 1 predicted for it (the first position keeps the true one), and
    every pass's loss counts. Returns one record per ``log_every`` steps: step, loss, feature loss, KL, top-1
    agreement with the target (first pass), seconds."""
    if unroll < 1:
        raise ValueError(f"unroll={unroll} must be >= 1")
    if not examples:
        raise ValueError("no training sequences for the feature draft")
    params = [p for p in draft.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)

    def rate(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, steps - warmup_steps)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, rate)
    draft.train()
    history, acc, t0 = [], [], time.perf_counter()
    for step in range(steps):
        pick = torch.randint(len(examples), (batch_size,), generator=generator).tolist()
        feats, ids, nxt, mask = _batch([examples[i] for i in pick])
        if feature_noise:
            feats = feats + feature_noise * torch.randn(feats.shape, generator=generator)
        pred, logits, _ = draft(feats, ids, compact=True)
        parts = feature_draft_loss(pred, logits, nxt, draft.head_logits, mask, feature_weight=feature_weight)
        later = pred
        for _ in range(unroll - 1):  # the draft's own predictions as the next pass's input features
            feats = torch.cat([feats[:, :1], later[:, :-1].detach()], dim=1)
            later, logits_k, _ = draft(feats, ids, compact=True)
            more = feature_draft_loss(later, logits_k, nxt, draft.head_logits, mask, feature_weight=feature_weight)
            parts = {k: parts[k] + more[k] for k in parts}
        opt.zero_grad(set_to_none=True)
        parts["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, clip_norm)
        opt.step()
        sched.step()
        with torch.no_grad():
            agree = (logits[mask].argmax(-1) == draft.head_logits(nxt[mask]).argmax(-1)).float().mean()
        acc.append({k: float(v.detach()) for k, v in parts.items()} | {"top1": float(agree)})
        if (step + 1) % log_every == 0 or step + 1 == steps:
            rec = {"step": step + 1, **{k: sum(a[k] for a in acc) / len(acc) for k in acc[0]},
                   "seconds": time.perf_counter() - t0}
            history.append(rec)
            acc = []
            if log:
                log(rec)
    draft.eval()
    return history
