"""Segment Thai text with a trained segmenter: one output line per input line, words joined by ``|``.

    python -m flows.segment --model models:/thai-seg-small-ranked@final --text "ฉันกินข้าว"
    python -m flows.segment --model models:/thai-seg-small-ranked/1 --file input.txt > segmented.txt
    python -m flows.segment --model models:/thai-seg-small-ranked/1 --file big.txt --out big.seg.txt
    python -m flows.segment --model .state/active_learning/<run>/models/ranked/r016 --file - < input.txt

``--model`` is a registered model (``models:/name@alias`` or ``models:/name/version``, fetched and
checked against its sha256 by ``tasks.tracking.resolve_model``), a ``runs:/`` URI or a folder written by
``ThaiSegmenter.save``. Every input character is kept: removing the separators gives the input back
(use ``--sep`` when the text itself contains ``|``). No Prefect flow: this is a plain command.

Large files stream: lines are read and segmented in chunks of about ``--chunk-chars`` characters and
written as they are done, and the segmenter cuts a very long line into overlapping windows, so memory
stays bounded by the chunk and the longest line, not the file. With ``--out`` the output is written to
a temporary file beside it and renamed into place at the end: an error (a separator in the text, a bad
model) leaves no half-written output file. On stdout, lines before the error have been written.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

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


def load_segmenter(model_ref: str):
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


def _read_lines(stream: TextIO) -> Iterator[str]:
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


def _write_atomically(path: Path, write) -> None:
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


def main(argv: list[str] | None = None) -> int:
    from tasks.env import apply_embedded_defaults

    apply_embedded_defaults()
    ap = argparse.ArgumentParser(prog="python -m flows.segment", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="models:/name@alias, models:/name/version, runs:/..., or a folder")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the text to segment")
    src.add_argument("--file", help="a UTF-8 text file, one text per line ('-' = stdin)")
    ap.add_argument("--out", help="write the output here (atomically) instead of stdout")
    ap.add_argument("--sep", default="|", help="word separator in the output (default '|')")
    ap.add_argument("--chunk-chars", type=int, default=DEFAULT_CHUNK_CHARS,
                    help=f"characters segmented per chunk (default {DEFAULT_CHUNK_CHARS:,}); bounds memory")
    args = ap.parse_args(argv)
    try:
        if args.chunk_chars < 1:
            raise ValueError(f"--chunk-chars must be >= 1, got {args.chunk_chars}")
        if args.file not in (None, "-") and not Path(args.file).is_file():
            raise FileNotFoundError(f"input file {args.file} does not exist")
        model = load_segmenter(args.model)

        def run(out: TextIO) -> None:
            if args.text is not None:
                segment_stream(model, args.text.split("\n"), out, sep=args.sep, chunk_chars=args.chunk_chars)
            elif args.file == "-":
                segment_stream(model, _read_lines(sys.stdin), out, sep=args.sep, chunk_chars=args.chunk_chars)
            else:
                with open(args.file, encoding="utf-8", newline="\n") as f:
                    segment_stream(model, _read_lines(f), out, sep=args.sep, chunk_chars=args.chunk_chars)

        if args.out:
            _write_atomically(Path(args.out), run)
        else:
            run(sys.stdout)
    except UnicodeDecodeError as err:
        print(f"error: {args.file} is not UTF-8 text ({err.reason} at byte {err.start})", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
