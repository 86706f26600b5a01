"""FLOP accounting for T5 span corruption and SpacTor steps, per component.

Convention (one, stated once, as in google-research/electra ``flops_computation.py``):

* A multiply-accumulate (MAC) is 2 FLOPs; forward FLOPs = 2 x MACs of the matmuls.
* A training step (forward + backward) is 3 x forward (backward = 2 x forward).
* Counted matmuls: attention projections q, k, v, o; attention scores (q k^T) and the weighted sum
  of values, with the full (unmasked) score matrix, the decoder's causal one included; cross-
  attention k/v projections over the encoder length; the FFN (two matrices, three for gated
  activations, ``config.is_gated_act``, as in T5 v1.1); LM heads; the RTD head.
* Ignored: layer norms, softmax, activations, residual adds, dropout, relative position bias,
  embedding lookups, the loss, and SpacTor's sampling (a multinomial draw, no matmul).
* SpacTor's generator is a full training participant: its encoder stack and MLM head count
  forward + backward (3x). Its LM head runs only on the masked positions, ``max(1, round(mask_rate *
  inputs_length))`` per sequence (an upper bound: padding, EOS and sentinels are never masked).
  Sampling reuses that forward's logits, so it adds nothing.

Numbers are exact Python ints. Example::

    spactor_step_flops(t5_config, gen_config, batch_size=256, inputs_length=512,
                       targets_length=114, hybrid=True).total

Run the tests: ``pytest tests/models/test_flops.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

FLOPS_PER_MAC = 2
TRAIN_MULTIPLIER = 3  # forward + backward = 3 x forward


@dataclass(frozen=True)
class StepFlops:
    """Training FLOPs (forward + backward) of one optimizer step, by component."""

    encoder: int = 0
    decoder: int = 0
    lm_head: int = 0
    generator: int = 0
    generator_lm_head: int = 0
    rtd_head: int = 0

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))


def _inner(config) -> int:
    return config.num_heads * config.d_kv


def _ffn_macs(config, tokens: int) -> int:
    matrices = 3 if config.is_gated_act else 2
    return matrices * tokens * config.d_model * config.d_ff


def encoder_layer_forward_macs(config, *, inputs_length: int) -> int:
    """MACs of one encoder layer on one sequence of ``inputs_length`` tokens."""
    s, d, inner = inputs_length, config.d_model, _inner(config)
    projections = 4 * s * d * inner  # q, k, v, o
    scores_and_values = 2 * s * s * inner
    return projections + scores_and_values + _ffn_macs(config, s)


def decoder_layer_forward_macs(config, *, inputs_length: int, targets_length: int) -> int:
    """MACs of one decoder layer on one sequence (self-attention, cross-attention, FFN)."""
    s, t, d, inner = inputs_length, targets_length, config.d_model, _inner(config)
    self_attention = 4 * t * d * inner + 2 * t * t * inner
    cross_attention = 2 * t * d * inner + 2 * s * d * inner + 2 * t * s * inner  # q,o; k,v; qk,av
    return self_attention + cross_attention + _ffn_macs(config, t)


def encoder_forward_flops(config, *, batch_size: int, inputs_length: int) -> int:
    """Forward FLOPs of a T5 encoder stack (``config.num_layers`` layers)."""
    macs = config.num_layers * encoder_layer_forward_macs(config, inputs_length=inputs_length)
    return FLOPS_PER_MAC * batch_size * macs


def decoder_forward_flops(
    config, *, batch_size: int, inputs_length: int, targets_length: int
) -> int:
    """Forward FLOPs of a T5 decoder stack (``config.num_decoder_layers`` layers)."""
    layer = decoder_layer_forward_macs(
        config, inputs_length=inputs_length, targets_length=targets_length
    )
    return FLOPS_PER_MAC * batch_size * config.num_decoder_layers * layer


def lm_head_forward_flops(config, *, batch_size: int, num_positions: int) -> int:
    """Forward FLOPs of a d_model -> vocab_size projection on ``num_positions`` per sequence."""
    return FLOPS_PER_MAC * batch_size * num_positions * config.d_model * config.vocab_size


def t5_forward_flops(config, *, batch_size: int, inputs_length: int, targets_length: int) -> int:
    """Forward FLOPs of T5ForConditionalGeneration: encoder + decoder + LM head."""
    b, s, t = batch_size, inputs_length, targets_length
    _check_lengths(batch_size=b, inputs_length=s, targets_length=t)
    return (
        encoder_forward_flops(config, batch_size=b, inputs_length=s)
        + decoder_forward_flops(config, batch_size=b, inputs_length=s, targets_length=t)
        + lm_head_forward_flops(config, batch_size=b, num_positions=t)
    )


def spactor_step_flops(
    t5_config,
    generator_config,
    *,
    batch_size: int,
    inputs_length: int,
    targets_length: int,
    hybrid: bool,
    mask_rate: float = 0.15,
) -> StepFlops:
    """Training FLOPs of one SC step (``hybrid=False``) or SpacTor hybrid step.

    ``generator_config``: the generator's T5Config (``models.spactor.generator_t5_config``), or
    None for SC-only accounting; required when ``hybrid``. ``mask_rate`` must match
    ``SpacTorConfig.mask_rate``; it sets the generator LM head's positions. The T5 encoder costs
    the same in both modes (in hybrid steps it runs once, on the corrupted input). Non-hybrid
    steps have zero generator / RTD components.
    """
    b, s, t = batch_size, inputs_length, targets_length
    _check_lengths(batch_size=b, inputs_length=s, targets_length=t)
    x = TRAIN_MULTIPLIER
    encoder = x * encoder_forward_flops(t5_config, batch_size=b, inputs_length=s)
    decoder = x * decoder_forward_flops(t5_config, batch_size=b, inputs_length=s, targets_length=t)
    lm_head = x * lm_head_forward_flops(t5_config, batch_size=b, num_positions=t)
    if not hybrid:
        return StepFlops(encoder=encoder, decoder=decoder, lm_head=lm_head)

    if generator_config is None:
        raise ValueError(
            "hybrid=True needs the generator's T5Config; pass "
            "models.spactor.generator_t5_config(t5_config, spactor_config)."
        )
    if not 0.0 < mask_rate < 1.0:
        raise ValueError(f"mask_rate={mask_rate} must be in (0, 1); pass SpacTorConfig.mask_rate.")
    g = generator_config
    masked = max(1, round(mask_rate * inputs_length))  # as choose_mlm_positions
    return StepFlops(
        encoder=encoder,
        decoder=decoder,
        lm_head=lm_head,
        generator=x * encoder_forward_flops(g, batch_size=b, inputs_length=s),
        generator_lm_head=x * lm_head_forward_flops(g, batch_size=b, num_positions=masked),
        rtd_head=x * FLOPS_PER_MAC * b * s * t5_config.d_model,  # Linear(d_model, 1) per token
    )


def _check_lengths(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name}={value} must be >= 1.")
