"""The pipeline verdict: every number beside what it must be compared with, the reason when SD loses."""

import math

import pytest

from models.sd.verify import expected_speedup
from tasks.report.verdict import break_even_c, explain_sd, pipeline_verdict


def _row(draft, gamma, speedup, alpha, c, mode="greedy", lenience=1.0, verify=1.2, rouge=0.3, exact=True):
    return {"mode": mode, "method": "sd", "draft": draft, "gamma": gamma, "lenience": lenience, "speedup": speedup,
            "alpha": alpha, "c": c, "verify_ratio": verify, "exact": exact if mode == "greedy" else None,
            "rougeL": rouge, "baseline": "target", "ms_per_token": 1.0 / speedup}


@pytest.mark.parametrize("alpha", [0.2, 0.5, 0.8, 0.95])
@pytest.mark.parametrize("gamma", [1, 3, 6])
def test_break_even_c_is_where_the_closed_form_speedup_is_one(alpha, gamma):
    c = break_even_c(alpha, gamma)
    assert expected_speedup(alpha, gamma, c) == pytest.approx(1.0)
    assert expected_speedup(alpha, gamma, c * 0.9) > 1.0


def test_a_draft_too_expensive_for_its_acceptance_rate_is_named_as_the_reason():
    # the tiny preset's situation: c 0.65 at alpha 0.4 -> break-even (1.4 + 0.16... - 1) / 2
    text = explain_sd(_row("d", 2, 0.8, 0.4, 0.65))
    assert "does not pay off (0.80x)" in text and "above the break-even" in text
    assert f"{break_even_c(0.4, 2):.2f}" in text


def test_a_verification_call_that_costs_more_than_one_step_is_named_when_it_is_the_reason():
    a, g = 0.6, 2
    c = break_even_c(a, g) * 0.95  # below the closed form's break-even, above the one with v = 1.3
    assert c >= break_even_c(a, g, 1.3)
    assert "verification costs 1.30" in explain_sd(_row("d", g, 0.97, a, c, verify=1.3))


def test_verdict_reports_the_best_row_the_distillation_gain_and_the_missed_target():
    rows = [_row("draft-base", 2, 1.10, 0.50, 0.1), _row("draft-base", 4, 1.05, 0.48, 0.1),
            _row("distilled", 2, 1.30, 0.70, 0.1), _row("distilled", 4, 1.40, 0.68, 0.1),
            _row("distilled", 4, 1.20, 0.60, 0.1, mode="sampling"),
            _row("draft-base", 4, 1.00, 0.45, 0.1, mode="sampling"),
            _row("distilled", 4, 1.50, 0.80, 0.1, mode="sampling", lenience=0.5, rouge=0.25)]
    quality = {"teacher": {"test.rougeL": 0.35, "test.baseline.rougeL": 0.29, "test.baseline.lead_n": 15.0},
               "target": {"test.rougeL": 0.20, "test.baseline.rougeL": 0.29}}
    text, metrics = pipeline_verdict(preset="laptop", task_kind="generation", quality=quality, sd_rows=rows,
                                     distilled_draft="distilled", labels={"target": "the target"})
    assert "**Best lossless SD:** 1.40x" in text and "gamma 4, greedy" in text  # lossy 1.5x is not lossless
    assert "Target of 1.5x" in text and "**not met** (1.40x)" in text
    assert "(+27.3%): distillation helps." in text  # 1.40 / 1.10 - 1 in greedy, inside the paper's range
    assert "lead-15" in text and "| the target | 0.200 | 0.290" in text and "**NO**" in text
    assert "Flagged: the target" in text
    assert "| 0.5 | 1.50x | 0.250 |" in text  # the lossy curve
    assert "PRESET=laptop" not in text  # only the quick presets point elsewhere
    assert metrics["verdict.sd_best_speedup"] == 1.40 and metrics["verdict.models_below_baseline"] == 1.0
    assert metrics["verdict.distill_gain.greedy"] == pytest.approx(1.40 / 1.10 - 1)
    assert all(not math.isnan(v) for v in metrics.values())


def test_tiny_verdict_says_sd_lost_and_where_meaningful_numbers_come_from():
    rows = [_row("draft-base", 2, 0.70, 0.3, 0.65), _row("d", 2, 0.85, 0.4, 0.65)]
    text, metrics = pipeline_verdict(preset="tiny", task_kind="classification", sd_rows=rows, distilled_draft="d",
                                     quality={"teacher": {"test.accuracy": 0.2, "test.baseline.accuracy": 0.3}})
    assert "does not pay off (0.85x)" in text and "majority class" in text and "PRESET=laptop" in text
    assert metrics["verdict.sd_pays_off"] == 0.0


def test_model_garden_ratio_is_read_against_the_papers_range():
    garden = {"teacher_ms_per_token": 8.0, "teacher_rougeL": 0.4, "garden_ms_per_token": 2.0, "garden_rougeL": 0.38,
              "garden_gamma": 3, "garden_draft": "d", "latency_reduction": 4.0}
    text, metrics = pipeline_verdict(preset="laptop", task_kind="generation", quality={}, garden=garden)
    assert "4.00x lower latency" in text and "does not hold at this scale" in text and "worse" not in text
    assert metrics["verdict.garden_latency_ratio"] == 4.0
    text, _ = pipeline_verdict(preset="llm", task_kind="generation", quality={},
                               garden={**garden, "garden_rougeL": 0.0, "teacher_label": "the LLM"})
    assert "the LLM alone" in text and "outputs are **worse** (ROUGE-L 0.000 against 0.400)" in text
    assert "Agreement" not in text  # no outputs compared: nothing claimed
    text, metrics = pipeline_verdict(preset="llm", task_kind="generation", quality={},
                                     garden={**garden, "teacher_label": "the LLM", "agreement_rougeL": 0.25,
                                             "agreement_exact": 0.125, "precision": "int8"})
    assert "Agreement with the LLM's own outputs: ROUGE-L 0.250, 12% of prompts answered identically" in text
    assert metrics["verdict.garden_agreement_rougeL.int8"] == 0.25


