"""Process-group setup from torchrun's environment (gloo on CPU, nccl on CUDA) and the device of a rank."""
from __future__ import annotations

import datetime
import os

import torch

__all__ = ["DistContext", "resolve_device"]


class DistContext:
    """World size / rank from ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK``; single-process when unset."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1

    def init(self, device: torch.device) -> None:
        if self.enabled and not torch.distributed.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=10))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def any_true(self, flag: bool, device: torch.device) -> bool:
        """``flag`` of any rank, so every rank takes the same branch (a skipped step must skip everywhere,
        or DDP's gradient all-reduce would wait for the rank that skipped)."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return bool(value.item() > 0)


def resolve_device(spec: str, dist: DistContext) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda":
        return torch.device("cuda", dist.local_rank)
    return torch.device(spec)
