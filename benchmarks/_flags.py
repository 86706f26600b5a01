"""Flags the benchmark scripts share, declared from the project's own settings classes: a setting's flag name,
type and default are the class's (``models.sd.bench.BenchSettings``), stated once, and the script builds its
settings object from the parsed flags, so the class's checks apply to what was typed.

    add_settings_flags(ap, BenchSettings, "max_new_tokens", "repeats", "threads", repeats=2)
    ...
    settings = settings_from_flags(BenchSettings, args, gammas=(args.gamma,))

The T5 width flags (``--d-model``, ``--d-ff``, ``--heads``) are declared once too (:func:`add_shape_flags`), and
:func:`t5_shape` gives the shape as the pretraining config's ``T5Shape`` fields, built into a model by
``models.spactor.t5_config``, the project's one T5 builder.

Plain dataclasses only: the scripts also run on the bare GPU machine (``benchmarks/device_check.sh``), which has
torch and transformers but no pydantic, so the flow configs of ``engine/config/`` are not used here.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

#: one line of help per setting a script exposes (the class's field docstrings are not readable at run time)
HELP = {
    "max_new_tokens": "tokens to generate per prompt",
    "repeats": "timed passes; medians are over passes",
    "warmup": "untimed passes first",
    "threads": "torch threads during the measurement",
    "seed": "seed of weights, prompts and sampling",
    "precision": "weights to decode with: fp32 as loaded, int8 linear layers (CPU), bf16 copies",
    "prompt_lookup": "> 0: also our prompt-lookup draft (n-grams up to this size), alone and before each feature draft",
}
_DECLARED = "_settings_flags"  # Namespace attribute: which fields of which class the parser declared


def add_settings_flags(ap: argparse.ArgumentParser, cls: type, *names: str, **defaults: Any) -> None:
    """Declare ``--<field-name>`` for each named field of the dataclass ``cls``, typed as the field and
    defaulting to the class's default (or the script's, given as a keyword)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(names) - set(fields)) + sorted(set(defaults) - set(names))
    if unknown:
        raise ValueError(f"{cls.__name__} has no settings {unknown} to declare")
    group = ap.add_argument_group(f"{cls.__name__} settings ({cls.__module__})")
    for name in names:
        default = defaults.get(name, fields[name].default)
        kind = hints[name]
        help_ = f"{HELP.get(name, cls.__name__ + '.' + name)} (default {default})"
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_)
        elif kind in (int, float, str):
            group.add_argument(flag, type=kind, default=default, help=help_)
        else:
            raise TypeError(f"{cls.__name__}.{name}: only int, float, str and bool settings become flags")
    declared = dict(ap.get_default(_DECLARED) or {})
    declared[cls] = declared.get(cls, ()) + names
    ap.set_defaults(**{_DECLARED: declared})


def settings_from_flags(cls: type, args: argparse.Namespace, **fixed: Any):
    """``cls`` built from the flags :func:`add_settings_flags` declared for it plus ``fixed`` values; the class
    checks them (a ValueError names the setting)."""
    names = getattr(args, _DECLARED, {}).get(cls, ())
    return cls(**{name: getattr(args, name) for name in names}, **fixed)


def add_shape_flags(ap: argparse.ArgumentParser, *, d_model: int, d_ff: int, heads: int, what: str = "the model") -> None:
    """Declare the T5 width flags the scripts share (``--d-model``, ``--d-ff``, ``--heads``; layers stay each
    script's own, since what they count differs); :func:`t5_shape` turns them into a shape."""
    group = ap.add_argument_group(f"T5 shape of {what} (engine.config.base.T5Shape fields; d_kv = d_model / heads)")
    group.add_argument("--d-model", type=int, default=d_model, help=f"hidden size (default {d_model})")
    group.add_argument("--d-ff", type=int, default=d_ff, help=f"feed-forward size (default {d_ff})")
    group.add_argument("--heads", type=int, default=heads, help=f"attention heads (default {heads})")


def t5_shape(args: argparse.Namespace, *, layers: int, decoder_layers: int | None = None, **extra: Any) -> dict:
    """The shape the flags give, as keyword arguments of ``models.spactor.t5_config`` named as the pretraining
    config's ``T5Shape`` fields (so ``T5Shape(**shape)`` validates it where pydantic is installed); ``extra``
    adds other T5Shape fields (``tie_word_embeddings``...). A ValueError names the bad flag."""
    for flag, value in (("--d-model", args.d_model), ("--d-ff", args.d_ff), ("--heads", args.heads),
                        ("layers", layers), ("decoder layers", decoder_layers or layers)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1 (got {value})")
    if args.d_model % args.heads:
        raise ValueError(f"--d-model ({args.d_model}) must be a multiple of --heads ({args.heads})")
    return {"d_model": args.d_model, "d_ff": args.d_ff, "d_kv": args.d_model // args.heads, "num_heads": args.heads,
            "num_layers": layers, "num_decoder_layers": decoder_layers or layers, **extra}
