"""Tests for models/speculative.py: exactness of greedy SD, the rejection step's distribution,
lossy lenience, KV-cache cropping, EOS handling, reproducibility and validation.

Tiny random-init T5s built from configs (no downloads). Weights are re-drawn with a large scale so
that greedy decoding produces varied tokens instead of a single repeated one.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import T5Config, T5ForConditionalGeneration

from models.sd.kv_cache import CachedDecoder
from models.sd.verify import (
    acceptance_probability,
    expected_block_efficiency,
    expected_speedup,
    residual_distribution,
    sampling_distribution,
)
from models.speculative import rejection_sample, speculative_generate, target_generate

EOS, PAD, START = 1, 0, 0
VOCAB = 128
MAX_NEW = 24
# 99.9% quantiles of chi-square; the tests draw from fixed seeds, so they are deterministic.
CHI2_999 = {4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32, 8: 26.12}


def tiny_t5(seed: int, *, d_model: int = 64, layers: int = 2, vocab: int = VOCAB, scale: float = 4.0):
    config = T5Config(
        vocab_size=vocab,
        d_model=d_model,
        d_kv=d_model // 4,
        d_ff=2 * d_model,
        num_layers=layers,
        num_heads=4,
        dropout_rate=0.0,
        eos_token_id=EOS,
        pad_token_id=PAD,
        decoder_start_token_id=START,
    )
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 2:  # (out, in): scale so that activations, hence logits, are spread out
                param.normal_(0.0, scale / param.shape[1] ** 0.5, generator=generator)
    return model


def prompt(seed: int, length: int = 12, vocab: int = VOCAB) -> torch.Tensor:
    return torch.randint(2, vocab, (1, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def target():
    return tiny_t5(0)


@pytest.fixture(scope="module")
def random_draft():
    return tiny_t5(1, d_model=32, layers=1)


@pytest.fixture(scope="module")
def eos_prompt(target):
    """A prompt whose greedy target continuation hits EOS after a few tokens (inside a block)."""
    for seed in range(200):
        ids = prompt(seed)
        seq = target.generate(ids, max_new_tokens=MAX_NEW, do_sample=False)[0].tolist()
        if seq[-1] == EOS and 4 <= len(seq) - 1 < MAX_NEW:
            return ids
    raise AssertionError("no prompt of the first 200 seeds reaches EOS; change tiny_t5's scale")


# ------------------------------------------------------------------------------------------------
# Greedy exactness (transformers' test_assisted_decoding_matches_greedy_search pattern)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [1, 3, 5])
def test_greedy_sd_with_target_as_draft_equals_greedy_generate_and_accepts_every_draft(target, gamma):
    for seed in range(3):
        ids = prompt(seed)
        expected = target.generate(ids, max_new_tokens=MAX_NEW, do_sample=False)
        out = speculative_generate(target, target, ids, gamma=gamma, max_new_tokens=MAX_NEW)
        assert out.sequences.tolist() == expected.tolist()
        assert out.accepted == out.drafted  # a draft identical to the target is always right
        n_new = out.sequences.shape[1] - 1
        assert out.drafted[0] == min(gamma, n_new)  # the draft stops drafting at EOS
        assert out.num_target_calls == math.ceil((out.sequences.shape[1] - 1) / (gamma + 1))


@pytest.mark.parametrize("gamma", [1, 3, 5])
def test_greedy_sd_with_random_draft_equals_greedy_generate_token_for_token(target, random_draft, gamma):
    accepted = drafted = 0
    for seed in range(1, 4):
        ids = prompt(seed)
        expected = target.generate(ids, max_new_tokens=MAX_NEW, do_sample=False)
        out = speculative_generate(target, random_draft, ids, gamma=gamma, max_new_tokens=MAX_NEW)
        assert out.sequences.tolist() == expected.tolist()
        accepted, drafted = accepted + sum(out.accepted), drafted + sum(out.drafted)
        assert out.num_draft_calls == sum(out.drafted)
    assert accepted / drafted < 0.25  # an unrelated draft is almost never right


def test_greedy_sd_with_adaptive_gamma_equals_greedy_generate(target, random_draft):
    for seed, draft in itertools.product(range(2), [target, random_draft]):
        ids = prompt(seed)
        expected = target.generate(ids, max_new_tokens=MAX_NEW, do_sample=False)
        out = speculative_generate(target, draft, ids, gamma=2, max_new_tokens=MAX_NEW, adaptive_gamma=True)
        assert out.sequences.tolist() == expected.tolist()
        assert 1 <= max(out.drafted) <= 4
    # With the target as draft every block is accepted, so the block grows to 2 * gamma.
    out = speculative_generate(target, target, prompt(0), gamma=2, max_new_tokens=MAX_NEW, adaptive_gamma=True)
    assert out.drafted[:3] == [2, 3, 4]


def test_target_generate_equals_greedy_generate_with_one_target_call_per_token(target):
    for seed in range(3):
        ids = prompt(seed)
        expected = target.generate(ids, max_new_tokens=MAX_NEW, do_sample=False)
        out = target_generate(target, ids, max_new_tokens=MAX_NEW)
        assert out.sequences.tolist() == expected.tolist()
        assert out.num_target_calls == out.sequences.shape[1] - 1
        assert out.block_efficiency == 1.0


def test_eos_inside_a_drafted_block_stops_generation_exactly_where_greedy_does(
    target, random_draft, eos_prompt
):
    expected = target.generate(eos_prompt, max_new_tokens=MAX_NEW, do_sample=False)
    n_new = expected.shape[1] - 1
    for draft in (target, random_draft):
        out = speculative_generate(target, draft, eos_prompt, gamma=n_new + 2, max_new_tokens=MAX_NEW)
        assert out.sequences.tolist() == expected.tolist()
        assert out.sequences[0, -1].item() == EOS
    # The target drafting for itself proposes EOS inside its first block; drafting stops there.
    out = speculative_generate(target, target, eos_prompt, gamma=n_new + 2, max_new_tokens=MAX_NEW)
    assert out.num_target_calls == 1 and out.drafted == [n_new]


def test_draft_eos_rejected_by_the_target_does_not_stop_generation(target, eos_prompt):
    eos_happy = tiny_t5(1, d_model=32, layers=1)

    def always_eos(module, args, logits):  # the draft proposes EOS at every position
        return logits.index_add(-1, torch.tensor([EOS]), torch.full_like(logits[..., :1], 1e4))

    eos_happy.lm_head.register_forward_hook(always_eos)
    for ids in (prompt(0), eos_prompt):
        expected = target.generate(ids, max_new_tokens=MAX_NEW, do_sample=False)
        out = speculative_generate(target, eos_happy, ids, gamma=4, max_new_tokens=MAX_NEW)
        assert out.sequences.tolist() == expected.tolist()
        # one drafted EOS per block, then drafting stops (0 when only one token is left to emit)
        assert set(out.drafted) <= {0, 1} and out.drafted[0] == 1


def test_models_in_train_mode_decode_without_dropout_and_are_restored():
    noisy = T5ForConditionalGeneration(T5Config(**{**tiny_t5(0).config.to_dict(), "dropout_rate": 0.5}))
    noisy.load_state_dict(tiny_t5(0).state_dict())
    noisy.eval()
    expected = noisy.generate(prompt(0), max_new_tokens=8, do_sample=False)
    noisy.train()
    out = speculative_generate(noisy, noisy, prompt(0), gamma=3, max_new_tokens=8)
    assert out.sequences.tolist() == expected.tolist()
    assert noisy.training


def test_max_new_tokens_is_never_exceeded_and_blocks_shrink_to_fit(target):
    for max_new in (1, 2, 7):
        out = speculative_generate(target, target, prompt(0), gamma=5, max_new_tokens=max_new)
        expected = target.generate(prompt(0), max_new_tokens=max_new, do_sample=False)
        assert out.sequences.tolist() == expected.tolist()
        assert out.sequences.shape[1] - 1 == max_new


# ------------------------------------------------------------------------------------------------
# KV cache
# ------------------------------------------------------------------------------------------------


def test_cropped_kv_cache_gives_the_logits_of_recomputing_the_prefix_from_scratch(target):
    ids = prompt(5)
    dec = CachedDecoder(target, ids, torch.ones_like(ids))
    committed = [START, 17, 42]
    dec.advance(committed[:-1])  # the engine's invariant: all committed tokens but the last
    block = dec.advance(committed + [9, 99, 3])  # 4 uncached tokens: last committed + 3 drafted
    assert block.shape == (4, VOCAB) and dec.length == 6
    cross_before = dec.cache.cross_attention_cache.get_seq_length()

    dec.crop(4)  # keep START 17 42 9: draft token 9 accepted, 99 and 3 rejected
    assert dec.length == 4
    assert dec.cache.cross_attention_cache.get_seq_length() == cross_before == ids.shape[1]
    tokens = [START, 17, 42, 9, 55, 23]
    cached = dec.advance(tokens)  # feeds only 55 and 23

    with torch.no_grad():
        full = target(input_ids=ids, decoder_input_ids=torch.tensor([tokens]), use_cache=False).logits[0]
        full_block = target(
            input_ids=ids, decoder_input_ids=torch.tensor([committed + [9, 99, 3]]), use_cache=False
        ).logits[0]
    torch.testing.assert_close(cached, full[-2:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(block, full_block[2:], rtol=1e-5, atol=1e-5)


def test_encoder_runs_once_per_prompt_per_model(target, random_draft):
    calls = {"target": 0, "draft": 0}
    hooks = [
        target.get_encoder().register_forward_hook(lambda *a: calls.__setitem__("target", calls["target"] + 1)),
        random_draft.get_encoder().register_forward_hook(lambda *a: calls.__setitem__("draft", calls["draft"] + 1)),
    ]
    try:
        speculative_generate(target, random_draft, prompt(1), gamma=3, max_new_tokens=MAX_NEW)
    finally:
        for h in hooks:
            h.remove()
    assert calls == {"target": 1, "draft": 1}


# ------------------------------------------------------------------------------------------------
# The rejection step reproduces p
# ------------------------------------------------------------------------------------------------


def random_dists(seed: int, rows: int, vocab: int = 5, sharpness: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (sharpness * torch.randn(rows, vocab, generator=g, dtype=torch.float64)).softmax(-1)


def first_two_tokens_exact(p: torch.Tensor, q: torch.Tensor, lenience: float) -> torch.Tensor:
    """Enumerate draft tokens and accept/reject outcomes: joint law of the first two emitted tokens.

    Rows of p and q do not depend on the prefix here, so the next round (needed when the block
    emits one token) starts afresh at position 1 and, by the gamma=1 case, emits p[1].
    """
    vocab = p.shape[1]
    joint = torch.zeros(vocab, vocab, dtype=torch.float64)
    for y1, y2 in itertools.product(range(vocab), repeat=2):
        draft = torch.tensor([y1, y2])
        a1, a2 = acceptance_probability(p, q, draft, lenience=lenience).tolist()
        weight = q[0, y1] * q[1, y2]
        # rejected at 1: token 1 from the residual, token 2 from the next round (law p[1] if lossless)
        joint += weight * (1 - a1) * torch.outer(residual_distribution(p[0], q[0], lenience=lenience), p[1])
        # accepted y1, rejected y2: token 2 from the residual at position 1
        joint[y1] += weight * a1 * (1 - a2) * residual_distribution(p[1], q[1], lenience=lenience)
        joint[y1, y2] += weight * a1 * a2
    return joint


@pytest.mark.parametrize("seed", range(4))
def test_rejection_step_emits_tokens_distributed_exactly_as_p_by_enumeration(seed):
    p, q = random_dists(seed, 3), random_dists(100 + seed, 2)
    # gamma = 1: first emitted token
    first = torch.zeros(5, dtype=torch.float64)
    for y in range(5):
        a = acceptance_probability(p[:2], q[:1], torch.tensor([y]))[0]
        first += q[0, y] * (1 - a) * residual_distribution(p[0], q[0])
        first[y] += q[0, y] * a
    torch.testing.assert_close(first, p[0], rtol=0, atol=1e-12)
    # gamma = 2: joint law of the first two tokens is p[0] x p[1]
    torch.testing.assert_close(first_two_tokens_exact(p, q, 1.0), torch.outer(p[0], p[1]), rtol=0, atol=1e-12)


def test_lenience_below_one_is_lossy_by_enumeration():
    p, q = random_dists(0, 3), random_dists(100, 2)
    lossy = first_two_tokens_exact(p, q, 0.5)
    torch.testing.assert_close(lossy.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert (lossy - torch.outer(p[0], p[1])).abs().max() > 1e-3


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = counts.sum() * probs
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("gamma", [1, 2])
def test_rejection_sample_draws_pass_a_chi_square_test_against_p(gamma):
    vocab, draws = 5, 12_000
    p, q = random_dists(7, gamma + 1, vocab, sharpness=1.0), random_dists(8, gamma, vocab, sharpness=1.0)
    generator = torch.Generator().manual_seed(1234)
    drafts = torch.multinomial(q, draws, replacement=True, generator=generator).T  # (draws, gamma)
    first = torch.zeros(vocab, dtype=torch.float64)
    second = torch.zeros(vocab, dtype=torch.float64)  # second token of blocks that accepted the first
    for draft in drafts:
        n, next_token = rejection_sample(p, q, draft, generator=generator)
        emitted = draft[:n].tolist() + [next_token]
        first[emitted[0]] += 1
        if len(emitted) >= 2:
            second[emitted[1]] += 1
    assert chi_square(first, p[0]) < CHI2_999[vocab - 1]
    if gamma == 2:
        assert second.sum() > 1000
        assert chi_square(second, p[1]) < CHI2_999[vocab - 1]


@settings(max_examples=40, deadline=None)
@given(
    gamma=st.integers(0, 4),
    vocab=st.integers(2, 7),
    seed=st.integers(0, 10_000),
    lenience=st.floats(0.05, 1.0),
)
def test_rejection_sample_accepts_a_prefix_and_emits_a_token_with_positive_probability(gamma, vocab, seed, lenience):
    p, q = random_dists(seed, gamma + 1, vocab), random_dists(seed + 1, gamma, vocab)
    generator = torch.Generator().manual_seed(seed)
    draft = torch.multinomial(q, 1, generator=generator)[:, 0] if gamma else torch.zeros(0, dtype=torch.long)
    n, next_token = rejection_sample(p, q, draft, lenience=lenience, generator=generator)
    assert isinstance(n, int) and isinstance(next_token, int)
    assert 0 <= n <= gamma
    law = p[gamma] if n == gamma else residual_distribution(p[n], q[n], lenience=lenience)
    assert law[next_token] > 0


# ------------------------------------------------------------------------------------------------
# Lossy SD: lenience
# ------------------------------------------------------------------------------------------------


def test_lower_lenience_never_lowers_the_acceptance_probability():
    p, q = random_dists(3, 4), random_dists(4, 3)
    draft = torch.tensor([0, 2, 4])
    leniences = [1.0, 0.8, 0.5, 0.3, 0.1]
    per_token = torch.stack([acceptance_probability(p, q, draft, lenience=l) for l in leniences])
    assert (per_token[1:] >= per_token[:-1]).all()
    # alpha = E_{x ~ q}[min(1, p(x) / (lenience q(x)))], every vocabulary token as a one-token draft
    every_token = torch.arange(5)
    alpha = [
        float((q[0] * acceptance_probability(p[[0] * 5], q[[0] * 5], every_token, lenience=l)).sum())
        for l in leniences
    ]
    assert alpha == sorted(alpha) and alpha[-1] > alpha[0]
    # Coupled draws: the same random numbers accept at least as many tokens at lower lenience.
    for seed in range(50):
        accepted = [
            rejection_sample(p, q, draft, lenience=l, generator=torch.Generator().manual_seed(seed))[0]
            for l in leniences
        ]
        assert accepted == sorted(accepted)


@pytest.mark.parametrize("lenience", [0.0, -0.5, 1.5, float("nan")])
def test_lenience_outside_zero_one_raises_value_error(lenience):
    p, q = random_dists(0, 2), random_dists(1, 1)
    with pytest.raises(ValueError, match="lenience"):
        rejection_sample(p, q, torch.tensor([0]), lenience=lenience)


def test_rejection_sample_rejects_mismatched_shapes():
    p, q = random_dists(0, 3), random_dists(1, 2)
    with pytest.raises(ValueError, match="gamma"):
        rejection_sample(p[:2], q, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="q must"):
        rejection_sample(p, q[:, :4], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="draft_tokens"):
        rejection_sample(p, q, torch.tensor([0, 9]))


def test_residual_of_identical_distributions_falls_back_to_p():
    p = random_dists(0, 1)[0]
    torch.testing.assert_close(residual_distribution(p, p), p)


# ------------------------------------------------------------------------------------------------
# Sampling end to end
# ------------------------------------------------------------------------------------------------


def first_two_tokens_law(target, ids: torch.Tensor, warp: dict) -> dict[tuple[int, ...], float]:
    """Exact law of the first two sampled tokens (or EOS alone), from the warped target, no cache."""
    vocab = target.config.vocab_size
    with torch.no_grad():
        logits = target(input_ids=ids, decoder_input_ids=torch.tensor([[START]])).logits[0, -1]
        p1 = sampling_distribution(logits, **warp)
        exact = {}
        for x1 in range(vocab):
            if p1[x1] == 0:
                continue
            if x1 == EOS:
                exact[(x1,)] = float(p1[x1])
                continue
            logits = target(input_ids=ids, decoder_input_ids=torch.tensor([[START, x1]])).logits[0, -1]
            p2 = sampling_distribution(logits, **warp)
            for x2 in range(vocab):
                if p2[x2] > 0:
                    exact[(x1, x2)] = float(p1[x1] * p2[x2])
    return exact


def assert_counts_follow(counts: dict, exact: dict, draws: int) -> None:
    """Chi-square goodness of fit at the 99.9% level, rarest outcomes pooled to expect >= 5 draws."""
    keys = sorted(exact, key=exact.get)
    cells, pool_c, pool_e = [], 0, 0.0
    for k in keys:
        pool_c, pool_e = pool_c + counts[k], pool_e + exact[k]
        if pool_e * draws >= 5:
            cells.append((pool_c, pool_e))
            pool_c, pool_e = 0, 0.0
    if pool_e:
        cells[-1] = (cells[-1][0] + pool_c, cells[-1][1] + pool_e)
    observed = torch.tensor([c for c, _ in cells], dtype=torch.float64)
    expected_p = torch.tensor([e for _, e in cells], dtype=torch.float64)
    dof = len(cells) - 1
    # 99.9% quantile of chi-square via the Wilson-Hilferty approximation
    crit = dof * (1 - 2 / (9 * dof) + 3.09 * math.sqrt(2 / (9 * dof))) ** 3
    assert chi_square(observed, expected_p) < crit


def sampling_pair(seed: int):
    """A 6-token-vocabulary target and draft, a prompt, a warp, the exact law, a seeded generator."""
    vocab = 6
    target = tiny_t5(10, d_model=32, layers=1, vocab=vocab, scale=1.5)
    draft = tiny_t5(11, d_model=32, layers=1, vocab=vocab, scale=1.5)
    ids = prompt(0, length=6, vocab=vocab)
    warp = dict(temperature=1.3, top_k=4)
    return target, draft, ids, warp, first_two_tokens_law(target, ids, warp), torch.Generator().manual_seed(seed)


def test_speculative_sampling_first_two_tokens_follow_the_warped_target_distribution():
    draws = 1500
    target, draft, ids, warp, exact, generator = sampling_pair(0)
    counts = dict.fromkeys(exact, 0)
    for _ in range(draws):
        out = speculative_generate(
            target, draft, ids, gamma=2, max_new_tokens=2, do_sample=True, generator=generator, **warp
        )
        counts[tuple(out.sequences[0, 1:].tolist())] += 1  # KeyError = a token p gives probability 0
    assert_counts_follow(counts, exact, draws)


def test_seeded_generator_makes_speculative_sampling_reproducible(target, random_draft):
    def run(seed: int, **kwargs):
        return speculative_generate(
            target, random_draft, prompt(2), gamma=3, max_new_tokens=MAX_NEW, do_sample=True,
            generator=torch.Generator().manual_seed(seed), **kwargs,
        )

    a, b, c = run(0), run(0), run(1)
    assert a.sequences.tolist() == b.sequences.tolist() and a.accepted == b.accepted
    assert a.sequences.tolist() != c.sequences.tolist()
    lossy = run(0, lenience=0.3, top_p=0.9)
    assert lossy.sequences.tolist() == run(0, lenience=0.3, top_p=0.9).sequences.tolist()
    base, again = (
        target_generate(
            target, prompt(2), max_new_tokens=MAX_NEW, do_sample=True, generator=torch.Generator().manual_seed(5)
        )
        for _ in range(2)
    )
    assert base.sequences.tolist() == again.sequences.tolist()


def test_sampling_distribution_top_k_and_top_p_keep_the_most_likely_tokens():
    logits = torch.tensor([3.0, 1.0, 2.0, 0.0])
    assert (sampling_distribution(logits, top_k=2) > 0).tolist() == [True, False, True, False]
    probs = logits.softmax(-1)  # [0.644, 0.087, 0.237, 0.032]
    assert (sampling_distribution(logits, top_p=0.6) > 0).tolist() == [True, False, False, False]
    assert (sampling_distribution(logits, top_p=0.7) > 0).tolist() == [True, False, True, False]
    torch.testing.assert_close(sampling_distribution(logits), probs)


# ------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------


def test_vocab_size_mismatch_raises_value_error_before_any_work(target):
    other = tiny_t5(2, d_model=32, layers=1, vocab=VOCAB + 4)
    calls = []
    hook = target.get_encoder().register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match="vocab"):
            speculative_generate(target, other, prompt(0), gamma=2, max_new_tokens=4)
    finally:
        hook.remove()
    assert calls == []


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(gamma=0), "gamma"),
        (dict(gamma=2, max_new_tokens=0), "max_new_tokens"),
        (dict(gamma=2, lenience=0.5), "lenience"),  # greedy + lossy
        (dict(gamma=2, do_sample=True, temperature=0.0), "temperature"),
        (dict(gamma=2, do_sample=True, top_p=1.5), "top_p"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(target, kwargs, match):
    kwargs = {"max_new_tokens": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        speculative_generate(target, target, prompt(0), **kwargs)


def test_target_generate_is_batch_one_and_batched_sd_refuses_the_static_cache(target):
    two = torch.cat([prompt(0), prompt(1)])
    with pytest.raises(ValueError, match="batch"):
        target_generate(target, two, max_new_tokens=4)
    with pytest.raises(ValueError, match="batch size 2 needs cache_implementation='dynamic'"):
        speculative_generate(target, target, two, gamma=2, max_new_tokens=4, cache_implementation="static")


def test_cache_arguments_are_validated(target):
    with pytest.raises(ValueError, match="cache_implementation='paged' must be one of"):
        target_generate(target, prompt(0), max_new_tokens=4, cache_implementation="paged")
    with pytest.raises(ValueError, match="compile=True needs cache_implementation='static'"):
        speculative_generate(target, target, prompt(0), gamma=2, max_new_tokens=4, compile=True)
    dec = CachedDecoder(target, prompt(0), torch.ones_like(prompt(0)), cache_implementation="static", max_cache_len=3)
    with pytest.raises(ValueError, match="holds 3 decoder positions; 4 were asked for"):
        dec.advance([START, 5, 6, 7])


# ------------------------------------------------------------------------------------------------
# Static (preallocated) KV cache: the layout of the compiled GPU path
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cache", ["static", "lean"])
@pytest.mark.parametrize("gamma", [1, 4])
def test_greedy_sd_on_a_static_or_lean_cache_equals_greedy_generate_token_for_token(target, random_draft, gamma, cache):
    """The preallocated caches: transformers' static layers, and the lean T5 step (models.sd.lean_t5)."""
    for seed, draft in itertools.product(range(1, 4), [target, random_draft]):
        ids = prompt(seed)
        expected = target.generate(ids, max_new_tokens=MAX_NEW, do_sample=False).tolist()
        kw = dict(max_new_tokens=MAX_NEW, cache_implementation=cache)
        assert speculative_generate(target, draft, ids, gamma=gamma, **kw).sequences.tolist() == expected
        assert target_generate(target, ids, **kw).sequences.tolist() == expected


