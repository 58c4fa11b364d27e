"""Which attention kernel runs: PyTorch's fused ``scaled_dot_product_attention`` or two matmuls around a softmax.

On CPU in bf16, at BEiT-3's sequence lengths (197 image tokens plus text, a few hundred in all), PyTorch's
fused (flash) kernel takes about twice as long as ``q @ k.T -> softmax -> @ v``, forward and backward; in fp32
the two are level (``python -m bench.attention_kernels`` measures it; docs/benchmarks.md has the numbers).
The matmul path keeps the attention matrix for the backward pass, O(Lq * Lk) memory per layer that the
fused kernel avoids, so ``auto`` takes it only where it wins: bf16 on CPU with small score matrices (fp16 on
CPU was not measured). On CUDA ``auto`` is always the fused kernel.

Both kernels take the same masks (boolean, True = may attend; or an additive float bias with -inf where
not allowed) and give the same result, including a query row with every key masked: all zeros, as SDPA
returns. Under bf16/fp16 the softmax kernel computes in fp32 and rounds once (the released implementation
casts to fp32 and back; the two differ in about 1 element in 10^5, by one bf16 rounding step), which saves
two copies of the attention matrix per call.
"""
from __future__ import annotations

import enum
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["AttentionKernel", "attend", "resolve_kernel", "MATMUL_MAX_SCORES"]

# 'auto' uses the matmul path while Lq * Lk stays at or below this: a 512 px image (1025 tokens) with text.
# Near 2000 tokens the fused kernel is faster again, and the saved attention matrices grow large.
MATMUL_MAX_SCORES = 1100 * 1100


class AttentionKernel(str, enum.Enum):
    AUTO = "auto"        # matmul for small bf16 score matrices on CPU, fused SDPA otherwise
    SDPA = "sdpa"        # always torch's fused scaled_dot_product_attention
    MATMUL = "matmul"    # always bmm + softmax + bmm

    @classmethod
    def _missing_(cls, value):
        raise ValueError(f"unknown attention kernel {value!r}; choose one of: {', '.join(k.value for k in cls)}")


def _matmul_attention(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor]) -> Tensor:
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    dead = None
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
            dead = ~mask.any(dim=-1, keepdim=True)
        else:
            scores = scores + mask
            dead = torch.isneginf(mask).all(dim=-1, keepdim=True)
        dead = dead if bool(dead.any()) else None
    if dead is not None:  # a query allowed to see nothing: softmax over only -inf is NaN, forward and backward
        scores = scores.masked_fill(dead, 0.0)
    probs = scores.softmax(dim=-1).to(q.dtype)  # bf16/fp16 softmax kernels accumulate in fp32 themselves
    if dead is not None:  # ... and its output is zeros, as SDPA's
        probs = probs.masked_fill(dead, 0.0)
    return probs @ v


def resolve_kernel(q: Tensor, k: Tensor, kernel: AttentionKernel = AttentionKernel.AUTO) -> AttentionKernel:
    """The kernel ``attend`` runs for these queries and keys: ``auto`` becomes ``matmul`` for bf16 on CPU
    with a small score matrix (where it is about twice as fast), ``sdpa`` otherwise (in fp32 on CPU the two
    are level, and only the fused kernel avoids storing the attention matrix)."""
    kernel = AttentionKernel(kernel)
    if kernel != AttentionKernel.AUTO:
        return kernel
    cpu_bf16 = q.device.type == "cpu" and q.dtype == torch.bfloat16
    small = q.shape[-2] * k.shape[-2] <= MATMUL_MAX_SCORES
    return AttentionKernel.MATMUL if cpu_bf16 and small else AttentionKernel.SDPA


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor] = None,
           kernel: AttentionKernel = AttentionKernel.AUTO) -> Tensor:
    """Multi-head attention of (B, H, Lq, D) queries over (B, H, Lk, D) keys/values with the chosen kernel."""
    if resolve_kernel(q, k, kernel) == AttentionKernel.MATMUL:
        return _matmul_attention(q, k, v, mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
