"""Layer-wise learning-rate decay for BEiT-3 dense-prediction models (mmengine optimizer constructor).

BEiT / ViT-Adapter finetuning recipe: a trunk parameter at depth i (embeddings 0, layer k -> k + 1) gets
``lr * rate ** (L + 1 - i)``; everything new (adapter, pyramid, decode head) gets the full ``lr``. The
depth comes from the backbone itself (``MultiwayTransformer.layer_id``), so it follows our parameter
names (``backbone.beit3.layers.N...``) rather than guessing from name patterns. No weight decay on 1-D
tensors, biases, the backbone's ``no_weight_decay()`` names and any ``no_weight_decay_keys`` substring.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

from mmengine.logging import MMLogger
from mmengine.optim import DefaultOptimWrapperConstructor
from mmseg.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch import nn

from .vision_backbone import Beit3VisionTrunk

__all__ = ["Beit3LayerDecayOptimizerConstructor"]


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class Beit3LayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """``paramwise_cfg`` keys:

    * ``layer_decay_rate`` (float, default 1.0 = no decay);
    * ``no_weight_decay_keys`` (substrings of parameter names without weight decay, e.g. Mask2Former's
      ``query_embed``, ``query_feat``, ``level_embed``);
    * ``custom_keys`` ({substring: dict(lr_mult=..., decay_mult=...)}) applied on top, first match wins.
    """

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = "", **kwargs) -> None:
        backbone = getattr(module, "backbone", None)
        if not isinstance(backbone, Beit3VisionTrunk):
            raise TypeError(
                "Beit3LayerDecayOptimizerConstructor needs a segmentor whose backbone is a BEiT-3 trunk "
                f"(BEiT3ViTAdapter, BEiT3FeaturePyramid); got {type(backbone).__name__}")
        cfg = dict(self.paramwise_cfg)
        rate = float(cfg.get("layer_decay_rate", 1.0))
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"layer_decay_rate must be in (0, 1], got {rate}")
        no_decay_keys = tuple(cfg.get("no_weight_decay_keys", ()))
        custom_keys: Dict[str, dict] = dict(cfg.get("custom_keys", {}))
        max_id = backbone.depth + 1
        trunk_no_decay = {f"backbone.{n}" for n in backbone.no_weight_decay_names()}
        groups: Dict[Tuple, dict] = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            layer = backbone.layer_id(name[len("backbone."):]) if name.startswith("backbone.") else max_id
            no_decay = (param.ndim == 1 or name.endswith(".bias") or name in trunk_no_decay
                        or any(k in name for k in no_decay_keys))
            custom = next((k for k in sorted(custom_keys, key=len, reverse=True) if k in name), None)
            lr_mult = rate ** (max_id - layer) * custom_keys.get(custom, {}).get("lr_mult", 1.0)
            decay = 0.0 if no_decay else (self.base_wd or 0.0) * custom_keys.get(custom, {}).get("decay_mult", 1.0)
            key = (layer, no_decay, custom)
            if key not in groups:
                groups[key] = {"params": [], "param_names": [], "lr": self.base_lr * lr_mult,
                               "weight_decay": decay, "layer_id": layer, "lr_scale": lr_mult}
            groups[key]["params"].append(param)
            groups[key]["param_names"].append(name)
        params.extend(groups[k] for k in sorted(groups, key=lambda k: (k[0], k[1], k[2] or "")))
        logger = MMLogger.get_current_instance()
        lines = [f"layer {g['layer_id']:>3} lr x{g['lr_scale']:.4f} wd {g['weight_decay']:g}: "
                 f"{len(g['params'])} tensors" for g in params[-len(groups):]]
        logger.info(f"layer-wise lr decay {rate} over {max_id + 1} depths ({len(groups)} groups)\n"
                    + "\n".join(lines))
