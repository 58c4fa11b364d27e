"""Optimizer parameter groups and the lr schedule of the BEiT-3 fine-tuning recipes.

Layer-wise lr decay: a backbone parameter at depth ``i`` (embeddings 0, layer k -> k + 1, rest L + 1,
see ``MultiwayTransformer.layer_id``) gets ``lr * decay ** (L + 1 - i)``; task-head parameters get
``lr * head_lr_mult`` (``--task_head_lr_weight`` of the reference). No weight decay on 1-D parameters,
biases, position tables, the [CLS]/[MASK] tokens and the contrastive temperature.
Schedule: linear warm-up then cosine decay to ``min_lr``, evaluated per optimizer step.
"""
from __future__ import annotations

import math
from typing import Dict, List

from torch import nn

from beit3_plugins.backbones.multiway import no_weight_decay_names

__all__ = ["param_groups", "lr_at_step"]

_NO_DECAY_NAMES = ("logit_scale",)


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float, head_lr_mult: float = 1.0
                 ) -> List[Dict]:
    """AdamW groups; each carries ``lr_scale`` which the schedule multiplies into the base lr.

    ``model`` must have a ``backbone`` attribute (a MultiwayTransformer); everything else is task head.
    """
    backbone = model.backbone
    num_layers = len(backbone.layers)
    no_decay = no_weight_decay_names(model)
    groups: Dict[str, Dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith("backbone."):
            local = name[len("backbone."):]
            layer = backbone.layer_id(local)
            scale = layer_decay ** (num_layers + 1 - layer)
            no_wd = name in no_decay
            key = f"layer{layer}_{'no_decay' if no_wd else 'decay'}"
        else:
            scale = head_lr_mult
            no_wd = name in no_decay or name.endswith(_NO_DECAY_NAMES)
            key = f"head_{'no_decay' if no_wd else 'decay'}"
        group = groups.setdefault(key, {"params": [], "param_names": [], "lr_scale": scale,
                                        "weight_decay": 0.0 if no_wd else weight_decay})
        group["params"].append(param)
        group["param_names"].append(name)
    return list(groups.values())


def lr_at_step(step: int, total_steps: int, warmup_steps: int, lr: float, min_lr: float) -> float:
    """Linear warm-up from 0 to ``lr`` over ``warmup_steps``, then cosine to ``min_lr`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))