def test_static_cache_cropped_then_advanced_gives_the_logits_of_recomputing(target):
    ids = prompt(5)
    dec = CachedDecoder(target, ids, torch.ones_like(ids), cache_implementation="static", max_cache_len=10)
    dec.advance([START, 17])
    dec.advance([START, 17, 42, 9, 99, 3])  # rejected 99 and 3 stay in the buffer after the crop
    dec.crop(4)
    tokens = [START, 17, 42, 9, 55, 23, 8]
    cached = dec.advance(tokens)
    with torch.no_grad():
        full = target(input_ids=ids, decoder_input_ids=torch.tensor([tokens]), use_cache=False).logits[0]
    # 1e-4: the cached keys of 42 and 9 came from a 4-token call, the recomputation's from a 7-token
    # one; float32 rounding differs at ~1e-5 on these large-weight models. Attending to a stale
    # (rejected) entry would be off by O(1).
    torch.testing.assert_close(cached, full[-3:], rtol=1e-4, atol=1e-4)
    assert dec.length == 7


def test_static_cache_speculative_sampling_matches_the_dynamic_cache_draw_for_draw(target, random_draft):
    def run(impl: str):
        return speculative_generate(
            target, random_draft, prompt(2), gamma=3, max_new_tokens=MAX_NEW, do_sample=True, top_k=20,
            generator=torch.Generator().manual_seed(3), cache_implementation=impl,
        )

    dynamic, static = run("dynamic"), run("static")
    assert static.sequences.tolist() == dynamic.sequences.tolist() and static.accepted == dynamic.accepted


