"""Tests for the SD benchmark (engine/sd_bench.py and its pure half models/sd/bench.py): the alpha estimator, prompt building, vocabulary checks, the plain-script run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from engine.sd_bench import markdown_table, run_benchmark, to_frame
from models.sd.bench import COLUMNS, BenchPrompt, BenchSettings, estimate_alpha, iqr
from models.sd.verify import expected_block_efficiency
from models.speculative import SpeculativeOutput, check_compatible


def simulate_blocks(alpha: float, gamma: int, blocks: int, rng: np.random.Generator) -> list[int]:
    """Accepted counts of SD blocks under the i.i.d. model: accept each position w.p. alpha, stop at a rejection."""
    out = []
    for _ in range(blocks):
        n = 0
        while n < gamma and rng.random() < alpha:
            n += 1
        out.append(n)
    return out


@pytest.mark.parametrize("alpha,gamma", [(0.6, 4), (0.3, 2), (0.9, 7)])
def test_estimate_alpha_recovers_the_iid_acceptance_rate_where_accepted_over_drafted_does_not(alpha, gamma):
    accepted = simulate_blocks(alpha, gamma, 20_000, np.random.default_rng(0))
    drafted = [gamma] * len(accepted)
    assert abs(estimate_alpha(accepted, drafted) - alpha) < 0.01
    naive = sum(accepted) / sum(drafted)
    assert naive < alpha - 0.05  # the biased ratio the closed forms must not be fed
    # and the estimate reproduces the measured block efficiency through Eq. 1
    measured = 1 + sum(accepted) / len(accepted)
    assert abs(expected_block_efficiency(estimate_alpha(accepted, drafted), gamma) - measured) < 0.03


def test_estimate_alpha_counts_blocks_cut_short_by_eos_or_length_as_fully_verified():
    # a block that drafted 2 (EOS or the budget) and had both accepted: 2 trials, no rejection
    assert estimate_alpha([2, 0, 4], [2, 4, 4]) == pytest.approx(6 / 7)
    assert math.isnan(estimate_alpha([], []))
    out = SpeculativeOutput(sequences=torch.zeros(1, 1, dtype=torch.long), num_target_calls=3, num_draft_calls=10,
                            accepted=[2, 0, 4], drafted=[2, 4, 4])
    assert out.acceptance_rate == pytest.approx(6 / 7)


def test_iqr_of_one_value_is_zero_and_of_a_ramp_is_half_its_range():
    assert iqr([3.0]) == 0.0
    assert iqr([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2.0)


def _t5(seed: int, d_model: int, layers: int, vocab: int = 96, decoder_layers: int | None = None) -> T5ForConditionalGeneration:
    config = T5Config(vocab_size=vocab, d_model=d_model, d_kv=d_model // 4, d_ff=2 * d_model, num_layers=layers,
                      num_decoder_layers=decoder_layers, num_heads=4, dropout_rate=0.0, eos_token_id=1, pad_token_id=0,
                      decoder_start_token_id=0)
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 2:
                param.normal_(0.0, 4.0 / param.shape[1] ** 0.5, generator=generator)
    return model


def test_draft_with_another_vocab_size_is_refused_naming_it():
    with pytest.raises(ValueError, match="draft 'wide' has vocab size 104 but the target has 96"):
        check_compatible(_t5(0, 16, 1), _t5(1, 16, 1, vocab=104), label="wide")


def test_plain_script_run_gives_one_row_per_case_and_self_draft_accepts_everything():
    target, other = _t5(0, 32, 2), _t5(1, 16, 1)
    rng = torch.Generator().manual_seed(0)
    prompts = [BenchPrompt(input_ids=torch.randint(2, 96, (10,), generator=rng).tolist() + [1]) for _ in range(2)]
    settings = BenchSettings(gammas=(2,), lenience=(1.0, 0.5), modes=("greedy", "sampling"), max_new_tokens=6,
                             repeats=2, warmup=1, hf_baselines=False)
    df = to_frame(run_benchmark(target, {"self": target, "other": other}, prompts, settings))
    assert list(df.columns) == COLUMNS
    # per mode: target; greedy 1 SD case per draft, sampling 2 (lenience)
    assert len(df) == 2 + 2 * 1 + 2 * 2
    sd = df[df["method"] == "sd"]
    assert (sd[sd["draft"] == "self"]["alpha"] == 1.0).all()
    assert df[df["mode"] == "greedy"]["exact"].all()
    assert df["rougeL"].isna().all()  # no references, no quality score
    table = markdown_table(df)
    assert table.count("\n") == len(df) + 2 and "| sampling | sd | other | 2 | 0.5 | fp32 |" in table


def test_bad_settings_raise_value_error_naming_the_field():
    with pytest.raises(ValueError, match="gammas"):
        BenchSettings(gammas=(0,))
    with pytest.raises(ValueError, match="lenience"):
        BenchSettings(lenience=(1.5,))
    with pytest.raises(ValueError, match="modes"):
        BenchSettings(modes=("beam",))
    with pytest.raises(ValueError, match="compile=True needs cache_implementation='static'"):
        BenchSettings(compile=True)


def test_static_cache_benchmark_times_the_static_path_and_stays_exact():
    target, other = _t5(0, 32, 2), _t5(1, 16, 1)
    rng = torch.Generator().manual_seed(1)
    prompts = [BenchPrompt(input_ids=torch.randint(2, 96, (8,), generator=rng).tolist() + [1]) for _ in range(2)]
    settings = BenchSettings(gammas=(1, 3), modes=("greedy",), max_new_tokens=8, repeats=1, warmup=0,
                             cache_implementation="static")
    df = to_frame(run_benchmark(target, {"other": other}, prompts, settings))
    assert set(df["method"]) == {"target", "hf_generate", "sd", "hf_assisted"}
    assert df["exact"].dropna().all() and (df["verify_ratio"].dropna() > 0).all()


def test_int8_rows_decode_every_case_with_int8_copies_and_greedy_sd_stays_exact_against_that_target():
    target, other = _t5(0, 32, 2), _t5(1, 16, 1)
    before = [p.clone() for p in target.parameters()]
    rng = torch.Generator().manual_seed(3)
    prompts = [BenchPrompt(input_ids=torch.randint(2, 96, (8,), generator=rng).tolist() + [1]) for _ in range(2)]
    settings = BenchSettings(gammas=(1, 3), modes=("greedy",), max_new_tokens=8, repeats=1, warmup=0,
                             precision="int8", int8_min_weights=0)
    df = to_frame(run_benchmark(target, {"other": other}, prompts, settings))
    assert set(df["precision"]) == {"int8"} and set(df["method"]) == {"target", "hf_generate", "sd", "hf_assisted"}
    assert df["exact"].dropna().all()
    assert all(torch.equal(a, b) for a, b in zip(before, target.parameters()))  # the caller's model is untouched
    with pytest.raises(ValueError, match="precision"):
        BenchSettings(precision="int4")


def test_a_target_whose_decoder_is_deeper_than_its_encoder_is_timed_by_every_method_and_stays_exact():
    from engine.sd_bench import run_batched_benchmark

    target, other = _t5(0, 32, 1, decoder_layers=3), _t5(1, 16, 1)  # transformers' own generate cache fails here
    rng = torch.Generator().manual_seed(4)
    prompts = [BenchPrompt(input_ids=torch.randint(2, 96, (8,), generator=rng).tolist() + [1]) for _ in range(2)]
    settings = BenchSettings(gammas=(2,), modes=("greedy",), max_new_tokens=8, repeats=1, warmup=0)
    df = to_frame(run_benchmark(target, {"other": other}, prompts, settings))
    assert set(df["method"]) == {"target", "hf_generate", "sd", "hf_assisted"} and df["exact"].dropna().all()
    batched = run_batched_benchmark(target, {"other": other}, prompts, settings, batch_sizes=[2])
    assert all(r["exact"] for r in batched)


def test_batched_benchmark_rows_per_batch_size_with_exact_outputs_and_paired_speedups():
    from engine.sd_bench import BATCH_COLUMNS, BATCH_SUMMARY, run_batched_benchmark, to_batched_frame

    target, other = _t5(0, 32, 2), _t5(1, 16, 1)
    rng = torch.Generator().manual_seed(2)
    prompts = [BenchPrompt(input_ids=torch.randint(2, 96, (int(n),), generator=rng).tolist() + [1])
               for n in torch.randint(3, 12, (5,), generator=rng)]
    settings = BenchSettings(gammas=(1, 3), max_new_tokens=8, repeats=2, warmup=0)
    df = to_batched_frame(run_batched_benchmark(target, {"self": target, "other": other}, prompts, settings,
                                                batch_sizes=[1, 3]))
    assert list(df.columns) == BATCH_COLUMNS and len(df) == 2 * (1 + 2 * 2)
    assert df["exact"].all() and (df["tokens_per_s"] > 0).all()
    hf = df[df["method"] == "hf_generate"]
    assert (hf["speedup"] == 1.0).all() and hf["alpha"].isna().all()
    assert (df[(df["method"] == "sd") & (df["draft"] == "self")]["alpha"] == 1.0).all()
    assert markdown_table(df, BATCH_SUMMARY).count("\n") == len(df) + 2
    with pytest.raises(ValueError, match="batch_sizes"):
        run_batched_benchmark(target, {"other": other}, prompts, settings, batch_sizes=[0])


def test_the_sd_tables_rouge_l_is_the_evaluations_stemmed_rouge_l():
    from models.metrics import rouge
    from models.sd.bench import rouge_l

    preds, refs = ["the dogs were running home"], ["a dog runs home"]  # equal only after stemming
    assert rouge_l(preds, refs) == pytest.approx(rouge(preds, refs)["rougeL"])
    assert rouge_l(preds, refs) > 0.5

