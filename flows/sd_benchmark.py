"""SD latency benchmark: a target and one or more drafts -> speedup, alpha, c, closed-form prediction,
quality, and transformers' generate / assisted generation as baselines -> one MLflow run.

    python -m flows.sd_benchmark --preset tiny --set target=models:/t5-tiny-spactor/1 \\
        --set 'drafts=[{"label": "distilled", "model": "models:/draft@best"}]' --set corpus_dir=/path/to/corpus
    python -m flows.sd_benchmark --preset tiny --set target=ckpt/target --set 'drafts=["ckpt/draft"]' \\
        --set prompts_jsonl=data/task.jsonl

The measurement is ``engine/sd_bench.py`` (see its docstring for the method); docs/sd_benchmark.md has
the columns, what is logged, and measured numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from prefect import flow

from engine.config.sd_benchmark import PRESETS, SDBenchmarkConfig
from flows._cli import build_config, documented, preset_type, run_cli, run_footer


Preset = preset_type(PRESETS)


@dataclass
class SDBenchmarkResult:
    run_id: str
    table: Any  # pandas DataFrame, columns models.sd.bench.COLUMNS
    markdown: str
    batched: Any = None  # pandas DataFrame, columns engine.sd_bench.BATCH_COLUMNS, when batch_sizes was set
    outputs: dict = field(default_factory=dict)  # precision -> the target's greedy outputs, one text per prompt

    def summary(self) -> str:
        files = "results.csv/.parquet/.md, speedup_vs_gamma.png"
        files += ", batched.csv/.parquet/.md" if self.batched is not None else ""
        return f"{self.markdown}\n" + run_footer(self.run_id, files=files)


@flow(name="sd-benchmark")
@documented()
def sd_benchmark(preset: Preset = "tiny", overrides: Optional[dict[str, Any]] = None,
                 config: Optional[SDBenchmarkConfig] = None, parent_run_id: Optional[str] = None,
                 run_name: Optional[str] = None) -> SDBenchmarkResult:
    """Benchmark speculative decoding for a target and its drafts (see module docstring); ``run_name`` names the
    MLflow run (default ``<preset>-sd-benchmark``)."""
    from tasks import sd_benchmark as t
    from tasks import tracking

    cfg = t.require_inputs(config or build_config(SDBenchmarkConfig, PRESETS, preset, overrides))
    # 1. Models and prompts first: a bad reference or vocabulary is refused before any run or timing.
    dirs = t.resolve_models(cfg.target, {d.label: d.model for d in cfg.drafts})
    t.check_vocabularies(dirs)
    tokenizer_dir = cfg.tokenizer or dirs["target"]
    prompts = t.load_prompts(t.prompt_source(cfg), tokenizer_dir, cfg.max_new_tokens)
    # 2. Measure and log.
    with tracking.start_run(cfg.experiment, run_name or f"{cfg.preset}-sd-benchmark", params=cfg.model_dump(),
                            tags={"stage": "sd_benchmark", "preset": cfg.preset, "target": cfg.target},
                            parent_run_id=parent_run_id) as run_id:
        measured = t.measure(dirs, prompts, cfg.settings(), tokenizer_dir=tokenizer_dir, device=cfg.device,
                             dtype=cfg.dtype, batch_sizes=cfg.batch_sizes, precisions=cfg.precisions)
        markdown = t.log_results(run_id, measured["rows"], measured["batched"])
    table, batched = t.result_frames(measured)
    return SDBenchmarkResult(run_id=run_id, table=table, markdown=markdown, batched=batched,
                             outputs=t.greedy_outputs(measured["rows"]))


def _checked(cfg: SDBenchmarkConfig) -> SDBenchmarkConfig:
    """The command line's inputs checked before the flow starts (one-line errors, no Prefect run)."""
    from tasks.sd_benchmark import require_inputs

    return require_inputs(cfg)


if __name__ == "__main__":
    run_cli(lambda c: sd_benchmark(config=_checked(c)), SDBenchmarkConfig, PRESETS,
            description="Speculative-decoding latency benchmark: speedup, alpha, c, prediction, HF baselines.")
