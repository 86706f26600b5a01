import json

import pytest

from tasks.downstream import TaskSpec, build_examples, task_dir
from tasks.sources import reserved_for_downstream


@pytest.mark.parametrize("name", ["bbc_headline", "bbc_topic", "wiki_description"])
def test_builtin_task_documents_are_held_out_of_pretraining_and_splits_are_disjoint(name):
    splits = build_examples(TaskSpec(name=name))
    ids = {k: {e["id"] for e in v} for k, v in splits.items()}
    assert all(reserved_for_downstream(i) for s in ids.values() for i in s)
    assert not (ids["train"] & ids["test"]) and not (ids["train"] & ids["validation"])
    assert len(splits["test"]) > 100


def test_topic_labels_are_the_five_bbc_classes_and_sentiment_bins_are_documented():
    topics = {e["target"] for e in build_examples(TaskSpec(name="bbc_topic"))["train"]}
    assert topics == {"business", "entertainment", "politics", "sports", "tech"}
    sent = build_examples(TaskSpec(name="sentiment", max_examples=3000))
    assert {e["target"] for e in sent["train"]} == {"negative", "neutral", "positive"}


def test_splits_are_fixed_across_builds():
    a = build_examples(TaskSpec(name="bbc_headline"))
    b = build_examples(TaskSpec(name="bbc_headline"))
    assert [e["id"] for e in a["test"]] == [e["id"] for e in b["test"]]


def test_local_jsonl_task_builds_with_a_validation_split_carved_from_train(tmp_path):
    rows = [{"input": f"question {i}", "target": f"answer {i % 3}"} for i in range(100)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:10]))
    spec = TaskSpec(name="qa", jsonl={"train": str(tmp_path / "train.jsonl"), "test": str(tmp_path / "test.jsonl")})
    folder = task_dir(spec)
    sizes = json.loads((folder / "task.json").read_text())["sizes"]
    assert sizes["test"] == 10 and sizes["train"] + sizes["validation"] == 100 and sizes["validation"] > 0


def test_unknown_task_missing_fields_and_empty_splits_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'xsum'"):
        TaskSpec(name="xsum")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": "x"}))
    with pytest.raises(ValueError, match="needs fields 'input' and 'target'"):
        build_examples(TaskSpec(name="bad", jsonl={"train": str(tmp_path / "bad.jsonl")}))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="empty train split"):
        build_examples(TaskSpec(name="empty", jsonl={"train": str(tmp_path / "empty.jsonl")}))
