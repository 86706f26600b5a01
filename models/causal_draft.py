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
draft costs (``head_share``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["INITS", "make_causal_draft", "head_share"]

INITS = ("target", "fresh")


def _llama_parts(model: nn.Module):
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "embed_tokens"):
        raise ValueError(f"{type(model).__name__} is not a Llama-style decoder-only model (model.layers, "
                         "model.embed_tokens): make_causal_draft builds Llama drafts")
    return inner


def make_causal_draft(target: nn.Module, *, layers: int, init: str = "target", hidden_size: int | None = None,
                      intermediate_size: int | None = None, num_attention_heads: int | None = None,
                      num_key_value_heads: int | None = None, generator: torch.Generator | None = None) -> nn.Module:
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
    if config.hidden_size % config.num_attention_heads or config.num_attention_heads % config.num_key_value_heads:
        raise ValueError(f"hidden_size {config.hidden_size} must be divisible by num_attention_heads "
                         f"{config.num_attention_heads}, and that by num_key_value_heads {config.num_key_value_heads}")
    if init == "fresh":
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            draft = LlamaForCausalLM(config)
        return draft.float().eval()
    draft = LlamaForCausalLM(config)
    d = draft.model
    with torch.no_grad():
        d.embed_tokens.weight.copy_(inner.embed_tokens.weight)
        d.layers = nn.ModuleList(copy.deepcopy(inner.layers[i]) for i in range(layers))
        d.norm.load_state_dict(inner.norm.state_dict())
        if not config.tie_word_embeddings:
            draft.lm_head.weight.copy_(target.get_output_embeddings().weight)
    draft.tie_weights()
    return draft.float().eval()


def head_share(model: nn.Module) -> float:
    """The LM head's share of the model's multiply-adds per token (embeddings are a lookup, not counted)."""
    head = model.get_output_embeddings().weight.numel()
    inner = _llama_parts(model)
    body = sum(p.numel() for name, p in inner.named_parameters() if p.ndim == 2 and "embed_tokens" not in name)
    return head / (head + body)
