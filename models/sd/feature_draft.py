"""A feature-level draft for a decoder-only target (EAGLE, Li et al. 2024, arXiv 2401.15077): the draft reads the
target's last hidden states, not only its tokens.

At position ``i`` the target's final (normed) hidden state ``f_i`` is what its LM head turns into the distribution
of token ``i + 1``. The draft takes the pair ``(f_i, x_{i+1})`` (the feature and the token that was then chosen),
mixes them (``fc`` over their concatenation, the token through the target's own embeddings), runs ``layers``
Llama decoder layers with causal attention over the earlier pairs, and predicts ``f_{i+1}``; the target's LM head
(or a frequent-token head over its rows, FR-Spec) turns that into the draft's distribution of token ``i + 2``.
Drafting further, the draft feeds its own predicted feature with the token it drafted. The draft never replaces
the target's features where the target has computed them: after each verification the accepted positions are
re-read with the target's true features (``FeatureDrafter.update``).

Why it is the draft that can pay on a CPU: the next token is mostly decided by the target's own feature, which a
single small layer only has to carry one step forward; a stand-alone draft has to rebuild it from tokens through
many layers (a 2-layer copy of SmolLM2 agreed with it 3-11% of the time, docs/results.md). Its cost is one layer
and the head.

``FeatureTap`` records the target's features during every target call (a forward hook on its decoder stack, so the
target runs unchanged: full or int8 weights, dynamic or static cache); ``FeatureDrafter`` is the batch-1 drafter
of ``models.speculative``'s draft / verify / commit loop. SD with it stays exact: verification is the target's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from models.sd.drafts import FrequentHead
from models.sd.verify import draft_token

__all__ = ["CONFIG_NAME", "FeatureDraft", "FeatureDrafter", "FeatureTap", "feature_draft_config", "feature_draft_loss",
           "is_feature_draft", "is_feature_draft_folder", "load_feature_draft", "make_feature_draft",
           "save_feature_draft"]

#: the file that marks a folder as a feature draft (beside ``model.safetensors``)
CONFIG_NAME = "feature_draft.json"


class FeatureDraft(nn.Module):
    """``(features (B, T, d), input_ids (B, T)) -> (predicted features (B, T, d), logits (B, T, V))``.

    ``config`` is a ``LlamaConfig`` of the target's width with ``num_hidden_layers`` = the draft's layers and
    ``vocab_size`` = the target's (what ``models.speculative`` checks a draft against); ``head_token_ids`` (or
    None: every token) are the rows of the target's head the draft scores."""

    def __init__(self, config, head_token_ids: Sequence[int] | None = None):
        super().__init__()
        from transformers import LlamaConfig, LlamaModel

        self.config = config
        d, vocab = config.hidden_size, config.vocab_size
        self.embed = nn.Embedding(vocab, d)
        self.fc = nn.Linear(2 * d, d)
        body = LlamaConfig(**{**config.to_dict(), "vocab_size": 1, "pad_token_id": None, "bos_token_id": None,
                              "eos_token_id": None, "tie_word_embeddings": False})
        self.body = LlamaModel(body)  # its layers, rotary embedding and final norm; tokens come as inputs_embeds
        self.head = (FrequentHead(d, list(head_token_ids), vocab) if head_token_ids is not None
                     else nn.Linear(d, vocab, bias=False))
        self.head_token_ids = None if head_token_ids is None else [int(t) for t in head_token_ids]
        for p in (*self.embed.parameters(), *self.head.parameters()):
            p.requires_grad_(False)  # the target's: the draft learns to use them, not to change them

    def forward(self, features: torch.Tensor, input_ids: torch.Tensor, cache=None,
                position_ids: torch.Tensor | None = None, *,
                compact: bool = False) -> tuple[torch.Tensor, torch.Tensor, object]:
        """``compact``: logits over the head's own tokens only (``head_logits``), as training scores them; else
        over the whole vocabulary (tokens outside a frequent-token head at ``OUTSIDE_LOGIT``), as SD reads them."""
        x = self.fc(torch.cat([features.to(self.fc.weight.dtype), self.embed(input_ids)], dim=-1))
        out = self.body(inputs_embeds=x, cache=cache, position_ids=position_ids, use_cache=cache is not None)
        pred = out.last_hidden_state
        return pred, (self.head_logits(pred) if compact else self.head(pred)), out.cache

    def head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The head's logits over its own tokens: the frequent ones (K of them) or the whole vocabulary."""
        return self.head.compact(hidden) if isinstance(self.head, FrequentHead) else self.head(hidden)

    def new_cache(self):
        from transformers.cache_utils import DynamicCache

        return DynamicCache(config=self.body.config)


