"""Weight precision for decoding on a CPU: int8 linear layers whose rows do not see each other, or bf16 copies.

``at_precision(model, "bf16")`` is a bfloat16 copy of the whole model. On a CPU with AVX512-BF16 (oneDNN's bf16
GEMM) a bf16 linear layer reads half the bytes and, unlike fp32 (whose k-row GEMM costs 1.4-2x its one-row GEMV
here), scores k <= 5 rows for the price of one: measured on this machine's AMD EPYC, 1 thread, SmolLM2-135M's
KV-cached call costs 26 ms for 1 to 4 new tokens in bf16 against 37 ms for 1 and 56-74 ms for 2-5 in fp32
(``benchmarks/verify_cost.py --model smollm2 --bf16``). bf16 is not exact for SD: a linear layer's bf16 rows
mostly do not depend on the rows beside them (2 of 175 checked SmolLM2-shaped products did), but SmolLM2's bf16
logits of a 5-token call differ from five 1-token calls by up to 0.3-0.4 (sdpa or eager attention alike), so at
near-ties greedy SD can leave the bf16 target's own greedy path (measured: some of 8 bbc_headline prompts,
transformers' prompt lookup alike); the benchmark's ``exact`` column says so on every run.

``dynamic_int8(model)`` returns a copy whose ``nn.Linear`` layers are :class:`Int8Linear`: int8 weights with one
scale per output channel, and activations quantised to int8 per call with one scale per row (per token), multiplied
in integers (``torch._int_mm``, int32 accumulation) and scaled back to float. At batch 1 a decoding step reads every
weight once, so a quarter of the bytes makes a step cheaper, and a call that scores k new tokens costs about one
step (the premise of speculative decoding).

Why per row: speculative decoding is exact with respect to the model it verifies with only if that model scores a
token the same whether the call holds 1 or gamma + 1 new tokens. Integer products are exact and every scale here
is computed from the token's own row, so a row's output does not depend on the rows beside it. torch's own
``torch.ao.quantization.quantize_dynamic`` takes one activation scale per call (per tensor): it is 1.1-1.7x faster at
one row on this CPU, but the same token's logits change with the rows beside it, so SD's greedy output then differs
from target-only decoding (measured; docs/results.md).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

PRECISIONS = ("fp32", "int8", "bf16")
#: linear layers below this many weights stay fp32 in the benchmark's int8 mode: at d_model 64-128 the int8 call's
#: fixed cost (quantising the row, the integer GEMM's set-up) outweighs the bytes it saves (measured: a 1-layer d64
#: draft steps in 0.45 ms fp32, 0.58 ms all-int8, 0.43 ms with only its LM head in int8)
INT8_MIN_WEIGHTS = 1 << 17


class Int8Linear(nn.Module):
    """``y = x W^T + b`` with int8 ``W`` (per output channel scales) and int8 ``x`` (per row scales)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().to(torch.float32)
        scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # named ``weight`` (int8): transformers' T5 reads ``wo.weight.dtype`` and leaves int8 weights alone
        self.register_buffer("weight", torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8))
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(torch.float32).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).to(torch.float32)
        sx = x2.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0
        xq = torch.round(x2 / sx).clamp_(-127, 127).to(torch.int8)
        y = torch._int_mm(xq, self.weight.t()).to(torch.float32).mul_(sx).mul_(self.weight_scale)
        if self.bias is not None:
            y += self.bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights, int8 rows"


def dynamic_int8(model: nn.Module, min_weights: int = 0) -> nn.Module:
    """An eval-mode copy of ``model`` with every ``nn.Linear`` of at least ``min_weights`` weights replaced by
    :class:`Int8Linear` (CPU, from fp32)."""
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("int8 decoding runs on the CPU; load the model on cpu (device=cpu)")
    if any(p.dtype != torch.float32 for p in model.parameters()):
        raise ValueError("int8 decoding starts from float32 weights (dtype=float32)")
    q = copy.deepcopy(model).eval()
    for name, module in list(q.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and child.weight.numel() >= min_weights:
                setattr(module, child_name, Int8Linear(child))
    return q


def at_precision(model: nn.Module, precision: str, min_weights: int = 0) -> nn.Module:
    """``model`` itself for ``fp32``, an int8 copy for ``int8`` (linear layers of >= ``min_weights`` weights), a
    bfloat16 copy for ``bf16``."""
    if precision == "fp32":
        return model
    if precision == "int8":
        return dynamic_int8(model, min_weights)
    if precision == "bf16":
        if any(p.dtype != torch.float32 for p in model.parameters()):
            raise ValueError("bf16 copies start from float32 weights (dtype=float32)")
        return copy.deepcopy(model).to(torch.bfloat16).eval()
    raise ValueError(f"precision={precision!r} must be one of {list(PRECISIONS)}")
