"""The text_normalization task: real non-standard words read aloud, splits with no shared document, fixed builds."""

import json
import random
import re

import pytest

from tasks import text_normalization as tn
from tasks.downstream import TaskSpec, build_examples, task_dir
from tasks.sources import reserved_for_downstream


@pytest.mark.parametrize("written, spoken", [
    ("rose by 3.5% to", "rose by three point five percent to"),
    ("cost £3.5bn", "cost three point five billion pounds"),
    ("paid $12.50 for", "paid twelve dollars fifty for"),
    ("only £1 each", "only one pound each"),
    ("on 12 March 2005", "on the twelfth of march two thousand and five"),
    ("since the 11 September 2001 attacks", "since the eleventh of september two thousand and one attacks"),
    ("born March 4, 1998 in", "born march fourth nineteen ninety eight in"),
    ("in 1998", "in nineteen ninety eight"),
    ("the 1980s", "the nineteen eighties"),
    ("from 1939-45", "from nineteen thirty nine to forty five"),
    ("budget for 2007-13", "budget for two thousand and seven to twenty thirteen"),
    ("about 10-12% of", "about ten to twelve percent of"),
    ("the 21st century", "the twenty first century"),
    ("some 1,250 people", "some one thousand two hundred and fifty people"),
    ("at 9:05", "at nine oh five"),
    ("at 10.30pm", "at ten thirty p m"),
    ("about 35 km away", "about thirty five kilometres away"),
    ("covered 50,000 km² of", "covered fifty thousand square kilometres of"),
    ("King Henry VIII and", "King Henry the eighth and"),
    ("during World War II", "during World War two"),
    ("call 0800 555 111", "call oh eight oh oh five five five one one one"),
])
def test_each_class_is_read_as_a_person_would_say_it(written, spoken):
    got = list(tn.spans(written))
    assert len(got) == 1 and got[0]["written"] == written and got[0]["spoken"] == spoken


@pytest.mark.parametrize("text", ["won 6-3 in the final", "the A4 road", "a 3G phone", "sold 50m copies",
                                  "the Hartz IV reforms", "code 007 applies"])
def test_strings_no_class_reads_are_not_used(text):
    assert list(tn.spans(text)) == []


def test_context_stops_at_punctuation_line_ends_and_other_digits():
    (sp,) = list(tn.spans("It ended. Then in 2004, prices\nwent up"))
    assert sp["written"] == "Then in 2004"
    got = list(tn.spans("between 5 and 7 percent"))
    assert [g["written"] for g in got] == ["between 5 and", "and 7 percent"]


def test_the_task_is_held_out_of_pretraining_its_splits_share_no_document_and_builds_are_fixed():
    a = build_examples(TaskSpec(name="text_normalization"))
    b = build_examples(TaskSpec(name="text_normalization"))
    assert a == b
    docs = {k: {i.split("#")[0] for e in v for i in e["id"].removeprefix("tn:").split("+")} for k, v in a.items()}
    assert all(reserved_for_downstream(d) for s in docs.values() for d in s)
    assert not (docs["train"] & docs["test"]) and not (docs["train"] & docs["validation"])
    assert not ({e["input"] for e in a["train"]} & {e["input"] for e in a["test"]})
    for e in a["train"][:200]:
        n = len(e["input"].removeprefix(tn.PREFIX).split(tn.SEPARATOR))
        assert 2 <= n <= 4 and n == len(e["target"].split(tn.SEPARATOR)) == len(e["classes"].split(","))
        assert not any(c.isdigit() for c in e["target"])
    counts = tn.class_counts(a["test"])
    assert all(counts[c] > 0 for c in ("cardinal", "year", "money", "percent", "date", "decimal", "ordinal", "measure"))


def test_the_task_folder_records_class_counts_per_split():
    folder = task_dir(TaskSpec(name="text_normalization", max_examples=50))
    meta = json.loads((folder / "task.json").read_text())
    assert meta["info"] == {"kind": "normalization", "prefix": "normalize: "}
    assert set(meta["classes"]) == {"train", "validation", "test"}
    assert sum(meta["classes"]["test"].values()) >= 100


def test_spans_and_context_shape_the_examples_and_belong_to_this_task_only():
    short = build_examples(TaskSpec(name="text_normalization", spans=(1, 2), context=1))
    for e in short["train"][:300]:
        parts = e["input"].removeprefix(tn.PREFIX).split(tn.SEPARATOR)
        assert 1 <= len(parts) <= 2
    assert {len(e["input"].split(tn.SEPARATOR)) for e in short["train"]} == {1, 2}  # the default never gives 1
    text = "prices rose by 3.5% to a record"
    assert [s["written"] for s in tn.spans(text, context=0)] == ["3.5%"]
    assert [s["written"] for s in tn.spans(text, context=1)] == ["by 3.5% to"]
    assert [s["written"] for s in tn.spans(text)] == ["rose by 3.5% to a"]
    with pytest.raises(ValueError, match="options of the text_normalization task"):
        TaskSpec(name="bbc_topic", spans=(1, 2))
    with pytest.raises(ValueError, match="spans must be"):
        TaskSpec(name="text_normalization", spans=(3, 2))


def test_synthetic_copies_redraw_train_digits_only_and_leave_validation_and_test_as_they_were():
    docs = [("d1", "train", "The firm paid £3.5bn in 1998 to 1,250 staff on 12 March 2005 and 07700 callers."),
            ("d2", "train", "Prices rose by 4.5% to a record 21st time"),
            ("d3", "test", "The firm paid £3.5bn in 1998 to 1,250 staff.")]
    plain = tn.build(docs, spans_per_example=(1, 1), context=1)
    more = tn.build(docs, spans_per_example=(1, 1), context=1, synthetic=3)
    assert more == tn.build(docs, spans_per_example=(1, 1), context=1, synthetic=3)  # deterministic
    assert more["test"] == plain["test"] and more["validation"] == plain["validation"]
    real = [e for e in more["train"] if "~" not in e["id"]]
    fake = [e for e in more["train"] if "~" in e["id"]]
    assert sorted(e["id"] for e in real) == sorted(e["id"] for e in plain["train"])
    assert len(fake) > len(real) and not any(c.isdigit() for e in fake for c in e["target"])
    assert not ({e["input"] for e in fake} & {e["input"] for e in more["test"]})
    rng = random.Random(0)
    for _ in range(50):
        out = tn.resample_digits("in 1998 paid 1,250 on 07700 at 3.05", rng)
        year, a, b, lead0, c, d = re.findall(r"\d+", out)
        assert 1100 <= int(year) <= 2099 and a[0] != "0" and len(b) == 3 and lead0[0] == "0" and len(lead0) == 5
        assert c[0] != "0" and len(d) == 2
    with pytest.raises(ValueError, match="synthetic must be >= 0"):
        tn.build(docs, synthetic=-1)
    with pytest.raises(ValueError, match="options of the text_normalization task"):
        TaskSpec(name="bbc_topic", synthetic=2)
