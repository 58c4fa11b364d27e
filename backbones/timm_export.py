"""Export of the vision path to timm's ``beit3_*`` models (``timm.models.vision_transformer``).

timm 1.0 ports BEiT-3's vision path as a ``VisionTransformer`` with sub-LN (``scale_attn_norm``,
``scale_mlp_norm``): the released model's ``A`` (vision) branch only. Exporting our weights there lets
users run the vision expert with timm's tooling (feature extraction, fine-tuning scripts, pos-embed
resampling). Parameter names follow timm's own converter for released checkpoints (``_convert_beit3``):
``blocks.{i}.{norm1, attn.qkv, attn.norm, attn.proj, norm2, mlp.fc1, mlp.norm, mlp.fc2}``, ``cls_token``,
``pos_embed`` (released table without its two unused rows), ``patch_embed.proj``.

The shared layout (BEiT-3 giant) exports too: its shared attention and the vision FFN expert are the
vision path. VLMo's vision path has relative positions instead of a position table; it exports to timm's
``Beit`` (``timm.models.beit``, per-layer ``relative_position_bias_table`` + ``q_bias``/``v_bias``) with
:func:`to_timm_beit_state_dict` / :func:`timm_beit_kwargs`.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Optional

from torch import Tensor

from .multiway import POSITION_OFFSET, MultiwayConfig, MultiwayTransformer

__all__ = ["to_timm_state_dict", "timm_model_kwargs", "to_timm_beit_state_dict", "timm_beit_kwargs"]

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


def _rename(key: str, rules) -> Optional[str]:
    """``key`` under the first matching (compiled pattern, replacement) rule, or None (not exported)."""
    for pattern, repl in rules:
        if pattern.match(key):
            return pattern.sub(repl, key)
    return None


def _common_kwargs(cfg: MultiwayConfig) -> Dict[str, Any]:
    """timm model arguments shared by VisionTransformer and Beit: sizes, a token-wise final norm, no head."""
    from functools import partial

    from timm.layers import LayerNorm

    return dict(img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans, embed_dim=cfg.embed_dim,
                depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.ffn_dim / cfg.embed_dim, qkv_bias=True,
                global_pool="token", num_classes=0, norm_layer=partial(LayerNorm, eps=cfg.layer_norm_eps))


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
                         "has absolute positions only: export to timm's Beit with to_timm_beit_state_dict")
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
        renamed = _rename(key, rules)
        if renamed is not None:
            out[renamed] = value
    return out


def timm_model_kwargs(cfg: MultiwayConfig, **overrides: Any) -> Dict[str, Any]:
    """Keyword arguments for timm's ``VisionTransformer`` (or ``timm.create_model('beit3_*', ...)``) that
    give the same vision path as ``cfg``, with the final LayerNorm token-wise (``global_pool='token'``)."""
    kwargs = dict(_common_kwargs(cfg), class_token=True, scale_attn_norm=cfg.sub_ln, scale_mlp_norm=cfg.sub_ln,
                  init_values=cfg.layer_scale_init, fc_norm=False, final_norm=cfg.normalize_output)
    kwargs.update(overrides)
    return kwargs


_BEIT_RULES = [  # our key (VLMo vision path) -> timm Beit key
    (r"^layers\.(\d+)\.norm1\.shared\.(weight|bias)$", r"blocks.\1.norm1.\2"),
    (r"^layers\.(\d+)\.attn\.qkv\.shared\.weight$", r"blocks.\1.attn.qkv.weight"),
    (r"^layers\.(\d+)\.attn\.proj\.shared\.(weight|bias)$", r"blocks.\1.attn.proj.\2"),
    (r"^layers\.(\d+)\.gamma_attn$", r"blocks.\1.gamma_1"),
    (r"^layers\.(\d+)\.gamma_ffn$", r"blocks.\1.gamma_2"),
    (r"^layers\.(\d+)\.norm2\.vision\.(weight|bias)$", r"blocks.\1.norm2.\2"),
    (r"^layers\.(\d+)\.ffn\.vision\.(fc1|fc2)\.(weight|bias)$", r"blocks.\1.mlp.\2.\3"),
    (r"^norm\.shared\.(weight|bias)$", r"norm.\1"),
    (r"^patch_embed\.(weight|bias)$", r"patch_embed.proj.\1"),
    (r"^cls_token$", "cls_token"),
]


def to_timm_beit_state_dict(model: MultiwayTransformer) -> Dict[str, Tensor]:
    """VLMo's vision path under timm ``Beit`` names: each layer gets its heads' columns of the image part of
    the shared relative table; the fused q/k/v bias becomes ``q_bias``/``v_bias`` (a key bias adds the same
    amount to every score of a query, so dropping it leaves the attention unchanged)."""
    cfg = model.cfg
    if model.rel_pos is None or cfg.absolute_positions or not cfg.shared_final_norm:
        raise ValueError("to_timm_beit_state_dict exports VLMo-style models (relative positions, shared final norm); "
                         "use to_timm_state_dict for BEiT-3")
    rules = [(re.compile(p), r) for p, r in _BEIT_RULES]
    dim, heads = cfg.embed_dim, cfg.num_heads
    out: Dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        value = value.detach().clone()
        bias = re.match(r"^layers\.(\d+)\.attn\.qkv\.shared\.bias$", key)
        if bias:
            out[f"blocks.{bias.group(1)}.attn.q_bias"] = value[:dim]
            out[f"blocks.{bias.group(1)}.attn.v_bias"] = value[2 * dim:]
            continue
        renamed = _rename(key, rules)
        if renamed is not None:
            out[renamed] = value
    image_rows = model.rel_pos.table.detach()[: model.rel_pos.vision_rows]
    for i in range(cfg.depth):
        out[f"blocks.{i}.attn.relative_position_bias_table"] = image_rows[:, i * heads:(i + 1) * heads].clone()
    return out


def timm_beit_kwargs(cfg: MultiwayConfig, **overrides: Any) -> Dict[str, Any]:
    """Keyword arguments for timm's ``Beit`` giving the same vision path as a VLMo ``cfg`` (token-wise final
    norm, ``global_pool='token'``)."""
    kwargs = dict(_common_kwargs(cfg), init_values=cfg.layer_scale_init, use_abs_pos_emb=False, use_rel_pos_bias=True,
                  use_fc_norm=False)
    kwargs.update(overrides)
    return kwargs
