"""Fine-tuning and evaluation flows for real (Ray Train worker, MLflow registry), on a local jsonl task."""

import json

import pytest

from flows.evaluate import EvaluateConfig, evaluate_flow
from flows.finetune import FinetuneConfig, finetune_flow


@pytest.fixture(scope="module")
def tiny_t5_dir(tiny_corpus, tmp_path_factory):
    import torch
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(f"{tiny_corpus}/tokenizer")
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(vocab_size=len(tok), d_model=32, d_ff=64, d_kv=8, num_heads=4,
                                                num_layers=2, num_decoder_layers=2, decoder_start_token_id=0,
                                                pad_token_id=0, eos_token_id=1))
    out = tmp_path_factory.mktemp("t5")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def copy_task(tmp_path_factory):
    """A learnable toy task: copy the first word of the input."""
    import random

    rng = random.Random(0)
    words = ["house", "minister", "music", "century", "city", "war", "river", "party"]
    folder = tmp_path_factory.mktemp("task")
    for split, n in (("train", 400), ("test", 40)):
        with open(folder / f"{split}.jsonl", "w") as f:
            for _ in range(n):
                w = rng.choice(words)
                f.write(json.dumps({"input": f"{w} and the {rng.choice(words)}", "target": w}) + "\n")
    return {"name": "copy_first", "jsonl": {"train": str(folder / "train.jsonl"), "test": str(folder / "test.jsonl")},
            "kind": "classification", "labels": words}


def test_finetune_registers_the_model_with_task_and_lineage_tags_and_evaluates_it(prefect_harness, tiny_t5_dir,
                                                                                  copy_task, tmp_path):
    from mlflow import MlflowClient

    cfg = FinetuneConfig(model=tiny_t5_dir, task=copy_task, total_steps=150, batch_size=16, lr=3e-3, eval_every=50, dropout_rate=0.0, early_stop_patience=0,
                         checkpoint_every=50, max_input_length=16, max_target_length=4, test_examples=40,
                         threads_per_worker=1, output_root=str(tmp_path), register_as="test-copy")
    res = finetune_flow(config=cfg)
    assert set(res.metrics) >= {"test.accuracy", "test.macro_f1", "test.examples_per_s"}
    assert res.metrics["test.accuracy"] > 0.5  # the copy task is learnt
    mv = MlflowClient().get_model_version("test-copy", res.model_uri.rsplit("/", 1)[1])
    assert mv.tags["task"] == "copy_first" and mv.tags["lineage.pretrained_model"] == tiny_t5_dir
    ev = evaluate_flow(config=EvaluateConfig(model=res.model_uri, task=copy_task, max_input_length=16,
                                             max_new_tokens=4))
    assert ev.metrics["test.accuracy"] == pytest.approx(res.metrics["test.accuracy"])


def test_a_tokenizer_that_does_not_match_the_model_is_refused_before_training(prefect_harness, tiny_t5_dir, copy_task,
                                                                              tmp_path):
    import shutil

    from transformers import T5Config, T5ForConditionalGeneration

    bad = tmp_path / "bad"
    shutil.copytree(tiny_t5_dir, bad)
    small = T5ForConditionalGeneration(T5Config(vocab_size=50, d_model=16, d_ff=16, d_kv=4, num_heads=2, num_layers=1,
                                                decoder_start_token_id=0))
    small.save_pretrained(bad)  # overwrite the weights/config with a 50-token model; tokenizer stays
    with pytest.raises(ValueError, match="the tokenizer has .* tokens but the model's embedding has 50 rows"):
        finetune_flow(config=FinetuneConfig(model=str(bad), task=copy_task, output_root=str(tmp_path)))