def is_feature_draft(model: object) -> bool:
    return isinstance(model, FeatureDraft)


def make_feature_draft(target: nn.Module, *, layers: int = 1, head_token_ids: Sequence[int] | None = None,
                       generator: torch.Generator) -> FeatureDraft:
    """A feature draft for ``target`` (a Llama-like ``*ForCausalLM``): its embeddings and head rows copied and
    frozen, its final norm's weight as the draft's, ``layers`` fresh decoder layers of the target's shape and a
    fresh ``fc``, drawn from ``generator`` (normal, std ``initializer_range``)."""
    from transformers import LlamaConfig

    tc = target.config
    keep = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
            "rms_norm_eps", "rope_theta", "rope_parameters", "rope_scaling", "max_position_embeddings",
            "attention_bias", "mlp_bias", "hidden_act", "initializer_range")
    cfg = LlamaConfig(**{k: getattr(tc, k) for k in keep if getattr(tc, k, None) is not None},
                      num_hidden_layers=layers, vocab_size=int(target.get_output_embeddings().weight.shape[0]))
    draft = FeatureDraft(cfg, head_token_ids)
    std = float(getattr(cfg, "initializer_range", 0.02))
    with torch.no_grad():
        for name, p in draft.named_parameters():
            if not p.requires_grad:
                continue
            if name.endswith("norm.weight") or "layernorm" in name:
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=generator) * std)
        draft.embed.weight.copy_(target.get_input_embeddings().weight)
        head = target.get_output_embeddings().weight
        draft.head.weight.copy_(head if head_token_ids is None else head[list(head_token_ids)])
        norm = getattr(target.get_decoder(), "norm", None)
        if norm is not None and getattr(norm, "weight", None) is not None:
            draft.body.norm.weight.copy_(norm.weight)
    return draft