@pytest.mark.slow
def test_compiled_static_cache_sd_equals_greedy_generate_and_reuses_its_graphs():
    """torch.compile on CPU (inductor): ~30-60 s, most of it compiling the first call's graphs."""
    target, draft = tiny_t5(20, d_model=32, layers=2), tiny_t5(21, d_model=32, layers=1)
    kw = dict(gamma=3, max_new_tokens=12, cache_implementation="static", compile=True)
    for seed in range(2):
        ids = prompt(seed)
        expected = target.generate(ids, max_new_tokens=12, do_sample=False).tolist()
        assert speculative_generate(target, draft, ids, **kw).sequences.tolist() == expected
    assert target._spactor_compiled is not None and draft._spactor_compiled is not target._spactor_compiled
    assert "_spactor_compiled" not in "".join(target.state_dict())
    assert torch._dynamo.config.recompile_limit >= 64  # target + draft graphs do not fall back to eager


# ------------------------------------------------------------------------------------------------
# Batched SD: rows accept different numbers of draft tokens
# ------------------------------------------------------------------------------------------------


def perturbed(model, seed: int, noise: float):
    """A copy of ``model`` with Gaussian noise on its weights: a draft that agrees only partly."""
    import copy

    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in other.parameters():
            param.add_(noise * param.std() * torch.randn(param.shape, generator=g))
    return other


