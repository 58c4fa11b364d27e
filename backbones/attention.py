"""Which attention kernel runs: PyTorch's fused ``scaled_dot_product_attention`` or two matmuls around a softmax.

Which one is faster depends on the CPU family, the dtype and whether a backward pass follows: on an AMD EPYC
bf16 bmm+softmax+bmm ran about twice as fast as the fused kernel forward and backward at BEiT-3's lengths,
while on an Intel Xeon with AMX the fused kernel won bf16 *inference* (matmul at 0.34-0.89x) and lost
forward+backward; in fp32 the fused kernel was level or faster on both. ``auto`` therefore is

* the fused kernel on CUDA, while compiling / tracing, above ``MATMUL_MAX_SCORES`` (memory), and in fp32;
* the matmul path for bf16/fp16 training (a backward pass follows) on the CPU: faster on every CPU measured;
* for bf16/fp16 inference on the CPU, the one measured faster - timed once per *shape class* (grad mode,
  dtype, device, head dim, Lq*Lk and B*H in powers of two) at first use, on copies of the real inputs, and
  kept for the rest of the process (``kernel_choices()`` shows the table; ``python -m bench.attention_kernels``
  prints it beside the timings). Matmul must win by ``INFERENCE_MARGIN`` so noise does not flip near-ties.

Why training never depends on a measurement under ``auto``: the two kernels round differently, and a choice
that flips with machine load between the run that saved a checkpoint and the run that resumes it (or between
a run and its ``--eval-only`` twin in fp32) makes them compute different weights. So everything a training run
computes follows fixed rules; only reduced-precision inference, where either kernel can be 2x faster, is timed
(its outputs may differ between processes at bf16 rounding level). ``measured`` times every shape class,
training and fp32 included (matmul must then win by ``TRAINING_MARGIN`` in grad mode, as it keeps the
attention matrix): the fastest choice on an unknown CPU, at the price ``torch.backends.cudnn.benchmark`` asks
too - the arithmetic, hence a resumed run's weights, may then depend on the machine's load.

Both kernels take the same masks (boolean, True = may attend; or an additive float bias with -inf where
not allowed) and give the same result, including a query row with every key masked: all zeros, as SDPA
returns. Under bf16/fp16 the softmax kernel computes in fp32 and rounds once (the released implementation
casts to fp32 and back; the two differ in about 1 element in 10^5, by one bf16 rounding step), which saves
two copies of the attention matrix per call.
"""
from __future__ import annotations

import enum
import math
import threading
import time
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["AttentionKernel", "attend", "resolve_kernel", "MATMUL_MAX_SCORES", "kernel_choices",
           "clear_kernel_choices", "shape_class", "TRAINING_MARGIN", "INFERENCE_MARGIN"]

# Above this Lq * Lk the matmul path is never tried: the saved attention matrices grow large, and near 2000
# tokens the fused kernel was faster on every machine measured.
MATMUL_MAX_SCORES = 1100 * 1100
# matmul must be this much faster to be picked when a backward pass will follow (it keeps the matrix;
# ``measured`` only); for inference a smaller margin keeps timing noise from flipping near-ties
TRAINING_MARGIN = 0.9
INFERENCE_MARGIN = 0.97
REDUCED_PRECISION = (torch.bfloat16, torch.float16)
_REPEATS = 5


class AttentionKernel(str, enum.Enum):
    AUTO = "auto"        # fixed rules, and a measurement for reduced-precision inference (module docstring)
    MEASURED = "measured"  # the faster of the two, measured per shape class, training too (not reproducible)
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


def _sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor]) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


_RUN = {AttentionKernel.SDPA: _sdpa, AttentionKernel.MATMUL: _matmul_attention}

# shape class -> measured choice; filled at first use, read-only afterwards (one lock for the first writes)
_CHOICES: Dict[Tuple, AttentionKernel] = {}
_TIMES: Dict[Tuple, Tuple[float, float]] = {}
_LOCK = threading.Lock()


def _log2_bucket(n: int) -> int:
    return int(math.log2(max(1, n)))


def _training(q: Tensor, k: Tensor, v: Optional[Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v))


def shape_class(q: Tensor, k: Tensor, training: bool) -> Tuple:
    """The key a measured choice is kept under: (grad mode, dtype, device, head dim, log2 Lq*Lk, log2 B*H)."""
    batch_heads = q.numel() // max(1, q.shape[-1] * q.shape[-2])
    return ("train" if training else "infer", str(q.dtype).replace("torch.", ""), q.device.type, q.shape[-1],
            _log2_bucket(q.shape[-2] * k.shape[-2]), _log2_bucket(batch_heads))