def feature_draft_loss(pred: torch.Tensor, logits: torch.Tensor, next_features: torch.Tensor,
                       head: Callable[[torch.Tensor], torch.Tensor], mask: torch.Tensor, *,
                       feature_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """EAGLE's objective over the positions ``mask`` selects: smooth-L1 between the predicted and the target's
    next features (``feature_weight``), plus the cross-entropy of the draft's distribution against the target's
    (the target's next feature through the same ``head``, so the two distributions cover the same tokens: with a
    frequent-token head, the target's distribution renormalised over those tokens).
    Returns ``{"loss", "feature", "kl"}`` (``kl``: the cross-entropy less the target's entropy)."""
    m = mask.bool()
    with torch.no_grad():
        p_logp = torch.log_softmax(head(next_features[m]).float(), dim=-1)
        p = p_logp.exp()
    q_logp = torch.log_softmax(logits[m].float(), dim=-1)
    ce = -(p * q_logp).sum(-1).mean()
    entropy = -(p * p_logp).sum(-1).mean()
    feat = nn.functional.smooth_l1_loss(pred[m].float(), next_features[m].float())
    return {"loss": feature_weight * feat + ce, "feature": feat.detach(), "kl": (ce - entropy).detach()}


def save_feature_draft(draft: FeatureDraft, folder: str | Path, tokenizer=None) -> Path:
    """``feature_draft.json`` (the Llama config and head rows) and ``model.safetensors`` in ``folder``, and the
    target's ``tokenizer`` when given (what the SD benchmark checks a draft's vocabulary against)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    (folder / CONFIG_NAME).write_text(json.dumps({"llama": draft.config.to_dict(),
                                                  "head_token_ids": draft.head_token_ids}))
    save_file({k: v.contiguous() for k, v in draft.state_dict().items()}, str(folder / "model.safetensors"))
    return folder


def is_feature_draft_folder(folder: str | Path) -> bool:
    return (Path(folder) / CONFIG_NAME).is_file()


def feature_draft_config(folder: str | Path):
    """The draft's ``LlamaConfig`` (its width, layers and the target's vocabulary size), without the weights."""
    from transformers import LlamaConfig

    return LlamaConfig(**json.loads((Path(folder) / CONFIG_NAME).read_text())["llama"])


def load_feature_draft(folder: str | Path) -> FeatureDraft:
    from safetensors.torch import load_file
    from transformers import LlamaConfig

    folder = Path(folder)
    if not is_feature_draft_folder(folder):
        raise ValueError(f"{folder} is not a feature draft: it has no {CONFIG_NAME}")
    meta = json.loads((folder / CONFIG_NAME).read_text())
    draft = FeatureDraft(LlamaConfig(**meta["llama"]), meta["head_token_ids"])
    draft.load_state_dict(load_file(str(folder / "model.safetensors")))
    return draft.eval()


class FeatureTap:
    """Records ``last``: the target's final hidden states (1, k, d) of its latest call, through a forward hook on
    its decoder stack. A context manager: the hook is removed on exit."""

    def __init__(self, target: nn.Module):
        self.last: torch.Tensor | None = None
        self._handle = target.get_decoder().register_forward_hook(self._record)

    def _record(self, module, args, output) -> None:
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        self.last = hidden.detach()

    def __enter__(self) -> "FeatureTap":
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


class FeatureDrafter:
    """Batch-1 drafter over a :class:`FeatureDraft` (the ``Drafter`` protocol of ``models.speculative``).

    Its cache holds the pairs (true target feature, next committed token) it has read; ``pending`` holds the
    pairs the target has produced since, which the next ``propose`` reads in one call before drafting. Drafting
    then feeds (predicted feature, drafted token) pairs, which ``update`` crops away again. Build it right after
    the target's prompt prefill (``tap.last`` then holds the prompt's features)."""

    def __init__(self, draft: FeatureDraft, tap: FeatureTap, prompt: Sequence[int], *, do_sample: bool,
                 warp: Callable[[torch.Tensor], torch.Tensor], eos: frozenset[int],
                 generator: torch.Generator | None):
        self.draft, self.tap, self.do_sample, self.warp, self.eos = draft, tap, do_sample, warp, eos
        self.generator = generator
        self.calls = 0
        self.cache = draft.new_cache()
        d = draft.config.hidden_size
        device = draft.fc.weight.device
        prompt = [int(t) for t in prompt]
        if len(prompt) > 1 and tap.last is not None:  # (f_i, x_{i+1}) over the prefilled prompt
            self.pending_f = [tap.last[0, : len(prompt) - 1]]
            self.pending_x = prompt[1:]
        else:  # a one-token prompt: no feature yet, a zero one stands in
            self.pending_f = [torch.zeros((1, d), device=device)]
            self.pending_x = prompt[-1:]
        self.spec = 0  # positions of predicted features in the cache (cropped by update)

    def _step(self, feats: torch.Tensor, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.cache.get_seq_length()
        pos = torch.arange(start, start + len(ids), device=feats.device)[None]
        x = torch.tensor([ids], dtype=torch.long, device=feats.device)
        pred, logits, self.cache = self.draft(feats[None], x, cache=self.cache, position_ids=pos)
        self.calls += 1
        return pred[0, -1], logits[0, -1]

    def propose(self, tokens: list[list[int]], n: int):
        drafted: list[int] = []
        q_rows: list[torch.Tensor] = []
        self.spec = 0
        if n > 0:
            feat, logits = self._step(torch.cat(self.pending_f), self.pending_x)
            self.pending_f, self.pending_x = [], []
            for k in range(n):
                if k:
                    feat, logits = self._step(feat[None], [drafted[-1]])
                    self.spec += 1
                token, q_row = draft_token(logits, do_sample=self.do_sample, warp=self.warp,
                                           generator=self.generator)
                if q_row is not None:
                    q_rows.append(q_row)
                drafted.append(token)
                if token in self.eos:
                    break
        q = torch.stack(q_rows)[None] if self.do_sample and q_rows else None
        return [drafted], q

    def update(self, keep: list[int], accepted: list[int], tokens: list[list[int]]) -> None:
        # The target just scored the last committed token and the drafts: its features of the accepted prefix
        # and of the token before it pair with the tokens committed after them.
        m = accepted[0]
        if self.spec:
            self.cache.crop(-self.spec)  # transformers 5: a negative argument removes that many positions
            self.spec = 0  # a round that another drafter drafted (models.sd.lookup) must not crop again
        self.pending_f.append(self.tap.last[0, : m + 1])
        self.pending_x.extend(tokens[0][-(m + 1):])
