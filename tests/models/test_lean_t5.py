"""Tests for models/sd/lean_t5.py: the lean decoder step computes T5ForConditionalGeneration's logits (up to
rounding) for every shape the project builds (tied and untied heads, gated FF, a decoder deeper than its
encoder, padded prompts, int8 layers), through crops and capacity growth, and SD with it stays exact (greedy SD
against ``generate``: tests/models/test_speculative.py, with the static cache).
"""

from __future__ import annotations


import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import (LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration, UMT5Config,
                          UMT5ForConditionalGeneration)

from models.sd.kv_cache import CachedDecoder, cached_decoder
from models.sd.lean_t5 import LeanT5Decoder, supports_lean
from models.sd.quantization import at_precision
from models.speculative import speculative_generate, target_generate
from tests.models.test_speculative import EOS, MAX_NEW, START, VOCAB, prompt, tiny_t5

ATOL = 2e-4  # logits are O(10) with these weights; fp32 rounding of a reordered sum is ~1e-6 relative


def t5(seed: int, **overrides) -> T5ForConditionalGeneration:
    base = dict(vocab_size=VOCAB, d_model=48, d_kv=12, d_ff=96, num_layers=2, num_heads=4, dropout_rate=0.0,
                eos_token_id=EOS, pad_token_id=0, decoder_start_token_id=START)
    torch.manual_seed(seed)
    return T5ForConditionalGeneration(T5Config(**{**base, **overrides})).eval()


SHAPES = {
    "tied": {},
    "untied": {"tie_word_embeddings": False},
    "gated-gelu": {"feed_forward_proj": "gated-gelu"},
    "decoder deeper than encoder": {"num_layers": 1, "num_decoder_layers": 3},
}


def reference_logits(model, ids, mask, tokens) -> torch.Tensor:
    """The prefix recomputed from scratch by the model's own forward, no cache: (len(tokens), V)."""
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, decoder_input_ids=torch.tensor([tokens])).logits[0]


@pytest.mark.parametrize("shape", list(SHAPES))
def test_lean_logits_equal_the_models_own_forward_block_by_block(shape):
    model = t5(3, **SHAPES[shape])
    ids = prompt(4)
    mask = torch.ones_like(ids)
    tokens = [START] + prompt(5, 20)[0].tolist()
    dec = LeanT5Decoder(model, ids, mask)
    got, fed = [], 0
    for block in (1, 3, 1, 5, 2, 8):
        got.append(dec.advance(tokens[: fed + block]))
        fed += block
    torch.testing.assert_close(torch.cat(got), reference_logits(model, ids, mask, tokens[:fed]), atol=ATOL, rtol=0)
    assert dec.length == fed


def test_lean_decoder_masks_padded_prompt_positions_as_the_model_does():
    model = t5(6)
    ids = prompt(7)
    mask = torch.ones_like(ids)
    mask[0, -4:] = 0
    tokens = [START, 9, 10, 11]
    lean = LeanT5Decoder(model, ids, mask).advance(tokens)
    torch.testing.assert_close(lean, reference_logits(model, ids, mask, tokens), atol=ATOL, rtol=0)
    unmasked = LeanT5Decoder(model, ids, torch.ones_like(ids)).advance(tokens)
    assert (lean - unmasked).abs().max() > 1e-3  # the mask changed something, so the comparison above means it


def test_lean_decoder_on_int8_layers_matches_the_int8_models_own_cached_decoder():
    model = at_precision(t5(8, d_model=64, d_kv=16, d_ff=256), "int8", min_weights=0)
    ids = prompt(9)
    mask = torch.ones_like(ids)
    tokens = [START] + prompt(10, 9)[0].tolist()
    with torch.inference_mode():
        expected = CachedDecoder(model, ids, mask).advance(tokens)
    torch.testing.assert_close(LeanT5Decoder(model, ids, mask).advance(tokens), expected, atol=ATOL, rtol=0)


MODEL_FOR_PROPERTY = t5(13, num_layers=1, num_decoder_layers=2)


@settings(max_examples=25, deadline=None)
@given(ops=st.lists(st.tuples(st.integers(1, 6), st.integers(0, 5)), min_size=1, max_size=10))
def test_any_sequence_of_advances_and_crops_gives_the_logits_of_recomputing_the_prefix(ops):
    """Property: after each (advance k tokens, crop r of them) the next logits equal a from-scratch forward; the
    buffers start at 16 positions, so long sequences also cross a capacity doubling."""
    model = MODEL_FOR_PROPERTY
    ids = prompt(11)
    mask = torch.ones_like(ids)
    stream = [START] + prompt(12, 80)[0].tolist()
    dec = LeanT5Decoder(model, ids, mask, max_cache_len=1)
    for k, r in ops:
        length = dec.length
        logits = dec.advance(stream[: length + k])
        expected = reference_logits(model, ids, mask, stream[: length + k])[length:]
        torch.testing.assert_close(logits, expected, atol=ATOL, rtol=0)
        dec.crop(max(1, dec.length - r))


def test_lean_speculative_sampling_matches_the_dynamic_cache_draw_for_draw():
    target, draft = tiny_t5(0), tiny_t5(1, d_model=32, layers=1)
    ids = prompt(2)

    def run(cache: str) -> list[list[int]]:
        return speculative_generate(target, draft, ids, gamma=3, max_new_tokens=MAX_NEW, do_sample=True,
                                    generator=torch.Generator().manual_seed(5),
                                    cache_implementation=cache).sequences.tolist()

    assert run("lean") == run("dynamic")


def test_lean_refuses_what_it_does_not_decode_with_a_one_line_error():
    target = tiny_t5(0)
    two = torch.cat([prompt(0), prompt(1)])
    with pytest.raises(ValueError, match="batch size 2 needs cache_implementation='dynamic'"):
        speculative_generate(target, target, two, gamma=2, max_new_tokens=4, cache_implementation="lean")
    with pytest.raises(ValueError, match="compile=True needs cache_implementation='static'"):
        target_generate(target, prompt(0), max_new_tokens=4, cache_implementation="lean", compile=True)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=4)).eval()
    umt5 = UMT5ForConditionalGeneration(UMT5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                                   num_heads=4)).eval()  # a relative position bias per layer
    assert supports_lean(target) and not supports_lean(llama) and not supports_lean(umt5)
    with pytest.raises(ValueError, match="needs a T5 encoder-decoder model, got LlamaForCausalLM"):
        target_generate(llama, prompt(0), max_new_tokens=4, cache_implementation="lean")
    with pytest.raises(ValueError, match="a CachedDecoder is 'dynamic' or 'static'"):
        CachedDecoder(target, prompt(0), torch.ones_like(prompt(0)), cache_implementation="lean")
    assert isinstance(cached_decoder(target, prompt(0), torch.ones_like(prompt(0)), cache_implementation="lean"),
                      LeanT5Decoder)