def kernel_choices() -> Dict[Tuple, Tuple[str, float, float]]:
    """Shape class -> (chosen kernel, sdpa seconds, matmul seconds) measured so far in this process."""
    return {key: (_CHOICES[key].value, *_TIMES.get(key, (float("nan"), float("nan")))) for key in _CHOICES}


def clear_kernel_choices() -> None:
    """Forget the measurements (benchmarks and tests that change threads or want a fresh decision)."""
    with _LOCK:
        _CHOICES.clear()
        _TIMES.clear()


def _time_kernel(kernel: AttentionKernel, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor],
                 training: bool) -> None:
    run = _RUN[kernel]
    if training:
        with torch.enable_grad():
            q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
            out = run(q, k, v, mask)
            torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    else:
        with torch.no_grad():
            run(q, k, v, mask)


def _measure(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], training: bool) -> Tuple[float, float]:
    """(sdpa, matmul) best-of-``_REPEATS`` seconds on detached copies, the two kernels interleaved after a warm-up."""
    q, k, v = q.detach(), k.detach(), v.detach()
    mask = mask.detach() if mask is not None else None
    best = {AttentionKernel.SDPA: float("inf"), AttentionKernel.MATMUL: float("inf")}
    for kernel in best:  # warm-up (allocator, one-time kernel setup)
        _time_kernel(kernel, q, k, v, mask, training)
    for _ in range(_REPEATS):
        for kernel in best:
            start = time.perf_counter()
            _time_kernel(kernel, q, k, v, mask, training)
            best[kernel] = min(best[kernel], time.perf_counter() - start)
    return best[AttentionKernel.SDPA], best[AttentionKernel.MATMUL]


def _measure_isolated(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], training: bool
                      ) -> Tuple[float, float]:
    """:func:`_measure` on a fresh thread. Autograd's saved-tensor hooks are thread-local: the first call
    may come from inside activation checkpointing, whose hooks would count the timing runs' saved tensors as
    the layer's, and the recompute (which finds the choice cached) would then save fewer and fail."""
    result: Dict[str, Tuple[float, float]] = {}
    errors: list = []

    def target() -> None:
        try:
            result["times"] = _measure(q, k, v, mask, training)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
            errors.append(exc)

    worker = threading.Thread(target=target, name="attention-kernel-timing")
    worker.start()
    worker.join()
    if errors:
        raise errors[0]
    return result["times"]


def _static_choice() -> bool:
    """True where timing is impossible or meaningless: compiling, scripting, tracing."""
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and getattr(compiler, "is_compiling", lambda: False)():
        return True
    return torch.jit.is_scripting() or torch.jit.is_tracing()


def resolve_kernel(q: Tensor, k: Tensor, kernel: AttentionKernel = AttentionKernel.AUTO, v: Optional[Tensor] = None,
                   mask: Optional[Tensor] = None) -> AttentionKernel:
    """The kernel ``attend`` runs for these inputs: ``sdpa`` / ``matmul`` are kept; ``auto`` and ``measured``
    follow the rules of the module docstring."""
    kernel = AttentionKernel(kernel)
    if kernel in (AttentionKernel.SDPA, AttentionKernel.MATMUL):
        return kernel
    if q.device.type != "cpu" or q.shape[-2] * k.shape[-2] > MATMUL_MAX_SCORES or _static_choice():
        return AttentionKernel.SDPA
    training = _training(q, k, v)
    if kernel == AttentionKernel.AUTO:  # fixed rules wherever the result feeds training or fp32 numbers
        if q.dtype not in REDUCED_PRECISION:
            return AttentionKernel.SDPA
        if training:
            return AttentionKernel.MATMUL
    key = shape_class(q, k, training)
    choice = _CHOICES.get(key)
    if choice is None:
        sdpa_s, matmul_s = _measure_isolated(q, k, k if v is None else v, mask, training)
        margin = TRAINING_MARGIN if training else INFERENCE_MARGIN
        choice = AttentionKernel.MATMUL if matmul_s < margin * sdpa_s else AttentionKernel.SDPA
        with _LOCK:
            _CHOICES.setdefault(key, choice)
            _TIMES.setdefault(key, (sdpa_s, matmul_s))
        choice = _CHOICES[key]
    return choice


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor] = None,
           kernel: AttentionKernel = AttentionKernel.AUTO) -> Tensor:
    """Multi-head attention of (B, H, Lq, D) queries over (B, H, Lk, D) keys/values with the chosen kernel."""
    return _RUN[resolve_kernel(q, k, kernel, v, mask)](q, k, v, mask)
