"""Corpus-preparation tasks: read + clean + de-duplicate + split, train the tokenizer, tokenize + pack, log.

The whole build runs in a temporary folder beside the output and is moved into place (one ``rename``)
only when every part is written, so a failed or killed run never leaves half a corpus. The build task is
cached by Prefect on (config, source fingerprint, task code); the output folder name carries the same
fingerprint, so a rerun finds and reuses it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE
from tqdm.auto import tqdm

from models.corpus import SPLITS, assign_split, clean_document, pack_sequences, split_long_line, text_hash
from tasks import sources
from tasks.runtime.env import state_dir
from tasks.runtime.orchestration import retry_transient, run_logger

COMPLETE = "_COMPLETE"
#: characters every vocabulary holds whatever its corpus (digits and the symbols numbers are written with), so that
#: no downstream input of them turns into <unk> (text_normalization reads £, € and $ differently)
REQUIRED_CHARS = "0123456789£€$%;:.,-/"


def _logger():
    return run_logger("corpus_prep")


def source_fingerprint(cfg: dict[str, Any]) -> str:
    """A fingerprint of the input data: file contents for packaged/local files, name+revision for hub sets."""
    import hashlib

    if cfg["source"] == "packaged":
        return sources.fingerprint_files(sources.packaged_files(cfg["packaged"]))
    if cfg["source"] == "files":
        return sources.fingerprint_files(sources.expand_globs(cfg["paths"]))
    key = json.dumps([cfg["hf_name"], cfg.get("hf_config"), cfg.get("hf_split"), cfg.get("hf_revision")])
    if Path(cfg["hf_name"]).exists():
        files = [p for p in Path(cfg["hf_name"]).rglob("*") if p.is_file()]
        key += sources.fingerprint_files(files)
    return hashlib.sha256(key.encode()).hexdigest()


def _iter_source(cfg: dict[str, Any]):
    if cfg["source"] == "packaged":
        return sources.read_packaged(cfg["packaged"])
    if cfg["source"] == "files":
        return sources.read_files(cfg["paths"], text_field=cfg["text_field"], txt_unit=cfg["txt_unit"],
                                  on_decode_error=cfg["on_decode_error"])
    return sources.read_hf(cfg["hf_name"], config_name=cfg.get("hf_config"), split=cfg["hf_split"],
                           text_field=cfg["text_field"], revision=cfg.get("hf_revision"))


def collect_documents(cfg: dict[str, Any], work: Path) -> dict[str, Any]:
    """Read, clean, de-duplicate and split; writes ``docs/<split>`` Arrow datasets; returns the counts."""
    import datasets

    drops: Counter = Counter()
    seen: set[str] = set()
    rows: dict[str, dict[str, list]] = {s: {"id": [], "source": [], "text": []} for s in SPLITS}
    n_in = 0
    limit = cfg.get("max_documents")
    for item in tqdm(_iter_source(cfg), desc="reading documents", unit="doc", mininterval=2.0):
        n_in += 1
        if isinstance(item, sources.Dropped):
            drops[item.reason] += 1
            continue
        if cfg["hold_out_downstream"] and sources.reserved_for_downstream(item["id"]):
            drops["reserved_downstream"] += 1
            continue
        text, reason = clean_document(item["text"], min_chars=cfg["min_chars"], form=cfg["unicode_form"])
        if text is None:
            drops[reason] += 1
            continue
        h = text_hash(text)
        if h in seen:
            drops["duplicate"] += 1
            continue
        seen.add(h)
        split = assign_split(h, cfg["validation_fraction"], cfg["test_fraction"])
        r = rows[split]
        r["id"].append(item["id"])
        r["source"].append(item["source"])
        r["text"].append(text)
        if limit and len(seen) >= limit:
            break
    kept = sum(len(r["id"]) for r in rows.values())
    if kept == 0:
        raise ValueError(
            f"the source gave no usable documents ({n_in} read; dropped: {dict(drops) or 'none'}); "
            "check the paths/globs, text_field and min_chars"
        )
    if not rows["train"]["id"]:
        raise ValueError(f"no document landed in the train split ({kept} kept); lower validation/test fractions")
    for split, r in rows.items():
        datasets.Dataset.from_dict(r).save_to_disk(str(work / "docs" / split))
    return {
        "documents_read": n_in,
        "documents_kept": kept,
        "drops": dict(drops),
        "documents": {s: len(r["id"]) for s, r in rows.items()},
        "characters": {s: sum(map(len, r["text"])) for s, r in rows.items()},
        "words": {s: sum(len(t.split()) for t in r["text"]) for s, r in rows.items()},
    }


def train_tokenizer(cfg: dict[str, Any], work: Path) -> Path:
    """SentencePiece unigram on the train split, wrapped as a T5 tokenizer (pad 0, eos 1, unk 2,
    ``<mask>`` = 3, 100 sentinels with ``<extra_id_0>`` the highest id), saved with ``save_pretrained``."""
    import datasets
    import sentencepiece as spm
    from transformers import T5TokenizerFast

    train = datasets.load_from_disk(str(work / "docs" / "train"))
    spm_dir = work / "spm"
    spm_dir.mkdir()

    def sentences():
        for text in train["text"]:
            for line in text.split("\n"):
                yield from split_long_line(line, 4000)

    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences(),
            model_prefix=str(spm_dir / "spiece"),
            vocab_size=cfg["vocab_size"],
            model_type="unigram",
            pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
            user_defined_symbols=["<mask>"],
            character_coverage=cfg["character_coverage"],
            split_digits=cfg.get("split_digits", True),
            required_chars=REQUIRED_CHARS,
            input_sentence_size=cfg["tokenizer_sample_sentences"],
            shuffle_input_sentence=True,
            max_sentence_length=16384,
            num_threads=max(1, os.cpu_count() or 1),
            minloglevel=2,
        )
    except RuntimeError as err:
        msg = str(err)
        if "Vocabulary size too high" in msg or "vocab_size" in msg.lower():
            hint = msg[msg.find("Please"):] if "Please" in msg else msg[-200:]
            raise ValueError(f"vocab_size={cfg['vocab_size']} is too large for this corpus: {hint}") from None
        raise
    tok = T5TokenizerFast.from_pretrained(str(spm_dir), extra_ids=100)
    tok.add_special_tokens({"mask_token": "<mask>"})
    out = work / "tokenizer"
    tok.save_pretrained(str(out))
    shutil.copy(spm_dir / "spiece.model", out / "spiece.model")
    shutil.rmtree(spm_dir)
    check_tokenizer(out, split_digits=cfg.get("split_digits", True))
    return out


def check_tokenizer(path: Path, split_digits: bool = False) -> None:
    """The tokenizer invariants the pretraining objective relies on (raises on violation); with ``split_digits``,
    also that the saved (fast) tokenizer gives every digit a piece of its own and decodes numbers back exactly."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    sentinels = [tok.convert_tokens_to_ids(f"<extra_id_{i}>") for i in range(100)]
    problems = []
    if split_digits:
        probe = "in 2004 it cost £1,250.75 ; 5% or €3/$4"
        pieces = [p.lstrip("\u2581") for p in tok.tokenize(probe)]
        if any(len(p) > 1 and any(c.isdigit() for c in p) for p in pieces):
            problems.append(f"split_digits: digits share pieces ({pieces})")
        if tok.decode(tok(probe).input_ids, skip_special_tokens=True) != probe:
            problems.append(f"split_digits: {probe!r} does not decode back exactly")
    if (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) != (0, 1, 2):
        problems.append(f"pad/eos/unk ids are {(tok.pad_token_id, tok.eos_token_id, tok.unk_token_id)}, want (0, 1, 2)")
    if sentinels != [len(tok) - 1 - i for i in range(100)]:
        problems.append("sentinels are not the top 100 ids in T5 order")
    if tok.mask_token_id is None or tok.mask_token_id >= sentinels[-1]:
        problems.append("<mask> must exist below the sentinels")
    if problems:
        raise RuntimeError(f"tokenizer at {path}: " + "; ".join(problems))


