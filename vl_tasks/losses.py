"""Losses of the BEiT-3 task recipes.

* :func:`soft_bce` - VQA: binary cross-entropy against soft answer scores, times the number of answers
  (the reference multiplies the mean BCE by ``num_labels``).
* :class:`ContrastiveLoss` - CLIP-style symmetric InfoNCE; with several processes every rank's
  embeddings are gathered (with gradients) so each rank sees the global batch as negatives.
* :func:`label_smoothed_ce` - captioning's masked-token loss with label smoothing.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["soft_bce", "ContrastiveLoss", "gather_with_grad", "label_smoothed_ce"]


def soft_bce(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean BCE-with-logits over all answers x number of answers (= summed over answers, mean over batch)."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="mean") * targets.shape[1]


def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1


def gather_with_grad(x: Tensor) -> Tuple[Tensor, int]:
    """All ranks' ``x`` concatenated (gradients flow back to every rank) and this rank's offset."""
    if not _dist_ready():
        return x, 0
    from torch.distributed.nn.functional import all_gather

    parts = all_gather(x)
    rank = torch.distributed.get_rank()
    return torch.cat(parts, 0), rank * x.shape[0]


class ContrastiveLoss:
    """Symmetric image-text InfoNCE over the batch gathered from all ranks (equal batch per rank)."""

    def __call__(self, image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor) -> Tuple[Tensor, Tensor]:
        all_img, offset = gather_with_grad(image_emb)
        all_txt, _ = gather_with_grad(text_emb)
        scale = logit_scale.exp().clamp(max=100.0)
        logits_i2t = scale * image_emb @ all_txt.t()
        logits_t2i = scale * text_emb @ all_img.t()
        target = torch.arange(image_emb.shape[0], device=image_emb.device) + offset
        loss = (F.cross_entropy(logits_i2t, target) + F.cross_entropy(logits_t2i, target)) / 2
        return loss, logits_i2t


def label_smoothed_ce(logits: Tensor, target: Tensor, smoothing: float) -> Tensor:
    """Cross-entropy with uniform label smoothing ``smoothing`` (0 = plain CE); mean over tokens."""
    if target.numel() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), target, label_smoothing=smoothing)
