"""Task metrics, computed with established packages: ROUGE (``rouge-score``) and macro-F1 (scikit-learn).

Pure functions over strings; the evaluation task turns them into MLflow metrics under stable names
(``rouge1``, ``rouge2``, ``rougeL``, ``accuracy``, ``macro_f1``).
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

PRIMARY = {"generation": "rougeL", "classification": "accuracy"}
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
