"""Task metrics: ROUGE (``rouge-score``), macro-F1 (scikit-learn), exact match and word error rate.

Pure functions over strings; the evaluation task turns them into MLflow metrics under stable names
(``rouge1``, ``rouge2``, ``rougeL``, ``accuracy``, ``macro_f1``, ``exact_match``, ``wer``).
"""

from __future__ import annotations

from typing import Sequence


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure (Porter stemming, as in the XSum/CNN-DM literature), in [0, 1]."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    sums = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for p, r in zip(predictions, references):
        for k, s in scorer.score(r, p).items():
            sums[k] += s.fmeasure
    return {k: v / len(predictions) for k, v in sums.items()}


def _words(text: str) -> list[str]:
    return text.lower().split()


def word_errors(prediction: str, reference: str) -> int:
    """Word-level Levenshtein distance (substitutions + deletions + insertions), case-insensitive."""
    p, r = _words(prediction), _words(reference)
    prev = list(range(len(p) + 1))
    for i, rw in enumerate(r, 1):
        cur = [i] + [0] * len(p)
        for j, pw in enumerate(p, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (rw != pw))
        prev = cur
    return prev[-1]


def normalization(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Text-normalisation metrics: ``exact_match`` (the whole output equals the reference, case and spacing
    aside), corpus ``wer`` (word errors over reference words, as jiwer computes it) and ROUGE-1/2/L."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")
    em = sum(_words(p) == _words(r) for p, r in zip(predictions, references)) / len(references)
    errors = sum(word_errors(p, r) for p, r in zip(predictions, references))
    words = sum(len(_words(r)) for r in references)
    return {"exact_match": float(em), "wer": errors / max(words, 1), **rouge(predictions, references)}


def score(kind: str, predictions: Sequence[str], references: Sequence[str],
          labels: Sequence[str] | None = None) -> dict[str, float]:
    """The metrics of a task kind: ``classification``, ``generation`` (ROUGE) or ``normalization``."""
    if kind == "classification":
        return classification(predictions, references, labels or [])
    if kind == "normalization":
        return normalization(predictions, references)
    return rouge(predictions, references)


def classification(predictions: Sequence[str], references: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Exact-match accuracy and macro-F1 over ``labels`` (a prediction outside the label set is wrong)."""
    from sklearn.metrics import f1_score

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")
    preds = [p.strip() for p in predictions]
    refs = [r.strip() for r in references]
    acc = sum(p == r for p, r in zip(preds, refs)) / len(refs)
    f1 = f1_score(refs, preds, labels=list(labels), average="macro", zero_division=0)
    return {"accuracy": float(acc), "macro_f1": float(f1)}


# --- trivial baselines ------------------------------------------------------------------------------
# Every evaluation scores its task's trivial baseline beside the model, so a number can be read against
# what no learning at all achieves: lead-N for generation (the first N words of the input, the standard
# extractive baseline of summarisation), the majority class for classification.

PRIMARY = {"generation": "rougeL", "classification": "accuracy", "normalization": "exact_match"}
LEAD_N_CANDIDATES = tuple(range(1, 41))


def lead_n(inputs: Sequence[str], n: int, prefix: str = "") -> list[str]:
    """The first ``n`` whitespace-separated words of each input, after removing the task ``prefix``."""
    if n < 1:
        raise ValueError(f"lead-N needs n >= 1, got {n}")
    out = []
    for x in inputs:
        if prefix and x.startswith(prefix):
            x = x[len(prefix):]
        out.append(" ".join(x.split()[:n]))
    return out


def choose_lead_n(inputs: Sequence[str], references: Sequence[str], prefix: str = "",
                  candidates: Sequence[int] = LEAD_N_CANDIDATES) -> tuple[int, float]:
    """The N of lead-N with the best mean ROUGE-L on (validation) ``inputs``/``references``, and that score.

    Ties go to the smaller N. Choose N on a split other than the one you report on.
    """
    from rouge_score import rouge_scorer

    if len(inputs) != len(references) or not inputs:
        raise ValueError(f"choose_lead_n needs as many references as inputs (> 0), got {len(inputs)}, {len(references)}")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    best_n, best = candidates[0], -1.0
    for n in candidates:
        preds = lead_n(inputs, n, prefix)
        score = sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, references)) / len(preds)
        if score > best + 1e-12:
            best_n, best = n, score
    return best_n, best


#: the English word of each ASCII digit (``DIGIT_WORDS[int(c)]``); only "0"-"9" are read: str.isdigit() is
#: also true of "²", "³", "①"...
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ASCII_DIGITS = frozenset("0123456789")


def copy_input(inputs: Sequence[str], prefix: str = "") -> list[str]:
    """Each input unchanged (without the task ``prefix``): the normalisation baseline that reads nothing."""
    return [x[len(prefix):] if prefix and x.startswith(prefix) else x for x in inputs]


def read_digits(inputs: Sequence[str], prefix: str = "") -> list[str]:
    """Each input with every digit replaced by its word, one by one (``£35bn`` -> ``£three fivebn``)."""
    return [" ".join("".join(f" {DIGIT_WORDS[int(c)]} " if c in ASCII_DIGITS else c for c in x).split())
            for x in copy_input(inputs, prefix)]


NORMALIZATION_BASELINES = {"copy-input": copy_input, "read-digits": read_digits}


def choose_normalization_baseline(inputs: Sequence[str], references: Sequence[str], prefix: str = "") -> str:
    """The better of the two trivial normalisation baselines on (validation) examples: higher exact match,
    then lower WER; ties go to ``copy-input``. Choose on a split other than the one you report on."""
    if len(inputs) != len(references) or not inputs:
        raise ValueError(f"needs as many references as inputs (> 0), got {len(inputs)}, {len(references)}")

    def key(name: str) -> tuple[float, float]:
        m = normalization(NORMALIZATION_BASELINES[name](inputs, prefix), references)
        return (m["exact_match"], -m["wer"])

    return max(NORMALIZATION_BASELINES, key=key)


def majority_class(train_targets: Sequence[str]) -> str:
    """The most frequent label of the training targets (ties: the first in sorted order)."""
    if not train_targets:
        raise ValueError("no training targets to take the majority class from")
    counts: dict[str, int] = {}
    for t in train_targets:
        counts[t.strip()] = counts.get(t.strip(), 0) + 1
    return min(counts, key=lambda k: (-counts[k], k))


def beats_baseline(metrics: dict[str, float], kind: str, prefix: str = "") -> bool | None:
    """Whether the model's primary metric is above the baseline's (``<prefix>baseline.<metric>``); None if absent."""
    m = PRIMARY[kind]
    model, base = metrics.get(f"{prefix}{m}"), metrics.get(f"{prefix}baseline.{m}")
    if model is None or base is None:
        return None
    return model > base
