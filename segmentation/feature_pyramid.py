"""BEiT / VL-BEiT style multi-scale features from a plain BEiT-3 vision trunk (for UperNet).

Papers: "BEiT: BERT Pre-Training of Image Transformers" (Bao et al., ICLR 2022) and "VL-BEiT: Generative
Vision-Language Pretraining" (Bao et al., 2022), whose ADE20K results use the UperNet task layer on
features taken after four evenly spaced layers, rescaled by 4x (two transposed convs), 2x (one),
1x and 0.5x (max pool) so that a stride-16 ViT gives strides 4, 8, 16, 32.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

from mmcv.cnn import build_norm_layer
from mmseg.registry import MODELS
from torch import Tensor, nn

from .vision_backbone import Beit3VisionTrunk

__all__ = ["BEiT3FeaturePyramid"]


@MODELS.register_module()
class BEiT3FeaturePyramid(Beit3VisionTrunk):
    """Vision trunk + BEiT's rescaling necks; four ``(B, D, h*s, w*s)`` maps for s in 4, 2, 1, 1/2.

    Args:
        backbone, backbone_cfg, pretrained: see :class:`Beit3VisionTrunk`.
        out_indices: trunk layers whose outputs feed the four scales (default: 4 evenly spaced, last
            one the top layer, e.g. 3, 5, 7, 11 for 12 layers).
        norm_cfg: norm between the two transposed convs of the 4x branch.
    """

    def __init__(self, backbone: str = "beit3_base", backbone_cfg: Optional[dict] = None,
                 pretrained: Optional[str] = None, out_indices: Optional[Sequence[int]] = None,
                 norm_cfg: Optional[dict] = None, init_cfg: Optional[dict] = None) -> None:
        super().__init__(backbone, backbone_cfg, pretrained, init_cfg)
        dim = self.embed_dim
        if out_indices is None:
            step = self.depth // 4
            out_indices = [self.depth - 1 - (3 - i) * step for i in range(4)]
        out_indices = [i if i >= 0 else self.depth + i for i in out_indices]
        if len(out_indices) != 4 or sorted(out_indices) != list(out_indices) or not all(
                0 <= i < self.depth for i in out_indices):
            raise ValueError(f"out_indices must be 4 increasing layer indices in [0, {self.depth}), got {out_indices}")
        self.out_indices = list(out_indices)
        norm_cfg = dict(norm_cfg or dict(type="BN", requires_grad=True))
        self.fpn1 = nn.Sequential(nn.ConvTranspose2d(dim, dim, 2, 2), build_norm_layer(norm_cfg, dim)[1], nn.GELU(),
                                  nn.ConvTranspose2d(dim, dim, 2, 2))
        self.fpn2 = nn.ConvTranspose2d(dim, dim, 2, 2)
        self.fpn3 = nn.Identity()
        self.fpn4 = nn.MaxPool2d(2, 2)
        # layers above the last output would be unused parameters (DDP): the backbone prunes them (timm's API)
        self.beit3.prune_intermediate_layers(self.out_indices)

    def forward(self, image: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        self.check_input(image, 2 * self.patch_size)
        maps = self.beit3.forward_intermediates(image, self.out_indices, intermediates_only=True)
        return tuple(op(m) for op, m in zip((self.fpn1, self.fpn2, self.fpn3, self.fpn4), maps))
