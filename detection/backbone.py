"""BEiT-3's vision path as a ViTDet backbone for detectron2.

Paper: "Exploring Plain Vision Transformer Backbones for Object Detection" (ViTDet, Li et al., 2022), as
used by "Image as a Foreign Language" (BEiT-3, Wang et al., 2022) for COCO detection.

The Multiway Transformer is built through our ``BACKBONES`` registry, pruned to its vision path
(``prune_to_vision``: a detector never routes tokens to the text / vision-language experts, and DDP would
complain about unused parameters) and run layer by layer through the backbone's own ``run_vision_layer``:
most layers see non-overlapping windows of the patch grid, a few see the whole image (global attention).
The backbone adds whatever position bias it has for that window or grid, so VLMo (relative position bias)
works as BEiT-3 does. The [CLS] token is dropped after the embedding (a dense predictor has no use for it;
ViTDet does the same with its pretrained [CLS] position). The single stride-``patch`` map feeds
detectron2's own ``SimpleFeaturePyramid``. This module only translates: window partitioning (detectron2's
helpers) and the yacs / LazyConfig spec.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, fields
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, SimpleFeaturePyramid
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.backbone.utils import window_partition, window_unpartition

from beit3_plugins.backbones import MultiwayTransformer, Routing, load_pretrained
from beit3_plugins.checkpoint import LoadReport
from beit3_plugins.registry import BACKBONES

logger = logging.getLogger(__name__)

__all__ = ["BACKBONE_PREFIX", "Beit3ViTDet", "build_beit3_vitdet_backbone", "default_global_attn_indexes"]

# Where a detector built here keeps the Multiway backbone: GeneralizedRCNN.backbone (SimpleFeaturePyramid)
# .net (Beit3ViTDet) .beit3; read by the optimizer and the loader, checked against the built model in tests.
BACKBONE_PREFIX = "backbone.net.beit3."


def default_global_attn_indexes(depth: int, num_global: int = 4) -> List[int]:
    """ViTDet's placement: global attention in the last block of each of ``num_global`` equal stages
    (base 12 layers -> 2, 5, 8, 11; large 24 -> 5, 11, 17, 23)."""
    num_global = max(1, min(num_global, depth))
    step = depth / num_global
    return sorted({int(round(step * (i + 1))) - 1 for i in range(num_global)})


class Beit3ViTDet(Backbone):
    """Plain BEiT-3 vision encoder with ViTDet window/global attention; one output map at stride ``patch``.

    ``window_size`` is in patches; layers in ``global_attn_indexes`` attend over the whole grid. When the
    grid is not a multiple of the window, windows are padded and the padded keys are masked out.
    """

    def __init__(self, beit3: MultiwayTransformer, window_size: int, global_attn_indexes: Sequence[int],
                 out_feature: str = "last_feat", final_norm: bool = True,
                 checkpoint_activations: bool = False) -> None:
        super().__init__()
        depth = len(beit3.layers)
        bad = [i for i in global_attn_indexes if not 0 <= i < depth]
        if bad:
            raise ValueError(f"global_attn_indexes {bad} outside the backbone's {depth} layers")
        if window_size < 1:
            raise ValueError(f"window_size must be >= 1 patch, got {window_size}")
        self.removed_parameters = beit3.prune_to_vision(keep_final_norm=final_norm)
        # [CLS] is dropped before the first layer, so it never gets a gradient; frozen, DDP does not flag it
        beit3.cls_token.requires_grad_(False)
        self.beit3 = beit3
        self.window_size = int(window_size)
        self.global_attn_indexes = tuple(sorted(set(int(i) for i in global_attn_indexes)))
        self.final_norm = final_norm and beit3.norm is not None
        beit3.set_grad_checkpointing(checkpoint_activations)
        self._out_feature = out_feature
        patch = beit3.cfg.patch_size
        self._out_features = [out_feature]
        self._out_feature_channels = {out_feature: beit3.cfg.embed_dim}
        self._out_feature_strides = {out_feature: patch}
        self.init_report: Optional[LoadReport] = None

    @property
    def num_layers(self) -> int:
        return len(self.beit3.layers)

    def _window_key_mask(self, grid: Tuple[int, int], batch: int, device: torch.device
                         ) -> Optional[Tensor]:
        """(B * windows, 1, 1, ws*ws) bool mask of real (not padded) keys, or None without padding."""
        ws = self.window_size
        h, w = grid
        if h % ws == 0 and w % ws == 0:
            return None
        valid = torch.ones(1, h, w, 1, device=device)
        windows, _ = window_partition(valid, ws)  # pads with zeros
        keep = windows.reshape(windows.shape[0], 1, 1, ws * ws) > 0.5
        return keep.repeat(batch, 1, 1, 1)

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        tokens, (h, w) = self.beit3.embed_image(x)
        batch, dim = tokens.shape[0], tokens.shape[-1]
        x = tokens[:, 1:].reshape(batch, h, w, dim)  # drop [CLS]; positions are already added
        ws = self.window_size
        window_mask = None
        if any(i not in self.global_attn_indexes for i in range(self.num_layers)):
            window_mask = self._window_key_mask((h, w), batch, x.device)
        for i in range(self.num_layers):
            if i in self.global_attn_indexes:
                out = self.beit3.run_vision_layer(i, x.reshape(batch, h * w, dim), (h, w), cls_token=False)
                x = out.reshape(batch, h, w, dim)
            else:
                windows, padded = window_partition(x, ws)
                out = self.beit3.run_vision_layer(i, windows.reshape(-1, ws * ws, dim), (ws, ws), cls_token=False,
                                                  key_mask=window_mask)
                x = window_unpartition(out.reshape(-1, ws, ws, dim), ws, padded, (h, w))
        if self.final_norm:
            x = self.beit3.norm(x, Routing.vision())
        return {self._out_feature: x.permute(0, 3, 1, 2).contiguous()}


@dataclass
class Beit3ViTDetSpec:
    """Everything needed to build the detector backbone, and the one source of its defaults (BEiT-3 base
    ViTDet at 1024 px): yacs ``MODEL.BEIT3.<FIELD>`` keys are these fields upper-cased (``config.py``), and
    LazyConfig files build this dataclass directly."""

    name: str = "beit3_base"                # any name in beit3_plugins BACKBONES
    img_size: int = 1024                    # position table resized to this input size
    patch_size: int = 0                     # 0: the registered variant's (giant: set 16, weights resampled)
    drop_path_rate: float = 0.1
    window_size: int = 14                   # in patches
    global_attn_indexes: List[int] = field(default_factory=list)   # empty: default_global_attn_indexes
    checkpoint_activations: bool = False
    final_norm: bool = True
    weights: str = ""                       # released BEiT-3 / VLMo file or our export ("" = random init)
    strict_init: bool = True                # missing backbone keys in ``weights`` are an error


def build_beit3_net(spec: Beit3ViTDetSpec) -> Beit3ViTDet:
    """Build the registered backbone, prune it to vision, load init weights (with the key report)."""
    overrides = dict(img_size=spec.img_size, drop_path_rate=spec.drop_path_rate)
    if spec.patch_size:
        overrides["patch_size"] = spec.patch_size
    beit3 = BACKBONES.build(spec.name, **overrides)
    if spec.img_size % beit3.cfg.patch_size:
        raise ValueError(f"MODEL.BEIT3.IMG_SIZE {spec.img_size} is not a multiple of the patch size "
                         f"{beit3.cfg.patch_size}")
    indexes = list(spec.global_attn_indexes) or default_global_attn_indexes(beit3.cfg.depth)
    net = Beit3ViTDet(beit3, window_size=spec.window_size, global_attn_indexes=indexes,
                      final_norm=spec.final_norm, checkpoint_activations=spec.checkpoint_activations)
    if spec.weights:
        net.init_report = load_pretrained(net.beit3, spec.weights, strict=spec.strict_init,
                                          prefixes=(BACKBONE_PREFIX,))
        logger.info("BEiT-3 backbone initialisation:\n%s", net.init_report.summary())
    return net


def build_simple_feature_pyramid(net: Beit3ViTDet, out_channels: int = 256,
                                 scale_factors: Sequence[float] = (4.0, 2.0, 1.0, 0.5), norm: str = "LN",
                                 square_pad: int = 0) -> SimpleFeaturePyramid:
    """detectron2's own SimpleFeaturePyramid over the single-scale map, plus one max-pooled level above the
    coarsest one (p6 for the paper's scales 4, 2, 1, 0.5 at stride 16)."""
    top = LastLevelMaxPool()
    coarsest = max(int(net.output_shape()[net._out_feature].stride / s) for s in scale_factors)
    top.in_feature = f"p{int(math.log2(coarsest))}"
    return SimpleFeaturePyramid(net=net, in_feature=net._out_feature, out_channels=out_channels,
                                scale_factors=tuple(scale_factors), top_block=top, norm=norm, square_pad=square_pad)


def spec_from_cfg(cfg) -> Beit3ViTDetSpec:
    """``MODEL.BEIT3`` (yacs) -> the spec: each field read from its upper-cased key."""
    values = {f.name: cfg.MODEL.BEIT3[f.name.upper()] for f in fields(Beit3ViTDetSpec)}
    values["global_attn_indexes"] = list(values["global_attn_indexes"])
    return Beit3ViTDetSpec(**values)


@BACKBONE_REGISTRY.register()
def build_beit3_vitdet_backbone(cfg, input_shape: ShapeSpec) -> SimpleFeaturePyramid:
    """``MODEL.BACKBONE.NAME: build_beit3_vitdet_backbone`` — BEiT-3 ViTDet + SimpleFeaturePyramid."""
    if input_shape.channels != 3:
        raise ValueError(f"BEiT-3 takes RGB images (3 channels), got {input_shape.channels}")
    net = build_beit3_net(spec_from_cfg(cfg))
    sfp = cfg.MODEL.SFP
    return build_simple_feature_pyramid(net, out_channels=sfp.OUT_CHANNELS, scale_factors=sfp.SCALE_FACTORS,
                                        norm=sfp.NORM, square_pad=sfp.SQUARE_PAD)
