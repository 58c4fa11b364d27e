"""ViT-Adapter on the BEiT-3 vision path, for the current OpenMMLab stack (mmcv 2 / mmseg 1).

Paper: "Vision Transformer Adapter for Dense Predictions" (Chen et al., ICLR 2023), used by BEiT-3
("Image as a Foreign Language", Wang et al., 2022) for ADE20K with a Mask2Former head. The public
ViT-Adapter targets mmseg 0.x / mmcv 1.x and a CUDA-only deformable-attention op; this version uses
``mmcv.ops.MultiScaleDeformableAttention`` (CUDA kernel on GPU, its PyTorch path on CPU).

Structure:

* spatial prior module: a small conv stem giving maps at strides 4, 8, 16 and 32;
* the Multiway Transformer's vision layers split into N interaction stages; before each stage an
  *injector* lets the ViT patch tokens attend (deformable, 3 levels) into the stride 8/16/32 maps, after
  it an *extractor* lets those maps attend into the ViT tokens (1 level) followed by a conv FFN;
* outputs: the four maps (stride 4 from the stem upsampled-and-added), each plus the resized ViT tokens
  of the matching stage, normalised: a ``(B, D, H/s, W/s)`` tuple for s in 4, 8, 16, 32.

Reference points are normalised coordinates, so the ViT grid need not be stride 16: patch 8 (tiny),
14 (giant) and 16 all work; the input must be a multiple of lcm(32, patch).
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule, build_norm_layer
from mmcv.ops import MultiScaleDeformableAttention
from mmseg.registry import MODELS
from timm.layers import DropPath, trunc_normal_
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from beit3_plugins.backbones import MultiwayTransformer

from .vision_backbone import Beit3VisionTrunk

__all__ = ["BEiT3ViTAdapter", "SpatialPriorModule", "Injector", "Extractor", "InteractionBlock",
           "default_interaction_indexes"]

Grid = Tuple[int, int]


def default_interaction_indexes(depth: int, stages: int = 4) -> List[List[int]]:
    """Split ``depth`` layers into ``stages`` contiguous [first, last] ranges (ViT-Adapter's layout)."""
    if depth < stages:
        raise ValueError(f"cannot split {depth} layers into {stages} interaction stages")
    bounds = [round(i * depth / stages) for i in range(stages + 1)]
    return [[bounds[i], bounds[i + 1] - 1] for i in range(stages)]


def grid_centres(grids: Sequence[Grid], device: torch.device) -> Tensor:
    """Normalised (x, y) centres of every cell of each grid, concatenated: (sum h*w, 2)."""
    points = []
    for h, w in grids:
        ys, xs = torch.meshgrid(torch.linspace(0.5, h - 0.5, h, device=device) / h,
                                torch.linspace(0.5, w - 0.5, w, device=device) / w, indexing="ij")
        points.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], -1))
    return torch.cat(points, 0)


class DeformInputs:
    """Reference points and level layout for one direction of deformable attention."""

    def __init__(self, query_grids: Sequence[Grid], value_grids: Sequence[Grid], batch: int,
                 device: torch.device) -> None:
        ref = grid_centres(query_grids, device)
        self.reference_points = ref[None, :, None, :].expand(batch, -1, len(value_grids), -1)
        self.spatial_shapes = torch.as_tensor(value_grids, dtype=torch.long, device=device)
        sizes = self.spatial_shapes.prod(1)
        self.level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])

    def kwargs(self) -> dict:
        return dict(reference_points=self.reference_points, spatial_shapes=self.spatial_shapes,
                    level_start_index=self.level_start_index)


