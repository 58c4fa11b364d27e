"""Batches for evaluation: moving a batch to the device, and iterating a dataset in order (shared by the
trainer and the tasks' ``evaluate``; the training loop itself is ``engine/loop.py``)."""
from __future__ import annotations

from typing import Any, Dict, Iterator

import torch
from torch import Tensor

__all__ = ["to_device", "iterate_eval"]


def to_device(batch: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v) for k, v in batch.items()}


def iterate_eval(task, dataset, device: torch.device, batch_size: int = 0, num_workers: int = 0
                 ) -> Iterator[Dict[str, Any]]:
    """Batches of ``dataset`` in order (no shuffling, no augmentation), on ``device``."""
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size or task.cfg.eval_batch_size, shuffle=False, num_workers=num_workers,
        collate_fn=lambda items: task.collate(items, train=False))
    batches = loader
    if getattr(task, "progress", False):   # the trainer's eval-only runs (and the benchmark cells) show one bar
        from tqdm.auto import tqdm

        batches = tqdm(loader, desc=f"evaluating {type(task).__name__}", dynamic_ncols=True, leave=False)
    for batch in batches:
        yield to_device(batch, device)
