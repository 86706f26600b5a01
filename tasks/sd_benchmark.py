"""Prefect tasks of the SD latency benchmark: check the inputs, resolve and check models, load prompts, measure, log.

The measurement itself is ``engine.sd_bench.run_benchmark`` (the runtime layer: torch, no Prefect or MLflow); these tasks do the I/O around
it. Models are MLflow registered-model URIs (``models:/name/1``, ``models:/name@alias``), ``runs:/``
URIs or ``save_pretrained`` folders, resolved by ``tasks.tracking.resolve_model``: T5 pairs or decoder-only pairs
(whose task prompts go through the tokenizer's chat template).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from engine.config.sd_benchmark import SDBenchmarkConfig
from engine.sd_bench import (BATCH_SUMMARY, markdown_table, run_batched_benchmark, run_benchmark, to_batched_frame,
                             to_frame)
from models.sd.bench import BenchPrompt, BenchSettings, prompts_from_texts
from models.speculative import check_compatible
from tasks import tracking
from tasks.runtime.orchestration import retry_transient


def _logger():
    try:
        return get_run_logger()
    except Exception:  # noqa: BLE001 - called outside a Prefect run (task.fn in tests, scripts)
        import logging

        return logging.getLogger("sd_benchmark")


def _tokenizer(folder: str | Path):
    from transformers import AutoTokenizer

    files = ("tokenizer.json", "tokenizer_config.json", "spiece.model")
    return AutoTokenizer.from_pretrained(str(folder)) if any(Path(folder, f).exists() for f in files) else None


def require_inputs(cfg: SDBenchmarkConfig) -> SDBenchmarkConfig:
    """The fields no preset can fill in: target, drafts and a prompt source (one-line errors)."""
    if not cfg.target or not cfg.drafts:
        raise ValueError("set target=MODEL and drafts=[...] (models:/name/version, models:/name@alias or a "
                         "save_pretrained folder)")
    if cfg.prompts_jsonl is None and cfg.corpus_dir is None and cfg.prompts_task is None:
        raise ValueError("set a prompt source: prompts_task=TASK, prompts_jsonl=FILE.jsonl or corpus_dir=CORPUS_FOLDER")
    if cfg.prompts_jsonl is None and cfg.corpus_dir is None:  # the task's test inputs, as the pipeline takes them
        from tasks.downstream import TaskSpec, sd_prompts

        try:
            spec = TaskSpec(name=cfg.prompts_task)
        except ValueError as err:
            raise ValueError(f"prompts_task: {str(err).splitlines()[-1].strip()}") from None
        # model_copy does not validate: prompts_task stays beside the file it became (it is logged as a param)
        cfg = cfg.model_copy(update={"prompts_jsonl": sd_prompts(spec)})
    return cfg


def prompt_source(cfg: SDBenchmarkConfig) -> dict[str, Any]:
    """The config's prompt fields in the form :func:`load_prompts` takes (``prompts_jsonl`` as ``jsonl``)."""
    source = cfg.model_dump(include={"prompts_jsonl", "input_field", "target_field", "corpus_dir", "split",
                                     "continuation_reference", "num_prompts", "prompt_tokens"})
    source["jsonl"] = source.pop("prompts_jsonl")
    return source


def result_frames(measured: dict[str, Any]) -> tuple[Any, Any]:
    """:func:`measure`'s rows as DataFrames: the batch-1 table and the batched one (None without ``batch_sizes``)."""
    return to_frame(measured["rows"]), (to_batched_frame(measured["batched"]) if measured["batched"] else None)


@task(name="resolve-models", retries=1, retry_condition_fn=retry_transient, retry_delay_seconds=2, cache_policy=NONE)
def resolve_models(target: str, drafts: dict[str, str]) -> dict[str, str]:
    """Local folders of the target and each draft: ``{"target": dir, "draft:<label>": dir}``."""
    out = {"target": str(tracking.resolve_model(target))}
    for label, ref in drafts.items():
        out[f"draft:{label}"] = str(tracking.resolve_model(ref))
    return out


def _config(folder: str):
    """A model folder's config: a ``save_pretrained`` folder's, or a feature draft's (``models.sd.feature_draft``)."""
    from transformers import AutoConfig

    from models.sd.feature_draft import feature_draft_config, is_feature_draft_folder

    return feature_draft_config(folder) if is_feature_draft_folder(folder) else AutoConfig.from_pretrained(folder)


