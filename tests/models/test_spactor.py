"""Tests for models/spactor.py on a tiny random-init T5 (no downloads)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from transformers import T5Config, T5ForConditionalGeneration

from models.span_corruption import SpanCorruptionCollator
from models.spactor import (
    SpacTorConfig,
    SpacTorModel,
    choose_mlm_positions,
    curriculum_is_hybrid,
    generator_t5_config,
    replaced_token_labels,
    sc_rtd_gradient_cosine,
)

VOCAB = 200
SENTINEL_START = 190  # ids 190..199 are sentinels, <extra_id_0> = 199
MASK_ID = 189
PAD, EOS = 0, 1


def _t5() -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        num_heads=4,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        dropout_rate=0.0,
        decoder_start_token_id=PAD,
    )
    return T5ForConditionalGeneration(config)


def _model(**overrides) -> SpacTorModel:
    cfg = SpacTorConfig(**{"generator_depth_ratio": 0.5, **overrides})
    return SpacTorModel(_t5(), cfg, mask_token_id=MASK_ID, sentinel_start_id=SENTINEL_START).eval()


def _batch(constant_token: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A real span-corruption batch (B=4, S=24); row 3 is a short, padded document."""
    collate = SpanCorruptionCollator(vocab_size=VOCAB, inputs_length=24)
    rng = np.random.default_rng(0)
    rows = rng.integers(2, MASK_ID, (4, collate.tokens_length))
    if constant_token is not None:
        rows[:] = constant_token
    rows[3, 12:] = PAD
    batch = collate(rows, rng=rng)
    return batch["input_ids"], batch["labels"]


class ForcedHead(nn.Module):
    """An MLM head that makes `token` (near) certain at every position."""

    def __init__(self, token: int):
        super().__init__()
        self.token = token

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = torch.full((*hidden.shape[:-1], VOCAB), -30.0)
        logits[..., self.token] = 30.0
        return logits + 0.0 * hidden.sum(-1, keepdim=True)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- RTD labels and masking


def test_rtd_labels_ignore_replacements_equal_to_original():
    model = _model()
    model.mlm_head = ForcedHead(7)
    input_ids, labels = _batch(constant_token=7)  # every real token is 7; the generator says 7
    out = model(input_ids, labels, hybrid=True, generator=_gen())
    assert out.mlm_mask.any()
    assert torch.equal(out.corrupted_input_ids, input_ids)
    assert not out.rtd_labels.any()
    assert out.replaced_rate == 0


def test_rtd_labels_are_one_exactly_where_the_sample_differs():
    model = _model()
    model.mlm_head = ForcedHead(8)
    input_ids, labels = _batch(constant_token=7)
    out = model(input_ids, labels, hybrid=True, generator=_gen())
    assert torch.equal(out.rtd_labels.bool(), out.mlm_mask)
    assert (out.corrupted_input_ids[out.mlm_mask] == 8).all()
    assert torch.equal(out.corrupted_input_ids[~out.mlm_mask], input_ids[~out.mlm_mask])


def test_replaced_token_labels_are_zero_outside_real_positions():
    original = torch.tensor([[5, 6, 195, 1, 0]])
    corrupted = torch.tensor([[5, 9, 7, 8, 9]])
    real = torch.tensor([[True, True, False, False, False]])
    assert replaced_token_labels(original, corrupted, real).tolist() == [[0.0, 1.0, 0.0, 0.0, 0.0]]


def test_pads_eos_and_sentinels_are_never_masked_or_labelled():
    model = _model(mask_rate=0.9)
    model.mlm_head = ForcedHead(8)
    input_ids, labels = _batch()
    special = (input_ids == PAD) | (input_ids == EOS) | (input_ids >= SENTINEL_START)
    assert special.any() and (input_ids == PAD).any()
    out = model(input_ids, labels, hybrid=True, generator=_gen())
    assert not (out.mlm_mask & special).any()
    assert not out.rtd_labels[special].any()
    assert torch.equal(out.corrupted_input_ids[special], input_ids[special])


