"""SpacTor: T5 span corruption (SC) plus ELECTRA-style replaced token detection (RTD).

Reference: Ye et al. 2024, "SpacTor-T5: Pre-training T5 Models with Span Corruption and Replaced
Token Detection" (arXiv 2401.13160); ELECTRA, Clark et al. 2020 (arXiv 2003.10555) and
google-research/electra ``run_pretraining.py`` for the generator / discriminator mechanics.

One hybrid step, on an SC batch (``input_ids`` with sentinels, ``labels`` = SC targets):

1. ``mask_rate`` of the real encoder-input tokens (not pad, EOS, sentinel) are replaced by
   ``<mask>``; a small T5 encoder (the generator) predicts them (MLM loss).
2. Replacements are sampled from ``softmax(logits / sample_temperature)`` without gradient
   (ELECTRA's stop-gradient), using the caller's ``torch.Generator``.
3. The T5 encoder (the discriminator) reads the corrupted input once; ``rtd_head`` labels every real
   token original / replaced (RTD loss). A sampled token equal to the original counts as original.
4. The T5 decoder reconstructs the original SC targets from the same encoder states (SC loss).

``loss = gen_weight * mlm + disc_weight * rtd + sc`` (ELECTRA weights 1 and 50). SpacTor's
curriculum runs this hybrid objective for the first ``tau`` steps and plain SC afterwards
(``curriculum_is_hybrid``); in SC steps the generator and ``rtd_head`` are not run at all.

Randomness: masking and sampling draw only from the explicit ``generator``; dropout inside the
transformers modules still uses torch's global RNG, as in HF.

Run the tests: ``pytest tests/models/test_spactor.py``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import T5Config, T5EncoderModel, T5ForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput


@dataclass(kw_only=True)
class SpacTorConfig:
    """Hyper-parameters of the hybrid objective; the T5 itself is configured by its T5Config."""

    mask_rate: float = 0.15
    """Fraction of real encoder-input tokens (not pad, EOS or sentinel) given to the generator as
    ``<mask>``; per row ``max(1, round(mask_rate * n_real))`` positions (ELECTRA: 0.15)."""
    gen_weight: float = 1.0
    """Weight of the generator's MLM loss (ELECTRA: 1)."""
    disc_weight: float = 50.0
    """Weight of the RTD loss (ELECTRA: 50; BCE per token is small next to a CE over the vocab)."""
    sample_temperature: float = 1.0
    """Replacements are drawn from softmax(logits / sample_temperature) (ELECTRA: 1)."""
    generator_depth_ratio: float = 0.25
    """Generator layers = ceil(ratio * T5 encoder layers). ELECTRA finds generators 1/4 to 1/2 of
    the discriminator's size work best; a too-strong generator makes RTD too hard. 0.25 with width
    1.0 is a quarter of the encoder's matmul cost (T5-base: 3 of 12 layers)."""
    generator_width_ratio: float = 1.0
    """Scales the generator's ``d_ff`` and ``num_heads`` (``d_kv`` kept). ``d_model`` is never
    scaled: the generator reads and predicts through the T5's token embedding, which fixes it."""
    share_embeddings: bool = True
    """The generator uses ``t5.shared`` (the same Parameter) as input embedding and, tied, as MLM
    output layer, as ELECTRA shares embeddings between generator and discriminator. If False the
    generator has its own embedding (still tied to its own MLM output layer)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_rate < 1.0:
            raise ValueError(f"mask_rate={self.mask_rate} must be in (0, 1); ELECTRA uses 0.15.")
        for name in ("gen_weight", "disc_weight"):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0 (defaults 1 and 50).")
        if not self.sample_temperature > 0.0:
            raise ValueError(
                f"sample_temperature={self.sample_temperature} must be > 0; use 1.0 to sample "
                "from the generator's distribution."
            )
        for name in ("generator_depth_ratio", "generator_width_ratio"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(
                    f"{name}={getattr(self, name)} must be in (0, 1]: the generator is a smaller "
                    "copy of the T5 encoder."
                )


PAD_ID, EOS_ID, DECODER_START_ID = 0, 1, 0
"""T5's special ids (SentencePiece: pad 0, EOS 1; the decoder starts from pad), as every tokenizer here has them."""


def t5_config(vocab_size: int, **shape) -> T5Config:
    """The one builder of a T5Config from a shape (``d_model``, ``d_ff``, ``d_kv``, ``num_heads``,
    ``num_layers``, ``num_decoder_layers``, ``feed_forward_proj``, ``dropout_rate``,
    ``tie_word_embeddings``, ...: the pretraining flow's ``T5Shape`` fields) with T5's special ids.

    An unknown shape key is an error (T5Config would silently keep it as an attribute)."""
    known = set(T5Config().to_dict())
    unknown = sorted(set(shape) - known)
    if unknown:
        raise ValueError(f"not T5Config fields: {unknown}")
    return T5Config(vocab_size=vocab_size, pad_token_id=PAD_ID, eos_token_id=EOS_ID,
                    decoder_start_token_id=DECODER_START_ID, **shape)


