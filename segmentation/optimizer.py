"""mmengine optimizer constructor for BEiT-3 / VLMo dense-prediction models: the backbone's groups, translated.

Layer-wise lr decay and the no-weight-decay rule come from the backbone's one parameter-group rule
(:func:`beit3_plugins.backbones.layer_decay_settings`: trunk depth i gets ``lr * rate ** (L + 1 - i)``,
everything new — adapter, pyramid, decode head — the full ``lr``; no weight decay on 1-D tensors, biases,
the backbone's ``no_weight_decay()`` names and any ``no_weight_decay_keys`` substring). This constructor only
adds mmengine's ``custom_keys`` on top and writes mmengine's groups.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

from mmengine.logging import MMLogger
from mmengine.optim import DefaultOptimWrapperConstructor
from mmseg.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch import nn

from beit3_plugins.backbones import layer_decay_settings

from .vision_backbone import BACKBONE_PREFIX, Beit3VisionTrunk

__all__ = ["Beit3LayerDecayOptimizerConstructor"]


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class Beit3LayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """``paramwise_cfg`` keys:

    * ``layer_decay_rate`` (float, default 1.0 = no decay);
    * ``no_weight_decay_keys`` (substrings of parameter names without weight decay, e.g. Mask2Former's
      ``query_embed``, ``query_feat``, ``level_embed``);
    * ``custom_keys`` ({substring: dict(lr_mult=..., decay_mult=...)}) applied on top, longest match wins.
    """

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = "", **kwargs) -> None:
        backbone = getattr(module, "backbone", None)
        if not isinstance(backbone, Beit3VisionTrunk):
            raise TypeError(
                "Beit3LayerDecayOptimizerConstructor needs a segmentor whose backbone is a BEiT-3 trunk "
                f"(BEiT3ViTAdapter, BEiT3FeaturePyramid); got {type(backbone).__name__}")
        cfg = dict(self.paramwise_cfg)
        rate = float(cfg.get("layer_decay_rate", 1.0))
        custom_keys: Dict[str, dict] = dict(cfg.get("custom_keys", {}))
        by_length = sorted(custom_keys, key=len, reverse=True)
        settings = layer_decay_settings(module, rate, backbone_prefix=BACKBONE_PREFIX,
                                        no_weight_decay_keys=tuple(cfg.get("no_weight_decay_keys", ())))
        groups: Dict[Tuple, dict] = {}
        for s in settings:
            custom = next((k for k in by_length if k in s.name), None)
            extra = custom_keys.get(custom, {})
            lr_mult = s.lr_scale * extra.get("lr_mult", 1.0)
            decay = 0.0 if s.no_weight_decay else (self.base_wd or 0.0) * extra.get("decay_mult", 1.0)
            key = (s.layer_id, s.no_weight_decay, custom or "")
            group = groups.setdefault(key, {"params": [], "param_names": [], "lr": self.base_lr * lr_mult,
                                            "weight_decay": decay, "layer_id": s.layer_id, "lr_scale": lr_mult})
            group["params"].append(s.param)
            group["param_names"].append(s.name)
        params.extend(groups[k] for k in sorted(groups))
        lines = [f"layer {g['layer_id']:>3} lr x{g['lr_scale']:.4f} wd {g['weight_decay']:g}: "
                 f"{len(g['params'])} tensors" for g in params[-len(groups):]]
        MMLogger.get_current_instance().info(
            f"layer-wise lr decay {rate} over {backbone.depth + 2} depths ({len(groups)} groups)\n" + "\n".join(lines))
