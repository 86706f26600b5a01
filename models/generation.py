"""Batched generation for evaluation: length-sorted batches, KV cache, greedy or beam search; T5s and decoder-only
LMs (prompts through ``models.text_io``: chat template, left padding, the prompt cut off the output)."""

from __future__ import annotations

import time

import torch

from models.sd.kv_cache import generate_cache
from models.text_io import pad_left, pad_right, text_io


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
    io = text_io(model, tokenizer)
    enc = io.prompts(inputs, max_input_length)
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
    preds: list[str] = [""] * len(enc)
    t0 = time.perf_counter()
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        x, mask = (pad_left if io.causal else pad_right)([enc[i] for i in idx], io.pad)
        out = model.generate(input_ids=x.to(device), attention_mask=mask.long().to(device), num_beams=num_beams,
                             max_new_tokens=max_new_tokens, do_sample=False, use_cache=True, pad_token_id=io.pad,
                             eos_token_id=io.eos, **generate_cache(model))
        if io.causal:
            out = out[:, x.shape[1]:]
        for row, text in zip(idx, tokenizer.batch_decode(out, skip_special_tokens=True)):
            preds[row] = text.strip()
    dt = time.perf_counter() - t0
    return preds, len(inputs) / max(dt, 1e-9)
