"""DistillSpec, fine-tuning and evaluation on decoder-only LMs (tiny random Llamas): chat-templated prompts, losses
over response tokens only, left-padded sampling, and distillation that raises the acceptance rate."""

import pytest
import torch

from engine.distill_worker import DistillObjective, distill_worker
from engine.finetune_worker import FinetuneObjective, load_model_and_tokenizer, response_loss
from models.generation import batched_generate
from models.text_io import CausalIO, text_io
from tasks.downstream import TaskSpec, task_dir
from tests.conftest import make_llama_dir
from tests.engine.test_distill_worker import _cfg as t5_cfg


@pytest.fixture(scope="module")
def llamas(tiny_corpus, tmp_path_factory):
    tok = f"{tiny_corpus}/tokenizer"
    return (make_llama_dir(tok, tmp_path_factory.mktemp("teacher"), hidden=48, layers=2, seed=1, head_scale=40.0),
            make_llama_dir(tok, tmp_path_factory.mktemp("student"), hidden=32, layers=1, seed=2))


def _cfg(llamas, copy_task, tmp_path, **kw):
    """The T5 tests' distillation job with the Llama pair, TVD, 40 steps and room for chat-templated prompts."""
    return t5_cfg(llamas, copy_task, tmp_path, **{"divergence": "tvd", "total_steps": 40, "max_input_length": 24,
                                                  "eval_every": 40, **kw})


def test_causal_prompts_go_through_the_chat_template_and_responses_end_with_eos(llamas):
    model, tok = load_model_and_tokenizer(llamas[0])
    io = text_io(model, tok)
    assert isinstance(io, CausalIO) and tok.padding_side == "left"
    [p] = io.prompts(["house and the war"], 64)
    assert tok.decode(p).startswith("question:") and tok.decode(p).rstrip().endswith("answer:")
    [short] = io.prompts(["house and the war " * 20], 12)
    assert len(short) == 12 and tok.decode(short).rstrip().endswith("answer:")  # the text is cut, not the template
    [r] = io.responses(["house"], 8)
    assert r[-1] == tok.eos_token_id and tok.decode(r[:-1]).strip() == "house"


def test_forced_logits_are_the_logits_that_predict_each_response_token_whatever_the_padding(llamas):
    model, tok = load_model_and_tokenizer(llamas[0])
    io = text_io(model, tok)
    prompts = io.prompts(["house", "minister and the city of the river"], 32)
    responses = io.responses(["music century", "war"], 8)
    logits, mask = io.forced_logits(model, prompts, responses)
    assert mask.tolist() == [[True] * len(responses[0]), [True] * len(responses[1]) + [False] * (
        len(responses[0]) - len(responses[1]))]
    with torch.no_grad():
        for b, (p, r) in enumerate(zip(prompts, responses)):
            alone = model(input_ids=torch.tensor([p + r])).logits[0]
            torch.testing.assert_close(logits[b, : len(r)], alone[len(p) - 1: len(p) + len(r) - 1],
                                       atol=1e-5, rtol=1e-4)
    # the loss covers response tokens only: changing a prompt token changes the logits, not which are scored
    loss = response_loss(io, model, prompts, responses)
    by_hand = torch.nn.functional.cross_entropy(logits[mask], torch.tensor(responses[0] + responses[1]))
    torch.testing.assert_close(loss, by_hand)


def test_batched_causal_generation_equals_one_prompt_at_a_time_and_drops_the_prompt(llamas):
    model, tok = load_model_and_tokenizer(llamas[0])
    texts = ["house", "minister and the city of the river", "war and the music"]
    batched, _ = batched_generate(model, tok, texts, batch_size=3, max_new_tokens=5)
    alone = [batched_generate(model, tok, [t], batch_size=1, max_new_tokens=5)[0][0] for t in texts]
    assert batched == alone
    assert not any(p.startswith("question") for p in batched)


def test_on_policy_causal_samples_come_from_the_current_student_with_left_padding(llamas, copy_task, tmp_path):
    obj = DistillObjective(_cfg(llamas, copy_task, tmp_path))
    prompts, ys = obj.batch(obj.model, step=2, micro=0, rank=0, world=1)
    assert obj.last_sources == ["student"] * 8
    assert all(1 <= len(y) <= 6 for y in ys)
    from models.training import step_seed

    greedy = obj.sample(obj.model, prompts, 0, do_sample=False)
    assert greedy == [obj.sample(obj.model, [p], 0, do_sample=False)[0] for p in prompts]
    assert ys == obj.sample(obj.model, prompts, step_seed(0, 2, 0, 0, 6 + 2))


def test_distilling_a_causal_student_raises_its_acceptance_rate_and_scores_its_task(llamas, copy_task, tmp_path):
    cfg = _cfg(llamas, copy_task, tmp_path)
    before = DistillObjective(cfg).evaluate(0)
    state = distill_worker(cfg)
    after = state["evals"][-1]
    assert after["sampled.acceptance_rate"] > before["sampled.acceptance_rate"] + 0.05
    assert "val.accuracy" in after and 0.0 <= after["greedy.greedy_agreement"] <= 1.0


def test_fine_tuning_a_causal_lm_lowers_its_response_loss(llamas, copy_task, tmp_path):
    cfg = dict(preset="test", model_dir=llamas[1], task_dir=str(task_dir(TaskSpec(**copy_task))), init="pretrained",
               dropout_rate=0.0, eval_examples=16, max_input_length=24, max_target_length=6, total_steps=30,
               batch_size=8, grad_accum=1, lr=1e-2, warmup_steps=0, schedule="constant", clip_norm=1.0,
               eval_every=30, checkpoint_every=0, log_every=10, num_workers=1, threads_per_worker=1, use_gpu=False,
               bf16=False, max_failures=0, seed=0, in_ray=False, checkpoint_dir=str(tmp_path / "ft"),
               early_stop_patience=0)
    obj = FinetuneObjective(cfg)
    before = obj.evaluate(0)["val_loss"]
    from engine.finetune_worker import finetune_worker

    after = finetune_worker(cfg)["evals"][-1]["val_loss"]
    assert after < before - 1.0
