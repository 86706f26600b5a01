"""The decoder-only benchmark scripts run end to end on a tiny random Llama standing in for SmolLM2 (the real
numbers are in docs/results.md): the draft-initialisation table and the SD table with FR-Spec copies."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def llm(tiny_corpus, tmp_path_factory):
    from tests.conftest import make_llama_dir

    return make_llama_dir(f"{tiny_corpus}/tokenizer", tmp_path_factory.mktemp("llm"), hidden=48, layers=2, seed=0,
                          head_scale=20.0)


def test_llm_draft_prints_a_row_per_initialisation_with_sd_alpha_before_and_after(llm, capsys):
    _script("llm_draft").main(["--target", llm, "--steps", "2", "--eval-examples", "2", "--inits", "target,fresh",
                               "--fresh-width", "32", "--max-new-tokens", "4", "--threads", "1"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| target") or
            line.startswith("| fresh")]
    assert len(rows) == 2 and all(len(r.split("|")) == 13 for r in rows)


def test_llm_sd_times_each_draft_and_its_frequent_token_copy_and_greedy_sd_stays_exact(llm, tmp_path, capsys):
    from models.sd.drafts import load_causal, make_causal_draft

    draft = make_causal_draft(load_causal(llm), layers=1, init="target")
    draft.save_pretrained(tmp_path / "d")
    _script("llm_sd").main(["--target", llm, "--draft", f"small={tmp_path / 'd'}", "--head-tokens", "64",
                            "--num-prompts", "2", "--max-new-tokens", "4", "--gammas", "2", "--repeats", "1"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| greedy")]
    assert any("| small-fr64 |" in r for r in rows) and any("| small |" in r for r in rows)
    assert any("hf_prompt_lookup" in r for r in rows)
    assert all("| True |" in r for r in rows), rows  # every greedy decoder equals target-only decoding


def test_llm_feature_draft_trains_from_the_targets_responses_and_prints_exact_sd_rows_for_both_drafts(llm, tmp_path,
                                                                                                     capsys):
    from models.sd.feature_draft import load_feature_draft

    _script("llm_feature_draft").main(["--target", llm, "--train-prompts", "4", "--response-tokens", "4",
                                       "--steps", "3", "--batch-size", "2", "--head-tokens", "64", "--num-prompts",
                                       "2", "--max-new-tokens", "4", "--gammas", "2", "--repeats", "1",
                                       "--out", str(tmp_path / "fd")])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| greedy")]
    assert any("| feature-distilled |" in r for r in rows) and any("| feature-untrained |" in r for r in rows)
    assert any("hf_prompt_lookup" in r for r in rows) and not any("hf_assisted" in r for r in rows)
    assert all("| True |" in r for r in rows), rows
    assert "4 prompts + target greedy responses" in out and "training 3 steps of 2" in out
    assert len(load_feature_draft(tmp_path / "fd").head_token_ids) == 64
    # the saved feature draft, timed by llm_sd with our prompt-lookup draft alone and before it, in bf16
    _script("llm_sd").main(["--target", llm, "--draft", f"feature={tmp_path / 'fd'}", "--prompt-lookup", "2",
                            "--head-tokens", "0", "--precision", "bf16", "--num-prompts", "2", "--max-new-tokens", "4", "--gammas", "2",
                            "--repeats", "1"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| greedy")]
    assert {d for d in ("| feature |", "| lookup |", "| lookup-else-feature |") if any(d in r for r in rows)} == {
        "| feature |", "| lookup |", "| lookup-else-feature |"}
    assert all("| bf16 |" in r for r in rows) and all("| True |" in r for r in rows if "| sd |" in r), rows