def test_generator_never_samples_pad_eos_mask_or_sentinels():
    model = _model(mask_rate=0.9)
    model.mlm_head = ForcedHead(SENTINEL_START + 5)  # it *wants* a sentinel
    input_ids, labels = _batch()
    out = model(input_ids, labels, hybrid=True, generator=_gen())
    sampled = out.corrupted_input_ids[out.mlm_mask]
    assert sampled.numel() > 0
    assert not model.sample_disallowed[sampled].any()


def test_mask_count_per_row_is_round_of_mask_rate_times_real_tokens():
    model = _model()
    input_ids, _ = _batch()
    real = model.real_token_mask(input_ids)
    mlm_mask = choose_mlm_positions(real, 0.15, generator=_gen())
    expected = torch.round(real.sum(1) * 0.15).clamp(min=1)
    assert torch.equal(mlm_mask.sum(1).float(), expected)
    assert not (mlm_mask & ~real).any()
    empty = choose_mlm_positions(torch.zeros(2, 5, dtype=torch.bool), 0.15, generator=_gen())
    assert not empty.any()


# ---------------------------------------------------------------- losses


def test_loss_equals_gen_weight_mlm_plus_disc_weight_rtd_plus_sc():
    model = _model(gen_weight=2.0, disc_weight=7.0)
    input_ids, labels = _batch()
    out = model(input_ids, labels, hybrid=True, generator=_gen())
    torch.testing.assert_close(out.loss, 2.0 * out.mlm_loss + 7.0 * out.rtd_loss + out.sc_loss)
    for metric in (out.gen_accuracy, out.rtd_accuracy, out.replaced_rate):
        assert 0.0 <= float(metric) <= 1.0


def test_hybrid_decoder_reconstructs_original_labels_from_corrupted_encoder_states():
    model = _model()
    input_ids, labels = _batch()
    out = model(input_ids, labels, hybrid=True, generator=_gen())
    expected = model.t5(
        input_ids=out.corrupted_input_ids, attention_mask=input_ids != PAD, labels=labels
    ).loss
    torch.testing.assert_close(out.sc_loss, expected)


def test_non_hybrid_is_plain_t5_loss_and_never_runs_generator_or_rtd_head():
    model = _model()
    calls: list[str] = []
    for name in ("generator", "mlm_head", "rtd_head"):
        getattr(model, name).register_forward_hook(lambda *_, n=name: calls.append(n))
    input_ids, labels = _batch()
    out = model(input_ids, labels, hybrid=False, generator=_gen())
    assert calls == []
    expected = model.t5(input_ids=input_ids, attention_mask=input_ids != PAD, labels=labels).loss
    torch.testing.assert_close(out.loss, expected)
    assert out.sc_loss is out.loss
    assert out.mlm_loss is None and out.rtd_loss is None and out.rtd_labels is None
    model(input_ids, labels, hybrid=True, generator=_gen())
    assert sorted(set(calls)) == ["generator", "mlm_head", "rtd_head"]


# ---------------------------------------------------------------- gradients


def test_rtd_loss_has_no_gradient_path_to_the_generator_through_sampling():
    model = _model()
    input_ids, labels = _batch()
    out = model(input_ids, labels, hybrid=True, generator=_gen())
    gen_params = list(model.generator.encoder.block.parameters())
    gen_params += list(model.generator.encoder.final_layer_norm.parameters())
    from_rtd = torch.autograd.grad(out.rtd_loss, gen_params, retain_graph=True, allow_unused=True)
    assert all(g is None for g in from_rtd)
    from_mlm = torch.autograd.grad(out.mlm_loss, gen_params, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in from_mlm)


def test_hybrid_loss_backward_reaches_t5_generator_and_rtd_head():
    model = _model().train()
    input_ids, labels = _batch()
    model(input_ids, labels, hybrid=True, generator=_gen()).loss.backward()
    for module in (model.t5.encoder.block, model.t5.decoder, model.generator.encoder.block, model.rtd_head):
        assert all(p.grad is not None for p in module.parameters())


