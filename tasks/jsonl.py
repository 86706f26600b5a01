"""One reader for the project's jsonl inputs (task files, SD prompt files, annotated batches)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator


def iter_jsonl(path: str | Path, what: str = "file", error: type[ValueError] = ValueError
               ) -> Iterator[tuple[int, dict]]:
    """(line number, record) for each non-empty line of a jsonl file. A missing file, a line that is not JSON
    and a line that is not an object are each one error naming the file (and line); ``error`` is the class
    raised for the bad lines (a ``ValueError``)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    with open(p, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise error(f"{path} line {lineno}: not valid JSON ({err.msg})") from None
            if not isinstance(rec, dict):
                raise error(f"{path} line {lineno}: expected a JSON object, got {type(rec).__name__}")
            yield lineno, rec