def _is_causal(folder: str) -> bool:
    return not _config(folder).is_encoder_decoder


@task(name="check-vocabularies", cache_policy=NONE)
def check_vocabularies(dirs: dict[str, str]) -> None:
    """Refuse a draft with another vocabulary than the target's, or of another kind (encoder-decoder vs
    decoder-only), from configs and tokenizers (no weights)."""
    configs = {key: _config(folder) for key, folder in dirs.items()}  # each read once
    target, target_tok = configs["target"], _tokenizer(dirs["target"])
    kinds = {True: "encoder-decoder", False: "decoder-only"}
    for key, folder in dirs.items():
        if key.startswith("draft:"):
            draft = configs[key]
            if draft.is_encoder_decoder != target.is_encoder_decoder:
                raise ValueError(f"draft '{key[len('draft:'):]}' is {kinds[draft.is_encoder_decoder]} but the target "
                                 f"is {kinds[target.is_encoder_decoder]}: speculative decoding needs two models of "
                                 "the same kind")
            check_compatible(None, None, label=key[len("draft:"):], target_vocab_size=int(target.vocab_size),
                             draft_vocab_size=int(draft.vocab_size), target_tokenizer=target_tok,
                             draft_tokenizer=_tokenizer(folder))


@task(name="load-prompts", cache_policy=NONE)
def load_prompts(source: dict[str, Any], tokenizer_dir: str, max_new_tokens: int) -> list[dict[str, Any]]:
    """Prompts as ``{"input_ids", "reference"}`` dicts, from a jsonl file or a corpus-prep folder.

    jsonl: one object per line with ``source["input_field"]`` (and optionally ``source["target_field"]``,
    the reference). Corpus: the first ``num_prompts`` documents of ``docs/<split>`` that are longer than
    the prompt, with the next ``max_new_tokens`` tokens as a continuation reference when
    ``continuation_reference`` is set. Both are truncated to ``prompt_tokens`` tokens.
    """
    tok = _tokenizer(tokenizer_dir)
    if tok is None:
        raise FileNotFoundError(f"no tokenizer in {tokenizer_dir}: set tokenizer= to a save_pretrained folder")
    n, length = source["num_prompts"], source["prompt_tokens"]
    causal = _is_causal(tokenizer_dir) if Path(tokenizer_dir, "config.json").exists() else False
    if source.get("jsonl"):
        texts, refs = _read_jsonl(Path(source["jsonl"]), source["input_field"], source["target_field"], n)
        prompts = prompts_from_texts(texts, tok, prompt_tokens=length, references=refs, causal=causal)
    else:
        from engine.storage import local_folder

        texts = _read_corpus_docs(local_folder(source["corpus_dir"]), source["split"], tok, length, n)
        prompts = prompts_from_texts(texts, tok, prompt_tokens=length, causal=causal,
                                     continuation_tokens=max_new_tokens if source["continuation_reference"] else 0)
    _logger().info("loaded %d prompts of <= %d tokens (%d with references)", len(prompts), length,
                   sum(p.reference is not None for p in prompts))
    return [{"input_ids": p.input_ids, "reference": p.reference} for p in prompts]


def _read_jsonl(path: Path, input_field: str, target_field: str, n: int) -> tuple[list[str], list[str | None]]:
    from tasks.jsonl import iter_jsonl

    texts, refs = [], []
    for lineno, item in iter_jsonl(path, "prompt file"):
        if not isinstance(item.get(input_field), str):
            raise ValueError(f"{path}:{lineno} has no string field '{input_field}' (set input_field=...)")
        texts.append(item[input_field])
        ref = item.get(target_field)
        refs.append(str(ref) if ref is not None else None)
        if len(texts) == n:
            break
    if not texts:
        raise ValueError(f"prompt file {path} holds no prompts")
    return texts, refs


def _read_corpus_docs(corpus_dir: Path, split: str, tok: Any, prompt_tokens: int, n: int) -> list[str]:
    import datasets

    folder = corpus_dir / "docs" / split
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist: corpus_dir must be a corpus-prep output folder")
    docs = datasets.load_from_disk(str(folder))
    texts = []
    for text in docs["text"]:
        if len(tok(text, add_special_tokens=False).input_ids) > prompt_tokens:  # a full prompt + continuation
            texts.append(text)
            if len(texts) == n:
                break
    if not texts:
        raise ValueError(f"no document of {folder} is longer than prompt_tokens={prompt_tokens}; lower it")
    if len(texts) < n:
        _logger().warning("only %d documents of %s are longer than %d tokens (asked for %d)", len(texts), folder,
                          prompt_tokens, n)
    return texts


