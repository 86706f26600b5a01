"""A draft for a decoder-only target: a small Llama that shares the target's tokenizer (its vocabulary, pad, EOS,
BOS and chat template are the target's), built here rather than downloaded.

Two initialisations (DistillSpec, Zhou et al. 2023, distils drafts that start from a pretrained small model; with
one pretrained model at hand the draft can start from the target's own weights):

* ``init="target"``: the target's token embeddings, its first ``layers`` decoder layers, its final norm and its
  LM head, copied (the layer-skipping draft that self-speculative decoding uses, Zhang et al. 2023); the draft
  then has the target's width. Without training it already predicts some of the target's tokens;
* ``init="fresh"``: the same architecture at any width, randomly initialised from ``generator`` (it knows
  nothing yet; distillation is all it learns).

Its cost per token is its layers plus the LM head: with a vocabulary of 49,152 and d_model 576 the head alone is
28M multiply-adds, more than a SmolLM2 layer's 3.5M by far, which is why the width and the head decide what a
draft costs (``head_share``). ``head_tokens`` gives the draft a head over those token ids only (FR-Spec, Zhao et
al. 2025, arXiv 2502.14856: the most frequent tokens, ``frequent_token_ids``): :class:`FrequentHeadLlama` scores
them and gives every other token the logit ``OUTSIDE_LOGIT`` (probability 0 after the softmax), so the draft
never proposes them. SD stays exact, because verification uses the target's full distribution; only the
acceptance rate can drop, on the tokens the head leaves out. Such a draft loads with :func:`load_causal`.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterable, Sequence

import torch
from torch import nn

__all__ = ["INITS", "OUTSIDE_LOGIT", "FrequentHead", "FrequentHeadLlama", "frequent_token_ids", "head_share",
           "load_causal", "make_causal_draft", "task_frequent_token_ids"]

INITS = ("target", "fresh")
#: the logit of a token a frequent-token head leaves out: exp(-1e4) is 0 in fp32 and bf16, and unlike -inf it keeps
#: a divergence against a teacher that gives such a token mass finite (its gradient then only renormalises q)
OUTSIDE_LOGIT = -1e4


class FrequentHead(nn.Module):
    """An LM head over ``token_ids`` only, laid out over the whole vocabulary: ``(..., d) -> (..., vocab)`` with
    ``OUTSIDE_LOGIT`` for every other token. Its cost is ``len(token_ids) * d`` multiply-adds per position."""

    def __init__(self, hidden_size: int, token_ids: Sequence[int], vocab_size: int):
        super().__init__()
        self.vocab_size = int(vocab_size)
        self.weight = nn.Parameter(torch.zeros(len(token_ids), hidden_size))
        self.register_buffer("token_ids", torch.as_tensor(list(token_ids), dtype=torch.long))

    def compact(self, hidden: torch.Tensor) -> torch.Tensor:
        """The logits of ``token_ids`` only, (..., K): what training needs, without the vocabulary-wide layout."""
        return nn.functional.linear(hidden, self.weight)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        small = self.compact(hidden)  # (..., K)
        out = small.new_full((*small.shape[:-1], self.vocab_size), OUTSIDE_LOGIT)
        return out.index_copy_(out.ndim - 1, self.token_ids, small)


def _frequent_head_llama():
    from transformers import LlamaForCausalLM

    class FrequentHeadLlama(LlamaForCausalLM):
        """A Llama whose LM head is a :class:`FrequentHead` over ``config.head_token_ids`` (untied)."""

        def __init__(self, config):
            config.tie_word_embeddings = False
            super().__init__(config)
            self.lm_head = FrequentHead(config.hidden_size, config.head_token_ids, config.vocab_size)
            nn.init.normal_(self.lm_head.weight, std=getattr(config, "initializer_range", 0.02))

    return FrequentHeadLlama


FrequentHeadLlama = _frequent_head_llama()


def frequent_token_ids(tokenizer, texts: Iterable[str], k: int, *, always: Iterable[int] = ()) -> list[int]:
    """The ``k`` token ids most frequent in ``texts`` (ties by lower id), the ids in ``always`` (EOS, pad...) among
    them; sorted. Raises when ``k`` is below ``len(always)`` or above the vocabulary."""
    always = sorted({int(t) for t in always if t is not None})
    if not len(always) <= k <= len(tokenizer):
        raise ValueError(f"k={k} must be between the {len(always)} ids always kept and the vocabulary ({len(tokenizer)})")
    counts: Counter[int] = Counter()
    for text in texts:
        counts.update(tokenizer(text, add_special_tokens=False).input_ids)
    keep = set(always)
    for tok, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(keep) >= k:
            break
        keep.add(tok)
    for tok in range(len(tokenizer)):  # fewer distinct tokens than k in the texts: fill with the lowest ids
        if len(keep) >= k:
            break
        keep.add(tok)
    return sorted(keep)


def task_frequent_token_ids(tokenizer, split, k: int) -> list[int]:
    """:func:`frequent_token_ids` over a task split's texts (its ``input`` and ``target`` columns), the
    tokenizer's EOS, pad and BOS ids always among them: the head rows an FR-Spec draft keeps for that task."""
    return frequent_token_ids(tokenizer, list(split["input"]) + list(split["target"]), k,
                              always=[tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id])


