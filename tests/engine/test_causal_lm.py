"""Decoder-only LMs by reference (engine.causal_lm): folders, GGUF files, hub ids offline, the packaged SmolLM2."""

from pathlib import Path

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


def _put_in_hub_cache(folder, repo_id: str):
    """Lay ``folder`` out as the local Hugging Face cache holds a downloaded repo (snapshot + refs/main)."""
    import shutil

    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return repo


def test_a_hub_id_in_the_local_cache_resolves_offline_to_a_folder_once_and_an_uncached_one_is_one_line(
        tmp_path, tiny_corpus):
    """Every stage's model field goes through tasks.tracking.resolve_model: a hub id (here an encoder-decoder
    T5, served from the local hub cache with the hub off) becomes a save_pretrained folder with the same
    weights, written once and reused; a hub id that is neither cached nor reachable is one line, no folder."""
    import shutil
    import uuid

    from tasks.tracking import resolve_model
    from tests.conftest import make_t5_dir

    repo_id = f"spactor-test/tiny-t5-{uuid.uuid4().hex[:8]}"
    src = make_t5_dir(f"{tiny_corpus}/tokenizer", tmp_path / "t5")
    repo = _put_in_hub_cache(src, repo_id)
    cache = tmp_path / "cache"
    try:
        folder = resolve_model(f"hf:{repo_id}", dst_root=cache)
        assert (folder / "config.json").is_file() and (folder / ".complete").is_file()
        from transformers import AutoModelForSeq2SeqLM

        a = AutoModelForSeq2SeqLM.from_pretrained(src).state_dict()
        b = AutoModelForSeq2SeqLM.from_pretrained(folder).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    finally:
        shutil.rmtree(repo)
    # reused, under the plain ORG/NAME spelling too, though the hub copy is gone now
    assert resolve_model(f"hf:{repo_id}", dst_root=cache) == folder == resolve_model(repo_id, dst_root=cache)
    before = sorted(p.name for p in (cache / "by-reference").iterdir())
    with pytest.raises(FileNotFoundError, match="hub id and the hub is off") as err:
        resolve_model("hf:spactor-test/not-cached", dst_root=cache)
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in (cache / "by-reference").iterdir()) == before  # nothing half-written
    with pytest.raises(FileNotFoundError, match="neither an existing folder"):
        resolve_model("no such model", dst_root=cache)


def test_a_gguf_reference_is_made_absolute_where_the_config_is_validated(tmp_path, monkeypatch):
    from engine.config.finetune import FinetuneConfig

    monkeypatch.chdir(tmp_path)
    assert FinetuneConfig(model="gguf:m/x.gguf").model == f"gguf:{tmp_path}/m/x.gguf"
    assert FinetuneConfig(model="smollm2").model == "smollm2"
    assert FinetuneConfig(model="hf:org/name").model == "hf:org/name"
