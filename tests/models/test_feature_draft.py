"""The feature-level draft (EAGLE; ``models.sd.feature_draft``) in the SD engine and its training
(``engine.feature_draft``): SD with it stays exact (greedy equals ``generate``, sampling follows the target), the
drafter pairs each committed token with the target's feature that produced it (a draft trained on the target's
features is then accepted almost always), and it saves and loads."""

import pytest
import torch

from engine.feature_draft import collect_features, target_greedy_sequences, train_feature_draft
from engine.sd_bench import run_batched_benchmark, run_benchmark
from models.sd.bench import BenchPrompt, BenchSettings
from models.sd.feature_draft import FeatureTap, load_feature_draft, make_feature_draft, save_feature_draft
from models.speculative import speculative_generate
from tests.models.test_speculative_causal import (BOS, PAD, PROMPT, assert_first_two_sampled_tokens_follow_the_target,
                                                 greedy, llama)


@pytest.fixture(scope="module")
def target():
    return llama(0, layers=3, hidden=48)


def fresh(target, seed=1, **kw):
    return make_feature_draft(target, generator=torch.Generator().manual_seed(seed), **kw).eval()


@pytest.mark.parametrize("gamma", [1, 3, 5])
def test_greedy_sd_with_an_untrained_feature_draft_equals_greedy_generate_token_for_token(target, gamma):
    ref = greedy(target, PROMPT, max_new_tokens=20)
    out = speculative_generate(target, fresh(target), PROMPT, gamma=gamma, max_new_tokens=20, eos_token_id=[])
    assert out.sequences.tolist() == ref.tolist()
    assert out.num_new_tokens == 20 and out.num_draft_calls > 0


def test_static_cache_one_token_prompts_and_a_frequent_token_head_keep_greedy_sd_exact(target):
    ref = greedy(target, PROMPT, max_new_tokens=12)
    out = speculative_generate(target, fresh(target), PROMPT, gamma=3, max_new_tokens=12, eos_token_id=[],
                               cache_implementation="static")
    assert out.sequences.tolist() == ref.tolist()
    one = torch.tensor([[BOS]])  # nothing prefilled: a zero feature stands in for the first pair
    assert speculative_generate(target, fresh(target), one, gamma=2, max_new_tokens=8, eos_token_id=[]
                                ).sequences.tolist() == greedy(target, one, max_new_tokens=8).tolist()
    small_head = fresh(target, head_token_ids=list(range(0, 64, 3)))  # most tokens it can never propose
    out = speculative_generate(target, small_head, PROMPT, gamma=3, max_new_tokens=12, eos_token_id=[])
    assert out.sequences.tolist() == ref.tolist()


def test_the_tap_is_removed_after_the_call_so_the_target_runs_unhooked(target):
    speculative_generate(target, fresh(target), PROMPT, gamma=2, max_new_tokens=4, eos_token_id=[])
    assert not target.get_decoder()._forward_hooks
    with FeatureTap(target) as tap:
        target(PROMPT)
        assert tap.last.shape == (1, PROMPT.shape[1], 48)
    assert not target.get_decoder()._forward_hooks


