"""Optimizer parameter groups for every trainer: layer-wise lr decay and the no-weight-decay rule, once.

Recipe of BEiT / BEiT-3 / VLMo / ViT-Adapter / ViTDet fine-tuning: a backbone parameter at depth ``i``
(embeddings 0, layer k -> k + 1, the rest L + 1; :meth:`MultiwayTransformer.layer_id`) gets
``lr * decay ** (L + 1 - i)``; everything outside the backbone (task heads, pyramids, adapters) gets
``lr * head_lr_scale``. No weight decay on 1-D and scalar tensors (norm weights, biases, temperatures such
as ``logit_scale``), any ``.bias``, the backbone's ``no_weight_decay()`` list (tokens, position tables) and
names containing one of ``no_weight_decay_keys``. Structure after timm's ``optim._param_groups.
param_groups_layer_decay``, which takes the depth from each model's own matcher in the same way.

Adapters translate the groups (``lr_scale`` times the framework's base lr) and add their own knobs on top
(mmengine's ``custom_keys``); they never re-derive depths or decay rules.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Iterable, List, Set, Tuple

from torch import nn

from .multiway import MultiwayTransformer

__all__ = ["ParamSetting", "backbone_at", "no_weight_decay_names", "layer_decay_settings", "param_groups_layer_decay"]


def backbone_at(model: nn.Module, prefix: str) -> nn.Module:
    """The Multiway backbone that an adapter's ``BACKBONE_PREFIX`` says sits at ``prefix`` in ``model``.

    Raises naming where the backbone does sit, so an attribute renamed without its prefix fails here instead
    of quietly putting the backbone in the head groups or loading nothing."""
    try:
        found = model.get_submodule(prefix[:-1]) if prefix else model
    except AttributeError:
        found = None
    if isinstance(found, MultiwayTransformer):
        return found
    actual = [name + "." for name, m in model.named_modules() if isinstance(m, MultiwayTransformer)]
    raise ValueError(f"no BEiT-3 backbone at {prefix!r} in {type(model).__name__}; it sits at {actual or 'none'}: "
                     "an adapter attribute renamed without its BACKBONE_PREFIX?")


def no_weight_decay_names(model: nn.Module, backbone_prefix: str = "backbone.",
                          no_weight_decay_keys: Iterable[str] = ()) -> Set[str]:
    """Parameters of ``model`` (a backbone at ``backbone_prefix`` plus heads) excluded from weight decay."""
    backbone = backbone_at(model, backbone_prefix)
    listed = {backbone_prefix + n for n in backbone.no_weight_decay()}
    keys = tuple(no_weight_decay_keys)
    return {n for n, p in model.named_parameters()
            if p.ndim <= 1 or n.endswith(".bias") or n in listed or any(k in n for k in keys)}


@dataclasses.dataclass(frozen=True)
class ParamSetting:
    """How one trainable parameter is optimised."""

    name: str
    param: nn.Parameter
    layer_id: int
    lr_scale: float
    no_weight_decay: bool


def layer_decay_settings(model: nn.Module, layer_decay: float, backbone_prefix: str = "backbone.",
                         no_weight_decay_keys: Iterable[str] = (), head_lr_scale: float = 1.0
                         ) -> List[ParamSetting]:
    """Per trainable parameter of ``model``: depth, lr scale and whether it is exempt from weight decay.

    ``backbone_prefix`` locates the Multiway backbone inside ``model`` (the adapter's ``BACKBONE_PREFIX``).
    """
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer decay must be in (0, 1], got {layer_decay}")
    backbone = backbone_at(model, backbone_prefix)
    max_id = backbone.cfg.depth + 1
    no_decay = no_weight_decay_names(model, backbone_prefix, no_weight_decay_keys)
    settings = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith(backbone_prefix):
            layer = backbone.layer_id(name[len(backbone_prefix):])
            scale = layer_decay ** (max_id - layer)
        else:
            layer, scale = max_id, head_lr_scale
        settings.append(ParamSetting(name, param, layer, scale, name in no_decay))
    return settings


def param_groups_layer_decay(model: nn.Module, weight_decay: float, layer_decay: float,
                             backbone_prefix: str = "backbone.", no_weight_decay_keys: Iterable[str] = (),
                             head_lr_scale: float = 1.0) -> List[Dict]:
    """torch optimizer groups, one per (depth, decay / no decay, backbone / head): each has ``params``,
    ``param_names``, ``lr_scale`` (multiply into the base lr), ``weight_decay`` and ``layer_id``."""
    groups: Dict[Tuple, Dict] = {}
    for s in layer_decay_settings(model, layer_decay, backbone_prefix, no_weight_decay_keys, head_lr_scale):
        in_backbone = s.name.startswith(backbone_prefix)
        key = (s.layer_id, in_backbone, s.no_weight_decay)
        group = groups.setdefault(key, {
            "params": [], "param_names": [], "lr_scale": s.lr_scale, "layer_id": s.layer_id,
            "weight_decay": 0.0 if s.no_weight_decay else weight_decay,
            "group_name": f"{'layer' if in_backbone else 'head'}{s.layer_id}_"
                          f"{'no_decay' if s.no_weight_decay else 'decay'}"})
        group["params"].append(s.param)
        group["param_names"].append(s.name)
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0], not k[1], k[2]))]
