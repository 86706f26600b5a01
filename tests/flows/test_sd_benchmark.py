"""The SD benchmark flow for real: save_pretrained folders + a registered model -> table, plots, MLflow run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from flows._cli import ConfigError, build_config
from engine.config.sd_benchmark import PRESETS, SDBenchmarkConfig
from flows.sd_benchmark import sd_benchmark
from models.sd.bench import COLUMNS


def _save_t5(folder: Path, tokenizer_dir: str, *, seed: int, d_model: int, layers: int, extra_vocab: int = 0) -> str:
    """A random-init T5 whose weights are spread out (varied greedy text, not one repeated token)."""
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = T5Config(vocab_size=len(tok) + extra_vocab, d_model=d_model, d_kv=d_model // 4, d_ff=2 * d_model,
                      num_layers=layers, num_heads=4, dropout_rate=0.0, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, decoder_start_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 2:
                param.normal_(0.0, 4.0 / param.shape[1] ** 0.5, generator=generator)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def pair(tiny_corpus, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("sd-models")
    tok = f"{tiny_corpus}/tokenizer"
    return {"target": _save_t5(root / "target", tok, seed=0, d_model=32, layers=2),
            "draft": _save_t5(root / "draft", tok, seed=1, d_model=16, layers=1),
            "bad": _save_t5(root / "bad", tok, seed=2, d_model=16, layers=1, extra_vocab=8)}


def _config(**kw) -> SDBenchmarkConfig:
    base = dict(num_prompts=2, prompt_tokens=16, max_new_tokens=8, gammas=[1, 3], lenience=[1.0, 0.5],
                modes=["greedy", "sampling"], repeats=2, warmup=0, threads=1)
    base.update(kw)
    return SDBenchmarkConfig(**base)


def test_flow_logs_table_and_plots_and_greedy_sd_equals_target_only_decoding(prefect_harness, tiny_corpus, pair):
    from tasks import tracking

    # The target itself, registered in MLflow, is a draft that is always right (alpha = 1).
    with tracking.start_run("sd-bench-test-models", "register") as rid:
        self_uri = tracking.register_model(rid, pair["target"], "sd-test-self")
    cfg = _config(target=pair["target"], corpus_dir=tiny_corpus, experiment="sd-bench-test", batch_sizes=[2],
                  drafts=[{"label": "random", "model": pair["draft"]}, {"label": "self", "model": self_uri}])
    res = sd_benchmark(config=cfg)
    df = res.table

    assert list(df.columns) == COLUMNS
    # per mode: target + hf_generate; per draft: greedy 2 gammas x (sd + hf_assisted),
    # sampling 2 gammas x (2 lenience sd + 1 hf_assisted)
    assert len(df) == 2 * 2 + 2 * (2 * 2 + 2 * 3)
    counts = df.groupby(["mode", "method"]).size().to_dict()
    assert counts == {("greedy", "target"): 1, ("greedy", "hf_generate"): 1, ("greedy", "sd"): 4,
                      ("greedy", "hf_assisted"): 4, ("sampling", "target"): 1, ("sampling", "hf_generate"): 1,
                      ("sampling", "sd"): 8, ("sampling", "hf_assisted"): 4}
    sd = df[df["method"] == "sd"]
    assert sd["alpha"].between(0.0, 1.0).all()
    assert (sd["block_efficiency"] >= 1.0).all() and (sd["block_efficiency"] <= sd["gamma"] + 1).all()
    assert (sd["c"] > 0).all() and sd["predicted_speedup"].notna().all()
    assert (df["ms_per_token"] > 0).all() and (df["speedup"] > 0).all()
    # exactness: every greedy decoder (ours and transformers', with either draft) = target-only output
    greedy = df[df["mode"] == "greedy"]
    assert greedy["exact"].notna().all() and greedy["exact"].all()
    assert df[df["mode"] == "sampling"]["exact"].isna().all()
    self_greedy = sd[(sd["mode"] == "greedy") & (sd["draft"] == "self")]
    assert (self_greedy["alpha"] == 1.0).all()
    # the baseline of a mode is its faster target-only decoder, whose speedup is exactly 1
    for mode, rows in df.groupby("mode"):
        (baseline,) = set(rows["baseline"])
        only = rows[rows["method"].isin(["target", "hf_generate"])]
        assert baseline == only.loc[only["ms_per_token"].idxmin(), "method"]
        assert rows[rows["method"] == baseline]["speedup"].item() == 1.0
    assert df["rougeL"].between(0.0, 1.0).all()  # corpus prompts carry continuation references

    art = Path(tracking.artifact_local_path(res.run_id))
    for name in ("results.csv", "results.parquet", "results.md", "speedup_vs_gamma.png", "quality_vs_latency.png"):
        assert (art / name).stat().st_size > 0, name
    import pandas as pd

    assert len(pd.read_parquet(art / "results.parquet")) == len(df)
    # every row's decoded outputs, one per prompt; the target's greedy ones are the result's ``outputs``
    outputs = json.loads((art / "outputs.json").read_text())
    assert len(outputs) == len(df) and {len(o["outputs"]) for o in outputs} == {len(res.outputs["fp32"])}
    (target_greedy,) = [o for o in outputs if o["method"] == "target" and o["mode"] == "greedy"]
    assert target_greedy["outputs"] == res.outputs["fp32"] and any(res.outputs["fp32"])
    exact_sd = [o for o in outputs if o["method"] == "sd" and o["mode"] == "greedy"]
    assert all(o["outputs"] == res.outputs["fp32"] for o in exact_sd)  # lossless greedy SD says the same
    assert "| mode | method | draft | gamma |" in res.summary() and res.run_id in res.summary()
    # batched greedy SD at B = 2: hf_generate + 2 drafts x 2 gammas, outputs identical to batched generate
    batched = res.batched
    assert len(batched) == 1 + 2 * 2 and batched["exact"].all() and (batched["batch"] == 2).all()
    assert (batched[batched["draft"] == "self"]["alpha"] == 1.0).all()
    assert len(pd.read_parquet(art / "batched.parquet")) == len(batched) and "| B | method |" in res.summary()


def test_draft_with_another_vocabulary_is_refused_before_any_run_or_timing(prefect_harness, tiny_corpus, pair):
    from tasks import tracking

    cfg = _config(target=pair["target"], corpus_dir=tiny_corpus, experiment="sd-bench-refused",
                  drafts=[{"label": "ok", "model": pair["draft"]}, {"label": "wide", "model": pair["bad"]}])
    with pytest.raises(ValueError, match="draft 'wide' has vocab size"):
        sd_benchmark(config=cfg)
    assert tracking.search_runs("sd-bench-refused").empty


def test_jsonl_prompts_are_truncated_to_prompt_tokens_and_keep_their_references(pair, tmp_path):
    from transformers import AutoTokenizer

    from tasks.sd_benchmark import load_prompts

    path = tmp_path / "task.jsonl"
    items = [{"input": "The House of Commons met today to debate the budget for the coming year.", "target": "budget"},
             {"input": "A short one.", "target": "short"}, {"input": "Never read.", "target": "x"}]
    path.write_text("\n".join(json.dumps(x) for x in items) + "\n")
    source = dict(jsonl=str(path), input_field="input", target_field="target", num_prompts=2, prompt_tokens=8)
    prompts = load_prompts.fn(source, pair["target"], 8)
    eos = AutoTokenizer.from_pretrained(pair["target"]).eos_token_id
    assert [p["reference"] for p in prompts] == ["budget", "short"]
    assert len(prompts[0]["input_ids"]) == 8 and all(p["input_ids"][-1] == eos for p in prompts)
    with pytest.raises(ValueError, match="no string field 'question'"):
        load_prompts.fn({**source, "input_field": "question"}, pair["target"], 8)


def test_a_task_as_prompt_source_becomes_its_test_inputs_and_an_unknown_task_is_one_line():
    from tasks.sd_benchmark import require_inputs

    cfg = build_config(SDBenchmarkConfig, PRESETS, "tiny", {"target": "models:/t@target", "drafts": ["models:/d@draft"],
                                                             "prompts_task": "bbc_headline"})
    cfg = require_inputs(cfg)
    first = json.loads(Path(cfg.prompts_jsonl).read_text().splitlines()[0])
    assert first["input"].startswith("summarize: ") and first["target"]
    with pytest.raises(ValueError, match="prompts_task") as err:
        require_inputs(cfg.model_copy(update={"prompts_task": "no_such_task", "prompts_jsonl": None}))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="not both"):
        build_config(SDBenchmarkConfig, PRESETS, "tiny", {"prompts_task": "bbc_headline", "corpus_dir": "c"})


def test_config_refuses_two_prompt_sources_and_out_of_range_grids():
    with pytest.raises(ConfigError, match="not both"):
        build_config(SDBenchmarkConfig, PRESETS, "tiny", {"prompts_jsonl": "a.jsonl", "corpus_dir": "c"})
    with pytest.raises(ConfigError, match="lenience.1"):
        build_config(SDBenchmarkConfig, PRESETS, "tiny", {"lenience": [1.0, 0.0]})
    with pytest.raises(ConfigError, match="gammas.0"):
        build_config(SDBenchmarkConfig, PRESETS, "tiny", {"gammas": [0]})
    cfg = build_config(SDBenchmarkConfig, PRESETS, "small", {"drafts": ["d=models:/draft@best", "models:/t5/3"]})
    assert [(d.label, d.model) for d in cfg.drafts] == [("d", "models:/draft@best"), ("t5/3", "models:/t5/3")]
    with pytest.raises(ConfigError, match=r"(?i)compile=true needs cache_implementation='?static"):
        build_config(SDBenchmarkConfig, PRESETS, "tiny", {"compile": True})
    with pytest.raises(ConfigError, match="batch_sizes.0"):
        build_config(SDBenchmarkConfig, PRESETS, "tiny", {"batch_sizes": [0]})
    # the GPU presets time every decoder on the static-cache compiled path, and batched SD too
    assert (cfg.cache_implementation, cfg.compile, cfg.batch_sizes) == ("static", True, [1, 4, 16])


def test_int8_gets_its_own_table_and_metrics_and_its_greedy_sd_equals_its_own_target_only_decoding(
        prefect_harness, tiny_corpus, pair):
    from mlflow import MlflowClient

    cfg = _config(target=pair["target"], corpus_dir=tiny_corpus, experiment="sd-bench-int8", gammas=[2],
                  modes=["greedy"], repeats=1, precisions=["fp32", "int8"], int8_min_weights=0,
                  drafts=[{"label": "random", "model": pair["draft"]}])
    res = sd_benchmark(config=cfg)
    df = res.table
    assert df.groupby("precision").size().to_dict() == {"fp32": 4, "int8": 4}
    assert df["exact"].dropna().all()  # each precision against its own target-only decoding
    assert (df.groupby("precision")["baseline"].nunique() == 1).all()
    metrics = MlflowClient().get_run(res.run_id).data.metrics
    assert {"best_speedup", "int8.best_speedup", "greedy.target_ms_per_token", "int8.greedy.target_ms_per_token"} <= set(metrics)
    with pytest.raises(ValueError, match="int8 is the CPU path"):
        _config(precisions=["int8"], device="cuda")
    with pytest.raises(ValueError, match="bf16 makes bfloat16 copies of float32 models"):
        _config(precisions=["fp32", "bf16"], dtype="bfloat16")


def test_a_decoder_only_pair_gets_the_same_table_plus_prompt_lookup_with_chat_templated_task_prompts(
        prefect_harness, tiny_corpus, copy_task, tmp_path):
    from tests.conftest import make_llama_dir

    tok = f"{tiny_corpus}/tokenizer"
    target = make_llama_dir(tok, tmp_path / "target", hidden=48, layers=2, seed=0, head_scale=20.0)
    draft = make_llama_dir(tok, tmp_path / "draft", hidden=32, layers=1, seed=1)
    cfg = _config(target=target, prompts_jsonl=copy_task["jsonl"]["test"], experiment="sd-bench-causal",
                  drafts=[{"label": "small", "model": draft}], gammas=[2], lenience=[1.0], batch_sizes=[2])
    res = sd_benchmark(config=cfg)
    df = res.table
    counts = df.groupby(["mode", "method"]).size().to_dict()
    assert counts == {(m, k): 1 for m in ("greedy", "sampling")
                      for k in ("target", "hf_generate", "sd", "hf_assisted", "hf_prompt_lookup")}
    greedy = df[df["mode"] == "greedy"]
    assert greedy["exact"].all() and (df["new_tokens"] <= 2 * 8).all()
    assert df["rougeL"].between(0.0, 1.0).all()  # task prompts keep their references
    assert res.batched["exact"].all()
    with pytest.raises(ValueError, match="decoder-only but the target is encoder-decoder"):
        sd_benchmark(config=_config(target=_save_t5(tmp_path / "t5", tok, seed=0, d_model=16, layers=1),
                                    prompts_jsonl=copy_task["jsonl"]["test"], experiment="sd-bench-mixed",
                                    drafts=[{"label": "llama", "model": draft}]))


def test_causal_task_prompts_go_through_the_chat_template_without_eos(tiny_corpus, copy_task, tmp_path):
    from tasks.sd_benchmark import load_prompts
    from tests.conftest import make_llama_dir
    from transformers import AutoTokenizer

    folder = make_llama_dir(f"{tiny_corpus}/tokenizer", tmp_path / "m")
    source = dict(jsonl=copy_task["jsonl"]["test"], input_field="input", target_field="target", num_prompts=3,
                  prompt_tokens=4)
    prompts = load_prompts.fn(source, folder, 8)
    tok = AutoTokenizer.from_pretrained(folder)
    text = tok.decode(prompts[0]["input_ids"])
    assert text.startswith("question:") and text.rstrip().endswith("answer:")
    assert prompts[0]["input_ids"][-1] != tok.eos_token_id and prompts[0]["reference"]