@task(name="measure-sd-latency", cache_policy=NONE)
def measure(dirs: dict[str, str], prompts: list[dict[str, Any]], settings: BenchSettings, *,
            tokenizer_dir: str, device: str = "cpu", dtype: str = "float32",
            batch_sizes: list[int] | None = None, precisions: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Load the models and run ``engine.sd_bench.run_benchmark`` (batch 1), then, for ``batch_sizes``,
    ``run_batched_benchmark``, once per precision (``fp32`` as loaded, ``int8``: every model's linear layers in
    int8, ``bf16``: bfloat16 copies). Returns ``{"rows": [...], "batched": [...]}``; each row names its precision."""
    import dataclasses

    import torch
    from transformers import AutoModelForSeq2SeqLM

    from models.sd.drafts import load_causal
    from models.sd.feature_draft import is_feature_draft_folder, load_feature_draft

    logger = _logger()

    def load(folder: str):
        if is_feature_draft_folder(folder):
            return load_feature_draft(folder).to(device=device, dtype=getattr(torch, dtype)).eval()
        kind = load_causal if _is_causal(folder) else AutoModelForSeq2SeqLM.from_pretrained
        model = kind(folder, dtype=getattr(torch, dtype))
        return model.to(device).eval()

    target = load(dirs["target"])
    drafts = {k[len("draft:"):]: load(v) for k, v in dirs.items() if k.startswith("draft:")}
    tok = _tokenizer(tokenizer_dir)
    bench_prompts = [BenchPrompt(**p) for p in prompts]
    bench_settings = settings if isinstance(settings, BenchSettings) else BenchSettings(**settings)
    rows, batched = [], []
    for precision in precisions or [bench_settings.precision]:
        s = dataclasses.replace(bench_settings, precision=precision)
        rows += run_benchmark(target, drafts, bench_prompts, s,
                              decode=lambda ids: tok.decode(ids, skip_special_tokens=True), log=logger.info)
        if batch_sizes:
            batched += run_batched_benchmark(target, drafts, bench_prompts, s, batch_sizes=batch_sizes, log=logger.info)
    return {"rows": rows, "batched": batched}


def speedup_figure(df):
    """Speedup over the faster target-only baseline vs gamma, one line per (draft, method, mode); lenience 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(df["mode"]))
    fig, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 4), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        sub = df[(df["mode"] == mode) & df["method"].isin(["sd", "hf_assisted"]) & (df["lenience"] == 1.0)]
        several = sub["precision"].nunique() > 1
        for (precision, draft, method), g in sub.groupby(["precision", "draft", "method"], sort=False):
            g = g.sort_values("gamma")
            style = "-o" if method == "sd" else "--s"
            weights = f", {precision}" if several else ""
            ax.errorbar(g["gamma"].astype(float), g["speedup"], yerr=g["speedup_iqr"] / 2, fmt=style, ms=4,
                        capsize=3, label=f"{draft} ({'ours' if method == 'sd' else 'HF assisted'}{weights})")
            if method == "sd":
                ax.plot(g["gamma"].astype(float), g["predicted_speedup"], ":", color="grey", lw=1)
                ax.plot(g["gamma"].astype(float), g["predicted_speedup_verify"], "-.", color="grey", lw=1)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_title(f"{mode}\n(grey: closed form; dash-dot: with measured verify cost)", fontsize=10)
        ax.set_xlabel("gamma (draft tokens per target call)")
        ax.set_ylabel("speedup over the faster target-only decoder")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def quality_figure(df):
    """ROUGE-L vs ms/token of sampling-mode SD over lenience, one line per (draft, gamma); target-only marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    sub = df[(df["mode"] == "sampling") & (df["method"] == "sd")]
    for (precision, draft, gamma), g in sub.groupby(["precision", "draft", "gamma"], sort=False):
        g = g.sort_values("lenience")
        ax.plot(g["ms_per_token"], g["rougeL"], "-o", ms=4, label=f"{draft}, gamma={gamma}, {precision}")
        for _, r in g.iterrows():
            ax.annotate(f"{r['lenience']:g}", (r["ms_per_token"], r["rougeL"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    base = df[(df["mode"] == "sampling") & df["method"].isin(["target", "hf_generate"])]
    for _, r in base.iterrows():
        ax.plot(r["ms_per_token"], r["rougeL"], "k*", ms=9)
        ax.annotate(f"{r['method']} ({r['precision']})", (r["ms_per_token"], r["rougeL"]), fontsize=7,
                    textcoords="offset points", xytext=(3, -9))
    ax.set_xlabel("ms per token (lower is faster)")
    ax.set_ylabel("ROUGE-L F1 vs reference")
    ax.set_title("lossy SD: quality vs latency (labels: lenience)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


@task(name="log-sd-results", retries=2, retry_condition_fn=retry_transient, retry_delay_seconds=2, cache_policy=NONE)
def greedy_outputs(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Per precision, the target's own greedy outputs (one text per prompt): what another model's outputs are
    compared with (the model garden's agreement with its teacher)."""
    return {r.get("precision") or "fp32": list(r["outputs"]) for r in rows
            if r["method"] == "target" and r["mode"] == "greedy" and r.get("outputs") is not None}


