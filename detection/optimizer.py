"""detectron2 optimizer for BEiT-3 / VLMo detectors: the backbone's parameter groups, translated.

The groups (layer-wise lr decay by the backbone's own depth rule, no weight decay on norms, biases,
positions and tokens) come from :func:`beit3_plugins.backbones.param_groups_layer_decay`, the one rule every
trainer of this project uses; this module only turns ``lr_scale`` into detectron2's per-group ``lr`` and
applies ``SOLVER.OPTIMIZER`` / gradient clipping. Everything outside the backbone (``BACKBONE_PREFIX``: pyramid,
RPN, ROI heads) counts as head: full lr.
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch
from torch import nn

from detectron2.solver.build import maybe_add_gradient_clipping

from beit3_plugins.backbones import param_groups_layer_decay

from .backbone import BACKBONE_PREFIX

__all__ = ["beit3_optimizer_params", "build_beit3_optimizer"]


def beit3_optimizer_params(model: nn.Module, base_lr: float, weight_decay: float, layer_decay: float
                           ) -> List[Dict[str, Any]]:
    """Parameter groups with detectron2's absolute ``lr`` (``base_lr * lr_scale``) per group."""
    model = getattr(model, "module", model)  # DDP
    groups = param_groups_layer_decay(model, weight_decay, layer_decay, backbone_prefix=BACKBONE_PREFIX)
    return [dict(group, lr=base_lr * group["lr_scale"]) for group in groups]


def build_beit3_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """``SOLVER.OPTIMIZER`` AdamW (ViTDet / BEiT-3 recipe) or SGD, with ``SOLVER.LAYER_DECAY``."""
    params = beit3_optimizer_params(model, cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY, cfg.SOLVER.LAYER_DECAY)
    name = cfg.SOLVER.OPTIMIZER.lower()
    if name == "adamw":
        cls, kwargs = torch.optim.AdamW, dict(lr=cfg.SOLVER.BASE_LR, betas=tuple(cfg.SOLVER.BETAS))
    elif name == "sgd":
        cls, kwargs = torch.optim.SGD, dict(lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM,
                                            nesterov=cfg.SOLVER.NESTEROV)
    else:
        raise ValueError(f"SOLVER.OPTIMIZER must be AdamW or SGD, got {cfg.SOLVER.OPTIMIZER!r}")
    return maybe_add_gradient_clipping(cfg, cls)(params, **kwargs)
