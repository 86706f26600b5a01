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