def padded_batch(seeds_and_lengths):
    rows = [prompt(seed, length=length)[0] for seed, length in seeds_and_lengths]
    ids = torch.full((len(rows), max(len(r) for r in rows)), PAD, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    return rows, ids, mask


@pytest.mark.parametrize("gamma", [1, 3, 5])
def test_batched_greedy_sd_equals_each_rows_greedy_decoding_token_for_token(target, random_draft, eos_prompt, gamma):
    rows, ids, mask = padded_batch([(1, 12), (2, 7), (3, 10), (4, 12), (5, 5)])
    rows.append(eos_prompt[0])  # a row that stops at EOS while the others go on
    ids = torch.cat([ids, torch.cat([eos_prompt, ids.new_full((1, ids.shape[1] - 12), PAD)], 1)])
    mask = torch.cat([mask, torch.cat([torch.ones(1, 12, dtype=torch.long), mask.new_zeros(1, ids.shape[1] - 12)], 1)])
    expected = [target.generate(r[None], max_new_tokens=MAX_NEW, do_sample=False)[0].tolist() for r in rows]
    width = max(len(e) for e in expected)
    expected = [e + [PAD] * (width - len(e)) for e in expected]  # generate's layout for a batch
    half_right = perturbed(target, 0, 0.6)
    per_call_spread = False
    for draft in (target, random_draft, half_right):
        out = speculative_generate(target, draft, ids, mask, gamma=gamma, max_new_tokens=MAX_NEW)
        assert out.sequences.tolist() == expected
        if draft is target:
            assert out.accepted == out.drafted
        per_call_spread |= len(set(out.accepted)) > 1
    assert per_call_spread  # rows really accepted different numbers of tokens
    hf = target.generate(ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False)
    assert hf.tolist() == expected


def test_batched_greedy_sd_with_adaptive_gamma_equals_greedy_decoding(target):
    rows, ids, mask = padded_batch([(6, 9), (7, 12), (8, 4)])
    expected = target.generate(ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False).tolist()
    for draft in (perturbed(target, 1, 0.4), target):
        out = speculative_generate(target, draft, ids, mask, gamma=2, max_new_tokens=MAX_NEW, adaptive_gamma=True)
        assert out.sequences.tolist() == expected
    # every row of a perfect draft is fully accepted, so the shared block grows to 2 * gamma
    blocks = [block for block, _ in itertools.groupby(out.drafted)]
    assert blocks[:3] == [2, 3, 4] and max(out.drafted) <= 4


def test_batched_speculative_sampling_first_two_tokens_follow_the_warped_target_distribution():
    batch, calls = 50, 30
    target, draft, ids, warp, exact, generator = sampling_pair(1)
    counts = dict.fromkeys(exact, 0)
    for _ in range(calls):
        out = speculative_generate(
            target, draft, ids.expand(batch, -1), gamma=2, max_new_tokens=2, do_sample=True,
            generator=generator, **warp,
        )
        for row in out.sequences[:, 1:].tolist():
            counts[tuple(row[: row.index(EOS) + 1] if EOS in row else row)] += 1
    assert_counts_follow(counts, exact, batch * calls)


def test_batched_sd_runs_each_encoder_once_and_counts_batched_calls(target, random_draft):
    rows, ids, mask = padded_batch([(1, 12), (2, 9), (3, 6)])
    calls = {"target": 0, "draft": 0}
    hooks = [
        target.get_encoder().register_forward_hook(lambda *a: calls.__setitem__("target", calls["target"] + 1)),
        random_draft.get_encoder().register_forward_hook(lambda *a: calls.__setitem__("draft", calls["draft"] + 1)),
    ]
    try:
        out = speculative_generate(target, random_draft, ids, mask, gamma=3, max_new_tokens=MAX_NEW)
    finally:
        for h in hooks:
            h.remove()
    assert calls == {"target": 1, "draft": 1}
    # one entry per (target call, row it verified); a random draft is almost never right
    assert len(out.accepted) >= out.num_target_calls and out.acceptance_rate < 0.3
    # generated tokens per row: up to and including the first EOS (padding follows it), else all
    generated = [row[1:].index(EOS) + 1 if EOS in row[1:] else len(row) - 1 for row in out.sequences.tolist()]
    assert out.new_tokens_per_row == generated and out.num_new_tokens == sum(generated)
    assert out.block_efficiency == pytest.approx(sum(generated) / len(out.accepted))
    assert out.num_target_calls <= MAX_NEW


# ------------------------------------------------------------------------------------------------
# Closed forms
# ------------------------------------------------------------------------------------------------


def test_expected_speedup_and_block_efficiency_match_the_closed_forms():
    assert expected_block_efficiency(0.0, 5) == 1.0
    assert expected_block_efficiency(1.0, 5) == 6.0
    assert expected_block_efficiency(0.8, 4) == pytest.approx((1 - 0.8**5) / 0.2)  # 3.3616
    assert expected_speedup(0.8, 4, 0.0) == pytest.approx(3.3616)
    assert expected_speedup(0.8, 4, 0.05) == pytest.approx(3.3616 / 1.2)
    assert expected_speedup(0.0, 3, 0.1) == pytest.approx(1 / 1.3)  # a useless draft only costs
    assert expected_speedup(1.0, 3, 0.1) == pytest.approx(4 / 1.3)
    assert expected_speedup(1 - 1e-9, 3, 0.1) == pytest.approx(4 / 1.3)  # continuous at alpha = 1
    with pytest.raises(ValueError, match="alpha"):
        expected_speedup(1.2, 3, 0.1)
    with pytest.raises(ValueError, match="c="):
        expected_speedup(0.5, 3, -1.0)


@settings(max_examples=12, deadline=None)
@given(
    lengths=st.lists(st.integers(2, 12), min_size=2, max_size=5),
    gamma=st.integers(1, 6),
    max_new=st.integers(1, 16),
    noise=st.sampled_from([0.2, 0.8]),
    seed=st.integers(0, 10_000),
)
def test_batched_greedy_sd_equals_per_row_greedy_for_any_batch_shape(target, lengths, gamma, max_new, noise, seed):
    rows, ids, mask = padded_batch([(seed + i, length) for i, length in enumerate(lengths)])
    draft = perturbed(target, seed, noise)
    out = speculative_generate(target, draft, ids, mask, gamma=gamma, max_new_tokens=max_new)
    expected = [target_generate(target, row[None], max_new_tokens=max_new).sequences[0].tolist() for row in rows]
    width = max(len(e) for e in expected)
    assert out.sequences.tolist() == [e + [PAD] * (width - len(e)) for e in expected]
    assert all(0 <= a <= d <= gamma for a, d in zip(out.accepted, out.drafted))


def test_engine_clocks_synchronise_on_cuda_and_add_no_sync_on_cpu(monkeypatch):
    from models import speculative

    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    speculative._now(torch.device("cpu"))
    assert calls == []
    speculative._now(torch.device("cuda", 0))
    assert calls == [torch.device("cuda", 0)]


def test_adaptive_gamma_grows_after_full_acceptance_shrinks_after_a_rejection_and_stays_in_1_to_2_gamma():
    from models.speculative import adapt_block

    assert adapt_block(4, 4, full=True) == 5 and adapt_block(4, 4, full=False) == 3
    block = 3
    for full in [True] * 10 + [False] * 10:
        block = adapt_block(block, 3, full=full)
        assert 1 <= block <= 6
    assert block == 1 and adapt_block(6, 3, full=True) == 6


@pytest.mark.slow
def test_compiled_t5_target_decoding_compiles_one_decoder_graph_for_one_token_steps():
    """The first decoder call (which fills the cross-attention cache) runs uncompiled, so every compiled call sees
    the same filled cache: one graph for one-token steps, whatever the number of prompts of that length."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = tiny_t5(22, d_model=32, layers=1)
    for seed in range(2):
        ids = prompt(seed)
        out = target_generate(model, ids, max_new_tokens=6, cache_implementation="static", compile=True)
        assert out.sequences.tolist() == model.generate(ids, max_new_tokens=6, do_sample=False).tolist()
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.slow
def test_compiled_sd_verifies_every_block_in_one_target_graph_even_blocks_cut_at_the_budget():
    """Verifications are padded to gamma + 1 tokens (CachedDecoder.advance(pad_to=...)), so a block cut at the
    budget (max_new_tokens 11, gamma 3: the last block is short) runs the same graph: at most three graphs in all,
    the target's verification and the draft's one- and two-token steps; outputs still equal generate's."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    target, draft = tiny_t5(23, d_model=32, layers=2), tiny_t5(24, d_model=32, layers=1)
    for seed, budget in ((0, 11), (1, 9)):
        ids = prompt(seed)
        out = speculative_generate(target, draft, ids, gamma=3, max_new_tokens=budget, cache_implementation="static",
                                   compile=True)
        assert out.sequences.tolist() == target.generate(ids, max_new_tokens=budget, do_sample=False).tolist()
    assert counters["stats"]["unique_graphs"] <= 3