def test_forward_is_deterministic_given_the_torch_generator_seed():
    model = _model()
    input_ids, labels = _batch()
    a = model(input_ids, labels, hybrid=True, generator=_gen(3))
    b = model(input_ids, labels, hybrid=True, generator=_gen(3))
    c = model(input_ids, labels, hybrid=True, generator=_gen(4))
    assert torch.equal(a.mlm_mask, b.mlm_mask)
    assert torch.equal(a.corrupted_input_ids, b.corrupted_input_ids)
    torch.testing.assert_close(a.loss, b.loss, rtol=0, atol=0)
    assert not torch.equal(a.mlm_mask, c.mlm_mask)


def test_gradient_cosine_is_in_range_and_leaves_grad_untouched():
    model = _model()
    input_ids, labels = _batch()
    cos = sc_rtd_gradient_cosine(model, input_ids, labels, generator=_gen())
    assert cos.shape == () and not cos.requires_grad
    assert -1.0 <= float(cos) <= 1.0 and float(cos) != 0.0
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------- structure and config


def test_generator_shares_the_t5_embedding_parameter():
    model = _model()
    shared = model.t5.get_input_embeddings().weight
    assert model.generator.get_input_embeddings().weight is shared
    assert model.generator.encoder.embed_tokens.weight is shared
    assert model.mlm_head.embedding.weight is shared
    assert sum(p is shared for p in model.parameters()) == 1  # counted once by the optimizer

    own = _model(share_embeddings=False)
    assert own.generator.get_input_embeddings().weight is not own.t5.get_input_embeddings().weight
    assert own.mlm_head.embedding.weight is own.generator.get_input_embeddings().weight


def test_generator_config_scales_depth_and_width_but_keeps_d_model():
    t5_config = _t5().config
    g = generator_t5_config(t5_config, SpacTorConfig(generator_depth_ratio=0.5, generator_width_ratio=0.5))
    assert (g.num_layers, g.num_heads, g.d_ff) == (1, 2, 32)
    assert (g.d_model, g.d_kv, g.vocab_size) == (32, 8, VOCAB)
    assert not g.is_decoder
    assert t5_config.num_layers == 2 and t5_config.is_encoder_decoder  # the input is not mutated
    deep = T5Config(num_layers=30)
    assert generator_t5_config(deep, SpacTorConfig(generator_depth_ratio=0.1)).num_layers == 3
    assert generator_t5_config(T5Config(num_layers=12), SpacTorConfig()).num_layers == 3
    assert len(_model().generator.encoder.block) == 1


def test_curriculum_is_hybrid_for_steps_before_tau_only():
    assert [curriculum_is_hybrid(s, 3) for s in range(5)] == [True, True, True, False, False]
    assert not curriculum_is_hybrid(0, 0)
    with pytest.raises(ValueError, match="tau"):
        curriculum_is_hybrid(-1, 3)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(mask_rate=0.0),
        dict(mask_rate=1.5),
        dict(gen_weight=-1.0),
        dict(disc_weight=-0.1),
        dict(sample_temperature=0.0),
        dict(generator_depth_ratio=0.0),
        dict(generator_width_ratio=1.5),
    ],
)
def test_config_rejects_out_of_range_values_with_value_error(kwargs):
    (name, value), = kwargs.items()
    with pytest.raises(ValueError, match=f"{name}={value}"):
        SpacTorConfig(**kwargs)


def test_config_is_keyword_only():
    with pytest.raises(TypeError):
        SpacTorConfig(0.15)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("mask_token_id", "sentinel_start_id", "match"),
    [
        (195, SENTINEL_START, "below sentinel_start_id"),
        (0, SENTINEL_START, "collides"),
        (MASK_ID, VOCAB + 1, "sentinel_start_id=201"),
    ],
)
def test_model_rejects_bad_special_ids_with_value_error(mask_token_id, sentinel_start_id, match):
    with pytest.raises(ValueError, match=match):
        SpacTorModel(
            _t5(), SpacTorConfig(), mask_token_id=mask_token_id, sentinel_start_id=sentinel_start_id
        )
