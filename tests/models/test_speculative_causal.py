"""Speculative decoding with decoder-only (causal) LMs through the same public function,
``models.speculative.speculative_generate``: tiny random Llama models, the exactness tests of the T5 engine."""

import pytest
import torch

from models.speculative import speculative_generate, target_generate
from tests.models.test_speculative import assert_counts_follow

from models.sd.verify import sampling_distribution

PAD, EOS, BOS = 0, 1, 2


def llama(seed: int, *, layers: int = 2, hidden: int = 32, vocab: int = 64, scale: float = 1.0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      eos_token_id=EOS, pad_token_id=PAD, bos_token_id=BOS)
    model = LlamaForCausalLM(cfg).eval()
    if scale != 1.0:
        with torch.no_grad():
            model.lm_head.weight.mul_(scale)
    return model


@pytest.fixture(scope="module")
def target():
    return llama(0, layers=3, hidden=48)


@pytest.fixture(scope="module")
def random_draft():
    return llama(1)


def greedy(model, ids, mask=None, *, max_new_tokens, eos=None):
    kwargs = dict(eos_token_id=eos, pad_token_id=PAD)
    if eos is None:
        kwargs["min_new_tokens"] = max_new_tokens
    return model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, **kwargs)


PROMPT = torch.tensor([[BOS, 5, 9, 11, 7, 30]])


@pytest.mark.parametrize("gamma", [1, 3, 5])
def test_causal_greedy_sd_with_a_random_draft_equals_greedy_generate_token_for_token(target, random_draft, gamma):
    ref = greedy(target, PROMPT, max_new_tokens=20)
    out = speculative_generate(target, random_draft, PROMPT, gamma=gamma, max_new_tokens=20, eos_token_id=[])
    assert out.sequences.tolist() == ref.tolist()  # the prompt, then the new tokens, as generate lays them out
    assert out.num_new_tokens == 20