def log_results(run_id: str, rows: list[dict[str, Any]], batched: list[dict[str, Any]] | None = None) -> str:
    """Tables (CSV, Parquet, markdown), plots and headline metrics -> the MLflow run; returns the markdown.
    Every row's decoded outputs (one text per prompt) go to ``outputs.json``.

    ``batched`` rows (``run_batched_benchmark``) go to ``batched.csv/.parquet/.md`` and are appended to
    the returned markdown under their own heading."""
    import matplotlib.pyplot as plt

    df = to_frame(rows)
    md = markdown_table(df)
    outputs = [{k: r.get(k) for k in ("precision", "mode", "method", "draft", "gamma", "lenience", "outputs")}
               for r in rows if r.get("outputs") is not None]
    if outputs:
        tracking.log_dict(run_id, outputs, "outputs.json")
    tracking.log_table(run_id, df, "results.csv")
    tracking.log_table(run_id, df, "results.parquet")
    tracking.log_text(run_id, md, "results.md")
    figures = {"speedup_vs_gamma.png": speedup_figure(df)}
    sampling_sd = df[(df["mode"] == "sampling") & (df["method"] == "sd")]
    if len(sampling_sd) and sampling_sd["rougeL"].notna().any():
        figures["quality_vs_latency.png"] = quality_figure(df)
    for name, fig in figures.items():
        tracking.log_figure(run_id, fig, name)
        plt.close(fig)
    metrics: dict[str, float] = {}
    for precision, part in df.groupby(df["precision"].fillna("fp32"), sort=False):
        tag = "" if precision == "fp32" else f"{precision}."  # fp32 keeps the metric names it always had
        sd = part[part["method"] == "sd"]
        for m in part["mode"].unique():
            for k in ("target", "hf_generate"):
                rows = part[(part["mode"] == m) & (part["method"] == k)]
                if len(rows):
                    metrics[f"{tag}{m}.{k}_ms_per_token"] = float(rows["ms_per_token"].iloc[0])
        if len(sd):
            best = sd.loc[sd["speedup"].idxmax()]
            greedy = part[part["mode"] == "greedy"]
            metrics.update({f"{tag}best_speedup": float(best["speedup"]),
                            f"{tag}best_speedup_gamma": int(best["gamma"]),
                            f"{tag}greedy_exact": float(greedy["exact"].fillna(True).all())})
    if batched:
        bdf = to_batched_frame(batched)
        bmd = markdown_table(bdf, BATCH_SUMMARY)
        tracking.log_table(run_id, bdf, "batched.csv")
        tracking.log_table(run_id, bdf, "batched.parquet")
        tracking.log_text(run_id, bmd, "batched.md")
        bsd = bdf[bdf["method"] == "sd"]
        for b, group in bsd.groupby("batch"):
            metrics[f"batched.b{int(b)}.best_speedup"] = float(group["speedup"].max())
        md += "\nBatched greedy decoding (tokens/s over all prompts; speedup over batched target.generate):\n\n" + bmd
    tracking.log_metrics(run_id, metrics)
    return md
