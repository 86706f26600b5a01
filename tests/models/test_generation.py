"""Generation on T5 shapes transformers' own cache does not size right (a decoder deeper than its encoder)."""

import torch

from tests.models.test_speculative import tiny_t5


def test_batched_generate_decodes_a_t5_whose_decoder_is_deeper_than_its_encoder():
    from transformers import T5Config, T5ForConditionalGeneration

    from models.generation import batched_generate
    from models.sd.kv_cache import generate_cache

    class Tok:  # what batched_generate uses of a tokenizer
        pad_token_id, eos_token_id = 0, 1

        def __call__(self, texts, **_):
            return type("E", (), {"input_ids": [[2 + (ord(c) % 90) for c in t] + [1] for t in texts]})

        def batch_decode(self, rows, skip_special_tokens=True):
            return [" ".join(str(int(t)) for t in r if t > 1) for r in rows]

    torch.manual_seed(0)
    deep = T5ForConditionalGeneration(T5Config(vocab_size=96, d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=1,
                                               num_decoder_layers=3, decoder_start_token_id=0, pad_token_id=0,
                                               eos_token_id=1)).eval()
    assert generate_cache(deep) and not generate_cache(tiny_t5(0))
    preds, _ = batched_generate(deep, Tok(), ["abc", "hello there"], max_new_tokens=6, num_beams=2)
    assert len(preds) == 2
