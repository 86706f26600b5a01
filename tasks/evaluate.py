"""Prefect task: generation-based evaluation of a T5 on a task split, logged to MLflow under stable names.

Metrics: ``<split>.rouge1/rouge2/rougeL`` (generation tasks), ``<split>.accuracy`` and ``<split>.macro_f1``
(classification tasks), ``<split>.examples_per_s``; beside them the task's trivial baseline on the same
examples, ``<split>.baseline.<metric>`` (lead-N with N chosen on validation, ``<split>.baseline.lead_n``; or the
majority class), and ``<split>.beats_baseline`` (1.0 when the model's ROUGE-L / accuracy is above it); a sample of predictions is logged as
``predictions.csv``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import task

from tasks import tracking
from tasks.runtime.orchestration import retry_transient


def evaluate_dir(model_dir: str, task_dir: str, *, split: str = "test", batch_size: int = 32, num_beams: int = 1,
                 max_input_length: int = 512, max_new_tokens: int = 32, max_examples: int | None = None,
                 threads: int | None = None) -> tuple[dict[str, float], Any]:
    """Metrics and a predictions table for a model folder on a task folder (no Prefect, no MLflow)."""
    import datasets
    import pandas as pd
    import torch

    from models.generation import batched_generate
    from models.metrics import beats_baseline, score
    from engine.finetune_worker import load_model_and_tokenizer

    if threads:
        torch.set_num_threads(threads)
    info = json.loads(Path(task_dir, "task.json").read_text())["info"]
    all_splits = datasets.load_from_disk(str(Path(task_dir) / "data"))
    data = all_splits[split]
    if len(data) == 0:
        raise ValueError(f"the {split} split of {task_dir} is empty")
    if max_examples:
        data = data.select(range(min(max_examples, len(data))))
    model, tok = load_model_and_tokenizer(model_dir)
    preds, eps = batched_generate(model, tok, list(data["input"]), batch_size=batch_size, num_beams=num_beams,
                                  max_input_length=max_input_length, max_new_tokens=max_new_tokens)
    refs = list(data["target"])
    metrics = {f"{split}.{k}": v for k, v in score(info["kind"], preds, refs, info.get("labels")).items()}
    base, base_preds = baseline_metrics(all_splits, info, split, list(data["input"]), refs)
    metrics.update({f"{split}.{k}": v for k, v in base.items()})
    metrics[f"{split}.beats_baseline"] = float(beats_baseline(metrics, info["kind"], f"{split}."))
    metrics[f"{split}.examples_per_s"] = eps
    metrics[f"{split}.examples"] = len(refs)
    table = pd.DataFrame({"input": [x[:300] for x in list(data["input"])], "reference": refs, "prediction": preds,
                          "baseline": base_preds})
    return metrics, table


def baseline_metrics(splits, info: dict[str, Any], split: str, inputs: list[str], refs: list[str],
                     *, choose_on: int = 200) -> tuple[dict[str, float], list[str]]:
    """The task's trivial baseline scored on ``inputs``/``refs``: ``baseline.<metric>`` and its predictions.

    Generation: lead-N, with N chosen on (up to ``choose_on`` examples of) the validation split, or the
    train split when there is no validation split (never on the split scored). Normalization: the better of
    copying the input and reading its digits one by one, chosen the same way (``baseline.is.<name>`` = 1).
    Classification: the majority class of the train split.
    """
    from models.metrics import (NORMALIZATION_BASELINES, choose_lead_n, choose_normalization_baseline, classification,
                                lead_n, majority_class, normalization, rouge)

    if info["kind"] == "classification":
        label = majority_class(list(splits["train"]["target"]))
        preds = [label] * len(refs)
        out = {f"baseline.{k}": v for k, v in classification(preds, refs, info["labels"]).items()}
        return out, preds
    pick = next((s for s in ("validation", "train") if s != split and s in splits and len(splits[s])), None)
    if pick is None:
        raise ValueError("the baseline needs a validation or train split to be chosen on")
    held = splits[pick].select(range(min(choose_on, len(splits[pick]))))
    prefix = info.get("prefix") or ""
    if info["kind"] == "normalization":
        name = choose_normalization_baseline(list(held["input"]), list(held["target"]), prefix)
        preds = NORMALIZATION_BASELINES[name](inputs, prefix)
        out = {f"baseline.{k}": v for k, v in normalization(preds, refs).items()}
        out[f"baseline.is.{name}"] = 1.0
        return out, preds
    n, _ = choose_lead_n(list(held["input"]), list(held["target"]), prefix)
    preds = lead_n(inputs, n, prefix)
    out = {f"baseline.{k}": v for k, v in rouge(preds, refs).items()}
    out["baseline.lead_n"] = float(n)
    return out, preds


def evaluate_and_log(model_dir: str, task_dir: str, run_id: str, *, split: str = "test", **kwargs: Any) -> dict[str, float]:
    """``evaluate_dir`` (keyword arguments passed on), its metrics and first 200 predictions logged to ``run_id``."""
    metrics, table = evaluate_dir(model_dir, task_dir, split=split, **kwargs)
    tracking.log_metrics(run_id, metrics)
    tracking.log_table(run_id, table.head(200), f"predictions-{split}.csv")
    return metrics


@task(name="evaluate", retries=1, retry_condition_fn=retry_transient, retry_delay_seconds=2)
def evaluate(model_dir: str, task_dir: str, run_id: str, *, split: str = "test", batch_size: int = 32,
             num_beams: int = 1, max_input_length: int = 512, max_new_tokens: int = 32,
             max_examples: int | None = None) -> dict[str, float]:
    return evaluate_and_log(model_dir, task_dir, run_id, split=split, batch_size=batch_size, num_beams=num_beams,
                            max_input_length=max_input_length, max_new_tokens=max_new_tokens,
                            max_examples=max_examples)


def headline(metrics: dict[str, float], split: str = "test") -> str:
    """One line for a model description: the split's primary metric beside its trivial baseline's."""
    for name in ("exact_match", "accuracy", "rougeL"):
        if f"{split}.{name}" in metrics:
            base = metrics.get(f"{split}.baseline.{name}")
            which = next((k.rsplit(".", 1)[1] for k in metrics if k.startswith(f"{split}.baseline.is.")), "baseline")
            return (f"{split} {name} {metrics[f'{split}.{name}']:.3f}"
                    + (f" (trivial baseline {which}: {base:.3f})" if base is not None else "") + ".")
    return "no test metrics."
