"""The SD benchmark scripts run end to end on a tiny synthetic pair and report exact outputs."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import sd_batched  # noqa: E402

TINY = ["--d-model", "32", "--d-ff", "64", "--heads", "4", "--target-layers", "2", "--draft-layers", "1",
        "--vocab", "64", "--prompt-len", "8", "--max-new-tokens", "6", "--repeats", "1", "--warmup", "0"]


def table_rows(text: str) -> list[list[str]]:
    """Cells of the data rows of a markdown table."""
    lines = [line for line in text.splitlines() if line.startswith("| ")][1:]  # skip the header
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_batched_sd_script_prints_a_row_per_batch_and_method_all_exact(capsys):
    sd_batched.main(["--batches", "1", "3", "--rounds", "1", *TINY])
    rows = table_rows(capsys.readouterr().out)
    assert [(r[0], r[1]) for r in rows] == [(b, m) for b in ("1", "3") for m in ("hf_generate", "sd", "sd_b1")]
    assert all(r[-1] == "True" for r in rows)  # every method's outputs equal batched target.generate


def test_the_benchmarks_shape_flags_give_a_valid_pretraining_t5shape_and_refuse_a_bad_one():
    """The shape the scripts' shared flags give is the pretraining config's own T5Shape, field for field."""
    import argparse

    import pytest

    from benchmarks._flags import add_shape_flags, t5_shape
    from engine.config.base import T5Shape

    ap = argparse.ArgumentParser()
    add_shape_flags(ap, d_model=256, d_ff=1024, heads=4)
    shape = t5_shape(ap.parse_args(["--d-model", "96", "--heads", "6"]), layers=3, decoder_layers=5,
                     tie_word_embeddings=True)
    assert T5Shape(**shape).model_dump(include=set(shape)) == shape
    assert (shape["d_kv"], shape["num_layers"], shape["num_decoder_layers"]) == (16, 3, 5)
    with pytest.raises(ValueError, match="multiple of --heads"):
        t5_shape(ap.parse_args(["--d-model", "30"]), layers=1)
    with pytest.raises(ValueError, match="--d-ff must be >= 1"):
        t5_shape(ap.parse_args(["--d-ff", "0"]), layers=1)


def test_the_synthetic_decoder_only_pair_shares_the_drafts_layers_so_perturbation_zero_accepts_every_draft():
    """sd_engine's --arch llama pair: the draft is the target's first layers, embedding, norm and head; with the
    extra layers' outputs scaled to 0 the target computes the draft's function, so greedy SD accepts all."""
    import torch

    from benchmarks import sd_engine
    from models.speculative import speculative_generate

    args = sd_engine.parse_args(["--arch", "llama", "--d-model", "32", "--d-ff", "64", "--heads", "4", "--kv-heads",
                                 "2", "--target-layers", "3", "--draft-layers", "1", "--vocab", "64",
                                 "--perturbation", "0"])
    target, draft, vocab = sd_engine.load_pair(args)
    assert (target.config.num_hidden_layers, draft.config.num_hidden_layers, vocab) == (3, 1, 64)
    assert torch.equal(target.model.layers[0].mlp.down_proj.weight, draft.model.layers[0].mlp.down_proj.weight)
    assert not target.model.layers[1].mlp.down_proj.weight.any()  # scaled by the perturbation, 0
    ids = torch.tensor([[5, 9, 11, 7, 30, 8]])
    out = speculative_generate(target, draft, ids, gamma=3, max_new_tokens=12, eos_token_id=[])
    assert out.accepted == out.drafted


def test_sd_engine_refuses_kv_heads_that_do_not_divide_the_heads():
    import pytest

    from benchmarks import sd_engine

    with pytest.raises(SystemExit):
        sd_engine.parse_args(["--arch", "llama", "--heads", "4", "--kv-heads", "3"])
    with pytest.raises(SystemExit):
        sd_engine.parse_args(["--kv-heads", "2"])  # a T5 pair has no key/value heads of its own
