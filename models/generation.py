"""Batched generation for evaluation: length-sorted batches, KV cache, greedy or beam search."""

from __future__ import annotations

import time

import torch

from models.kv_cache import generate_cache


@torch.no_grad()
def batched_generate(model, tokenizer, inputs: list[str], *, batch_size: int = 32, num_beams: int = 1,
                     max_input_length: int = 512, max_new_tokens: int = 32) -> tuple[list[str], float]:
    """Decode every input; returns (predictions in input order, examples per second).

    Inputs are sorted by length so each batch pads little; ``use_cache=True`` keeps the decoder's KV cache.
    """
    if batch_size < 1 or num_beams < 1:
        raise ValueError(f"batch_size={batch_size} and num_beams={num_beams} must be >= 1")
    model.eval()
    device = next(model.parameters()).device
    enc = tokenizer(inputs, max_length=max_input_length, truncation=True).input_ids
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
    preds: list[str] = [""] * len(enc)
    t0 = time.perf_counter()
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        n = max(len(enc[i]) for i in idx)
        x = torch.full((len(idx), n), tokenizer.pad_token_id, dtype=torch.long)
        for row, i in enumerate(idx):
            x[row, : len(enc[i])] = torch.tensor(enc[i])
        x = x.to(device)
        out = model.generate(input_ids=x, attention_mask=x != tokenizer.pad_token_id, num_beams=num_beams,
                             max_new_tokens=max_new_tokens, do_sample=False, use_cache=True, **generate_cache(model))
        for row, text in zip(idx, tokenizer.batch_decode(out, skip_special_tokens=True)):
            preds[row] = text.strip()
    dt = time.perf_counter() - t0
    return preds, len(inputs) / max(dt, 1e-9)
