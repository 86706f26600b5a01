"""The verification-cost benchmark runs on a tiny shape and prints both tables, one row per k."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import verify_cost  # noqa: E402

TINY = ["--d-model", "32", "--d-ff", "64", "--layers", "1", "--heads", "4", "--vocab", "64", "--prompt-len", "8",
        "--max-k", "3", "--calls", "3"]


def _tables(text: str) -> list[list[list[str]]]:
    """Data rows of each markdown table, in order."""
    tables, current = [], None
    for line in text.splitlines():
        if line.startswith("|"):
            if current is None:
                current = []
                tables.append(current)
            current.append([c.strip() for c in line.strip().strip("|").split("|")])
        else:
            current = None
    return [t[2:] for t in tables]  # drop header and rule


@pytest.mark.parametrize("weights", [[], ["--bf16"], ["--lean"]])
def test_verify_cost_prints_every_linear_layer_and_every_k_with_k1_as_the_unit(capsys, weights):
    assert verify_cost.main(TINY + weights) == 0
    out = capsys.readouterr().out
    bf16, lean = "--bf16" in weights, "--lean" in weights
    assert ("bf16 weights from memory" in out) == bf16 and ("eager, bf16" in out) == bf16
    assert ("models.sd.lean_t5.LeanT5Decoder, lean step" in out) == lean
    linear, decoder = _tables(out)
    assert [r[0] for r in linear] == ["attention q/k/v/o", "feed-forward in", "feed-forward out", "LM head"]
    assert [r[1] for r in linear] == ["32 x 32", "64 x 32", "32 x 64", "64 x 32"]
    assert all(len(r) == 2 + 3 and r[2].endswith(" us") for r in linear)
    assert [r[0] for r in decoder] == ["1", "2", "3"]
    assert decoder[0][2] == "1.00x"
    assert all(float(r[1]) > 0 for r in decoder)
    assert "verifying 2 drafted tokens (k=3) costs" in out


@pytest.mark.parametrize("bad", [["--max-k", "0"], ["--d-model", "30", "--heads", "4"], ["--int8", "--bf16"],
                                 ["--lean", "--compile"]])
def test_verify_cost_refuses_bad_shapes_in_one_line(bad, capsys):
    with pytest.raises(SystemExit) as e:
        verify_cost.main(bad)
    assert e.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_verify_cost_times_a_decoder_only_model_by_reference_with_its_own_shapes(capsys, tmp_path):
    from tests.models.test_speculative_causal import llama

    llama(0).save_pretrained(tmp_path / "llama")  # d_model 32, d_ff 64, 2 layers, vocab 64
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(64)}, unk_token="w3"))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="w1").save_pretrained(tmp_path / "llama")
    assert verify_cost.main(["--model", str(tmp_path / "llama"), "--prompt-len", "8", "--max-k", "3", "--calls", "3",
                             "--cold-mb", "1"]) == 0
    out = capsys.readouterr().out
    assert "LlamaForCausalLM, d_model 32, d_ff 64, 2 layers, vocab 64" in out and "CausalCachedDecoder" in out
    linear, decoder = _tables(out)
    assert [r[1] for r in linear] == ["32 x 32", "64 x 32", "32 x 64", "64 x 32"]
    assert [r[0] for r in decoder] == ["1", "2", "3"] and decoder[0][2] == "1.00x"
