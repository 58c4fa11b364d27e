"""Export of the vision path to timm's ``beit3_*`` models (``timm.models.vision_transformer``).

timm 1.0 ports BEiT-3's vision path as a ``VisionTransformer`` with sub-LN (``scale_attn_norm``,
``scale_mlp_norm``): the released model's ``A`` (vision) branch only. Exporting our weights there lets
users run the vision expert with timm's tooling (feature extraction, fine-tuning scripts, pos-embed
resampling). Parameter names follow timm's own converter for released checkpoints (``_convert_beit3``):
``blocks.{i}.{norm1, attn.qkv, attn.norm, attn.proj, norm2, mlp.fc1, mlp.norm, mlp.fc2}``, ``cls_token``,
``pos_embed`` (released table without its two unused rows), ``patch_embed.proj``.

The shared layout (BEiT-3 giant, VLMo) exports too: its shared attention and the vision FFN expert are
the vision path, VLMo's layer scale becomes timm's ``ls1``/``ls2``.
"""
from __future__ import annotations

import re
from typing import Any, Dict

from torch import Tensor

from .multiway import POSITION_OFFSET, MultiwayConfig, MultiwayTransformer

__all__ = ["to_timm_state_dict", "timm_model_kwargs"]

_RULES = [  # our key (vision path) -> timm key; "X" is the expert: vision (decoupled) or shared
    (r"^layers\.(\d+)\.norm1\.X\.(weight|bias)$", r"blocks.\1.norm1.\2"),
    (r"^layers\.(\d+)\.attn\.qkv\.X\.(weight|bias)$", r"blocks.\1.attn.qkv.\2"),
    (r"^layers\.(\d+)\.attn\.inner_norm\.X\.(weight|bias)$", r"blocks.\1.attn.norm.\2"),
    (r"^layers\.(\d+)\.attn\.proj\.X\.(weight|bias)$", r"blocks.\1.attn.proj.\2"),
    (r"^layers\.(\d+)\.norm2\.vision\.(weight|bias)$", r"blocks.\1.norm2.\2"),
    (r"^layers\.(\d+)\.ffn\.vision\.(fc1|fc2|norm)\.(weight|bias)$", r"blocks.\1.mlp.\2.\3"),
    (r"^layers\.(\d+)\.gamma_attn$", r"blocks.\1.ls1.gamma"),
    (r"^layers\.(\d+)\.gamma_ffn$", r"blocks.\1.ls2.gamma"),
    (r"^patch_embed\.(weight|bias)$", r"patch_embed.proj.\1"),
    (r"^cls_token$", "cls_token"),
]


def to_timm_state_dict(model: MultiwayTransformer, final_norm: bool = True) -> Dict[str, Tensor]:
    """Vision-path weights under timm ``VisionTransformer`` names (text and VL experts are dropped).

    ``final_norm``: export our final vision LayerNorm as timm's token-wise ``norm``. timm's registered
    ``beit3_*`` models pool with ``global_pool='avg'`` and put the norm after pooling (``fc_norm``, a new
    head in fine-tuning), so their ``norm`` is an Identity: export with ``final_norm=False`` for those
    (their ``forward_features`` then equals our last layer's output before the final norm). Models built
    with :func:`timm_model_kwargs` have the token-wise norm, and their ``forward_features`` equals our
    ``forward_vision(image).hidden``.
    """
    if model.cfg.relative_position_bias or not model.cfg.absolute_positions:
        raise ValueError(f"{type(model.cfg).__name__} uses a relative position bias (VLMo); timm's VisionTransformer "
                         "has absolute positions only, so this vision path has no timm equivalent to export to")
    expert = "vision" if model.cfg.layout == "decoupled" else "shared"
    rules = [(re.compile(p.replace(r"\.X\.", rf"\.{expert}\.")), r) for p, r in _RULES]
    out: Dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        value = value.detach().clone()
        if key == "vision_pos_embed":
            out["pos_embed"] = value[:, POSITION_OFFSET:]  # [CLS] row + grid, as timm's converter does
            continue
        if key.startswith("norm.vision."):
            if final_norm:
                out["norm." + key.rsplit(".", 1)[1]] = value
            continue
        for pattern, repl in rules:
            if pattern.match(key):
                out[pattern.sub(repl, key)] = value
                break
    return out


def timm_model_kwargs(cfg: MultiwayConfig, **overrides: Any) -> Dict[str, Any]:
    """Keyword arguments for timm's ``VisionTransformer`` (or ``timm.create_model('beit3_*', ...)``) that
    give the same vision path as ``cfg``, with the final LayerNorm token-wise (``global_pool='token'``)."""
    from functools import partial

    from timm.layers import LayerNorm

    kwargs = dict(img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans,
                  embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads,
                  mlp_ratio=cfg.ffn_dim / cfg.embed_dim, qkv_bias=True, class_token=True,
                  scale_attn_norm=cfg.sub_ln, scale_mlp_norm=cfg.sub_ln, init_values=cfg.layer_scale_init,
                  global_pool="token", fc_norm=False, final_norm=cfg.normalize_output, num_classes=0,
                  norm_layer=partial(LayerNorm, eps=cfg.layer_norm_eps))
    kwargs.update(overrides)
    return kwargs
