"""Drafts built for a decoder-only target (models.sd.drafts): copied from the target's first layers, or fresh."""

import pytest
import torch

from models.sd.drafts import head_share, make_causal_draft
from models.speculative import speculative_generate
from tests.models.test_speculative_causal import llama


def test_a_draft_from_the_target_with_all_its_layers_is_the_target():
    target = llama(0, layers=3, hidden=48, scale=20.0)
    full = make_causal_draft(target, layers=3, init="target")
    ids = torch.tensor([[2, 5, 9, 11]])
    torch.testing.assert_close(full(input_ids=ids).logits, target(input_ids=ids).logits)
    one = make_causal_draft(target, layers=1, init="target")
    assert one.config.num_hidden_layers == 1 and one.config.vocab_size == target.config.vocab_size
    assert torch.equal(one.model.layers[0].self_attn.q_proj.weight, target.model.layers[0].self_attn.q_proj.weight)
    one.model.layers[0].self_attn.q_proj.weight.data.add_(1.0)  # a copy: the target is untouched
    assert not torch.equal(one.model.layers[0].self_attn.q_proj.weight, target.model.layers[0].self_attn.q_proj.weight)
    # a draft of the target's own first layer speculates for it exactly (greedy SD = target decoding)
    out = speculative_generate(target, one, ids, gamma=3, max_new_tokens=10)
    ref = target.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert out.sequences[0, : ref.shape[1]].tolist() == ref[0, : out.sequences.shape[1]].tolist()


def test_a_fresh_draft_has_its_own_width_and_its_weights_come_from_the_generator_alone():
    target = llama(0, layers=3, hidden=48)
    a = make_causal_draft(target, layers=1, init="fresh", hidden_size=32, intermediate_size=64,
                          generator=torch.Generator().manual_seed(7))
    torch.manual_seed(123)
    b = make_causal_draft(target, layers=1, init="fresh", hidden_size=32, intermediate_size=64,
                          generator=torch.Generator().manual_seed(7))
    assert a.config.hidden_size == 32 and a.config.eos_token_id == target.config.eos_token_id
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert 0.0 < head_share(a) < 1.0


def test_bad_draft_requests_are_refused_in_one_line():
    target = llama(0, layers=2, hidden=32)
    with pytest.raises(ValueError, match="layers=3 must be an int in"):
        make_causal_draft(target, layers=3)
    with pytest.raises(ValueError, match="copies the target's layers"):
        make_causal_draft(target, layers=1, init="target", hidden_size=16)
    with pytest.raises(ValueError, match="pass generator="):
        make_causal_draft(target, layers=1, init="fresh")
    with pytest.raises(ValueError, match="must be one of"):
        make_causal_draft(target, layers=1, init="copy")


def test_a_frequent_token_head_scores_its_tokens_as_the_full_head_does_and_no_other(tmp_path):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    from models.sd.drafts import OUTSIDE_LOGIT, FrequentHeadLlama, frequent_token_ids, load_causal, task_frequent_token_ids

    target = llama(0, layers=2, hidden=32, scale=20.0)
    keep = list(range(0, 64, 2))  # half the vocabulary
    draft = make_causal_draft(target, layers=2, init="target", head_tokens=keep)
    assert isinstance(draft, FrequentHeadLlama) and head_share(draft) < head_share(target)
    ids = torch.tensor([[2, 5, 9, 11]])
    with torch.no_grad():
        full, small = target(input_ids=ids).logits, draft(input_ids=ids).logits
    torch.testing.assert_close(small[..., keep], full[..., keep])  # same layers, same head rows
    assert bool((small[..., 1::2] == OUTSIDE_LOGIT).all())
    # it saves and loads as itself, and greedy SD with it stays exact (it can only propose kept tokens)
    draft.save_pretrained(tmp_path / "d")
    again = load_causal(tmp_path / "d")
    assert isinstance(again, FrequentHeadLlama) and torch.equal(again(input_ids=ids).logits, small)
    out = speculative_generate(target, again, ids, gamma=3, max_new_tokens=12)
    ref = target.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert out.sequences.tolist() == ref.tolist()
    assisted = target.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0, assistant_model=again)
    assert assisted.tolist() == ref.tolist()  # transformers' assisted generation takes it too
    # frequent ids: by count in the texts, the always-kept ids included, sorted
    vocab = {f"w{i}": i for i in range(64)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="w3"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="w1")
    assert frequent_token_ids(tok, ["w7 w7 w7 w9 w9 w5", "w9 w8"], 3, always=[1]) == [1, 7, 9]
    with pytest.raises(ValueError, match="between"):
        frequent_token_ids(tok, ["w7"], 100)
    # a task split's inputs and targets, the tokenizer's EOS always kept
    split = {"input": ["w7 w7 w7 w5"], "target": ["w9 w9 w8"]}
    assert task_frequent_token_ids(tok, split, 3) == [1, 7, 9]
