"""Test session setup: all state in a temporary folder, the embedded defaults, a real Prefect test API."""

import os
import sys
import tempfile
from pathlib import Path

_STATE = Path(tempfile.mkdtemp(prefix="spactor-test-state-"))
os.environ["SPACTOR_STATE_DIR"] = str(_STATE)
for var in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "RAY_ADDRESS"):
    os.environ.pop(var, None)  # tests always use the embedded services
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tasks.runtime.env import apply_embedded_defaults  # noqa: E402

apply_embedded_defaults()

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def state_dir() -> Path:
    return _STATE


@pytest.fixture(scope="session")
def prefect_harness():
    """A real temporary Prefect API for the whole session (started once, ~10 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture()
def text_files(tmp_path: Path) -> Path:
    """A folder of small English text files (from Python's own documentation prose)."""
    import pydoc_data.topics as topics

    folder = tmp_path / "texts"
    folder.mkdir()
    for i, (name, body) in enumerate(sorted(topics.topics.items())[:60]):
        (folder / f"{i:03d}-{name}.txt").write_text(body, encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> str:
    """A small packaged-text corpus (rows of 70 tokens = span corruption at inputs_length 64), built once."""
    from engine.config.corpus_prep import CorpusPrepConfig
    from tasks.corpus import build_corpus, source_fingerprint

    cfg = CorpusPrepConfig(name="test", packaged=["wiki", "parl"], max_documents=500, vocab_size=600,
                           pack_length=70, character_coverage=1.0, validation_fraction=0.05, test_fraction=0.05,
                           num_proc=1, output_root=str(tmp_path_factory.mktemp("corpus"))).model_dump()
    return build_corpus.fn(cfg, source_fingerprint(cfg))


def tiny_pretrain_config(**overrides):
    """A pretraining config for tests: seconds per run on one CPU core."""
    from engine.config.base import T5Shape
    from engine.config.pretrain import PretrainConfig

    base = dict(preset="test", model=T5Shape(d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2,
                                             num_decoder_layers=2, tie_word_embeddings=True),
                inputs_length=64, batch_size=4, total_steps=12, tau=6, lr=2e-3, warmup_steps=2, checkpoint_every=4,
                eval_every=4, eval_batches=2, log_every=2, cosine_every=4, threads_per_worker=1)
    base.update(overrides)
    return PretrainConfig(**base)


def make_t5_dir(tokenizer_dir: str, out, *, d_model: int = 32, layers: int = 2, seed: int = 0) -> str:
    """A random-init T5 (with the given tokenizer) saved with save_pretrained."""
    import torch
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(T5Config(vocab_size=len(tok), d_model=d_model, d_ff=2 * d_model, d_kv=8,
                                                num_heads=d_model // 8, num_layers=layers, num_decoder_layers=layers,
                                                decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


TEST_CHAT_TEMPLATE = "{% for m in messages %}question: {{ m['content'] }} answer:{% endfor %}"


def make_llama_dir(tokenizer_dir: str, out, *, hidden: int = 32, layers: int = 2, seed: int = 0,
                   chat_template: str | None = TEST_CHAT_TEMPLATE, head_scale: float = 1.0) -> str:
    """A random-init decoder-only LM (a tiny Llama) with the given tokenizer (and a chat template), saved with
    save_pretrained; ``head_scale`` > 1 sharpens its next-token distributions (a random one is near uniform)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    if chat_template:
        tok.chat_template = chat_template
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                                         eos_token_id=tok.eos_token_id, bos_token_id=None,
                                         tie_word_embeddings=False))
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def copy_task(tmp_path_factory) -> dict:
    """A learnable toy task as local jsonl files: copy the first word of the input."""
    import json
    import random

    rng = random.Random(0)
    words = ["house", "minister", "music", "century", "city", "war", "river", "party"]
    folder = tmp_path_factory.mktemp("task")
    for split, n in (("train", 400), ("validation", 32), ("test", 40)):
        with open(folder / f"{split}.jsonl", "w") as f:
            for _ in range(n):
                w = rng.choice(words)
                f.write(json.dumps({"input": f"{w} and the {rng.choice(words)}", "target": w}) + "\n")
    return {"name": "copy_first", "jsonl": {s: str(folder / f"{s}.jsonl") for s in ("train", "validation", "test")},
            "kind": "classification", "labels": words}


def kill_when(cmd: list[str], ready, log_path: Path, *, cwd, env=None, timeout_s: float = 400) -> list[int]:
    """Start ``cmd``, wait until ``ready()`` is true, then SIGKILL its whole process tree at once (the flow
    process, its local Ray head and the training workers); returns the pids killed (empty if it ended first)."""
    import os
    import signal
    import subprocess
    import time

    import psutil

    with open(log_path, "w") as log:
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=log)
        deadline = time.time() + timeout_s
        while time.time() < deadline and p.poll() is None and not ready():
            time.sleep(0.3)
        family = [p.pid] + [c.pid for c in psutil.Process(p.pid).children(recursive=True)] if p.poll() is None else []
        for pid in family:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        p.wait()
    return family
