"""Segment Thai text with a trained segmenter, streaming: the runtime behind ``python -m flows.segment``.

Lines are read and segmented in chunks of about ``chunk_chars`` characters and written as they are done,
and the segmenter cuts a very long line into overlapping windows, so memory stays bounded by the chunk and
the longest line, not the file. :func:`write_atomically` writes through a temporary file renamed into place
only on success. Every input character is kept: removing the separators gives the input back.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from models.thai_segmenter import ThaiSegmenter

DEFAULT_CHUNK_CHARS = 1 << 18


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim``, or None elsewhere (looked up once: ``find_library`` runs subprocesses)."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def _release_memory() -> None:
    """Hand freed heap back to the OS after a chunk. Without it glibc keeps each chunk's freed buffers,
    and peak RSS crept from 0.6 to 0.9 GB over a 7.5M-character file (docs/results.md)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def load_segmenter(model_ref: str) -> ThaiSegmenter:
    """The segmenter behind a ``models:/`` or ``runs:/`` URI or a ``ThaiSegmenter.save`` folder; registry
    errors (unknown name, version, alias) become one-line ValueErrors."""
    from models.thai_segmenter import ThaiSegmenter
    from tasks.tracking import resolve_model

    try:
        folder = resolve_model(model_ref)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - registry errors (unknown name, version, alias) as one line
        raise ValueError(f"cannot resolve model {model_ref!r}: {str(err).splitlines()[0]}") from None
    return ThaiSegmenter.load(folder)


def segment_lines(model_ref: str, lines: list[str], sep: str = "|") -> list[str]:
    model = load_segmenter(model_ref)
    return [sep.join(words) for words in model.segment_batch(lines)]


def chunks(lines: Iterable[str], chunk_chars: int) -> Iterator[list[str]]:
    """Consecutive lines (without their newline) in lists of about ``chunk_chars`` characters."""
    chunk: list[str] = []
    size = 0
    for line in lines:
        chunk.append(line)
        size += len(line) + 1
        if size >= chunk_chars:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def read_lines(stream: TextIO) -> Iterator[str]:
    """Lines without their final newline; a file's final newline does not make an empty last line."""
    for line in stream:
        yield line[:-1] if line.endswith("\n") else line


def segment_stream(model, lines: Iterable[str], out: TextIO, *, sep: str = "|",
                   chunk_chars: int = DEFAULT_CHUNK_CHARS) -> int:
    """Segment ``lines`` chunk by chunk, writing each chunk's output lines to ``out``; returns the
    number of lines. Raises ValueError (before writing that chunk) when a line contains ``sep``."""
    n = 0
    for chunk in chunks(lines, chunk_chars):
        for i, line in enumerate(chunk):
            if sep in line:
                raise ValueError(f"line {n + i + 1} contains the separator {sep!r}; choose another with --sep")
        out.write("".join(sep.join(words) + "\n" for words in model.segment_batch(chunk)))
        n += len(chunk)
        _release_memory()
    return n


def write_atomically(path: Path, write) -> None:
    """``write(stream)`` into a temporary file beside ``path``, renamed to ``path`` only if it succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def segment_input(model, out: TextIO, *, text: str | None = None, file: str | None = None, sep: str = "|",
                  chunk_chars: int = DEFAULT_CHUNK_CHARS) -> int:
    """Segment ``text`` (its lines), or the lines of ``file`` (``-``: stdin), into ``out``; returns the
    number of lines (see :func:`segment_stream`)."""
    if text is not None:
        return segment_stream(model, text.split("\n"), out, sep=sep, chunk_chars=chunk_chars)
    if file == "-":
        return segment_stream(model, read_lines(sys.stdin), out, sep=sep, chunk_chars=chunk_chars)
    with open(file, encoding="utf-8", newline="\n") as f:
        return segment_stream(model, read_lines(f), out, sep=sep, chunk_chars=chunk_chars)
