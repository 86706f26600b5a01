"""The laptop pipeline preset's shapes keep the properties measured to matter (docs/results.md, "Text normalisation").

Only narrow heads (16 wide) at d_model <= 128 were seen to learn the task within the budget (wider heads plateau
near loss 2-3), and SD repeats the decoder, so the target's decoder is the deeper half and deeper than the draft's.
"""

from transformers import T5ForConditionalGeneration

from engine.config.pipeline import PRESETS
from models.spactor import t5_config


def _parameters(shape) -> int:
    return sum(p.numel() for p in T5ForConditionalGeneration(t5_config(8000, **shape.model_dump())).parameters())


def test_laptop_shapes_keep_heads_of_16_and_order_teacher_over_target_over_draft_with_a_deeper_target_decoder():
    sizes = PRESETS["laptop"]().sizes
    teacher, target, draft = sizes.teacher, sizes.target, sizes.draft
    for shape in (teacher, target):
        assert shape.d_kv == 16 and shape.num_heads * shape.d_kv <= 128
    assert target.num_decoder_layers > target.num_layers and target.num_decoder_layers > draft.num_decoder_layers
    assert teacher.num_decoder_layers > target.num_decoder_layers  # the garden's latency ratio is decoder depth
    assert _parameters(teacher) > _parameters(target) > _parameters(draft)


def test_laptop_task_adds_synthetic_digit_copies_and_its_sd_uses_the_lean_t5_step():
    config = PRESETS["laptop"]()
    assert config.task.name == "text_normalization" and (config.task.synthetic or 0) > 0
    assert config.sd_benchmark.cache_implementation == "lean"


def test_laptop_target_distillation_reads_the_labels_while_the_draft_distillation_stays_on_policy():
    """The teacher -> target step on ground-truth sequences (on-policy samples cost 3x a step and the target
    did not learn from them in 2,000 steps); the draft keeps DistillSpec's on-policy data, and tiny keeps its mix."""
    laptop, tiny = PRESETS["laptop"](), PRESETS["tiny"]()
    assert laptop.distill_target.mode == "target" and laptop.distill_target.data_mix == {"fixed": 1.0}
    assert laptop.distill_target.total_steps >= laptop.finetune.total_steps
    assert laptop.distill_draft.mode == "draft" and laptop.distill_draft.data_mix == {"student": 1.0}
    assert tiny.distill_target.mode == "target" and tiny.distill_target.data_mix == {"teacher": 0.5, "student": 0.5}
