"""Text-to-text examples as each kind of language model sees them: prompts, responses, sampled responses and the
teacher-forced logits over the response tokens, for encoder-decoders (T5) and decoder-only LMs (Llama, SmolLM2).

Distillation (``engine.distill_worker``) and evaluation (``models.generation``) work on token lists and ask a
``TextIO`` for the rest, so the same objective serves both kinds:

* ``prompts(texts, max_length)`` / ``responses(texts, max_length)``: token ids; a response ends with EOS;
* ``sample(model, prompts, ...)``: responses drawn from ``model`` (KV cache), each cut after its first EOS;
* ``forced_logits(model, prompts, responses)``: ``(logits, mask)`` with ``logits[b, t]`` the model's logits
  for the ``t``-th response token of row ``b`` (shape ``(B, T, V)``) and ``mask[b, t]`` true where row ``b``
  has a ``t``-th response token. Two models given the same lists give aligned positions, which is what a
  token-level divergence between a teacher and a student needs.

Encoder-decoder: the prompt is the encoder input, the response the decoder labels (right padded).
Decoder-only: the prompt goes through the tokenizer's chat template when it has one (``add_generation_prompt``),
the sequence is ``prompt + response`` right padded, and the logits that predict response token ``t`` sit at
position ``len(prompt) + t - 1`` (causal shift). Attention masks come from lengths, never from token ids: a
decoder-only tokenizer's pad id is often its EOS id, which also appears inside chat-templated prompts. Sampling
pads prompts on the left, as batched decoding of a decoder-only model needs.
"""

from __future__ import annotations

import abc
from typing import Any, Sequence

import torch

from models.distillation import rollout_labels
from models.sd.kv_cache import generate_cache, is_causal_lm

__all__ = ["TextIO", "Seq2SeqIO", "CausalIO", "text_io", "pad_right", "pad_left"]


