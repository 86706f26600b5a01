"""The cost model of docs/scaling.md: its FLOPs agree with the counter and its table has every row."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_spactor_at_half_the_steps_costs_about_half_the_flops_and_a_hybrid_step_costs_more():
    from cost_model import SCENARIOS, step_flops

    paper = next(s for s in SCENARIOS if "paper" in s.name)
    sc, t5_params, gen_params = step_flops(paper, hybrid=False)
    hybrid, _, _ = step_flops(paper, hybrid=True)
    from models.flops import spactor_step_flops
    from models.span_corruption import SpanCorruptionCollator
    from models.spactor import SpacTorConfig, generator_t5_config, t5_config

    cfg = t5_config(paper.vocab, d_model=768, d_ff=2048, d_kv=64, num_heads=12, num_layers=12, num_decoder_layers=12)
    targets = SpanCorruptionCollator(vocab_size=paper.vocab, inputs_length=512).targets_length
    parts = spactor_step_flops(cfg, generator_t5_config(cfg, SpacTorConfig()), batch_size=2048, inputs_length=512,
                               targets_length=targets, hybrid=True)
    assert hybrid == parts.total and hybrid - sc == parts.total - (parts.encoder + parts.decoder + parts.lm_head)
    assert 200e6 < t5_params < 260e6 and 0 < gen_params < t5_params / 4  # T5-base-sized, quarter-depth generator
    half = paper.tau * hybrid + (paper.steps // 2 - paper.tau) * sc
    assert 0.5 < half / (paper.steps * sc) < 0.6


def test_the_script_prints_a_row_per_scenario_and_gpu_count():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cost_model.py"), "--gpus", "1", "8"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    for name in ("small preset", "base preset", "T5-base, paper budget"):
        assert sum(line.startswith(f"| {name} |") for line in out.splitlines()) == 1 + 2 + (1 if "paper" not in name else 0)
