"""Importing a decoder-only LM into the registry (flows.import_model): later stages resolve it as models:/."""

import torch


def _tiny_llama_folder(path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from tests.models.test_speculative_causal import llama

    model = llama(0)
    model.save_pretrained(path)
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(64)}, unk_token="w3"))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="w1").save_pretrained(path)
    return model


def test_an_imported_model_resolves_from_the_registry_to_the_same_weights_with_its_source_and_licence(
        prefect_harness, tmp_path):
    from mlflow import MlflowClient

    from engine.causal_lm import load_causal_lm
    from engine.config.import_model import ImportModelConfig
    from flows.import_model import import_model_flow
    from tasks.tracking import model_identity, resolve_model

    original = _tiny_llama_folder(tmp_path / "llama")
    result = import_model_flow(config=ImportModelConfig(ref=str(tmp_path / "llama"), register_as="tiny-llama-import"))
    assert result.model_uri == "models:/tiny-llama-import/1"
    folder = resolve_model(result.model_uri, tmp_path / "cache")  # sha256-checked download
    model, tokenizer = load_causal_lm(str(folder))
    ids = torch.tensor([[2, 5, 9, 11]])
    assert torch.equal(model(input_ids=ids).logits, original(input_ids=ids).logits)
    mv = MlflowClient().get_model_version("tiny-llama-import", "1")
    assert mv.tags["source"] == str(tmp_path / "llama") and mv.tags["architecture"] == "LlamaForCausalLM"
    assert "imported from" in mv.description and model_identity(result.model_uri).startswith("sha256:")