def tokenize_and_pack(cfg: dict[str, Any], work: Path) -> dict[str, Any]:
    """Tokenize each split (``num_proc`` workers), append EOS per document, pack rows of ``pack_length``."""
    import datasets
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(work / "tokenizer"))
    length = cfg["pack_length"]
    stats: dict[str, Any] = {"tokens": {}, "rows": {}, "dropped_tail_tokens": {}, "unk_tokens": {}}
    for split in SPLITS:
        docs = datasets.load_from_disk(str(work / "docs" / split))
        if len(docs) == 0:
            stats["tokens"][split] = stats["rows"][split] = stats["dropped_tail_tokens"][split] = 0
            stats["unk_tokens"][split] = 0
            datasets.Dataset.from_dict({"input_ids": []}).save_to_disk(str(work / "packed" / split))
            continue

        def encode(batch):
            ids = tok([t.replace("\n", " ") for t in batch["text"]], add_special_tokens=True).input_ids
            return {"input_ids": ids, "n": [len(x) for x in ids], "unk": [x.count(2) for x in ids]}

        num_proc = min(cfg["num_proc"], max(1, len(docs) // 64)) or None
        enc = docs.map(encode, batched=True, batch_size=256, num_proc=num_proc if num_proc and num_proc > 1 else None,
                       remove_columns=docs.column_names, desc=f"tokenizing {split}")
        stats["tokens"][split] = int(sum(enc["n"]))
        stats["unk_tokens"][split] = int(sum(enc["unk"]))

        def pack(batch):
            rows, tail = pack_sequences(batch["input_ids"], length)
            return {"input_ids": rows}

        packed = enc.remove_columns(["n", "unk"]).map(
            pack, batched=True, batch_size=1000, remove_columns=["input_ids"], desc=f"packing {split}")
        packed.save_to_disk(str(work / "packed" / split))
        stats["rows"][split] = len(packed)
        stats["dropped_tail_tokens"][split] = stats["tokens"][split] - len(packed) * length
    return stats


def shard_splits(cfg: dict[str, Any], work: Path) -> dict[str, int]:
    """Write each packed split as Parquet shards of ``shard_rows`` rows under ``shards/<split>/`` (with
    ``index.json``; ``engine.shards``), read in chunks of one shard; returns the shard count per split."""
    import datasets

    from engine.shards import write_shards

    n = cfg["shard_rows"]
    counts = {}
    for split in SPLITS:
        ds = datasets.load_from_disk(str(work / "packed" / split)).with_format("numpy")
        chunks = (np.asarray(ds[i:i + n]["input_ids"], dtype=np.int32) for i in range(0, len(ds), n))
        index = write_shards(chunks, work / "shards" / split, rows_per_shard=n, row_length=cfg["pack_length"])
        counts[split] = len(index["shards"])
    return counts


def dataset_card(cfg: dict[str, Any], stats: dict[str, Any], fingerprint: str) -> str:
    lines = [
        "# Pretraining corpus",
        "",
        f"Source: `{cfg['source']}`" + (f" ({', '.join(cfg['packaged'])})" if cfg["source"] == "packaged" else ""),
        f"Source fingerprint: `{fingerprint}`",
        "",
        "Licenses of the packaged texts: " + "; ".join(f"{k}: {v[2]}" for k, v in sources.PACKAGED_SOURCES.items()),
        "Documents reserved for downstream tasks (BBC News, wiki_description bucket) are excluded."
        if cfg["hold_out_downstream"] else "Downstream documents were NOT held out.",
        "",
        "| split | documents | characters | tokens | packed rows |",
        "|---|---|---|---|---|",
    ]
    for s in SPLITS:
        lines.append(f"| {s} | {stats['documents'][s]} | {stats['characters'][s]} | {stats['tokens'][s]} | {stats['rows'][s]} |")
    lines += ["", f"Dropped: {stats['drops']}", f"Tokens per word (train): {stats['tokens_per_word']:.3f}",
              f"Pack length: {cfg['pack_length']} tokens; vocabulary: {stats['vocab_size']} (incl. 100 sentinels, <mask>)"]
    return "\n".join(lines) + "\n"


def output_dir_for(cfg: dict[str, Any], fingerprint: str) -> Path:
    import hashlib

    root = Path(cfg.get("output_root") or state_dir() / "corpus")
    key = hashlib.sha256((json.dumps(cfg, sort_keys=True) + fingerprint).encode()).hexdigest()[:16]
    return root / f"{cfg['name']}-{key}"


def is_complete(path: str | Path) -> bool:
    return Path(path, COMPLETE).exists()


_NEEDED = ("tokenizer/tokenizer_config.json", "packed/train", "packed/validation")


def check_corpus_dir(path: str | Path, *, shards: bool = False) -> None:
    """Refuse, in one line and before any worker starts, a folder that is not a prepared corpus: pretraining
    needs ``tokenizer/`` and the packed ``train`` and ``validation`` splits (what ``flows.corpus_prep`` writes),
    and with ``shards`` (``stream_shards``) the training shards' ``shards/train/index.json``.
    An ``s3://`` corpus is checked from its published ``checksums.json`` (nothing is downloaded here)."""
    from engine import storage

    needed = _NEEDED + (("shards/train/index.json",) if shards else ())
    if storage.is_remote(path):
        try:
            names = json.loads(storage.read_bytes(storage.join(str(path), storage.CHECKSUMS)))
        except FileNotFoundError:
            raise FileNotFoundError(f"corpus_dir {path} holds no published corpus (no {storage.CHECKSUMS}: never "
                                    "published, or its upload was cut); publish one with python -m flows.corpus_prep "
                                    "--set publish_uri=...") from None
        missing = [n for n in needed if not any(k == n or k.startswith(n + "/") for k in names)]
    else:
        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"corpus_dir {root} does not exist; build one with python -m flows.corpus_prep")
        missing = [n for n in needed if not (root / n).exists()]
    if missing:
        how = " --set shard_rows=N" if any(n.startswith("shards/") for n in missing) else ""
        raise FileNotFoundError(f"corpus_dir {path} is not a prepared corpus (missing {', '.join(missing)}); "
                                f"build one with python -m flows.corpus_prep{how}")


@task(name="publish-corpus", retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=2)
def publish_corpus(corpus_dir: str, uri: str, run_id: str) -> str:
    """Upload a finished corpus to object storage (``engine.storage.publish_folder``: checksums last, skipped
    when the same content is already there) and tag its MLflow run with the URI; returns the URI."""
    from engine import storage
    from tasks import tracking

    storage.publish_folder(corpus_dir, uri)
    tracking.set_tags(run_id, {"corpus.uri": uri})
    return uri


@task(name="fingerprint-source", retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=1)
def fingerprint_source(cfg: dict[str, Any]) -> str:
    """The source content's fingerprint plus the corpus code's (its import closure): either change -> a new corpus."""
    from tasks.runtime.stages import code_version

    return f"{source_fingerprint(cfg)}-code{code_version('tasks.corpus')}"


@task(name="build-corpus", cache_policy=INPUTS + TASK_SOURCE, persist_result=True, result_serializer="json")
def build_corpus(cfg: dict[str, Any], fingerprint: str) -> str:
    """Build the whole corpus in a temporary folder and move it into place when complete."""
    logger = _logger()
    out = output_dir_for(cfg, fingerprint)
    if is_complete(out):
        logger.info("corpus already built at %s (reusing it)", out)
        return str(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    t0 = time.time()
    try:
        logger.info("reading and cleaning documents from %s", cfg["source"])
        stats = collect_documents(cfg, work)
        logger.info("kept %d of %d documents; drops %s", stats["documents_kept"], stats["documents_read"], stats["drops"])
        logger.info("training a %d-piece SentencePiece unigram tokenizer", cfg["vocab_size"])
        tok_dir = train_tokenizer(cfg, work)
        logger.info("tokenizing and packing rows of %d tokens", cfg["pack_length"])
        stats.update(tokenize_and_pack(cfg, work))
        if cfg.get("shard_rows"):
            logger.info("writing Parquet shards of %d rows", cfg["shard_rows"])
            stats["shards"] = shard_splits(cfg, work)
        from transformers import AutoTokenizer

        stats["vocab_size"] = len(AutoTokenizer.from_pretrained(str(tok_dir)))
        words = stats["words"]["train"]
        stats["tokens_per_word"] = stats["tokens"]["train"] / max(1, words)
        stats["seconds"] = time.time() - t0
        stats["fingerprint"] = fingerprint
        (work / "stats.json").write_text(json.dumps(stats, indent=2))
        (work / "config.json").write_text(json.dumps(cfg, indent=2))
        (work / "README.md").write_text(dataset_card(cfg, stats, fingerprint))
        (work / COMPLETE).write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
        if not _publish(work, out):
            logger.info("the same corpus was completed at %s by another run meanwhile (keeping it)", out)
            return str(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    logger.info("corpus written to %s in %.1f s", out, stats["seconds"])
    return str(out)


def _publish(work: Path, out: Path) -> bool:
    """Move the finished ``work`` folder to ``out``; False (and ``work`` removed) if a complete corpus is there.

    A complete corpus in place is never deleted: another run of the same config may be reading it. An
    incomplete leftover (an older layout) is renamed aside before it is deleted, so no reader sees half of it.
    Two runs finishing at once: ``os.replace`` onto a non-empty folder fails for the second, which keeps the first's."""
    for _ in range(3):
        if is_complete(out):
            shutil.rmtree(work, ignore_errors=True)
            return False
        if out.exists():
            aside = out.with_name(f".tmp-stale-{out.name}-{os.getpid()}")
            try:
                os.replace(out, aside)
            except FileNotFoundError:
                continue
            shutil.rmtree(aside, ignore_errors=True)
        try:
            os.replace(work, out)
            return True
        except OSError:  # the other run's folder landed between our check and our move: look again
            continue
    raise RuntimeError(f"could not publish the corpus at {out}: it keeps changing under this run")


@task(name="log-corpus", retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=2)
def log_corpus(corpus_dir: str, cfg: dict[str, Any], *, cached: bool, parent_run_id: str | None = None,
               experiment: str = "corpus-prep") -> str:
    """Params, stats, tokenizer, dataset card and dataset inputs of a corpus -> one MLflow run."""
    import datasets

    from tasks import tracking

    stats = json.loads(Path(corpus_dir, "stats.json").read_text())
    with tracking.start_run(experiment, f"corpus-{cfg['name']}", params=cfg, parent_run_id=parent_run_id,
                            tags={"stage": "corpus_prep", "cached": str(cached).lower(),
                                  "corpus.path": corpus_dir, "corpus.fingerprint": stats["fingerprint"]}) as run_id:
        metrics = {
            "documents_read": stats["documents_read"], "documents_kept": stats["documents_kept"],
            "tokens_per_word": stats["tokens_per_word"], "vocab_size": stats["vocab_size"],
            **{f"documents.{k}": v for k, v in stats["documents"].items()},
            **{f"characters.{k}": v for k, v in stats["characters"].items()},
            **{f"tokens.{k}": v for k, v in stats["tokens"].items()},
            **{f"rows.{k}": v for k, v in stats["rows"].items()},
            **{f"unk_tokens.{k}": v for k, v in stats["unk_tokens"].items()},
            **{f"dropped.{k}": v for k, v in stats["drops"].items()},
            "build_seconds": stats["seconds"],
        }
        tracking.log_metrics(run_id, metrics)
        tracking.log_artifacts(run_id, Path(corpus_dir, "tokenizer"), "tokenizer")
        for name in ("stats.json", "README.md", "config.json"):
            tracking.log_artifact(run_id, Path(corpus_dir, name))
        for split in ("train", "validation"):
            docs = datasets.load_from_disk(str(Path(corpus_dir, "docs", split)))
            sample = docs.select(range(min(200, len(docs)))).to_pandas()
            tracking.log_dataset_input(run_id, sample, name=f"{cfg['name']}-{split}",
                                       source=str(Path(corpus_dir, "packed", split)),
                                       context="training" if split == "train" else "validation")
    return run_id