class SpatialPriorModule(nn.Module):
    """Conv stem giving local spatial priors at strides 4, 8, 16, 32 (all projected to ``embed_dim``)."""

    def __init__(self, inplanes: int, embed_dim: int, norm_cfg: dict) -> None:
        super().__init__()
        conv = lambda cin, cout, stride: ConvModule(cin, cout, 3, stride, 1, bias=False,  # noqa: E731
                                                    norm_cfg=norm_cfg, act_cfg=dict(type="ReLU"))
        self.stem = nn.Sequential(conv(3, inplanes, 2), conv(inplanes, inplanes, 1), conv(inplanes, inplanes, 1),
                                  nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        self.conv2 = conv(inplanes, 2 * inplanes, 2)
        self.conv3 = conv(2 * inplanes, 4 * inplanes, 2)
        self.conv4 = conv(4 * inplanes, 4 * inplanes, 2)
        self.fc1 = nn.Conv2d(inplanes, embed_dim, 1)
        self.fc2 = nn.Conv2d(2 * inplanes, embed_dim, 1)
        self.fc3 = nn.Conv2d(4 * inplanes, embed_dim, 1)
        self.fc4 = nn.Conv2d(4 * inplanes, embed_dim, 1)

    def forward(self, image: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        c1 = self.stem(image)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        return self.fc1(c1), self.fc2(c2), self.fc3(c3), self.fc4(c4)


class MultiScaleDWConv(nn.Module):
    """Depthwise 3x3 conv applied to each of several flattened maps (one weight for all scales)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: Tensor, grids: Sequence[Grid]) -> Tensor:
        batch, _, dim = x.shape
        out, start = [], 0
        for h, w in grids:
            part = x[:, start:start + h * w].transpose(1, 2).reshape(batch, dim, h, w)
            out.append(self.dwconv(part).flatten(2).transpose(1, 2))
            start += h * w
        return torch.cat(out, 1)


class ConvFFN(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = MultiScaleDWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor, grids: Sequence[Grid]) -> Tensor:
        x = self.act(self.dwconv(self.fc1(x), grids))
        return self.drop(self.fc2(self.drop(x)))


def _deform_attn(dim: int, num_heads: int, num_levels: int, num_points: int, ratio: float
                 ) -> MultiScaleDeformableAttention:
    return MultiScaleDeformableAttention(embed_dims=dim, num_heads=num_heads, num_levels=num_levels,
                                         num_points=num_points, dropout=0.0, batch_first=True,
                                         value_proj_ratio=ratio)


class Injector(nn.Module):
    """ViT tokens attend into the multi-scale spatial priors; gated by ``gamma`` (starts at
    ``init_values``; 0 keeps the pretrained ViT untouched at the start of finetuning)."""

    def __init__(self, dim: int, num_heads: int, num_points: int, num_levels: int, deform_ratio: float,
                 init_values: float, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.feat_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = _deform_attn(dim, num_heads, num_levels, num_points, deform_ratio)
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, query: Tensor, feat: Tensor, deform: DeformInputs) -> Tensor:
        # mmcv adds `identity` to the attention output; a zero scalar leaves the bare output to be gated
        out = self.attn(query=self.query_norm(query), value=self.feat_norm(feat),
                        identity=query.new_zeros(()), **deform.kwargs())
        return query + self.gamma * out


class Extractor(nn.Module):
    """Spatial-prior tokens attend into the ViT tokens (residual added by mmcv), then a conv FFN."""

    def __init__(self, dim: int, num_heads: int, num_points: int, deform_ratio: float, cffn_ratio: float,
                 drop_path: float, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.feat_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = _deform_attn(dim, num_heads, 1, num_points, deform_ratio)
        self.ffn_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.ffn = ConvFFN(dim, int(dim * cffn_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, query: Tensor, feat: Tensor, deform: DeformInputs, grids: Sequence[Grid]) -> Tensor:
        query = self.attn(query=self.query_norm(query), value=self.feat_norm(feat), identity=query,
                          **deform.kwargs())
        return query + self.drop_path(self.ffn(self.ffn_norm(query), grids))


class InteractionBlock(nn.Module):
    """Injector -> a range of the trunk's vision layers -> extractor(s). The [CLS] token runs through the
    trunk layers but takes no part in the interactions."""

    def __init__(self, dim: int, num_heads: int, num_points: int, deform_ratio: float, cffn_ratio: float,
                 drop_path: float, init_values: float, extra_extractors: int, with_cp: bool) -> None:
        super().__init__()
        self.with_cp = with_cp
        self.injector = Injector(dim, num_heads, num_points, 3, deform_ratio, init_values)
        self.extractor = Extractor(dim, num_heads, num_points, deform_ratio, cffn_ratio, drop_path)
        self.extra_extractors = nn.ModuleList(
            Extractor(dim, num_heads, num_points, deform_ratio, cffn_ratio, drop_path)
            for _ in range(extra_extractors))

    def _maybe_cp(self, fn, *args):
        if self.with_cp and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def forward(self, x: Tensor, c: Tensor, backbone: MultiwayTransformer, layers: Sequence[int], grid: Grid,
                inject: DeformInputs, extract: DeformInputs, prior_grids: Sequence[Grid]
                ) -> Tuple[Tensor, Tensor]:
        cls_token, patches = x[:, :1], x[:, 1:]
        patches = self._maybe_cp(lambda q, f: self.injector(q, f, inject), patches, c)
        x = torch.cat([cls_token, patches], 1)
        for index in layers:
            x = backbone.run_vision_layer(index, x, grid)
        patches = x[:, 1:]
        for extractor in [self.extractor, *self.extra_extractors]:
            c = self._maybe_cp(lambda q, f, e=extractor: e(q, f, extract, prior_grids), c, patches)
        return x, c


@MODELS.register_module()
class BEiT3ViTAdapter(Beit3VisionTrunk):
    """BEiT-3 (any registered Multiway backbone) + ViT-Adapter; outputs 4 maps at strides 4-32.

    Args:
        backbone, backbone_cfg, pretrained: see :class:`Beit3VisionTrunk`.
        interaction_indexes: [first, last] trunk layers of each interaction stage (default: 4 equal parts).
        conv_inplane: width of the spatial prior stem.
        deform_num_heads, n_points, deform_ratio: deformable attention heads, sampling points per level,
            value projection ratio.
        cffn_ratio: hidden ratio of the extractor's conv FFN.
        init_values: initial injector gate.
        extra_extractors: additional extractors in the last interaction block (ViT-Adapter uses 2).
        drop_path_rate: stochastic depth of the extractor FFNs (the trunk has its own in backbone_cfg).
        add_vit_feature: add the resized ViT tokens of each stage to the outputs.
        norm_cfg: normalisation of the stem and of the outputs (``SyncBN`` for multi-GPU training;
            mmengine reverts it to BN when not distributed).
        with_cp: activation checkpointing of injector / extractors (the trunk's layers follow
            ``backbone_cfg.checkpoint_activations``).
    """

    def __init__(self, backbone: str = "beit3_base", backbone_cfg: Optional[dict] = None,
                 pretrained: Optional[str] = None, interaction_indexes: Optional[Sequence[Sequence[int]]] = None,
                 conv_inplane: int = 64, deform_num_heads: int = 12, n_points: int = 4, deform_ratio: float = 1.0,
                 cffn_ratio: float = 0.25, init_values: float = 0.0, extra_extractors: int = 2,
                 drop_path_rate: float = 0.0, add_vit_feature: bool = True,
                 norm_cfg: Optional[dict] = None, with_cp: bool = False, init_cfg: Optional[dict] = None) -> None:
        super().__init__(backbone, backbone_cfg, pretrained, init_cfg)
        dim = self.embed_dim
        norm_cfg = dict(norm_cfg or dict(type="BN", requires_grad=True))
        indexes = [list(r) for r in (interaction_indexes or default_interaction_indexes(self.depth))]
        self._check_indexes(indexes)
        self.interaction_indexes = indexes
        self.add_vit_feature = add_vit_feature
        self.level_embed = nn.Parameter(torch.zeros(3, dim))
        self.spm = SpatialPriorModule(conv_inplane, dim, norm_cfg)
        self.interactions = nn.ModuleList(
            InteractionBlock(dim, deform_num_heads, n_points, deform_ratio, cffn_ratio, drop_path_rate,
                             init_values, extra_extractors if i == len(indexes) - 1 else 0, with_cp)
            for i in range(len(indexes)))
        self.up = nn.ConvTranspose2d(dim, dim, 2, 2)
        self.out_norms = nn.ModuleList(build_norm_layer(norm_cfg, dim)[1] for _ in range(4))
        self._init_adapter()

    def _check_indexes(self, indexes: List[List[int]]) -> None:
        flat = [i for first, last in indexes for i in range(first, last + 1)]
        if len(indexes) != 4:
            raise ValueError(f"ViT-Adapter needs 4 interaction stages (one per output scale), got {indexes}")
        if flat != list(range(self.depth)):
            raise ValueError(f"interaction_indexes {indexes} must cover layers 0..{self.depth - 1} of "
                             f"{self.backbone_name} contiguously, in order")

    def _init_adapter(self) -> None:
        """ViT-Adapter's init: trunc-normal linears, fan-out convs, normal level embedding; mmcv's own
        grid init is kept for the deformable attention (re-applied after the generic pass)."""
        adapter = [self.spm, self.interactions, self.up]
        for part in adapter:
            for m in part.modules():
                if isinstance(m, nn.Linear):
                    trunc_normal_(m.weight, std=0.02)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                    fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                    nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
        for m in self.interactions.modules():
            if isinstance(m, MultiScaleDeformableAttention):
                m.init_weights()
        nn.init.normal_(self.level_embed)

    @property
    def input_multiple(self) -> int:
        return 32 * self.patch_size // math.gcd(32, self.patch_size)

    def forward(self, image: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        self.check_input(image, self.input_multiple)
        batch = image.shape[0]
        c1, c2, c3, c4 = self.spm(image)
        prior_grids = [tuple(t.shape[-2:]) for t in (c2, c3, c4)]
        c = torch.cat([t.flatten(2).transpose(1, 2) + self.level_embed[i]
                       for i, t in enumerate((c2, c3, c4))], 1)
        x, grid = self.beit3.embed_image(image)
        inject = DeformInputs([grid], prior_grids, batch, image.device)
        extract = DeformInputs(prior_grids, [grid], batch, image.device)
        vit_maps = []
        for block, (first, last) in zip(self.interactions, self.interaction_indexes):
            x, c = block(x, c, self.beit3, range(first, last + 1), grid, inject, extract, prior_grids)
            vit_maps.append(x[:, 1:].transpose(1, 2).reshape(batch, -1, *grid))
        sizes = [h * w for h, w in prior_grids]
        c2, c3, c4 = [t.transpose(1, 2).reshape(batch, -1, *g)
                      for t, g in zip(torch.split(c, sizes, 1), prior_grids)]
        c1 = self.up(c2) + c1
        outs = [c1, c2, c3, c4]
        if self.add_vit_feature:
            outs = [o + F.interpolate(v, size=o.shape[-2:], mode="bilinear", align_corners=False)
                    for o, v in zip(outs, vit_maps)]
        return tuple(norm(o) for norm, o in zip(self.out_norms, outs))
