"""Layer-wise lr decay that understands our parameter names, on top of detectron2's parameter grouping.

detectron2's ``get_vit_lr_decay_rate`` matches its own ViT names (``blocks.N``, ``pos_embed``); ours are
``backbone.net.beit3.layers.N.*`` / ``patch_embed`` / ``vision_pos_embed`` / ``cls_token``. The depth of a
parameter comes from the backbone itself (``MultiwayTransformer.layer_id``): embeddings 0, layer i -> i + 1,
the rest (final norm, pyramid, RPN, ROI heads) L + 1, i.e. scale decay^(L + 1 - depth).
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch
from torch import nn

from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

__all__ = ["BACKBONE_PREFIX", "find_beit3", "beit3_lr_decay_rate", "beit3_optimizer_params", "build_beit3_optimizer"]

BACKBONE_PREFIX = "backbone.net.beit3."


def find_beit3(model: nn.Module):
    """The Multiway backbone inside a detector (unwrapping DDP), or None."""
    model = getattr(model, "module", model)
    try:
        return model.get_submodule(BACKBONE_PREFIX[:-1])
    except AttributeError:
        return None


def beit3_lr_decay_rate(name: str, beit3, decay: float) -> float:
    """lr scale of the detector parameter ``name`` (a full name, e.g. ``backbone.net.beit3.layers.3.ffn...``)."""
    num_layers = len(beit3.layers)
    name = name[len("module."):] if name.startswith("module.") else name
    if name.startswith(BACKBONE_PREFIX):
        layer_id = beit3.layer_id(name[len(BACKBONE_PREFIX):])
    else:
        layer_id = num_layers + 1
    return decay ** (num_layers + 1 - layer_id)


def beit3_optimizer_params(model: nn.Module, base_lr: float, weight_decay: float, layer_decay: float
                           ) -> List[Dict[str, Any]]:
    """Parameter groups: lr scaled by layer depth; no weight decay on norms, biases, positions, [CLS]."""
    beit3 = find_beit3(model)
    if beit3 is None:
        raise ValueError(f"no BEiT-3 backbone at {BACKBONE_PREFIX[:-1]!r}: is MODEL.BACKBONE.NAME "
                         "build_beit3_vitdet_backbone?")
    no_decay = {name: {"weight_decay": 0.0} for name in beit3.no_weight_decay()}
    return get_default_optimizer_params(
        model, base_lr=base_lr, weight_decay=weight_decay, weight_decay_norm=0.0, weight_decay_bias=0.0,
        lr_factor_func=lambda name: beit3_lr_decay_rate(name, beit3, layer_decay), overrides=no_decay)


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
