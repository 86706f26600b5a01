"""Prompt-lookup drafting in the SD engine (``models.sd.lookup``): the continuation it copies, and SD with it
(alone or before a feature draft) exact for greedy decoding and faithful to the target for sampling."""

import pytest
import torch

from models.sd.feature_draft import make_feature_draft
from models.sd.lookup import PromptLookupDraft, lookup_continuation
from models.speculative import speculative_generate
from tests.models.test_speculative_causal import BOS, assert_first_two_sampled_tokens_follow_the_target, greedy, llama


def test_the_continuation_follows_the_latest_earlier_occurrence_of_the_longest_matching_ngram():
    seq = [5, 6, 7, 1, 6, 7, 2, 3, 9, 6, 7]
    assert lookup_continuation(seq, 3, max_ngram=2) == [2, 3, 9]  # "6 7" last seen before position 4
    assert lookup_continuation(seq, 3, max_ngram=3) == [2, 3, 9]  # "9 6 7" never occurred: fall to "6 7"
    assert lookup_continuation([5, 6, 7, 8, 1, 5, 6], 2, max_ngram=2) == [7, 8]
    assert lookup_continuation([4, 8, 9, 4], 5, max_ngram=3) == [8, 9, 4]  # the copy may run into the tail
    assert lookup_continuation([4, 8, 9, 4], 5, max_ngram=3, min_ngram=2) == []  # only a unigram matches
    assert lookup_continuation([4, 8, 1, 9, 4], 5, max_ngram=1, eos=frozenset({1})) == [8, 1]  # cut after EOS
    assert lookup_continuation([3, 4, 5], 4, max_ngram=3) == [] and lookup_continuation([3], 4, max_ngram=3) == []
    assert lookup_continuation([4, 8, 4], 0, max_ngram=1) == []


def test_the_drafter_looks_up_the_prompt_too_whose_last_token_starts_the_engines_row():
    from models.sd.lookup import LookupDrafter

    prompt = [BOS, 5, 9, 11, 7, 30, 5, 9]
    drafter = LookupDrafter(PromptLookupDraft(64, max_ngram=2), None, prompt, do_sample=False, eos=frozenset(),
                            device=torch.device("cpu"))
    assert drafter.propose([[9]], 3) == ([[11, 7, 30]], None)  # "5 9" occurred in the prompt before
    assert drafter.propose([[9, 11, 40]], 2) == ([[]], None)  # "11 40" and "40" never occurred
    drafter.update([0], [0], [[9, 11, 40]])
    assert drafter.rounds == [["lookup", 3, 0], ["none", 0, 0]]


@pytest.fixture(scope="module")
def target():
    return llama(0, layers=3, hidden=48)


@pytest.mark.parametrize("gamma", [1, 3, 5])
@pytest.mark.parametrize("hybrid", [False, True])
def test_greedy_sd_with_prompt_lookup_equals_greedy_generate_token_for_token(target, gamma, hybrid):
    fallback = make_feature_draft(target, generator=torch.Generator().manual_seed(1)) if hybrid else None
    draft = PromptLookupDraft(64, max_ngram=3, fallback=fallback)
    for prompt in ([BOS, 5, 9, 11, 5, 9, 11, 5], [BOS, 7, 8], [BOS, 3]):
        ids = torch.tensor([prompt])
        out = speculative_generate(target, draft, ids, gamma=gamma, max_new_tokens=20, eos_token_id=[])
        assert out.sequences.tolist() == greedy(target, ids, max_new_tokens=20).tolist()
        assert sum(out.drafted) > 0 and (out.num_draft_calls > 0) == hybrid


def test_speculative_sampling_with_copied_drafts_follows_the_warped_target_distribution():
    target = llama(10, layers=1, vocab=6, scale=30.0)
    assert_first_two_sampled_tokens_follow_the_target(target, PromptLookupDraft(6, max_ngram=2))
    hybrid = PromptLookupDraft(6, max_ngram=2, min_ngram=2,
                               fallback=make_feature_draft(target, generator=torch.Generator().manual_seed(3)).eval())
    assert_first_two_sampled_tokens_follow_the_target(target, hybrid)


def test_a_prompt_lookup_draft_refuses_what_it_cannot_do_in_one_line(target):
    from tests.models.test_speculative import prompt, tiny_t5

    with pytest.raises(ValueError, match="min_ngram"):
        PromptLookupDraft(64, max_ngram=1, min_ngram=2)
    with pytest.raises(ValueError, match="feature draft"):
        PromptLookupDraft(64, fallback=llama(1))
    with pytest.raises(ValueError, match="vocabulary"):
        PromptLookupDraft(65, fallback=make_feature_draft(target, generator=torch.Generator().manual_seed(1)))
    with pytest.raises(ValueError, match="one prompt at a time; got batch size 2"):
        speculative_generate(target, PromptLookupDraft(64), torch.tensor([[BOS, 5, 9], [BOS, 7, 8]]), gamma=2,
                             max_new_tokens=4)
    with pytest.raises(ValueError, match="encoder-decoder|T5 target"):
        t5 = tiny_t5(0)
        speculative_generate(t5, PromptLookupDraft(t5.config.vocab_size), prompt(0), gamma=2, max_new_tokens=4)