@pytest.mark.parametrize("gamma", [1, 4])
def test_causal_greedy_sd_with_the_target_as_its_own_draft_accepts_every_draft(target, gamma):
    ref = greedy(target, PROMPT, max_new_tokens=20)
    out = speculative_generate(target, target, PROMPT, gamma=gamma, max_new_tokens=20, eos_token_id=[])
    assert out.sequences.tolist() == ref.tolist()
    assert all(a == d for a, d in zip(out.accepted, out.drafted))
    assert out.num_target_calls == -(-20 // (gamma + 1))


def test_causal_target_generate_and_the_static_cache_equal_greedy_generate(target, random_draft):
    ref = greedy(target, PROMPT, max_new_tokens=16)
    assert target_generate(target, PROMPT, max_new_tokens=16, eos_token_id=[]).sequences.tolist() == ref.tolist()
    out = speculative_generate(target, random_draft, PROMPT, gamma=3, max_new_tokens=16, eos_token_id=[],
                               cache_implementation="static")
    assert out.sequences.tolist() == ref.tolist()
    one = torch.tensor([[BOS]])  # a one-token prompt: nothing to prefill
    assert speculative_generate(target, random_draft, one, gamma=2, max_new_tokens=8, eos_token_id=[]).sequences.tolist() \
        == greedy(target, one, max_new_tokens=8).tolist()


@pytest.mark.parametrize("gamma", [1, 3])
def test_causal_batched_greedy_sd_with_left_padding_equals_batched_generate(target, random_draft, gamma):
    ids = torch.tensor([[PAD, PAD, BOS, 5, 9], [BOS, 7, 8, 9, 10], [PAD, BOS, 3, 4, 5], [PAD, PAD, PAD, BOS, 6]])
    mask = ids.ne(PAD).long()
    ref = greedy(target, ids, mask, max_new_tokens=12)
    out = speculative_generate(target, random_draft, ids, mask, gamma=gamma, max_new_tokens=12, eos_token_id=[])
    assert out.sequences.tolist() == ref.tolist()
    # with an EOS that rows reach at different steps: finished rows leave, and are padded as generate pads them
    eos = ref[0, 5 + 4].item()  # a token row 0 emits at its 5th step
    ref_eos = greedy(target, ids, mask, max_new_tokens=12, eos=eos)
    out_eos = speculative_generate(target, random_draft, ids, mask, gamma=gamma, max_new_tokens=12, eos_token_id=eos)
    assert out_eos.sequences.tolist() == ref_eos.tolist()


def test_causal_prompts_must_be_left_padded_and_kinds_must_match(target, random_draft):
    ids = torch.tensor([[BOS, 5, PAD], [BOS, 7, 8]])
    with pytest.raises(ValueError, match="left-padded"):
        speculative_generate(target, random_draft, ids, ids.ne(PAD).long(), gamma=2, max_new_tokens=4)
    with pytest.raises(ValueError, match="left-padded"):  # one right-padded row too
        speculative_generate(target, random_draft, ids[:1], ids[:1].ne(PAD).long(), gamma=2, max_new_tokens=4)
    from tests.models.test_speculative import tiny_t5

    with pytest.raises(ValueError, match="decoder-only but the target is encoder-decoder"):
        speculative_generate(tiny_t5(0, vocab=64), random_draft, PROMPT, gamma=2, max_new_tokens=4)


def first_two_tokens_law(model, ids: torch.Tensor, warp: dict) -> dict[tuple[int, ...], float]:
    """Exact law of the first two sampled tokens (or EOS alone) after ``ids``, from the warped model."""
    exact = {}
    with torch.no_grad():
        p1 = sampling_distribution(model(input_ids=ids).logits[0, -1], **warp)
        for x1 in range(model.config.vocab_size):
            if p1[x1] == 0:
                continue
            if x1 == EOS:
                exact[(x1,)] = float(p1[x1])
                continue
            p2 = sampling_distribution(model(input_ids=torch.cat([ids, torch.tensor([[x1]])], 1)).logits[0, -1], **warp)
            for x2 in range(model.config.vocab_size):
                if p2[x2] > 0:
                    exact[(x1, x2)] = float(p1[x1] * p2[x2])
    return exact


def test_causal_speculative_sampling_first_two_tokens_follow_the_warped_target_distribution():
    target, draft = llama(10, layers=1, vocab=6, scale=30.0), llama(11, layers=1, vocab=6, scale=30.0)
    assert_first_two_sampled_tokens_follow_the_target(target, draft)


def assert_first_two_sampled_tokens_follow_the_target(target, draft) -> None:
    """Speculative sampling with ``draft`` (gamma 2, temperature 1.3, top-k 4), 1,500 draws of the first two new
    tokens after a fixed prompt, against their exact law under the warped ``target`` (chi-square)."""
    ids = torch.tensor([[BOS, 3, 4, 5, 3]])
    warp = dict(temperature=1.3, top_k=4)
    exact = first_two_tokens_law(target, ids, warp)
    generator = torch.Generator().manual_seed(0)
    counts = dict.fromkeys(exact, 0)
    draws = 1500
    for _ in range(draws):
        out = speculative_generate(target, draft, ids, gamma=2, max_new_tokens=2, do_sample=True, generator=generator,
                                   **warp)
        counts[tuple(out.sequences[0, ids.shape[1]:].tolist())] += 1  # KeyError = a token p gives probability 0
    assert_counts_follow(counts, exact, draws)


@pytest.mark.slow
def test_compiled_causal_sd_is_exact_and_compiles_no_new_graph_for_a_prompt_of_another_length():
    """The prefill runs uncompiled and the static cache is sized in buckets (kv_cache.STATIC_BUCKET), so prompts
    of 6 and 9 tokens share every graph; torch.compile on CPU, ~30-60 s."""
    from torch._dynamo.utils import counters

    tgt, drf = llama(30, layers=2), llama(31, layers=1)
    kw = dict(gamma=2, max_new_tokens=8, eos_token_id=[], cache_implementation="static", compile=True)
    short, longer = PROMPT, torch.tensor([[BOS, 5, 9, 11, 7, 30, 4, 8, 12]])
    assert speculative_generate(tgt, drf, short, **kw).sequences.tolist() == greedy(tgt, short, max_new_tokens=8).tolist()
    graphs = counters["stats"]["unique_graphs"]
    assert speculative_generate(tgt, drf, longer, **kw).sequences.tolist() == \
        greedy(tgt, longer, max_new_tokens=8).tolist()
    assert counters["stats"]["unique_graphs"] == graphs