def pad_right(seqs: Sequence[Sequence[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)`` of shape ``(B, max_len)``: each row then ``value``; mask true on the row's own tokens."""
    n = max(1, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), n), value, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = True
    return ids, mask


def pad_left(seqs: Sequence[Sequence[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)`` with each row right-aligned (padding first)."""
    n = max(1, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), n), value, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.bool)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, n - len(s):] = torch.tensor(list(s), dtype=torch.long)
            mask[i, n - len(s):] = True
    return ids, mask


def _cut(rows: torch.Tensor, eos: int) -> list[list[int]]:
    """Each row up to and including its first EOS (the whole row when it has none)."""
    y = rollout_labels(rows, eos)
    return [[t for t in row if t != -100] for row in y.tolist()]


class TextIO(abc.ABC):
    """The interface of both kinds (module docstring), and what they share: the tokenizer, its pad and EOS ids."""

    causal: bool = False

    def __init__(self, tokenizer: Any):
        self.tok = tokenizer
        self.eos = int(tokenizer.eos_token_id)
        self.pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)

    @abc.abstractmethod
    def prompts(self, texts: Sequence[str], max_length: int) -> list[list[int]]:
        """See the module docstring."""

    @abc.abstractmethod
    def responses(self, texts: Sequence[str], max_length: int) -> list[list[int]]:
        """See the module docstring."""

    @abc.abstractmethod
    def sample(self, model, prompts: Sequence[Sequence[int]], *, do_sample: bool, temperature: float,
               max_new_tokens: int) -> list[list[int]]:
        """See the module docstring."""

    @abc.abstractmethod
    def forced_logits(self, model, prompts: Sequence[Sequence[int]],
                      responses: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """See the module docstring."""

    def _generate_kwargs(self, do_sample: bool, temperature: float, max_new_tokens: int) -> dict[str, Any]:
        return dict(do_sample=do_sample, temperature=temperature if do_sample else None, top_k=0 if do_sample else None,
                    top_p=None, max_new_tokens=max_new_tokens, use_cache=True, pad_token_id=self.pad,
                    eos_token_id=self.eos)


class Seq2SeqIO(TextIO):
    """Encoder-decoder models: the tokenizer adds EOS to prompts and responses alike."""

    def prompts(self, texts, max_length):
        return self.tok(list(texts), max_length=max_length, truncation=True, add_special_tokens=True).input_ids

    def responses(self, texts, max_length):
        return self.prompts(texts, max_length)

    def sample(self, model, prompts, *, do_sample, temperature, max_new_tokens):
        x, mask = pad_right(prompts, self.pad)
        device = next(model.parameters()).device
        out = model.generate(input_ids=x.to(device), attention_mask=mask.to(device),
                             **self._generate_kwargs(do_sample, temperature, max_new_tokens), **generate_cache(model))
        return _cut(out[:, 1:].cpu(), self.eos)  # the decoder start token dropped

    def forced_logits(self, model, prompts, responses):
        device = next(model.parameters()).device
        x, attn = pad_right(prompts, self.pad)
        y, mask = pad_right(responses, -100)
        logits = model(input_ids=x.to(device), attention_mask=attn.to(device), labels=y.to(device)).logits
        return logits, mask.to(device)


class CausalIO(TextIO):
    """Decoder-only models: chat-templated prompts (when the tokenizer has a template), responses then EOS."""

    causal = True

    def _template(self, text: str) -> list[int]:
        if getattr(self.tok, "chat_template", None):
            return list(self.tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                     tokenize=True, return_dict=True)["input_ids"])
        return list(self.tok(text, add_special_tokens=True).input_ids)

    def prompts(self, texts, max_length):
        out = []
        for text in texts:
            ids = self._template(text)
            over = len(ids) - max_length
            if over > 0:  # shorten the user's text, not the template around it
                content = self.tok(text, add_special_tokens=False).input_ids
                ids = self._template(self.tok.decode(content[: max(0, len(content) - over)]))
                ids = ids[-max_length:]  # a template longer than max_length alone keeps its end (the turn start)
            out.append(ids)
        return out

    def responses(self, texts, max_length):
        return [self.tok(t, add_special_tokens=False).input_ids[: max(0, max_length - 1)] + [self.eos] for t in texts]

    def sample(self, model, prompts, *, do_sample, temperature, max_new_tokens):
        x, mask = pad_left(prompts, self.pad)
        device = next(model.parameters()).device
        out = model.generate(input_ids=x.to(device), attention_mask=mask.long().to(device),
                             **self._generate_kwargs(do_sample, temperature, max_new_tokens))
        return _cut(out[:, x.shape[1]:].cpu(), self.eos)

    def forced_logits(self, model, prompts, responses):
        device = next(model.parameters()).device
        if any(len(p) == 0 for p in prompts):
            raise ValueError("a decoder-only model needs a prompt of at least one token (a BOS or a chat template)")
        seqs = [list(p) + list(r) for p, r in zip(prompts, responses)]
        ids, attn = pad_right(seqs, self.pad)
        logits = model(input_ids=ids.to(device), attention_mask=attn.long().to(device)).logits  # (B, L, V)
        t_max = max(1, max(len(r) for r in responses))
        rows = []
        mask = torch.zeros((len(seqs), t_max), dtype=torch.bool)
        for b, (p, r) in enumerate(zip(prompts, responses)):
            start = len(p) - 1  # the position whose logits predict the first response token
            row = logits[b, start: start + len(r)]
            rows.append(torch.cat([row, row.new_zeros((t_max - len(r), row.shape[-1]))]) if len(r) < t_max else row)
            mask[b, : len(r)] = True
        return torch.stack(rows), mask.to(device)


def text_io(model, tokenizer) -> TextIO:
    """The ``TextIO`` for ``model``'s kind."""
    return CausalIO(tokenizer) if is_causal_lm(model) else Seq2SeqIO(tokenizer)
