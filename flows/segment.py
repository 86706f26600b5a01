"""Segment Thai text with a trained segmenter: one output line per input line, words joined by ``|``.

    python -m flows.segment --model models:/thai-seg-small-ranked@final --text "ฉันกินข้าว"
    python -m flows.segment --model models:/thai-seg-small-ranked/1 --file input.txt > segmented.txt
    python -m flows.segment --model .state/active_learning/<run>/models/ranked/r016 --file - < input.txt

``--model`` is a registered model (``models:/name@alias`` or ``models:/name/version``, fetched and
checked against its sha256 by ``tasks.tracking.resolve_model``), a ``runs:/`` URI or a folder written by
``ThaiSegmenter.save``. Every input character is kept: removing the separators gives the input back
(use ``--sep`` when the text itself contains ``|``). No Prefect flow: this is a plain command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def segment_lines(model_ref: str, lines: list[str], sep: str = "|") -> list[str]:
    from models.thai_segmenter import ThaiSegmenter
    from tasks.tracking import resolve_model

    try:
        folder = resolve_model(model_ref)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - registry errors (unknown name, version, alias) as one line
        raise ValueError(f"cannot resolve model {model_ref!r}: {str(err).splitlines()[0]}") from None
    model = ThaiSegmenter.load(folder)
    return [sep.join(words) for words in model.segment_batch(lines)]


def main(argv: list[str] | None = None) -> int:
    from tasks.env import apply_embedded_defaults

    apply_embedded_defaults()
    ap = argparse.ArgumentParser(prog="python -m flows.segment", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="models:/name@alias, models:/name/version, runs:/..., or a folder")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the text to segment")
    src.add_argument("--file", help="a UTF-8 text file, one text per line ('-' = stdin)")
    ap.add_argument("--sep", default="|", help="word separator in the output (default '|')")
    args = ap.parse_args(argv)
    try:
        if args.text is not None:
            lines = args.text.split("\n")
        elif args.file == "-":
            lines = sys.stdin.read().split("\n")
        else:
            path = Path(args.file)
            if not path.is_file():
                raise FileNotFoundError(f"input file {path} does not exist")
            lines = path.read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "" and args.text is None:
            lines.pop()  # the file's final newline is not an empty text
        if any(args.sep in line for line in lines):
            raise ValueError(f"the input contains the separator {args.sep!r}; choose another with --sep")
        out = segment_lines(args.model, lines, args.sep)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    sys.stdout.write("".join(line + "\n" for line in out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
