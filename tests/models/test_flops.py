"""Tests for models/flops.py: hand-computed counts, component structure, and a check against the
parameter count of a real (tiny) T5."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from models.flops import (
    StepFlops,
    encoder_forward_flops,
    lm_head_forward_flops,
    spactor_step_flops,
    t5_forward_flops,
)
from models.spactor import SpacTorConfig, generator_t5_config

# d_model 4, 2 heads x d_kv 2 (inner 4), d_ff 8, one layer each side, vocab 10.
TINY = T5Config(d_model=4, d_kv=2, num_heads=2, d_ff=8, num_layers=1, num_decoder_layers=1, vocab_size=10)
# Generator: 1 head x d_kv 2 (inner 2), d_ff 4, one layer.
TINY_GEN = T5Config(d_model=4, d_kv=2, num_heads=1, d_ff=4, num_layers=1, vocab_size=10)
S, T = 3, 2  # inputs_length, targets_length


def test_tiny_t5_step_matches_hand_computed_count():
    # Encoder MACs: qkvo 4*S*d*inner = 4*3*4*4 = 192; scores+values 2*S*S*inner = 72;
    #   FFN 2*S*d*d_ff = 192  -> 456 MACs -> 912 forward FLOPs -> 2736 train.
    # Decoder MACs: self qkvo 4*T*d*inner = 128; self scores 2*T*T*inner = 32;
    #   cross q,o 2*T*d*inner = 64; cross k,v 2*S*d*inner = 96; cross scores 2*T*S*inner = 48;
    #   FFN 2*T*d*d_ff = 128 -> 496 MACs -> 992 -> 2976 train.
    # LM head: T*d*V = 80 MACs -> 160 -> 480 train.
    flops = spactor_step_flops(TINY, None, batch_size=1, inputs_length=S, targets_length=T, hybrid=False)
    assert flops == StepFlops(encoder=2736, decoder=2976, lm_head=480)
    assert flops.total == 6192
    assert t5_forward_flops(TINY, batch_size=1, inputs_length=S, targets_length=T) == 6192 // 3


def test_gated_activation_counts_a_third_ffn_matrix():
    gated = T5Config(d_model=4, d_kv=2, num_heads=2, d_ff=8, num_layers=1, num_decoder_layers=1,
                     vocab_size=10, feed_forward_proj="gated-gelu")
    assert gated.is_gated_act
    flops = spactor_step_flops(gated, None, batch_size=1, inputs_length=S, targets_length=T, hybrid=False)
    # FFN: 3*S*d*d_ff = 288 (was 192) and 3*T*d*d_ff = 192 (was 128).
    assert flops.encoder == 3 * 2 * (456 + 96)
    assert flops.decoder == 3 * 2 * (496 + 64)


def test_tiny_hybrid_step_adds_generator_and_rtd_head_by_hand():
    # Generator MACs: qkvo 4*3*4*2 = 96; scores 2*9*2 = 36; FFN 2*3*4*4 = 96 -> 228 -> 1368 train.
    # Generator LM head on round(0.5 * 3) = 2 positions: 2*4*10 = 80 MACs -> 480 train.
    # RTD head: S*d*1 = 12 MACs -> 72 train.
    flops = spactor_step_flops(
        TINY, TINY_GEN, batch_size=1, inputs_length=S, targets_length=T, hybrid=True, mask_rate=0.5
    )
    assert (flops.generator, flops.generator_lm_head, flops.rtd_head) == (1368, 480, 72)
    assert flops.total == 6192 + 1368 + 480 + 72


def test_hybrid_step_costs_more_than_sc_by_exactly_the_generator_and_rtd_head():
    t5 = T5Config(feed_forward_proj="gated-gelu", vocab_size=32128, tie_word_embeddings=False)
    gen = generator_t5_config(t5, SpacTorConfig())
    kwargs = dict(batch_size=8, inputs_length=512, targets_length=114)
    sc = spactor_step_flops(t5, gen, **kwargs, hybrid=False)
    hybrid = spactor_step_flops(t5, gen, **kwargs, hybrid=True)
    assert hybrid.total > sc.total
    assert hybrid.total - sc.total == hybrid.generator + hybrid.generator_lm_head + hybrid.rtd_head
    assert (sc.encoder, sc.decoder, sc.lm_head) == (hybrid.encoder, hybrid.decoder, hybrid.lm_head)


def test_generator_and_rtd_components_are_zero_when_not_hybrid():
    flops = spactor_step_flops(TINY, TINY_GEN, batch_size=4, inputs_length=S, targets_length=T, hybrid=False)
    assert flops.generator == flops.generator_lm_head == flops.rtd_head == 0


def test_every_component_scales_linearly_in_batch_size():
    one = spactor_step_flops(TINY, TINY_GEN, batch_size=1, inputs_length=16, targets_length=6, hybrid=True)
    five = spactor_step_flops(TINY, TINY_GEN, batch_size=5, inputs_length=16, targets_length=6, hybrid=True)
    for field in dataclasses.fields(StepFlops):
        assert getattr(five, field.name) == 5 * getattr(one, field.name)


def test_matmul_flops_agree_with_a_real_t5_parameter_count():
    # Without the attention score/value products, a layer's forward MACs per token equal its
    # matmul weight count: check against an instantiated model.
    config = T5Config(d_model=16, d_kv=4, num_heads=2, d_ff=24, num_layers=2, num_decoder_layers=2,
                      vocab_size=50, feed_forward_proj="gated-gelu")
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(config)
    linear_params = sum(
        m.weight.numel() for m in model.encoder.block.modules() if isinstance(m, torch.nn.Linear)
    )
    s, inner = 7, config.num_heads * config.d_kv
    scores = config.num_layers * 2 * s * s * inner
    assert encoder_forward_flops(config, batch_size=1, inputs_length=s) == 2 * (s * linear_params + scores)
    assert lm_head_forward_flops(config, batch_size=1, num_positions=s) == 2 * s * model.lm_head.weight.numel()


def test_hybrid_without_generator_config_raises_value_error():
    with pytest.raises(ValueError, match="generator_t5_config"):
        spactor_step_flops(TINY, None, batch_size=1, inputs_length=S, targets_length=T, hybrid=True)


def test_non_positive_lengths_raise_value_error():
    with pytest.raises(ValueError, match="batch_size=0"):
        spactor_step_flops(TINY, None, batch_size=0, inputs_length=S, targets_length=T, hybrid=False)