def generator_t5_config(t5_config: T5Config, config: SpacTorConfig) -> T5Config:
    """The generator's encoder-only T5Config: same ``d_model``/``d_kv``/vocab, fewer layers, and
    ``d_ff``/``num_heads`` scaled by ``generator_width_ratio`` (rounded, at least 1)."""
    g = copy.deepcopy(t5_config)
    # round() first so 0.1 * 30 = 3.0000000000000004 does not ceil to 4.
    g.num_layers = max(1, math.ceil(round(config.generator_depth_ratio * t5_config.num_layers, 6)))
    g.num_decoder_layers = 0
    g.num_heads = max(1, round(config.generator_width_ratio * t5_config.num_heads))
    g.d_ff = max(1, round(config.generator_width_ratio * t5_config.d_ff))
    g.is_decoder = False
    g.is_encoder_decoder = False
    g.use_cache = False
    return g


class TiedLMHead(nn.Module):
    """MLM output layer tied to a token embedding: logits = (h * d_model**-0.5) @ E^T.

    The rescale is T5's for tied embeddings (they are initialised with std 1.0).
    """

    def __init__(self, embedding: nn.Embedding):
        super().__init__()
        self.embedding = embedding

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (..., d) -> (..., V)
        weight = self.embedding.weight
        return F.linear(hidden * weight.shape[1] ** -0.5, weight)


@dataclass
class SpacTorOutput:
    """Losses and metrics of one step, all tensors; hybrid-only fields are None in SC steps."""

    loss: torch.Tensor
    """What to backpropagate: gen_weight * mlm_loss + disc_weight * rtd_loss + sc_loss (hybrid),
    or sc_loss."""
    sc_loss: torch.Tensor
    """Decoder cross-entropy on the original SC targets (mean over non -100 labels)."""
    mlm_loss: torch.Tensor | None = None
    """Generator cross-entropy on the masked positions."""
    rtd_loss: torch.Tensor | None = None
    """Binary cross-entropy of ``rtd_head`` over real positions (not pad, EOS, sentinel)."""
    gen_accuracy: torch.Tensor | None = None
    """Generator argmax == original, over masked positions."""
    rtd_accuracy: torch.Tensor | None = None
    """(rtd_logit > 0) == label, over real positions."""
    replaced_rate: torch.Tensor | None = None
    """Fraction of real positions whose token actually changed (label 1)."""
    mlm_mask: torch.Tensor | None = None
    """(B, S) bool: positions given to the generator as ``<mask>``."""
    corrupted_input_ids: torch.Tensor | None = None
    """(B, S): the encoder's input, ``input_ids`` with the sampled replacements."""
    rtd_labels: torch.Tensor | None = None
    """(B, S) float: 1 where ``corrupted_input_ids != input_ids``."""


