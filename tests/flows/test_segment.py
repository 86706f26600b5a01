"""``python -m flows.segment``: streaming in chunks, atomic ``--out``, one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.thai_segmenter import SegmenterConfig, ThaiSegmenter

LEXICON = ["ฉัน", "กิน", "ข้าว", "เธอ", "ร้อง", "เพลง", "แม่", "ไป", "ตลาด", " ", "2532"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    rng = np.random.default_rng(0)
    corpus = [[LEXICON[i] for i in rng.integers(0, len(LEXICON), 8)] for _ in range(200)]
    model = ThaiSegmenter(SegmenterConfig(embed_dim=8, class_dim=4, hidden=16, layers=2, kernel=3, epochs=2,
                                          ngram_buckets=64, batch_size=16), generator=torch.Generator().manual_seed(0))
    model.fit(corpus, generator=torch.Generator().manual_seed(0))
    folder = tmp_path_factory.mktemp("seg") / "model"
    model.save(folder)
    return folder


def _lines(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(LEXICON[i] for i in rng.integers(0, len(LEXICON), rng.integers(0, 30))) for _ in range(n)]


def test_a_file_segmented_in_small_chunks_equals_one_pass_and_keeps_every_character(model_dir, tmp_path):
    from flows.segment import main

    lines = _lines(300, seed=1) + ["x" * 5000]  # one line longer than the segmenter's batch: windows
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["--model", str(model_dir), "--file", str(src), "--out", str(tmp_path / "a.txt")]) == 0
    assert main(["--model", str(model_dir), "--file", str(src), "--out", str(tmp_path / "b.txt"),
                 "--chunk-chars", "50"]) == 0
    a = (tmp_path / "a.txt").read_text(encoding="utf-8")
    assert a == (tmp_path / "b.txt").read_text(encoding="utf-8")
    assert a.replace("|", "").split("\n")[:-1] == lines
    model = ThaiSegmenter.load(model_dir)
    assert a.split("\n")[:-1] == ["|".join(w) for w in model.segment_batch(lines)]


def test_a_separator_in_a_late_chunk_leaves_no_output_file_and_one_error_line(model_dir, tmp_path, capsys):
    from flows.segment import main

    src = tmp_path / "in.txt"
    src.write_text("\n".join(_lines(200, seed=2) + ["ฉัน|กิน"]) + "\n", encoding="utf-8")
    out = tmp_path / "out.txt"
    assert main(["--model", str(model_dir), "--file", str(src), "--out", str(out), "--chunk-chars", "100"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: line 201 contains the separator '|'; choose another with --sep"]
    assert not out.exists() and list(tmp_path.iterdir()) == [src]  # no temporary file left either


def test_bad_inputs_are_refused_in_one_line(model_dir, tmp_path, capsys):
    from flows.segment import main

    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    cases = [(["--file", str(tmp_path / "missing.txt")], "does not exist"),
             (["--file", str(tmp_path / "latin1.txt")], "is not UTF-8"),
             (["--text", "x", "--chunk-chars", "0"], "--chunk-chars")]
    for args, message in cases:
        assert main(["--model", str(model_dir), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
