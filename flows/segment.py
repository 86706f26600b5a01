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
import sys
from pathlib import Path
from typing import TextIO


def main(argv: list[str] | None = None) -> int:
    from tasks.runtime.env import apply_embedded_defaults
    from tasks.thai.segment import DEFAULT_CHUNK_CHARS, load_segmenter, segment_input, write_atomically

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
            segment_input(model, out, text=args.text, file=args.file, sep=args.sep, chunk_chars=args.chunk_chars)

        if args.out:
            write_atomically(Path(args.out), run)
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