def load_causal(folder, **kwargs) -> nn.Module:
    """A decoder-only model from a ``save_pretrained`` folder: a :class:`FrequentHeadLlama` when its config names
    ``head_token_ids``, otherwise what ``AutoModelForCausalLM`` loads. ``kwargs`` go to ``from_pretrained``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    cls = FrequentHeadLlama if getattr(config, "head_token_ids", None) else AutoModelForCausalLM
    return cls.from_pretrained(folder, **kwargs)


def _llama_parts(model: nn.Module):
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "embed_tokens"):
        raise ValueError(f"{type(model).__name__} is not a Llama-style decoder-only model (model.layers, "
                         "model.embed_tokens): make_causal_draft builds Llama drafts")
    return inner


def make_causal_draft(target: nn.Module, *, layers: int, init: str = "target", hidden_size: int | None = None,
                      intermediate_size: int | None = None, num_attention_heads: int | None = None,
                      num_key_value_heads: int | None = None, generator: torch.Generator | None = None,
                      head_tokens: Sequence[int] | None = None) -> nn.Module:
    """A ``LlamaForCausalLM`` draft of ``layers`` decoder layers for ``target`` (see the module docstring).

    ``init="target"`` copies the target's weights and keeps its width (the size arguments must be left unset or
    equal the target's); ``init="fresh"`` takes the size arguments (default: the target's) and draws the weights
    from ``generator`` (required). The draft is in eval mode, fp32, with the target's token ids and rope."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if init not in INITS:
        raise ValueError(f"init={init!r} must be one of {INITS}")
    inner = _llama_parts(target)
    tc = target.config
    if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= tc.num_hidden_layers:
        raise ValueError(f"layers={layers!r} must be an int in [1, {tc.num_hidden_layers}] (the target's layers)")
    sizes = {"hidden_size": hidden_size, "intermediate_size": intermediate_size,
             "num_attention_heads": num_attention_heads, "num_key_value_heads": num_key_value_heads}
    if init == "target":
        changed = {k: v for k, v in sizes.items() if v is not None and v != getattr(tc, k)}
        if changed:
            raise ValueError(f"init='target' copies the target's layers, so the draft has its sizes; {changed} "
                             "differ (use init='fresh' for another width)")
    elif generator is None:
        raise ValueError("init='fresh' draws random weights: pass generator=torch.Generator().manual_seed(...)")
    config = LlamaConfig(**{**tc.to_dict(), **{k: v for k, v in sizes.items() if v is not None},
                            "num_hidden_layers": layers, "architectures": ["LlamaForCausalLM"],
                            "model_type": "llama"})
    cls = LlamaForCausalLM
    if head_tokens is not None:
        ids = sorted({int(t) for t in head_tokens})
        if not ids or ids[0] < 0 or ids[-1] >= tc.vocab_size:
            raise ValueError(f"head_tokens must be ids in [0, {tc.vocab_size}), got {len(ids)} ids")
        config.head_token_ids, config.architectures, cls = ids, ["FrequentHeadLlama"], FrequentHeadLlama
    if config.hidden_size % config.num_attention_heads or config.num_attention_heads % config.num_key_value_heads:
        raise ValueError(f"hidden_size {config.hidden_size} must be divisible by num_attention_heads "
                         f"{config.num_attention_heads}, and that by num_key_value_heads {config.num_key_value_heads}")
    if init == "fresh":
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            draft = cls(config)
        return draft.float().eval()
    draft = cls(config)
    d = draft.model
    with torch.no_grad():
        d.embed_tokens.weight.copy_(inner.embed_tokens.weight)
        d.layers = nn.ModuleList(copy.deepcopy(inner.layers[i]) for i in range(layers))
        d.norm.load_state_dict(inner.norm.state_dict())
        head = target.get_output_embeddings().weight
        if head_tokens is not None:
            draft.lm_head.weight.copy_(head[draft.lm_head.token_ids])
        elif not config.tie_word_embeddings:
            draft.lm_head.weight.copy_(head)
    if head_tokens is None:
        draft.tie_weights()
    return draft.float().eval()


def head_share(model: nn.Module) -> float:
    """The LM head's share of the model's multiply-adds per token (embeddings are a lookup, not counted)."""
    head = model.get_output_embeddings().weight.numel()
    inner = _llama_parts(model)
    body = sum(p.numel() for name, p in inner.named_parameters() if p.ndim == 2 and "embed_tokens" not in name)
    return head / (head + body)
