"""The ``text_normalization`` task: written English -> its spoken form, as a text-to-speech front end reads it.

Inputs are real non-standard words (NSWs) found in the packaged English text that is held out of pretraining
(every BBC News article and the Wikipedia articles of the downstream bucket, see ``tasks.sources``), each with
up to two words of context on either side; 2-4 such spans are joined by `` ; `` into one example, and the target
joins their verbalisations the same way. Context words are copied, NSWs are read out in lower case.

Classes and how each is read (numbers by ``num2words``, English; hyphens and commas of its output become spaces;
British "and" kept: "one hundred and five"; the rules that compose them are this module's):

| class | written | spoken |
|---|---|---|
| cardinal | ``1,250`` | one thousand two hundred and fifty |
| decimal | ``2.05`` | two point zero five |
| ordinal | ``21st`` | twenty first |
| year | ``in 1998`` / ``1980s`` | in nineteen ninety eight / nineteen eighties |
| date | ``12 March 2005`` / ``March 12, 2005`` | the twelfth of march two thousand and five / march twelfth two thousand and five |
| time | ``10.30pm`` / ``9:05`` / ``8am`` | ten thirty p m / nine oh five / eight a m |
| money | ``£3.5bn`` / ``$12.50`` | three point five billion pounds / twelve dollars fifty |
| percent | ``4.5%`` | four point five percent |
| measure | ``35mm`` / ``26 miles`` | thirty five millimetres / twenty six miles |
| range | ``1939-45`` / ``10-12%`` | nineteen thirty nine to forty five / ten to twelve percent |
| telephone | ``0800 555 111`` | oh eight oh oh five five five one one one (digit by digit) |
| roman | ``Richard III`` / ``World War II`` | Richard the third / World War two (listed names and words only) |

A 4-digit number in 1100-2099 written without a comma is a year (these sources write counts of thousands with a
comma: 1,500 people). A bare ``m`` after a number is not read (BBC writes millions as ``50m``, athletics metres as
``100m``). Sports scores (``6-3``), glued tokens (``A4``, ``3G``) and other digit strings that fit no class are not
used, and a span's context never holds an unread digit.

Splits: by a hash of the source document (every span of a document lands in one split), examples are then
formed within a split from a seeded shuffle; an input that repeats an earlier one is dropped. Deterministic.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Iterable, Iterator

from models.metrics import ASCII_DIGITS, DIGIT_WORDS

PREFIX = "normalize: "
SEPARATOR = " ; "
CLASSES = ("cardinal", "decimal", "ordinal", "year", "date", "time", "money", "percent", "measure", "range",
           "telephone", "roman")

MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december")
_MONTH = r"(?:January|February|March|April|May|June|July|August|September|October|November|December)"
_NUM = r"\d{1,3}(?:,\d{3})+|\d+"
_DEC = rf"(?:{_NUM})(?:\.\d+)?"
_CUR = {"£": ("pound", "pounds", "penny", "pence"), "$": ("dollar", "dollars", "cent", "cents"),
        "€": ("euro", "euros", "cent", "cents")}
_SCALE = {"k": "thousand", "m": "million", "bn": "billion", "million": "million", "billion": "billion",
          "trillion": "trillion", "tn": "trillion"}
_UNITS = {"km": ("kilometre", "kilometres"), "kg": ("kilogram", "kilograms"), "mph": ("mile per hour", "miles per hour"),
          "cm": ("centimetre", "centimetres"), "mm": ("millimetre", "millimetres"),
          "ft": ("foot", "feet"), "lb": ("pound", "pounds"), "lbs": ("pound", "pounds"), "kmh": ("kilometre per hour",
          "kilometres per hour"), "km/h": ("kilometre per hour", "kilometres per hour"), "GB": ("gigabyte", "gigabytes"),
          "MB": ("megabyte", "megabytes"), "km²": ("square kilometre", "square kilometres"),
          "m²": ("square metre", "square metres"), "metres": ("metre", "metres"), "miles": ("mile", "miles"), "mins": ("minute", "minutes"), "kW": ("kilowatt", "kilowatts"),
          "MW": ("megawatt", "megawatts"), "ha": ("hectare", "hectares"), "sq km": ("square kilometre",
          "square kilometres"), "ml": ("millilitre", "millilitres")}
_UNIT_RE = "|".join(re.escape(u) for u in sorted(_UNITS, key=len, reverse=True))
_YEAR_CUES = {"in", "since", "of", "by", "until", "till", "from", "during", "before", "after", "early", "late", "mid",
              "around", "circa", "c.", "born", "died", "year", "season", "summer", "winter", "spring", "autumn"}
_ROMAN = {"II": 2, "III": 3, "IV": 4, "V": 5, "VI": 6, "VII": 7, "VIII": 8, "IX": 9, "X": 10, "XI": 11, "XII": 12,
          "XIII": 13, "XIV": 14, "XV": 15, "XVI": 16, "XVII": 17, "XVIII": 18}
#: names read with a regnal ordinal (Henry VIII), and words read with a cardinal (World War II)
_REGNAL = frozenset("""Henry Edward George William Richard Charles James Louis Elizabeth Mary Anne Victoria Wilhelm Pedro
Philip John Peter Frederick Napoleon Pius Benedict Gregory Leo Innocent Clement Paul Urban Alexander Boniface Ivan
Nicholas Alfonso Ferdinand Victor Constantine Ramesses Thutmose Amenhotep Otto Rudolf Ludwig Friedrich Karl Gustav
Gustavus Christian Olaf Harald Haakon Carlos Juan Felipe Umberto Manuel Sancho Afonso David Malcolm Robert Stephen
Edmund Ethelred Harold Hassan Mohammed Rama Abdullah Hussein Faisal Selim Mehmed Suleiman Murad Mahmud Francis Sixtus
Leopold Joseph Maximilian Ptolemy Antiochus Seleucus Darius Artaxerxes Xerxes Tiglath Shalmaneser Sargon Nebuchadnezzar
Justinian Theodosius Basil Michael Andronikos Alexios Manuel Casimir Sigismund Wladyslaw Bolesław Catherine Isabella
Jaime Ramiro Wenceslaus Ottokar Béla Ladislaus Matthias Sobhuza Mswati Letsie Moshoeshoe Rainier Albert Baudouin
Willem Frederik Oscar Gustaf Erik Magnus Valdemar Sweyn Cnut Mieszko Vytautas""".split())
_NUMBERED = frozenset({"War", "Part", "Volume", "Chapter", "Act", "Phase", "Stage", "Book", "Series", "Vatican",
                       "Apollo", "Super", "Rocky", "Type", "Class", "Grade", "Mark", "Mk", "Schedule", "Title",
                       "Article", "Section", "Appendix", "Annex", "Division", "Formula", "Cat", "Level", "Gemini"})

# One alternation, most specific first; the group name is the class.
_PATTERN = re.compile(
    rf"(?P<date>\b\d{{1,2}}(?:st|nd|rd|th)? {_MONTH}(?: \d{{4}})?\b|\b{_MONTH} \d{{1,2}}(?:st|nd|rd|th)?(?:, \d{{4}})?\b)"
    rf"|(?P<money>[£$€]\s?(?:{_DEC})(?:\s?(?:bn|tn|million|billion|trillion|m|k)\b)?)"
    rf"|(?P<range>\b(?:1[1-9]|20)\d\d[-–](?:\d\d|(?:1[1-9]|20)\d\d)\b(?![-–.,]\d)|\b\d+(?:\.\d+)?[-–]\d+(?:\.\d+)?\s?(?:%|(?:{_UNIT_RE})(?![\w/])))"
    rf"|(?P<time>\b\d{{1,2}}[:.]\d{{2}}\s?(?:am|pm)\b|\b\d{{1,2}}:\d{{2}}\b|\b\d{{1,2}}\s?(?:am|pm)\b)"
    rf"|(?P<telephone>\b0\d{{3,4}} \d{{3}} ?\d{{3,4}}\b)"
    rf"|(?P<percent>\b(?:{_DEC})\s?%)"
    rf"|(?P<measure>\b(?:{_DEC})\s?(?:{_UNIT_RE})(?![\w/]))"
    rf"|(?P<ordinal>\b\d+(?:st|nd|rd|th)\b)"
    rf"|(?P<decade>\b1\d{{2}}0s\b|\b20[0-9]0s\b)"
    rf"|(?P<decimal>\b\d+\.\d+\b(?![.,]\d))"
    rf"|(?P<number>\b(?:{_NUM})\b(?![.,]\d))"
    rf"|(?P<roman>\b[A-Z][a-z]+ (?:{'|'.join(sorted(_ROMAN, key=len, reverse=True))})\b)"
)
_DIGIT = re.compile(r"\d")
_ASCII_DIGIT_RUN = re.compile(r"[0-9]+")


def _clean(words: str) -> str:
    """num2words output with hyphens and commas turned into spaces, one space between words."""
    return " ".join(words.replace("-", " ").replace(",", " ").split())


def cardinal(n: int) -> str:
    from num2words import num2words

    return _clean(num2words(n, lang="en"))


def ordinal(n: int) -> str:
    from num2words import num2words

    return _clean(num2words(n, lang="en", to="ordinal"))


def year(n: int) -> str:
    from num2words import num2words

    return _clean(num2words(n, lang="en", to="year"))


def _int(s: str) -> int:
    return int(s.replace(",", ""))


def decimal(s: str) -> str:
    """``2.05`` -> two point zero five (the fraction digit by digit)."""
    whole, _, frac = s.partition(".")
    out = cardinal(_int(whole))
    if frac:
        out += " point " + " ".join(DIGIT_WORDS[int(d)] for d in frac)
    return out


def digits(s: str, zero: str = "oh") -> str:
    """Digit by digit, ``0`` read as ``zero`` (telephone numbers read it ``oh``); other characters dropped."""
    return " ".join(zero if d == "0" else DIGIT_WORDS[int(d)] for d in s if d in ASCII_DIGITS)


def _money(s: str) -> str:
    m = re.fullmatch(rf"([£$€])\s?({_DEC})(?:\s?(bn|tn|million|billion|trillion|m|k))?", s)
    sym, amount, scale = m.group(1), m.group(2), m.group(3)
    one, many, sub_one, sub_many = _CUR[sym]
    if scale:
        return f"{decimal(amount)} {_SCALE[scale]} {many}"
    whole, _, frac = amount.partition(".")
    w = _int(whole)
    if frac and len(frac) == 2:
        unit = one if w == 1 else many
        cents = int(frac)
        if w == 0:
            return f"{cardinal(cents)} {sub_one if cents == 1 else sub_many}"
        return f"{cardinal(w)} {unit}" + (f" {cardinal(cents)}" if cents else "")
    if frac:
        return f"{decimal(amount)} {many}"
    return f"{cardinal(w)} {one if w == 1 else many}"


def _number(s: str) -> str:
    return decimal(s) if "." in s else cardinal(_int(s))


def _unit(value: str, unit: str) -> str:
    one, many = _UNITS[unit]
    return one if value in ("1", "1.0") else many


def _time(s: str) -> str:
    m = re.fullmatch(r"(\d{1,2})(?:[:.](\d{2}))?\s?(am|pm)?", s)
    h, mins, ampm = int(m.group(1)), m.group(2), m.group(3)
    out = cardinal(h)
    if mins is not None:
        mm = int(mins)
        if mm == 0:
            out += "" if ampm else " o'clock"
        elif mm < 10:
            out += " oh " + cardinal(mm)
        else:
            out += " " + cardinal(mm)
    if ampm:
        out += " " + " ".join(ampm)
    return out


def _date(s: str) -> str:
    m = re.fullmatch(rf"(\d{{1,2}})(?:st|nd|rd|th)? ({_MONTH})(?: (\d{{4}}))?", s)
    if m:
        out = f"the {ordinal(int(m.group(1)))} of {m.group(2).lower()}"
        return out + (f" {year(int(m.group(3)))}" if m.group(3) else "")
    m = re.fullmatch(rf"({_MONTH}) (\d{{1,2}})(?:st|nd|rd|th)?(?:, (\d{{4}}))?", s)
    out = f"{m.group(1).lower()} {ordinal(int(m.group(2)))}"
    return out + (f" {year(int(m.group(3)))}" if m.group(3) else "")


def _range(s: str) -> str:
    m = re.fullmatch(r"(\d{4})[-–](\d{2}|\d{4})", s)
    if m:
        a, b = m.group(1), m.group(2)
        if len(b) == 2:  # 1939-45: forty five; 2007-13: twenty thirteen (num2words reads years from 2010 so)
            full = int(a[:2] + b)
            return f"{year(int(a))} to {year(full) if full >= 2000 else cardinal(int(b))}"
        return f"{year(int(a))} to {year(int(b))}"
    m = re.fullmatch(rf"(\d+(?:\.\d+)?)[-–](\d+(?:\.\d+)?)\s?(%|{_UNIT_RE})", s)
    a, b, unit = m.groups()
    return f"{_number(a)} to {_number(b)} " + ("percent" if unit == "%" else _UNITS[unit][1])


def _decade(s: str) -> str:
    """``1980s`` -> nineteen eighties; ``2000s`` -> two thousands."""
    n = int(s[:4])
    words = year(n).split()
    last = words[-1]
    plural = {"ty": "ties", "ten": "tens", "hundred": "hundreds", "thousand": "thousands"}
    for end, rep in plural.items():
        if last.endswith(end):
            words[-1] = last[: len(last) - len(end)] + rep
            break
    return " ".join(words)


def _roman(s: str) -> str | None:
    """``Henry VIII`` -> Henry the eighth (a regnal name); ``World War II`` -> World War two; else not read."""
    word, numeral = s.split(" ")
    n = _ROMAN[numeral]
    if word in _NUMBERED:
        return f"{word} {cardinal(n)}"
    if word in _REGNAL:
        return f"{word} the {ordinal(n)}"
    return None


def verbalize(cls: str, written: str, before: str = "") -> tuple[str, str] | None:
    """``(class, spoken)`` for one matched NSW (``cls`` is the matching group's name), or None if it is not read.

    ``before`` is the previous word (it decides year against cardinal).
    """
    if cls == "number":
        value = _int(written)
        if re.fullmatch(r"\d{4}", written) and 1100 <= value <= 2099:
            return "year", year(value)  # these sources write counts of thousands with a comma (1,500 people)
        if len(written.replace(",", "")) > 12 or (len(written) > 1 and written.startswith("0")):
            return None  # identifiers, codes and zero-led strings are not cardinals
        return "cardinal", cardinal(value)
    if cls == "decade":
        return "year", _decade(written)
    if cls == "decimal":
        return "decimal", decimal(written)
    if cls == "ordinal":
        n = int(re.match(r"\d+", written).group())
        suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
        return ("ordinal", ordinal(n)) if written.endswith(suffix) else None
    if cls == "percent":
        return "percent", _number(written.rstrip("%").strip()) + " percent"
    if cls == "measure":
        m = re.fullmatch(rf"({_DEC})\s?({_UNIT_RE})", written)
        return "measure", f"{_number(m.group(1))} {_unit(m.group(1), m.group(2))}"
    if cls == "money":
        return "money", _money(written)
    if cls == "time":
        h = int(re.match(r"\d+", written).group())
        mins = re.search(r"[:.](\d{2})", written)
        if h > 24 or (mins and int(mins.group(1)) > 59) or ("m" in written and h > 12):
            return None
        return "time", _time(written)
    if cls == "date":
        day = int(re.search(r"\d{1,2}", written).group())
        if not 1 <= day <= 31:
            return None
        spoken = _date(written)
        return "date", spoken[4:] if spoken.startswith("the ") and before.lower() == "the" else spoken
    if cls == "range":
        return "range", _range(written)
    if cls == "telephone":
        return "telephone", digits(written)
    if cls == "roman":
        spoken = _roman(written)
        return None if spoken is None else ("roman", spoken)
    raise ValueError(f"unknown NSW class {cls!r}")


def _words_before(text: str, start: int, k: int) -> list[str]:
    out = []
    for w in reversed(text[:start].split()):
        if len(out) == k or w[-1:] in ".!?;:" or _DIGIT.search(w):
            break
        out.insert(0, w.strip("\"'()[],"))
        if not out[0]:
            out.pop(0)
            break
    return out


def _words_after(text: str, end: int, k: int) -> list[str]:
    out = []
    rest = text[end:]
    if rest[:1] != " ":
        return []  # the span ends a clause (punctuation right after it) or the text
    for w in rest.split():
        if len(out) == k or _DIGIT.search(w):
            break
        stop = w[-1:] in ".!?;:,"
        w = w.strip("\"'()[],.!?;:")
        if w:
            out.append(w)
        if stop or not w:
            break
    return out


def spans(text: str, context: int = 2) -> Iterator[dict[str, str]]:
    """Every NSW of ``text`` that a class reads: ``{"cls", "written", "spoken"}`` with up to ``context`` words of
    context on each side (copied into both), stopping at sentence punctuation, line ends and words holding digits."""
    for line in text.splitlines():
        yield from _line_spans(" ".join(line.split()), context)


def _line_spans(text: str, context: int) -> Iterator[dict[str, str]]:
    for m in _PATTERN.finditer(text):
        cls = m.lastgroup
        written = m.group()
        prev = text[: m.start()].rsplit(None, 1)[-1:] or [""]
        if m.start() > 0 and text[m.start() - 1] not in " ([\"'":
            continue  # glued to a preceding token (e.g. "A4", "-5")
        if m.end() < len(text) and (text[m.end()].isalnum() or text[m.end()] in "-–/"):
            continue
        out = verbalize(cls, written, before=prev[0])
        if out is None:
            continue
        left, right = _words_before(text, m.start(), context), _words_after(text, m.end(), context)
        yield {"cls": out[0], "written": " ".join(left + [written] + right),
               "spoken": " ".join(left + [out[1]] + right)}


def resample_digits(text: str, rng: random.Random) -> str:
    """``text`` with every run of ASCII digits replaced by a random number of the same length: a leading zero
    stays a leading zero (and only then), and a 4-digit run that reads as a year (1100-2099) stays one."""
    def draw(m: re.Match) -> str:
        run = m.group()
        if len(run) == 4 and 1100 <= int(run) <= 2099:
            return str(rng.randint(1100, 2099))
        head = "0" if run[0] == "0" else str(rng.randint(1, 9))
        return head + "".join(str(rng.randint(0, 9)) for _ in run[1:])
    return _ASCII_DIGIT_RUN.sub(draw, text)


def build(documents: Iterable[tuple[str, str, str]], *, seed: int = 0, per_class_cap: int = 3000,
          spans_per_example: tuple[int, int] = (2, 4), context: int = 2,
          synthetic: int = 0) -> dict[str, list[dict[str, str]]]:
    """Examples per split from ``(doc_id, split, text)`` triples: ``{"id", "input", "target", "classes"}``.

    Spans are taken per split, at most ``per_class_cap`` of each class per split (first in a seeded shuffle),
    then shuffled again and cut into groups of ``spans_per_example`` (drawn uniformly) spans, each with ``context``
    words either side.

    ``synthetic`` > 0 adds, to the train split only, the spans of that many copies of each train document whose
    digits are redrawn (``resample_digits``; ids ``<doc>~<copy>#<span>``), read by the same rules and capped at
    ``synthetic * per_class_cap`` a class: real contexts with numbers the real spans do not hold. Validation and
    test stay real, and a synthetic example whose input occurs in either is dropped.
    """
    lo, hi = spans_per_example
    if not 1 <= lo <= hi:
        raise ValueError(f"spans_per_example must be 1 <= lo <= hi, got {spans_per_example}")
    if synthetic < 0:
        raise ValueError(f"synthetic must be >= 0, got {synthetic}")
    pools: dict[str, list[dict[str, str]]] = {"train": [], "validation": [], "test": []}
    extra: list[dict[str, str]] = []
    for doc_id, split, text in documents:
        for i, sp in enumerate(spans(text, context)):
            pools[split].append({**sp, "id": f"{doc_id}#{i}"})
        if split == "train":
            for copy in range(synthetic):
                fake = resample_digits(text, random.Random(f"{seed}:{doc_id}:{copy}"))
                extra.extend({**sp, "id": f"{doc_id}~{copy}#{i}"} for i, sp in enumerate(spans(fake, context)))
    out: dict[str, list[dict[str, str]]] = {}
    for split, pool in pools.items():
        rng = random.Random(f"{seed}:{split}")
        rng.shuffle(pool)
        kept = _capped(pool, per_class_cap)
        if split == "train" and extra:
            random.Random(f"{seed}:synthetic").shuffle(extra)
            kept += _capped(extra, synthetic * per_class_cap)
        rng.shuffle(kept)
        examples, seen, i = [], set(), 0
        while i < len(kept):
            group = kept[i: i + rng.randint(lo, hi)]
            i += len(group)
            inp = PREFIX + SEPARATOR.join(g["written"] for g in group)
            if inp in seen:
                continue
            seen.add(inp)
            examples.append({"id": "tn:" + "+".join(g["id"] for g in group), "input": inp,
                             "target": SEPARATOR.join(g["spoken"] for g in group),
                             "classes": ",".join(g["cls"] for g in group)})
        out[split] = examples
    held_out = {e["input"] for split in ("validation", "test") for e in out[split]}
    out["train"] = [e for e in out["train"] if "~" not in e["id"] or e["input"] not in held_out]
    return out


def _capped(pool: list[dict[str, str]], cap: int) -> list[dict[str, str]]:
    """The first ``cap`` spans of each class, in ``pool``'s order."""
    counts: Counter = Counter()
    kept = []
    for sp in pool:
        if counts[sp["cls"]] < cap:
            counts[sp["cls"]] += 1
            kept.append(sp)
    return kept


def class_counts(examples: list[dict[str, str]]) -> dict[str, int]:
    """Spans per class over a list of examples."""
    c: Counter = Counter(cls for ex in examples for cls in ex["classes"].split(","))
    return {k: c.get(k, 0) for k in CLASSES}
