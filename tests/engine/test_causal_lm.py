"""Decoder-only LMs by reference (engine.causal_lm): folders, GGUF files, hub ids offline, the packaged SmolLM2."""

import pytest
import torch

from engine.causal_lm import PACKAGED, load_causal_lm, locate


def test_references_that_cannot_load_here_fail_in_one_line_naming_them(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="hub id and the hub is off"):
        locate("HuggingFaceTB/SmolLM2-135M")
    with pytest.raises(FileNotFoundError, match="hub id and the hub is off"):
        locate("hf:HuggingFaceTB/SmolLM2-135M")
    with pytest.raises(FileNotFoundError, match="no GGUF file at"):
        locate(f"gguf:{tmp_path}/missing.gguf")
    with pytest.raises(FileNotFoundError, match="a folder but not a model"):
        locate(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="neither a packaged name"):
        locate("no such model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert locate("hf:HuggingFaceTB/SmolLM2-135M") == ("HuggingFaceTB/SmolLM2-135M", None)


def test_a_saved_causal_lm_folder_loads_with_a_left_padding_tokenizer(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.models.test_speculative_causal import llama

    model = llama(0)
    model.save_pretrained(tmp_path / "m")
    # a tokenizer of the same vocabulary: the packaged SmolLM2's would be too big; build a word-level one
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(64)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w3"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="w1", bos_token="w2").save_pretrained(tmp_path / "m")
    loaded, tokenizer = load_causal_lm(str(tmp_path / "m"))
    assert isinstance(loaded, LlamaForCausalLM) and isinstance(loaded.config, LlamaConfig) and not loaded.training
    assert tokenizer.padding_side == "left" and tokenizer.pad_token == "w1"
    ids = torch.tensor([[2, 5, 9]])
    assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


@pytest.mark.slow
def test_the_packaged_smollm2_loads_offline_and_speculative_decoding_on_it_equals_generate():
    from models.speculative import speculative_generate

    assert "smollm2" in PACKAGED
    model, tokenizer = load_causal_lm("smollm2")
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    torch.set_num_threads(1)
    ref = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(ref[0, ids.shape[1]:])  # a real, pretrained model
    out = speculative_generate(model, model, ids, gamma=3, max_new_tokens=12)
    assert out.sequences.tolist() == ref.tolist()