def test_a_feature_draft_trained_on_the_targets_features_is_accepted_almost_always_where_untrained_it_is_not(
        target, monkeypatch):
    """The drafter must pair token x_{i+1} with the target's feature f_i exactly as training does: an
    off-by-one pairing at decoding time would make the memorised draft useless."""
    prompts = [PROMPT[0].tolist(), [BOS, 7, 8, 9, 10, 11], [BOS, 3, 4]]
    seqs = target_greedy_sequences(target, prompts, max_new_tokens=24, batch_size=2, pad_id=PAD)
    assert [len(s) - n for s, n in seqs] == [24, 24, 24] and [n for _, n in seqs] == [6, 6, 3]
    examples = collect_features(target, seqs, batch_size=2)
    with torch.no_grad():  # teacher-forced features, left padding removed, equal the one-row forward's
        alone = target.get_decoder()(input_ids=torch.tensor([seqs[2][0]])).last_hidden_state[0]
    assert torch.allclose(examples[2].features, alone, atol=1e-4)
    untrained = fresh(target)
    draft = fresh(target)
    history = train_feature_draft(draft, examples, steps=600, batch_size=3, lr=3e-3, warmup_steps=10,
                                  generator=torch.Generator().manual_seed(0), log_every=200)
    assert history[-1]["top1"] > 0.85 and history[-1]["loss"] < history[0]["loss"]
    rates = {"before": [], "after": []}
    for p in prompts:
        ids = torch.tensor([p])
        ref = greedy(target, ids, max_new_tokens=24)
        for name, d in (("before", untrained), ("after", draft)):
            out = speculative_generate(target, d, ids, gamma=4, max_new_tokens=24, eos_token_id=[])
            assert out.sequences.tolist() == ref.tolist()
            rates[name].append(out.acceptance_rate)
    mean = {k: sum(v) / len(v) for k, v in rates.items()}
    assert mean["after"] > 0.8 and mean["before"] < 0.3, rates
    # Before it, prompt lookup (models.sd.lookup): the feature draft drafts only the rounds nothing can be copied
    # in, and must still read the features of the tokens the copied rounds committed (else it is rejected there)
    import models.speculative as sd
    from models.sd.lookup import LookupDrafter, PromptLookupDraft

    drafters: list[LookupDrafter] = []

    class Kept(LookupDrafter):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            drafters.append(self)

    monkeypatch.setattr(sd, "LookupDrafter", Kept)
    for p in prompts:
        ids = torch.tensor([p])
        out = speculative_generate(target, PromptLookupDraft(64, max_ngram=2, min_ngram=2, fallback=draft), ids,
                                   gamma=4, max_new_tokens=24, eos_token_id=[])
        assert out.sequences.tolist() == greedy(target, ids, max_new_tokens=24).tolist()
    rounds = [r for d in drafters for r in d.rounds]
    after_copy = [r for prev, r in zip(rounds, rounds[1:]) if prev[0] == "lookup" and r[0] == "fallback"]
    assert {"lookup", "fallback"} <= {r[0] for r in rounds} and after_copy, rounds
    assert sum(r[2] for r in after_copy) / sum(r[1] for r in after_copy) > 0.8, after_copy


def test_speculative_sampling_with_a_feature_draft_follows_the_warped_target_distribution():
    target = llama(10, layers=1, vocab=6, scale=30.0)
    draft = make_feature_draft(target, generator=torch.Generator().manual_seed(3)).eval()
    with torch.no_grad():
        draft.head.weight.mul_(30.0)  # a confident draft that is often wrong: the rejection path is exercised
    assert_first_two_sampled_tokens_follow_the_target(target, draft)


def test_a_feature_draft_refuses_batches_and_encoder_decoder_targets_in_one_line(target):
    ids = torch.tensor([[BOS, 5, 9], [BOS, 7, 8]])
    with pytest.raises(ValueError, match="one prompt at a time; got batch size 2"):
        speculative_generate(target, fresh(target), ids, gamma=2, max_new_tokens=4)


def test_a_saved_feature_draft_loads_with_the_same_outputs(target, tmp_path):
    draft = fresh(target, head_token_ids=[0, 1, 2, 5, 9, 11])
    save_feature_draft(draft, tmp_path / "fd")
    back = load_feature_draft(tmp_path / "fd")
    feats, toks = torch.randn(1, 5, 48), torch.tensor([[3, 4, 5, 6, 7]])
    with torch.no_grad():
        a, b = draft(feats, toks), back(feats, toks)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert back.head_token_ids == [0, 1, 2, 5, 9, 11]


