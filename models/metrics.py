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
