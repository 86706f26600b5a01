"""Prefect task: generation-based evaluation of a T5 on a task split, logged to MLflow under stable names.

Metrics: ``<split>.rouge1/rouge2/rougeL`` (generation tasks), ``<split>.accuracy`` and ``<split>.macro_f1``
(classification tasks), ``<split>.examples_per_s``; a sample of predictions is logged as
``predictions.csv``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import task

from tasks import tracking


def evaluate_dir(model_dir: str, task_dir: str, *, split: str = "test", batch_size: int = 32, num_beams: int = 1,
                 max_input_length: int = 512, max_new_tokens: int = 32, max_examples: int | None = None,
                 threads: int | None = None) -> tuple[dict[str, float], Any]:
    """Metrics and a predictions table for a model folder on a task folder (no Prefect, no MLflow)."""
    import datasets
    import pandas as pd
    import torch

    from models.generation import batched_generate
    from models.metrics import classification, rouge
    from tasks.finetune_worker import load_model_and_tokenizer

    if threads:
        torch.set_num_threads(threads)
    info = json.loads(Path(task_dir, "task.json").read_text())["info"]
    data = datasets.load_from_disk(str(Path(task_dir) / "data"))[split]
    if len(data) == 0:
        raise ValueError(f"the {split} split of {task_dir} is empty")
    if max_examples:
        data = data.select(range(min(max_examples, len(data))))
    model, tok = load_model_and_tokenizer(model_dir)
    preds, eps = batched_generate(model, tok, list(data["input"]), batch_size=batch_size, num_beams=num_beams,
                                  max_input_length=max_input_length, max_new_tokens=max_new_tokens)
    refs = list(data["target"])
    if info["kind"] == "classification":
        metrics = classification(preds, refs, info["labels"])
    else:
        metrics = rouge(preds, refs)
    metrics = {f"{split}.{k}": v for k, v in metrics.items()}
    metrics[f"{split}.examples_per_s"] = eps
    metrics[f"{split}.examples"] = len(refs)
    table = pd.DataFrame({"input": [x[:300] for x in list(data["input"])], "reference": refs, "prediction": preds})
    return metrics, table


@task(name="evaluate", retries=1, retry_delay_seconds=2)
def evaluate(model_dir: str, task_dir: str, run_id: str, *, split: str = "test", batch_size: int = 32,
             num_beams: int = 1, max_input_length: int = 512, max_new_tokens: int = 32,
             max_examples: int | None = None) -> dict[str, float]:
    metrics, table = evaluate_dir(model_dir, task_dir, split=split, batch_size=batch_size, num_beams=num_beams,
                                  max_input_length=max_input_length, max_new_tokens=max_new_tokens,
                                  max_examples=max_examples)
    tracking.log_metrics(run_id, metrics)
    tracking.log_table(run_id, table.head(200), f"predictions-{split}.csv")
    return metrics
