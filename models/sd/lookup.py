"""Prompt-lookup drafting in the SD engine, alone or before a feature draft (a hybrid draft).

Prompt-lookup decoding (Saxena, 2023; ``prompt_lookup_num_tokens`` in transformers) drafts with no model: the
sequence's last n tokens (n = ``max_ngram`` down to ``min_ngram``) are looked up among its earlier tokens, and the
tokens that followed the latest earlier occurrence are the draft. Summaries, answers and edits copy from their
prompt, so the draft is often right, and it costs no model call. Where nothing matches, transformers takes a plain
target step; :class:`PromptLookupDraft` can instead hand that round to a ``fallback``: a feature draft
(``models.sd.feature_draft``), which then drafts what cannot be copied. Verification is the engine's, so SD stays
exact either way (greedy equals the target's greedy decoding; sampling follows the target: a copied token's
draft distribution is a point mass).

    draft = PromptLookupDraft(vocab_size=target.config.vocab_size, max_ngram=3, fallback=feature_draft)
    out = speculative_generate(target, draft, input_ids, gamma=4, max_new_tokens=64)
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

import torch
from torch import nn

from models.sd.feature_draft import FeatureDraft

__all__ = ["LookupDrafter", "PromptLookupDraft", "is_prompt_lookup", "lookup_continuation"]


class PromptLookupDraft(nn.Module):
    """A draft that copies continuations from the sequence itself (prompt-lookup decoding), for a decoder-only
    target of ``vocab_size`` tokens; ``fallback`` (a :class:`FeatureDraft` or None) drafts the rounds where no
    n-gram of ``min_ngram``..``max_ngram`` tokens matches (None: those rounds are plain target steps). An
    ``nn.Module`` so that the fallback's weights move with it (``.to``, ``.eval``)."""

    def __init__(self, vocab_size: int, *, max_ngram: int = 3, min_ngram: int = 1,
                 fallback: FeatureDraft | None = None):
        super().__init__()
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram ({min_ngram}) <= max_ngram ({max_ngram})")
        if fallback is not None and not isinstance(fallback, FeatureDraft):
            raise ValueError("the fallback of a prompt-lookup draft is a feature draft (models.sd.feature_draft) "
                             f"or None, not {type(fallback).__name__}")
        if fallback is not None and fallback.config.vocab_size != vocab_size:
            raise ValueError(f"the fallback's vocabulary ({fallback.config.vocab_size}) is not {vocab_size}")
        self.max_ngram, self.min_ngram, self.fallback = max_ngram, min_ngram, fallback
        # what models.speculative checks a draft against: a decoder-only model of the target's vocabulary
        self.config = SimpleNamespace(vocab_size=vocab_size, is_encoder_decoder=False)


def is_prompt_lookup(model: object) -> bool:
    return isinstance(model, PromptLookupDraft)


def lookup_continuation(seq: Sequence[int], n: int, *, max_ngram: int, min_ngram: int = 1,
                        eos: frozenset[int] = frozenset()) -> list[int]:
    """Up to ``n`` tokens that followed the latest earlier occurrence of ``seq``'s last k tokens, for the largest
    k in ``max_ngram``..``min_ngram`` that occurs with a continuation; cut after an EOS; [] when none does."""
    if n < 1:
        return []
    seq = list(seq)
    for k in range(min(max_ngram, len(seq) - 1), min_ngram - 1, -1):
        tail = seq[-k:]
        for i in range(len(seq) - k - 1, -1, -1):  # latest first; i + k < len(seq): a continuation exists
            if seq[i:i + k] == tail:
                out = seq[i + k:i + k + n]
                cut = next((j + 1 for j, t in enumerate(out) if t in eos), len(out))
                return out[:cut]
    return []


class LookupDrafter:
    """Batch-1 drafter of a :class:`PromptLookupDraft` (the ``Drafter`` protocol of ``models.speculative``): a
    copied continuation when one matches, else the fallback drafter's block (or none: a plain target step).
    The fallback drafter sees every update, so its cache and pending target features stay in step with the
    committed tokens whichever drafted the round."""

    def __init__(self, draft: PromptLookupDraft, fallback, prompt: Sequence[int], *, do_sample: bool,
                 eos: frozenset[int], device: torch.device):
        self.draft, self.fallback, self.do_sample, self.eos, self.device = draft, fallback, do_sample, eos, device
        # the engine's rows start with the prompt's last token (its cache holds the rest): looked up with the rest
        self.prefix = [int(t) for t in prompt[:-1]]
        self.rounds: list[list] = []  # per round: [who drafted ("lookup", "fallback" or "none"), drafted, accepted]

    @property
    def calls(self) -> int:
        return self.fallback.calls if self.fallback is not None else 0

    def propose(self, tokens: list[list[int]], n: int):
        found = lookup_continuation(self.prefix + tokens[0], n, max_ngram=self.draft.max_ngram,
                                    min_ngram=self.draft.min_ngram, eos=self.eos)
        if found or self.fallback is None or n < 1:
            self.rounds.append(["lookup" if found else "none", len(found), 0])
            if not self.do_sample or not found:
                return [found], None
            q = torch.nn.functional.one_hot(torch.tensor(found, device=self.device),
                                            self.draft.config.vocab_size).float()
            return [found], q[None]
        drafted, q = self.fallback.propose(tokens, n)
        self.rounds.append(["fallback", len(drafted[0]), 0])
        return drafted, q

    def update(self, keep: list[int], accepted: list[int], tokens: list[list[int]]) -> None:
        self.rounds[-1][2] = accepted[0]
        if self.fallback is not None:
            self.fallback.update(keep, accepted, tokens)