class SpacTorModel(nn.Module):
    """A T5ForConditionalGeneration plus the ELECTRA-style generator and RTD head of SpacTor.

    ``t5``: the model being pre-trained (its encoder is the discriminator). ``generator``: a
    ``T5EncoderModel`` built from ``generator_t5_config``; ``mlm_head``: ``TiedLMHead`` on the
    generator's input embedding. ``rtd_head``: ``Linear(d_model, 1)`` on the T5 encoder output.
    Ids ``>= sentinel_start_id`` are sentinels (with HF's T5 tokenizer also the unused rows above
    ``<extra_id_0>``). ``mask_token_id`` must lie below them. EOS is ``t5.config.eos_token_id``.

    Note: with ``share_embeddings`` the same Parameter appears under ``t5.shared``,
    ``generator.shared`` and ``mlm_head.embedding``; ``torch.save`` handles that, safetensors
    needs the duplicates dropped (or save ``t5`` with ``save_pretrained``).
    """

    def __init__(
        self,
        t5: T5ForConditionalGeneration,
        spactor_config: SpacTorConfig,
        *,
        mask_token_id: int,
        sentinel_start_id: int,
        pad_token_id: int = 0,
    ):
        super().__init__()
        t5_config = t5.config
        vocab = t5.get_input_embeddings().num_embeddings
        eos_token_id = t5_config.eos_token_id
        if not isinstance(eos_token_id, int):
            raise ValueError(f"t5.config.eos_token_id={eos_token_id!r} must be one int (T5: 1).")
        if getattr(t5_config, "decoder_start_token_id", None) is None:
            raise ValueError(
                "t5.config.decoder_start_token_id is not set; set it to the pad id (T5: 0) so the "
                "decoder inputs can be built from labels."
            )
        if not 0 < sentinel_start_id <= vocab:
            raise ValueError(
                f"sentinel_start_id={sentinel_start_id} must be in (0, {vocab}] (the embedding "
                "size); pass the id of the lowest sentinel (<extra_id_99>)."
            )
        if not 0 <= mask_token_id < sentinel_start_id:
            raise ValueError(
                f"mask_token_id={mask_token_id} must be below sentinel_start_id="
                f"{sentinel_start_id}; add <mask> to the tokenizer below the sentinels."
            )
        if mask_token_id in (pad_token_id, eos_token_id):
            raise ValueError(
                f"mask_token_id={mask_token_id} collides with pad ({pad_token_id}) or EOS "
                f"({eos_token_id}); use a dedicated <mask> id."
            )
        self.config = spactor_config
        self.mask_token_id = mask_token_id
        self.sentinel_start_id = sentinel_start_id
        self.pad_token_id = pad_token_id
        self.eos_token_id = eos_token_id

        self.t5 = t5
        self.generator = T5EncoderModel(generator_t5_config(t5_config, spactor_config))
        if spactor_config.share_embeddings:
            self.generator.set_input_embeddings(t5.get_input_embeddings())
        self.mlm_head = TiedLMHead(self.generator.get_input_embeddings())
        self.rtd_head = nn.Linear(t5_config.d_model, 1)

        # Ids the generator may never sample: they would change the SC alignment (sentinels) or
        # are not text. The generator still sees them in its input.
        disallowed = torch.zeros(vocab, dtype=torch.bool)
        disallowed[[pad_token_id, eos_token_id, mask_token_id]] = True
        disallowed[sentinel_start_id:] = True
        self.register_buffer("sample_disallowed", disallowed, persistent=False)

    def real_token_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, S) bool: positions that may be masked and are scored by RTD (not pad, EOS,
        sentinel, <mask>). EOS and sentinels are excluded from RTD too: they are never replaced, so
        they would only add trivially-correct "original" labels."""
        return (
            (input_ids != self.pad_token_id)
            & (input_ids != self.eos_token_id)
            & (input_ids != self.mask_token_id)
            & (input_ids < self.sentinel_start_id)
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        *,
        hybrid: bool,
        generator: torch.Generator,
    ) -> SpacTorOutput:
        """``input_ids`` (B, S) SC encoder inputs, ``labels`` (B, T) SC targets (-100 = ignore).

        Pass a ``generator`` on the model's device: sampling draws on ``generator.device``, so a
        CPU generator with a CUDA model copies the masked positions' probabilities to the host.
        """
        attention_mask = input_ids != self.pad_token_id  # (B, S)
        if not hybrid:
            sc_loss = self.t5(
                input_ids=input_ids, attention_mask=attention_mask, labels=labels
            ).loss
            return SpacTorOutput(loss=sc_loss, sc_loss=sc_loss)

        cfg = self.config
        real = self.real_token_mask(input_ids)  # (B, S)
        mlm_mask = choose_mlm_positions(real, cfg.mask_rate, generator=generator)  # (B, S)

        # 1. Generator: MLM on the masked positions only (the LM head is the expensive part).
        gen_input = input_ids.masked_fill(mlm_mask, self.mask_token_id)
        gen_hidden = self.generator(input_ids=gen_input, attention_mask=attention_mask)[0]
        # gen_hidden: (B, S, d); the LM head runs on the (M, d) masked rows only.
        mlm_logits = self.mlm_head(gen_hidden[mlm_mask]).float()  # (M, V)
        mlm_targets = input_ids[mlm_mask]  # (M,)
        num_masked = max(mlm_targets.shape[0], 1)
        mlm_loss = F.cross_entropy(mlm_logits, mlm_targets, reduction="sum") / num_masked

        # 2. Sample replacements; no gradient flows from the discriminator into the generator.
        with torch.no_grad():
            sampled = sample_replacements(
                mlm_logits,
                temperature=cfg.sample_temperature,
                disallowed=self.sample_disallowed,
                generator=generator,
            )
            corrupted = input_ids.masked_scatter(mlm_mask, sampled.to(input_ids.dtype))
            rtd_labels = replaced_token_labels(input_ids, corrupted, real)  # (B, S) float

        # 3. Discriminator: the T5 encoder runs once, on the corrupted input.
        encoder_hidden = self.t5.encoder(input_ids=corrupted, attention_mask=attention_mask)[0]
        rtd_logits = self.rtd_head(encoder_hidden).squeeze(-1).float()  # (B, S)
        real_f = real.float()
        num_real = real_f.sum().clamp(min=1.0)
        rtd_loss = (
            F.binary_cross_entropy_with_logits(rtd_logits, rtd_labels, reduction="none") * real_f
        ).sum() / num_real

        # 4. Decoder: reconstruct the original SC targets from the same encoder states.
        sc_loss = self.t5(
            encoder_outputs=BaseModelOutput(last_hidden_state=encoder_hidden),
            attention_mask=attention_mask,
            labels=labels,
        ).loss

        loss = cfg.gen_weight * mlm_loss + cfg.disc_weight * rtd_loss + sc_loss
        with torch.no_grad():
            gen_accuracy = (mlm_logits.argmax(-1) == mlm_targets).float().sum() / num_masked
            rtd_correct = ((rtd_logits > 0).float() == rtd_labels).float() * real_f
            rtd_accuracy = rtd_correct.sum() / num_real
            replaced_rate = rtd_labels.sum() / num_real
        return SpacTorOutput(
            loss=loss,
            sc_loss=sc_loss,
            mlm_loss=mlm_loss,
            rtd_loss=rtd_loss,
            gen_accuracy=gen_accuracy,
            rtd_accuracy=rtd_accuracy,
            replaced_rate=replaced_rate,
            mlm_mask=mlm_mask,
            corrupted_input_ids=corrupted,
            rtd_labels=rtd_labels,
        )


def choose_mlm_positions(
    candidates: torch.Tensor, mask_rate: float, *, generator: torch.Generator
) -> torch.Tensor:
    """(B, S) bool: per row, ``max(1, round(mask_rate * n))`` of the row's ``n`` candidate
    positions, uniformly without replacement (none if ``n == 0``)."""
    n = candidates.sum(dim=1)  # (B,)
    k = torch.where(n > 0, torch.round(n * mask_rate).clamp(min=1), torch.zeros_like(n))
    scores = torch.rand(candidates.shape, generator=generator, device=generator.device)
    scores = scores.to(candidates.device).masked_fill(~candidates, 2.0)  # non-candidates last
    rank = scores.argsort(dim=1).argsort(dim=1)  # (B, S) rank of each position in its row
    return (rank < k.unsqueeze(1)) & candidates


def sample_replacements(
    logits: torch.Tensor,
    *,
    temperature: float,
    disallowed: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """(M, V) logits -> (M,) ids drawn from softmax(logits / temperature) over allowed ids."""
    logits = (logits / temperature).masked_fill(disallowed, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if probs.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=logits.device)
    return torch.multinomial(probs.to(generator.device), 1, generator=generator).squeeze(1).to(
        logits.device
    )


def replaced_token_labels(
    original: torch.Tensor, corrupted: torch.Tensor, real: torch.Tensor
) -> torch.Tensor:
    """ELECTRA's RTD labels: 1.0 where the token changed, else 0.0 (a sample equal to the original
    is "original"); positions outside ``real`` are always 0."""
    return ((corrupted != original) & real).float()


def sc_rtd_gradient_cosine(
    model: SpacTorModel,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    *,
    generator: torch.Generator,
) -> torch.Tensor:
    """Cosine between d(sc_loss) and d(rtd_loss) w.r.t. the T5 encoder's own parameters.

    Runs one hybrid forward and two ``torch.autograd.grad`` calls, so ``.grad`` is untouched.
    "Own" = the encoder blocks and final layer norm; the token embedding is left out because it is
    also the decoder's input embedding (and, tied, its LM head), so its SC gradient is mostly
    decoder-side. A negative value means the two objectives pull the encoder apart (the SpacTor
    paper's motivation for stopping RTD after ``tau`` steps). Returns a detached scalar in [-1, 1].
    """
    out = model(input_ids, labels, hybrid=True, generator=generator)
    embedding = model.t5.get_input_embeddings().weight
    params = [
        p for p in model.t5.encoder.parameters() if p.requires_grad and p is not embedding
    ]
    g_sc = torch.autograd.grad(out.sc_loss, params, retain_graph=True, allow_unused=True)
    g_rtd = torch.autograd.grad(out.rtd_loss, params, allow_unused=True)

    def flat(grads):
        return torch.cat(
            [
                (torch.zeros_like(p) if g is None else g).reshape(-1).float()
                for g, p in zip(grads, params)
            ]
        )

    return F.cosine_similarity(flat(g_sc), flat(g_rtd), dim=0, eps=1e-12).detach()


def curriculum_is_hybrid(step: int, tau: int) -> bool:
    """SpacTor's two-stage curriculum: the hybrid objective for steps [0, tau), SC afterwards."""
    if step < 0 or tau < 0:
        raise ValueError(f"step={step} and tau={tau} must be >= 0 (tau=0 means SC only).")
    return step < tau
