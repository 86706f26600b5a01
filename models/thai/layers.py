"""The segmenter's convolution layer on (B, T, H) activations as they lie in memory, and for CPU inference
the same convolution with its GELU in one oneDNN kernel.

(B, T, H) in memory is the channels-last layout of a (B, H, 1, T) image, so a 1-D convolution over T runs as
a 1 x kernel 2-D one on that view, with no transposes (``conv_nwc``). ``conv_gelu_nwc`` adds the GELU that
follows each convolution, fused into the kernel (oneDNN's GELU post-op, the kernel torch.compile's CPU backend
fuses ``gelu(conv(x))`` into) on CPU in float32 without autograd, else as a second step; both give the same
numbers. Pure torch; the encoder that stacks these layers is :mod:`models.thai_segmenter`'s.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["conv_gelu_nwc", "conv_nwc"]


def conv_nwc(conv: nn.Conv1d, x: torch.Tensor, *, fused_gelu=None) -> torch.Tensor:
    """``conv`` over (B, T, H) activations without transposing them: (B, T, H) in memory is the
    channels-last layout of a (B, H, 1, T) image, so the 1-D convolution runs as a 1 x kernel 2-D one
    on that view (oneDNN's channels-last kernels; about 1.7x faster on CPU than conv1d on transposed
    activations, which copies them twice per layer). With ``fused_gelu`` (``_fused_conv_gelu_op()``)
    the GELU after it runs in the same kernel. Returns (B, T, H), contiguous."""
    image, weight = x.permute(0, 2, 1).unsqueeze(2), conv.weight.unsqueeze(2)
    padding, dilation = [0, conv.padding[0]], [1, conv.dilation[0]]
    if fused_gelu is None:
        y = F.conv2d(image, weight, conv.bias, padding=padding, dilation=dilation)
    else:
        y = fused_gelu(image, weight, conv.bias, padding, [1, 1], dilation, 1, "gelu", [], "none")
    return y.squeeze(2).permute(0, 2, 1).contiguous()


@lru_cache(maxsize=1)
def _fused_conv_gelu_op():
    """oneDNN's convolution with a GELU (erf) post-op, the kernel torch.compile's CPU backend fuses
    ``gelu(conv(x))`` into, or None where this torch build lacks it."""
    try:
        op = torch.ops.mkldnn._convolution_pointwise.default
    except (AttributeError, RuntimeError):
        return None
    return op if torch.backends.mkldnn.is_available() else None


_FUSED_CONV_GELU_FAILED = False  # the fused kernel raised once in this process (an unsupported CPU or build)


def conv_gelu_nwc(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """``F.gelu(conv_nwc(conv, x))`` in one pass over the output on CPU in float32 (oneDNN's GELU
    post-op: about 2.5x faster than a convolution and then a GELU, and the same numbers); elsewhere,
    or if the fused kernel raises, the two steps. (B, T, H) in and out, contiguous."""
    global _FUSED_CONV_GELU_FAILED
    op = _fused_conv_gelu_op() if x.device.type == "cpu" and x.dtype == torch.float32 else None
    if not (op is None or _FUSED_CONV_GELU_FAILED or torch.is_autocast_enabled("cpu") or torch.is_grad_enabled()):
        try:
            return conv_nwc(conv, x, fused_gelu=op)
        except RuntimeError:
            _FUSED_CONV_GELU_FAILED = True
    h = conv_nwc(conv, x)
    return torch._C._nn.gelu_(h) if h.dtype == torch.float32 else F.gelu(h)
