"""The end-to-end T5 pipeline's config and presets, composed from the stages' presets (``flows.pipeline`` wires
the run)."""

from __future__ import annotations

from typing import Callable, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.config import corpus_prep as corpus_mod
from engine.config import distill as distill_mod
from engine.config import finetune as finetune_mod
from engine.config import pretrain as pretrain_mod
from engine.config import sd_benchmark as sd_mod
from engine.config.base import FlowConfig, T5Shape
from engine.config.task import TaskSpec

__all__ = [
    "PRESETS", "STAGES", "LAPTOP_TASK", "TINY_TASK", "PipelineConfig", "Sizes", "Stage", "base", "laptop",
    "small", "tiny",
]

STAGES = ("corpus", "pretrain", "finetune", "distill_target", "distill_draft", "sd_benchmark")
Stage = Literal["corpus", "pretrain", "finetune", "distill_target", "distill_draft", "sd_benchmark"]


class Sizes(BaseModel):
    """Architectures of the three model sizes (the pretraining settings are shared)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    teacher: T5Shape
    target: T5Shape
    draft: T5Shape


class PipelineConfig(FlowConfig):
    preset: str = "tiny"
    task: TaskSpec = Field(default_factory=lambda: TaskSpec(name="bbc_headline"),
                           description="the downstream task of fine-tuning, distillation and the SD prompts")
    corpus: corpus_mod.CorpusPrepConfig = Field(default_factory=corpus_mod.tiny)
    pretrain: pretrain_mod.PretrainConfig = Field(default_factory=pretrain_mod.tiny)
    sizes: Sizes
    finetune: finetune_mod.FinetuneConfig = Field(default_factory=finetune_mod.tiny)
    distill_target: distill_mod.DistillConfig = Field(default_factory=lambda: distill_mod.tiny().model_copy(
        update={"mode": "target", "data_mix": {"teacher": 0.5, "student": 0.5}}))
    distill_draft: distill_mod.DistillConfig = Field(default_factory=distill_mod.tiny)
    sd_benchmark: sd_mod.SDBenchmarkConfig = Field(default_factory=sd_mod.tiny)
    stages: list[Stage] = Field(list(STAGES), description="stages to run (a prefix of the full list)")
    from_stage: Optional[Stage] = Field(None, description="force this stage and all later ones to run even if cached")
    experiment: str = Field("pipeline", description="MLflow experiment of the parent run")
    parallel: bool = Field(True, description="on a Ray cluster (RAY_ADDRESS), train the three pretraining runs, "
                                             "then the two fine-tunings, side by side; on a laptop they run in order")

    @field_validator("stages")
    @classmethod
    def _prefix(cls, v: list[str]) -> list[str]:
        if not v or list(v) != list(STAGES[:len(v)]):
            raise ValueError(f"stages must be a non-empty prefix of {list(STAGES)} (each stage needs the ones "
                             f"before it), got {v}")
        return v


#: the target distillation's data unless a preset says otherwise: half teacher samples, half on-policy
TARGET_DATA_MIX = {"teacher": 0.5, "student": 0.5}


def _preset(name: str, corpus: Callable, pre: Callable, ft: Callable, di: Callable, sd: Callable,
            sizes: Sizes, task: str | TaskSpec = "bbc_headline", dt: Callable | None = None) -> Callable[[], PipelineConfig]:
    """A pipeline preset from the flows' presets; ``dt`` is the target distillation's, data mix included
    (default: ``di``'s on :data:`TARGET_DATA_MIX`)."""
    def make() -> PipelineConfig:
        p = pre()
        target = dt() if dt else di().model_copy(update={"data_mix": dict(TARGET_DATA_MIX)})
        return PipelineConfig(preset=name, task=task if isinstance(task, TaskSpec) else TaskSpec(name=task),
                              corpus=corpus().model_copy(update={"pack_length": p.tokens_length}),
                              pretrain=p, sizes=sizes, finetune=ft(),
                              distill_target=target.model_copy(update={"mode": "target"}),
                              distill_draft=di(), sd_benchmark=sd())

    make.__name__ = name
    return make


def _tiny_pretrain() -> pretrain_mod.PretrainConfig:
    """Half the pretraining flow's tiny steps: the minutes go to fine-tuning, where the task is learned."""
    return pretrain_mod.tiny().model_copy(update={"total_steps": 400, "tau": 200})


def _tiny_finetune() -> finetune_mod.FinetuneConfig:
    """Short text normalisation at tiny size: measured 2026-12-06, the tiny teacher reaches exact match 0.33 (the
    best trivial baseline 0.03) after 1,500 steps of 32 at lr 3e-3 (0.12 s a step); lr 1e-3 and 3e-4 learn
    slower, and the full task (2-4 spans, 2 words of context) stays at exact match 0 after 1,500 steps. 1,200
    steps here keep `make run` near 10 minutes (measured: 9 min 52 s, teacher exact match 0.157)."""
    return finetune_mod.tiny().model_copy(update=dict(
        total_steps=1200, lr=3e-3, warmup_steps=50, batch_size=32, max_input_length=48, max_target_length=48,
        eval_every=200, checkpoint_every=400, test_examples=300))


def _tiny_distill(steps: int, **fields) -> Callable[[], distill_mod.DistillConfig]:
    def make() -> distill_mod.DistillConfig:
        return distill_mod.tiny().model_copy(update=dict(
            total_steps=steps, lr=3e-3, warmup_steps=20, batch_size=32, max_input_length=48, max_target_length=48,
            eval_every=steps // 2, checkpoint_every=steps // 2, test_examples=300, **fields))

    return make


#: the tiny preset's task: text normalisation with 1-2 spans and 1 word of context (outputs ~8 words), the
#: version a 0.5M-parameter model learns within the tiny run's minutes
TINY_TASK = TaskSpec(name="text_normalization", spans=(1, 2), context=1)
S = T5Shape
def _tiny_sd() -> sd_mod.SDBenchmarkConfig:
    """The SD benchmark's tiny settings with the lean T5 decoder step (the pipeline's models are T5s)."""
    return sd_mod.tiny().model_copy(update={"cache_implementation": "lean"})


tiny = _preset("tiny", corpus_mod.tiny, _tiny_pretrain, _tiny_finetune, _tiny_distill(300), _tiny_sd, Sizes(
    teacher=S(d_model=96, d_ff=192, d_kv=16, num_heads=6, num_layers=3, num_decoder_layers=3, tie_word_embeddings=True),
    target=S(d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=2, num_decoder_layers=2, tie_word_embeddings=True),
    draft=S(d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=1, num_decoder_layers=1, tie_word_embeddings=True)),
    task=TINY_TASK, dt=_tiny_distill(500, data_mix=dict(TARGET_DATA_MIX)))
def _laptop_distill_target() -> distill_mod.DistillConfig:
    """The teacher -> target distillation: 4,000 steps on the task's ground-truth sequences (``fixed``: the
    divergence to the teacher's token distributions along the labels), as many steps as the teacher's fine-tuning.

    Measured 2026-12-07 from the same teacher and pretrained target (docs/results.md, "Target distillation
    data"): on teacher and on-policy samples (half each) a step costs 1.1-1.3 s (sampling up to the length cap
    from a model that has not learned to stop) and validation exact match was 0.078 after 2,000 steps; on the
    labels a step costs 0.36-0.45 s and exact match was 0.41 after 1,500."""
    return distill_mod.laptop().model_copy(update={"total_steps": 4000, "data_mix": {"fixed": 1.0}})


#: the laptop preset's task: text normalisation with 1-3 spans and 1 word of context (outputs ~10 words), each
#: training document also in 4 copies with its digits redrawn (``synthetic``: the models then learn to read the
#: digits instead of memorising the 5,359 examples; docs/results.md, "Synthetic digits")
LAPTOP_TASK = TaskSpec(name="text_normalization", spans=(1, 3), context=1, synthetic=4)
# laptop (fifth shapes, 2026-12-07): heads of 16 at d_model 96, decoders deeper than encoders, and the synthetic
# digit copies. Measured on the way (docs/results.md): wide models (d256-384, heads of 32-64) plateau near loss 3;
# d96 3+3 learns (test exact match 0.47 in the 2026-12-06 run) but leaves no room below it for a target SD can
# speed up; d128 3+9 and d96 2+6 without synthetic copies overfit the training examples (exact match 0.09);
# with 4 synthetic copies a d96 3+9 teacher reaches exact match 0.64 after 3,000 fine-tuning steps (validation
# loss still falling, hence 4,000 here) and a d96 2+6 model 0.37 after 1,500. The target's 6-layer decoder under
# a 2-layer encoder is a step the 1+1 draft costs about a fifth of with the lean decoder (models.sd.lean_t5);
# the teacher's 9-layer decoder is 1.5x the target's. Tied embeddings: T5 then scales the decoder output by
# d_model^-0.5, which gives a sane initial loss. With the target distilled on the teacher and on-policy samples the
# run took 96.6 min and the target did not learn (exact match 0.095, SD 1.11x); distilled on the labels
# (_laptop_distill_target) it took 85.2 min: teacher 0.709, target 0.704, greedy SD 1.70x fp32 / 1.4991x int8,
# garden 1.74x (docs/results.md, 2026-12-07).
laptop = _preset("laptop", corpus_mod.laptop, pretrain_mod.laptop, finetune_mod.laptop, distill_mod.laptop,
                 sd_mod.laptop, Sizes(
                     teacher=S(d_model=96, d_ff=384, d_kv=16, num_heads=6, num_layers=3, num_decoder_layers=9,
                               tie_word_embeddings=True),
                     target=S(d_model=96, d_ff=384, d_kv=16, num_heads=6, num_layers=2, num_decoder_layers=6,
                              tie_word_embeddings=True),
                     draft=S(d_model=32, d_ff=128, d_kv=8, num_heads=4, num_layers=1, num_decoder_layers=1,
                             tie_word_embeddings=True)),
                 task=LAPTOP_TASK, dt=_laptop_distill_target)
small = _preset("small", corpus_mod.small, pretrain_mod.small, finetune_mod.small, distill_mod.small, sd_mod.small,
                Sizes(teacher=S(d_model=768, d_ff=2048, d_kv=64, num_heads=12, num_layers=12, num_decoder_layers=12),
                      target=S(d_model=512, d_ff=1024, d_kv=64, num_heads=6, num_layers=8, num_decoder_layers=8),
                      draft=S(d_model=256, d_ff=512, d_kv=64, num_heads=4, num_layers=2, num_decoder_layers=2)))
base = _preset("base", corpus_mod.base, pretrain_mod.base, finetune_mod.base, distill_mod.base, sd_mod.base,
               Sizes(teacher=S(d_model=2048, d_ff=5120, d_kv=64, num_heads=32, num_layers=24, num_decoder_layers=24),
                     target=S(d_model=768, d_ff=2048, d_kv=64, num_heads=12, num_layers=12, num_decoder_layers=12),
                     draft=S(d_model=512, d_ff=1024, d_kv=64, num_heads=6, num_layers=8, num_decoder_layers=8)))
PRESETS = {"tiny": tiny, "laptop": laptop, "small": small, "base": base}
