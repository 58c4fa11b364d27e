"""Attention kernels side by side: torch's fused ``scaled_dot_product_attention`` against the matmul path
(``backbones.attention``), forward and forward+backward, fp32 and bf16, at the sequence lengths BEiT-3 meets.

What ``attention_kernel="auto"`` decides on this machine: fixed rules for training and fp32, a one-time
measurement per shape class for bf16 inference, so the table shows its pick for inference and for training
beside the timings (``python -m bench.attention_kernels`` prints it; ``bench.run_all`` puts it in the
report). Outputs and gradients are checked equal before timing.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple

import torch

from beit3_plugins.backbones.attention import AttentionKernel, attend, clear_kernel_choices, resolve_kernel
from bench.common import interleaved_times, max_abs_diff, median

# (batch, tokens): a fused base-size sequence at 224 px (197 + 32) at batch 1 and 8, 384 px (577), 512 px
# (1025) and a long one where the fused kernel wins again
SHAPES = ((1, 229), (8, 229), (2, 577), (1, 1025), (1, 2049))
SMOKE_SHAPES = ((2, 20),)


@dataclass
class KernelRow:
    batch: int
    tokens: int
    dtype: str
    sdpa_fwd: float
    matmul_fwd: float
    sdpa_train: float
    matmul_train: float
    auto_inference: str   # what attention_kernel="auto" picks here without grad
    auto_training: str    # ... and when a backward pass follows

    def cells(self) -> List[str]:
        ms = lambda x: f"{x * 1000:.1f} ms"  # noqa: E731
        return [str(self.batch), str(self.tokens), self.dtype, ms(self.sdpa_fwd), ms(self.matmul_fwd),
                f"{self.sdpa_fwd / self.matmul_fwd:.2f}x", ms(self.sdpa_train), ms(self.matmul_train),
                f"{self.sdpa_train / self.matmul_train:.2f}x", self.auto_inference, self.auto_training]


def measure(shapes: Sequence[Tuple[int, int]] = SHAPES, heads: int = 12, head_dim: int = 64,
            repeats: int = 5) -> List[KernelRow]:
    rows = []
    gen = torch.Generator().manual_seed(0)
    for batch, tokens in shapes:
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            q, k, v = (torch.randn(batch, heads, tokens, head_dim, generator=gen).to(dtype).requires_grad_()
                       for _ in range(3))
            # keys padded away for the second half of the batch, as text padding does
            allowed = torch.ones(batch, 1, 1, tokens, dtype=torch.bool)
            allowed[batch // 2:, ..., tokens - tokens // 8:] = False
            grad = torch.randn(batch, heads, tokens, head_dim, generator=gen).to(dtype)
            outs = {}
            for kernel in (AttentionKernel.SDPA, AttentionKernel.MATMUL):
                out = attend(q, k, v, allowed, kernel)
                outs[kernel] = (out.detach().float(), *(g.float() for g in torch.autograd.grad(out, (q, k, v), grad)))
            tol = 1e-4 if dtype == torch.float32 else 5e-2
            for a, b in zip(outs[AttentionKernel.SDPA], outs[AttentionKernel.MATMUL]):
                if not max_abs_diff(a, b) <= tol * max(1.0, float(a.abs().max())):
                    raise AssertionError(f"kernels differ at batch {batch}, {tokens} tokens, {name}")

            def forward(kernel):
                def run():
                    with torch.no_grad():
                        attend(q, k, v, allowed, kernel)
                return run

            def train(kernel):
                def run():
                    torch.autograd.grad(attend(q, k, v, allowed, kernel), (q, k, v), grad)
                return run

            fwd = interleaved_times({k: forward(k) for k in (AttentionKernel.SDPA, AttentionKernel.MATMUL)}, repeats)
            trn = interleaved_times({k: train(k) for k in (AttentionKernel.SDPA, AttentionKernel.MATMUL)}, repeats)
            clear_kernel_choices()  # auto's own first-use measurement, as a fresh process makes it
            with torch.no_grad():
                auto_infer = resolve_kernel(q, k, v=v, mask=allowed).value
            auto_train = resolve_kernel(q, k, v=v, mask=allowed).value
            rows.append(KernelRow(batch, tokens, name, median(fwd[AttentionKernel.SDPA]),
                                  median(fwd[AttentionKernel.MATMUL]), median(trn[AttentionKernel.SDPA]),
                                  median(trn[AttentionKernel.MATMUL]), auto_infer, auto_train))
    return rows


def table(rows: Sequence[KernelRow], heads: int = 12, head_dim: int = 64) -> str:
    head = ["batch", "tokens", "dtype", "sdpa fwd", "matmul fwd", "matmul speed-up", "sdpa fwd+bwd",
            "matmul fwd+bwd", "matmul speed-up", "auto: inference", "auto: training"]
    lines = [f"{heads} heads of {head_dim}; the second half of each batch has its last eighth of keys masked; "
             "medians, the two kernels interleaved.", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def machine() -> str:
    """CPU model name (the kernel choice depends on the CPU family)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    print(f"CPU: {machine()}; torch {torch.__version__}; {torch.get_num_threads()} threads\n")
    print(table(measure()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
