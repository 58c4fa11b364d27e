"""Optimizer parameter groups and the lr schedule of the BEiT-3 fine-tuning recipes.

The groups come from the backbone's one rule (:func:`beit3_plugins.backbones.param_groups_layer_decay`:
layer-wise lr decay ``decay ** (L + 1 - depth)``, no weight decay on 1-D tensors, biases, position tables,
[CLS]/[MASK] tokens and the contrastive temperature); task-head parameters get ``lr * head_lr_mult``
(``--task_head_lr_weight`` of the reference). Schedule: linear warm-up then cosine decay to ``min_lr``,
evaluated per optimizer step.
"""
from __future__ import annotations

import math
from typing import Dict, List

from torch import nn

from beit3_plugins.backbones import param_groups_layer_decay

from .base import BACKBONE_PREFIX

__all__ = ["param_groups", "lr_at_step"]


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float, head_lr_mult: float = 1.0
                 ) -> List[Dict]:
    """AdamW groups; each carries ``lr_scale`` which the schedule multiplies into the base lr.

    ``model`` must have a ``backbone`` attribute (a MultiwayTransformer); everything else is task head.
    """
    return param_groups_layer_decay(model, weight_decay, layer_decay, backbone_prefix=BACKBONE_PREFIX,
                                    head_lr_scale=head_lr_mult)


def lr_at_step(step: int, total_steps: int, warmup_steps: int, lr: float, min_lr: float) -> float:
    """Linear warm-up from 0 to ``lr`` over ``warmup_steps``, then cosine to ``min_lr`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))