def test_the_sd_benchmark_times_a_feature_draft_without_hf_assisted_or_batched_rows(target):
    prompts = [BenchPrompt(input_ids=[BOS, 5, 9, 11, 5, 9], reference="w5 w9"), BenchPrompt(input_ids=[BOS, 7, 8])]
    s = BenchSettings(gammas=(2,), modes=("greedy",), max_new_tokens=6, repeats=1, warmup=0)
    rows = run_benchmark(target, {"feature": fresh(target)}, prompts, s)
    sd = next(r for r in rows if r["method"] == "sd")
    assert sd["exact"] and sd["c"] > 0 and sd["draft"] == "feature"
    assert not [r for r in rows if r["method"] == "hf_assisted"]
    batched = run_batched_benchmark(target, {"feature": fresh(target)}, prompts, s, batch_sizes=[2])
    assert {r["method"] for r in batched} == {"hf_generate"}


def test_unrolled_training_scores_every_pass_and_refuses_a_zero_unroll(target):
    seqs = target_greedy_sequences(target, [PROMPT[0].tolist()], max_new_tokens=8, batch_size=1, pad_id=PAD)
    examples = collect_features(target, seqs, batch_size=1)
    runs = {}
    for unroll in (1, 2):
        draft = fresh(target)
        runs[unroll] = train_feature_draft(draft, examples, steps=1, batch_size=1, lr=0.0, warmup_steps=1,
                                           unroll=unroll, generator=torch.Generator().manual_seed(0))[-1]
    # lr 0: the same weights; the second pass adds its own (positive) loss on top of the first pass's
    assert runs[2]["loss"] > runs[1]["loss"] and runs[2]["top1"] == runs[1]["top1"]
    with pytest.raises(ValueError, match="unroll=0 must be >= 1"):
        train_feature_draft(fresh(target), examples, steps=1, batch_size=1, lr=1e-3, unroll=0,
                            generator=torch.Generator())


def test_bf16_rows_decode_target_and_feature_draft_as_bf16_copies_and_on_a_tiny_target_stay_exact(target):
    """The SD benchmark's bf16 precision: the target-only baseline and SD both decode bf16 copies (the caller's
    fp32 models untouched), and greedy SD with a feature draft equals the bf16 target's own decoding."""
    prompts = [BenchPrompt(input_ids=[BOS, 5, 9, 11, 5, 9]), BenchPrompt(input_ids=[BOS, 7, 8])]
    s = BenchSettings(gammas=(1, 3), modes=("greedy",), max_new_tokens=8, repeats=1, warmup=0, precision="bf16")
    draft = fresh(target)
    rows = run_benchmark(target, {"feature": draft, "self": target}, prompts, s)
    assert {r["precision"] for r in rows} == {"bf16"}
    assert all(r["exact"] for r in rows if r["method"] == "sd")
    assert {p.dtype for p in target.parameters()} == {p.dtype for p in draft.parameters()} == {torch.float32}


def test_the_sd_benchmark_adds_prompt_lookup_alone_and_before_each_feature_draft_exact_and_batch_1(target):
    prompts = [BenchPrompt(input_ids=[BOS, 5, 9, 11, 5, 9], reference="w5 w9"), BenchPrompt(input_ids=[BOS, 7, 8])]
    s = BenchSettings(gammas=(2,), modes=("greedy", "sampling"), max_new_tokens=6, repeats=1, warmup=0,
                      prompt_lookup=2)
    rows = run_benchmark(target, {"feature": fresh(target)}, prompts, s)
    sd = [r for r in rows if r["method"] == "sd"]
    assert {r["draft"] for r in sd} == {"feature", "lookup", "lookup-else-feature"}
    assert all(r["exact"] for r in sd if r["mode"] == "greedy")
    c = {r["draft"]: r["c"] for r in sd}
    assert c["lookup"] < 0.05 < c["lookup-else-feature"]  # a copied draft costs no model call; the fallback does
    assert not [r for r in rows if r["method"] == "hf_assisted"]
    batched = run_batched_benchmark(target, {"feature": fresh(target)}, prompts, s, batch_sizes=[2])
    assert {r["method"] for r in batched} == {"hf_generate"}
