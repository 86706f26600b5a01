"""MLflow models-from-code definition of a registered T5 (or decoder-only LM) version: text in, generated text out.

MLflow runs this file when a version is loaded (``mlflow.pyfunc.load_model("models:/name/1")`` or
``mlflow models serve -m models:/name/1``); nothing is unpickled. The weights stay the ``save_pretrained``
folder (safetensors, tokenizer, config) that the version carries as its ``t5`` artifact.

Input: a pandas DataFrame with an ``input`` column (the model's input text, task prefix included, e.g.
``"summarize: ..."``). Output: one generated string per row, in row order. Params (optional):
``max_new_tokens``, ``num_beams``, ``max_input_length``, ``batch_size``; their defaults are in the version's
``model_config``. A decoder-only model (a Llama such as SmolLM2) gets each input through its tokenizer's chat
template (when it has one) as the user's turn, prompts padded on the left, and returns only the new text.

This file imports nothing from the project (MLflow copies it into the model, and a serving environment has only
the pip requirements the version lists).
"""

from __future__ import annotations

from typing import Any, Optional

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

DEFAULTS = {"max_new_tokens": 32, "num_beams": 1, "max_input_length": 512, "batch_size": 16}


class T5TextGenerator(PythonModel):
    def load_context(self, context):
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, T5ForConditionalGeneration

        folder = context.artifacts["t5"]
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.causal = not AutoConfig.from_pretrained(folder).is_encoder_decoder
        cls = AutoModelForCausalLM if self.causal else T5ForConditionalGeneration
        self.model = cls.from_pretrained(folder).eval()
        if self.causal:
            self.tokenizer.padding_side = self.tokenizer.truncation_side = "left"  # keep the turn's end
            if self.tokenizer.pad_token is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
        self.defaults = {**DEFAULTS, **{k: v for k, v in (context.model_config or {}).items() if k in DEFAULTS}}

    # the DataFrame hint keeps MLflow from converting the input; the signature itself is explicit (tasks/tracking.py)
    def _cache(self) -> dict:
        """A cache that grows per layer when the decoder is deeper than the encoder (transformers 5.24's generate
        sizes its own by the encoder's layer count and fails); nothing otherwise (as models.sd.kv_cache.generate_cache)."""
        cfg = self.model.config
        if self.causal or getattr(cfg, "num_decoder_layers", None) in (None, cfg.num_layers):
            return {}
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        return {"cache": EncoderDecoderCache(DynamicCache(), DynamicCache())}

    def predict(self, context, model_input: pd.DataFrame, params: Optional[dict[str, Any]] = None) -> list[str]:
        import torch

        opts = {**self.defaults, **{k: v for k, v in (params or {}).items() if k in DEFAULTS and v is not None}}
        if hasattr(model_input, "columns"):
            if "input" not in model_input.columns:
                raise ValueError(f"expected a DataFrame with an 'input' column, got columns {list(model_input.columns)}")
            texts = [str(x) for x in model_input["input"].tolist()]
        elif isinstance(model_input, str):
            texts = [model_input]
        else:
            texts = [str(x) for x in model_input]
        out: list[str] = []
        step = max(1, int(opts["batch_size"]))
        with torch.no_grad():
            for start in range(0, len(texts), step):
                batch = texts[start:start + step]
                templated = self.causal and bool(getattr(self.tokenizer, "chat_template", None))
                if templated:
                    batch = [self.tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                                                add_generation_prompt=True) for t in batch]
                enc = self.tokenizer(batch, max_length=int(opts["max_input_length"]), truncation=True, padding=True,
                                     return_tensors="pt", add_special_tokens=not templated)
                ids = self.model.generate(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                                          max_new_tokens=int(opts["max_new_tokens"]),
                                          num_beams=int(opts["num_beams"]), do_sample=False, use_cache=True,
                                          pad_token_id=self.tokenizer.pad_token_id, **self._cache())
                if self.causal:
                    ids = ids[:, enc.input_ids.shape[1]:]
                out.extend(t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True))
        return out


mlflow.models.set_model(T5TextGenerator())
