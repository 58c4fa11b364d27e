"""What one benchmark run measures (:class:`Setting`, the full and the ``--smoke`` sizes), one timed
row of the report (:class:`Row`), and the equality check every output passes before it is timed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional



@dataclass
class Setting:
    config: str = "beit3_base"
    img_size: int = 224
    text_len: int = 32
    batches: tuple = (1, 8)
    repeats: int = 5
    fp32_tol: float = 2e-3       # max |ours - reference| on LayerNorm-ed outputs (O(1) values), 12 fp32 layers
    bf16_tol: float = 0.1        # relative to the output's std, bf16 autocast on both sides
    gen_tokens: int = 20
    gen_batch: int = 1
    retrieval_sizes: tuple = (1000, 4000, 16000)
    retrieval_full_max: int = 4000   # the all-pairs evaluation needs N^2 * 12 bytes: skipped above this
    # activation checkpointing saves activations, not weight gradients: at batch 8 the gradients of a base
    # model dominate the peak, at 32 the activations do (the regime checkpointing is used for)
    memory_batches: tuple = (8, 32)
    compile: bool = False        # opt-in (--compile): inductor takes minutes per case on 2 cores
    profile: bool = True
    in_process: bool = False     # memory / retrieval in this process (smoke only: peak RSS is then polluted)
    threads: Optional[int] = None  # None: torch's default (all cores)


SMOKE = Setting(config="beit3_tiny", img_size=64, text_len=8, batches=(2,), repeats=2, fp32_tol=1e-4,
                gen_tokens=4, gen_batch=2, retrieval_sizes=(64, 256), retrieval_full_max=256, memory_batches=(2,),
                compile=False, profile=False, in_process=True, threads=1)


@dataclass
class Row:
    case: str
    batch: int
    dtype: str
    seconds: Dict[str, float]            # implementation -> median seconds per call
    max_diff: Dict[str, float] = field(default_factory=dict)
    flops: Optional[float] = None        # of ours, per call
    note: str = ""

    def ratio(self, ref: str, ours: str = "ours") -> Optional[float]:
        """Speed-up of ours over a reference (reference time / our time): > 1 means ours is faster."""
        if ref not in self.seconds or ours not in self.seconds:
            return None
        return self.seconds[ref] / self.seconds[ours]


class MismatchError(AssertionError):
    pass


def check(name: str, diff: float, tol: float) -> float:
    if not diff <= tol:
        raise MismatchError(f"{name}: outputs differ by {diff:.3g} (tolerance {tol:.3g})")
    return diff
