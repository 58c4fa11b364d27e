"""Mixed precision: bf16/fp16 autocast where the device supports it and the fp16 gradient scaler."""
from __future__ import annotations

import contextlib
from typing import Any, Optional, Tuple

import torch

__all__ = ["autocast_and_scaler"]


def autocast_and_scaler(amp: str, device: torch.device) -> Tuple[Any, Optional[torch.amp.GradScaler]]:
    """``auto`` = bf16 on capable CUDA, off on CPU; fp16 also returns a GradScaler."""
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "off"
    if amp == "off":
        return contextlib.nullcontext(), None
    if amp not in ("bf16", "fp16"):
        raise ValueError(f"train.amp must be auto, bf16, fp16 or off, got {amp!r}")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
    return torch.autocast(device_type=device.type, dtype=dtype), scaler