def test_garden_row_measures_agreement_with_the_teachers_own_outputs_when_given():
    from tasks.report.distillspec_study import garden_row

    t = [{"method": "target", "mode": "greedy", "ms_per_token": 10.0, "rougeL": 0.3, "precision": "fp32"}]
    g = [{"method": "sd", "mode": "greedy", "draft": "d", "gamma": 2, "ms_per_token": 4.0, "rougeL": 0.2,
          "precision": "fp32"}]
    row = garden_row(t, g, "d", teacher_outputs={"fp32": ["a b c", "x y"]}, garden_outputs={"fp32": ["a b c", "z"]})
    assert row["latency_reduction"] == 2.5 and row["agreement_exact"] == 0.5
    assert row["agreement_rougeL"] == pytest.approx(0.5)  # ROUGE-L F1 averaged over prompts: 1 and 0
    assert "agreement_rougeL" not in garden_row(t, g, "d")  # without outputs nothing is claimed


def test_prompt_lookup_rows_of_a_decoder_only_target_are_read_against_our_best_sd():
    rows = [_row("distilled", 2, 1.30, 0.70, 0.1),
            dict(_row(None, 3, 1.45, float("nan"), float("nan")), method="hf_prompt_lookup"),
            dict(_row(None, 2, 1.10, float("nan"), float("nan")), method="hf_prompt_lookup")]
    text, metrics = pipeline_verdict(preset="llm", task_kind="generation", quality={}, sd_rows=rows,
                                     distilled_draft="distilled")
    assert "prompt-lookup decoding (no draft): best 1.45x at gamma 3" in text and "**behind it**" in text
    assert metrics["verdict.prompt_lookup.greedy.speedup"] == 1.45


def _llm_verdict(rows, **drafts):
    return pipeline_verdict(preset="llm", task_kind="generation", quality={}, sd_rows=rows, **drafts)


def test_the_sd_target_is_read_for_the_feature_draft_too_and_met_when_either_draft_meets_it():
    rows = [_row("distilled", 2, 0.60, 0.20, 0.1), _row("feature-draft", 3, 1.62, 0.80, 0.06),
            _row("feature-draft", 2, 1.40, 0.80, 0.06)]
    text, metrics = _llm_verdict(rows, distilled_draft="distilled", feature_draft="feature-draft")
    assert "distilled draft `distilled`, batch 1): **not met** (0.60x)" in text
    assert "feature draft `feature-draft`, batch 1): **met** (1.62x)" in text
    assert metrics["verdict.sd_target_met"] == 1.0 and metrics["verdict.sd_target_met.distilled"] == 0.0
    text, metrics = _llm_verdict(rows[:1], distilled_draft="distilled")
    assert "feature draft" not in text and metrics["verdict.sd_target_met"] == 0.0


def test_the_sd_target_is_read_for_prompt_lookup_before_the_feature_draft_when_the_run_has_it():
    rows = [_row("distilled", 2, 0.60, 0.20, 0.1), _row("feature-draft", 3, 1.10, 0.40, 0.06),
            _row("lookup-else-feature-draft", 4, 1.71, 0.70, 0.05), _row("lookup", 4, 1.66, 0.65, 0.0)]
    text, metrics = _llm_verdict(rows, distilled_draft="distilled", feature_draft="feature-draft")
    assert "feature draft `feature-draft`, batch 1): **not met** (1.10x)" in text
    assert "prompt lookup, else the feature draft `lookup-else-feature-draft`, batch 1): **met** (1.71x)" in text
    assert metrics["verdict.sd_target_met.lookup-else-feature-draft"] == 1.0 and metrics["verdict.sd_target_met"] == 1.0
    text, metrics = _llm_verdict(rows[:2], distilled_draft="distilled", feature_draft="feature-draft")
    assert "prompt lookup, else" not in text and metrics["verdict.sd_target_met"] == 0.0


def test_a_missed_sd_target_never_reads_as_the_target_once_rounded():
    rows = [_row("draft-base", 4, 1.20, 0.80, 0.1), _row("distilled", 4, 1.4996, 0.90, 0.1)]
    text, metrics = pipeline_verdict(preset="laptop", task_kind="generation", quality={}, sd_rows=rows,
                                     distilled_draft="distilled")
    assert "**not met** (1.4996x)" in text and "(1.50x)." not in text
    assert metrics["verdict.sd_target_met.distilled"] == 0.0


def test_a_distillation_gain_below_the_papers_range_is_named_as_such_and_a_loss_as_no_help():
    rows = [_row("draft-base", 4, 1.69, 0.922, 0.18), _row("distilled", 4, 1.70, 0.938, 0.17),
            _row("draft-base", 2, 1.29, 0.846, 0.18, mode="sampling"),
            _row("distilled", 2, 1.16, 0.844, 0.17, mode="sampling")]
    text, metrics = pipeline_verdict(preset="laptop", task_kind="generation", quality={}, sd_rows=rows,
                                     distilled_draft="distilled")
    assert "(+0.6%): distillation helps, **less than DistillSpec's +10%**." in text
    assert "(-10.1%): **distillation does not help here**." in text
    assert abs(metrics["verdict.distill_gain.greedy"] - (1.70 / 1.69 - 1)) < 1e-12
