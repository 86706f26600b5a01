"""The SD benchmark on decoder-only pairs (tiny random Llamas): the same table as for T5s, new tokens counted
without the prompt, prompt-lookup decoding beside HF assisted generation, batched SD on left-padded prompts."""

import pytest

from engine.sd_bench import run_batched_benchmark, run_benchmark
from models.sd.bench import BenchPrompt, BenchSettings
from tests.models.test_speculative_causal import llama


@pytest.fixture(scope="module")
def pair():
    return llama(0, layers=3, hidden=48, scale=30.0), llama(0, layers=3, hidden=48, scale=30.0)


PROMPTS = [BenchPrompt(input_ids=[2, 5, 9, 11, 5, 9], reference="w5 w9"), BenchPrompt(input_ids=[2, 7, 8])]


def test_a_causal_target_with_itself_as_draft_is_exact_and_every_method_counts_only_new_tokens(pair):
    target, draft = pair
    s = BenchSettings(gammas=(2,), modes=("greedy", "sampling"), max_new_tokens=8, repeats=1, warmup=0)
    rows = run_benchmark(target, {"self": draft}, PROMPTS, s, decode=lambda ids: " ".join(f"w{t}" for t in ids))
    methods = {(r["mode"], r["method"]) for r in rows}
    assert {("greedy", m) for m in ("target", "hf_generate", "sd", "hf_assisted", "hf_prompt_lookup")} <= methods
    greedy = [r for r in rows if r["mode"] == "greedy"]
    assert all(r["exact"] for r in greedy), [(r["method"], r["exact"]) for r in greedy]
    # a self-draft accepts everything; the counts are of new tokens (at most max_new_tokens per prompt)
    sd = next(r for r in greedy if r["method"] == "sd")
    assert sd["alpha"] == pytest.approx(1.0) and 0 < sd["new_tokens"] <= 2 * 8
    assert {r["new_tokens"] for r in greedy} == {sd["new_tokens"]}
    assert 0.0 <= sd["rougeL"] <= 1.0 and sd["c"] > 0


def test_batched_causal_sd_on_left_padded_prompts_equals_batched_generate(pair):
    target, _ = pair
    other = llama(1, layers=1, hidden=32)
    rows = run_batched_benchmark(target, {"small": other}, PROMPTS, BenchSettings(gammas=(2,), max_new_tokens=6,
                                                                                  repeats=1, warmup=0),
                                 batch_sizes=[2], include_unbatched=True)
    assert {r["method"] for r in rows} == {"hf_generate", "sd", "sd_b1"}
    assert all(r["exact"] for r in rows)
