"""Process-wide CPU settings for training and benchmarking. Opt-in: importing the library never changes them.

glibc's malloc serves large blocks with ``mmap`` and hands them back on ``free``; the next large tensor then
starts on untouched pages, and the kernel faults in and zeroes every 4 KiB page on first write. A training
step allocates hundreds of 1-20 MB activations and gradients, so on CPU this costs a lot: in a base-size
BEiT-3 training step at batch 1, GEMMs writing into fresh buffers ran 1.5-3x slower than the same GEMMs
writing into reused memory, and the whole step took 1.2 s instead of 0.8 s (docs/benchmarks.md). Keeping
blocks below 32 MiB on the heap and not trimming it back makes memory get reused. PyTorch's own
``torch.backends.xeon.run_cpu`` launcher gets the same effect by preloading jemalloc or tcmalloc, which are
often not installed (they were not on the machine these numbers come from); ``mallopt`` needs nothing.

The cost: the process keeps freed memory (its resident size does not shrink back after a peak).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass
from typing import Optional

__all__ = ["MallocTuning", "tune_malloc", "malloc_tuning_requested", "tune_malloc_unless_disabled"]

# mallopt parameter numbers from glibc's malloc.h
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


@dataclass(frozen=True)
class MallocTuning:
    mmap_threshold: int = 32 * 2 ** 20      # glibc's maximum: smaller blocks come from the (reused) heap
    trim_threshold: int = 2 ** 31 - 1       # never give the heap's top back to the system
    top_pad: int = 512 * 2 ** 20            # grow the heap in large steps


def _glibc() -> Optional[ctypes.CDLL]:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # only glibc has this (musl, macOS and Windows do not)
        return libc
    except (OSError, AttributeError):
        return None


def tune_malloc(tuning: MallocTuning = MallocTuning()) -> bool:
    """Apply ``tuning`` to this process's glibc malloc. Returns False (and changes nothing) without glibc."""
    libc = _glibc()
    if libc is None:
        return False
    return all(libc.mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, tuning.mmap_threshold), (_M_TRIM_THRESHOLD, tuning.trim_threshold),
        (_M_TOP_PAD, tuning.top_pad)))


def malloc_tuning_requested(default: bool = True) -> bool:
    """Whether an entry point should call :func:`tune_malloc`: ``BEIT3_MALLOC_TUNING=0`` turns it off."""
    value = os.environ.get("BEIT3_MALLOC_TUNING")
    if value is None:
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


def tune_malloc_unless_disabled() -> bool:
    """What our training entry points call first: :func:`tune_malloc` unless ``BEIT3_MALLOC_TUNING=0``."""
    return tune_malloc() if malloc_tuning_requested() else False
