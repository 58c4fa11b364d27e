"""Registered BEiT-3 / VLMo backbone variants and conversion from the released checkpoints.

Source of the layout: the released BEiT-3 code (microsoft/unilm ``beit3/`` on torchscale), whose keys
carry a ``beit3.`` prefix and ``A`` (vision) / ``B`` (language) branches; see
``checkpoint_filter_fn``, which also hands VLMo checkpoints to ``vlmo.py``. Each registered name has its own config dataclass (fairseq style), so
``BACKBONES.build("beit3_base", drop_path_rate=0.1)`` or ``build_backbone("beit3_base", checkpoint=...)``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from beit3_plugins.checkpoint import LoadReport, load_state_dict_file, load_with_report
from beit3_plugins.registry import BACKBONES

from .multiway import POSITION_OFFSET, Layout, MultiwayConfig, MultiwayTransformer
from .relative_position import fit_table_to_model

__all__ = [
    "Beit3TinyConfig", "Beit3BaseConfig", "Beit3LargeConfig", "Beit3GiantConfig", "checkpoint_filter_fn", "to_released_state_dict", "build_backbone",
    "HEAD_KEYS", "split_heads",
]


# ---------------------------------------------------------------------------------------------- configs
@dataclass
class Beit3TinyConfig(MultiwayConfig):
    """Released (decoupled) layout at toy size, for tests and the CPU demo."""

    embed_dim: int = 64
    depth: int = 4
    num_heads: int = 4
    ffn_dim: int = 256
    img_size: int = 64
    patch_size: int = 8
    vocab_size: int = 1024
    max_text_positions: int = 66


@dataclass
class Beit3BaseConfig(MultiwayConfig):
    pass  # MultiwayConfig's defaults are BEiT-3 base (768 wide, 12 layers, 12 heads, FFN 3072)


@dataclass
class Beit3LargeConfig(MultiwayConfig):
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    ffn_dim: int = 4096


@dataclass
class Beit3GiantConfig(MultiwayConfig):
    """The paper's giant model: shared attention, V/L experts everywhere, VL experts in the top 3 layers."""

    embed_dim: int = 1408
    depth: int = 40
    num_heads: int = 16
    ffn_dim: int = 6144
    patch_size: int = 14
    layout: str = Layout.SHARED.value
    vl_expert_start: Optional[int] = 37


for _name, _cfg in {
    "beit3_tiny": Beit3TinyConfig, "beit3_base": Beit3BaseConfig, "beit3_large": Beit3LargeConfig,
    "beit3_giant": Beit3GiantConfig,
}.items():
    BACKBONES.register(_name, config=_cfg)(MultiwayTransformer)


# ---------------------------------------------------------------------------------------------- conversion
# Keys of the released files that are task heads, not backbone (kept aside for the task plugins).
HEAD_KEYS = ("mlm_head.", "mim_head.", "vision_head.", "language_head.", "itm_head.", "logit_scale", "head.", "pooler.",
             "fc_norm.")

_EXPERT = {"A": "vision", "B": "text", "C": "vl"}
_EXPERT_BACK = {ours: released for released, ours in _EXPERT.items()}

# One table for both directions: (our key, released key without "beit3."). Placeholders: {i} layer index,
# {e} expert (ours: vision/text/vl, released: A/B/C), {fc} fc1/fc2, {p} weight/bias. q/k/v and the two
# position tables are not 1:1 renames and are handled beside the table.
_KEY_TABLE = [
    ("text_embed.weight", "text_embed.weight"),
    ("mask_token", "vision_embed.mask_token"),
    ("cls_token", "vision_embed.cls_token"),
    ("patch_embed.{p}", "vision_embed.proj.{p}"),
    ("layers.{i}.attn.proj.{e}.{p}", "encoder.layers.{i}.self_attn.out_proj.{e}.{p}"),
    ("layers.{i}.attn.inner_norm.{e}.{p}", "encoder.layers.{i}.self_attn.inner_attn_ln.{e}.{p}"),
    ("layers.{i}.norm1.{e}.{p}", "encoder.layers.{i}.self_attn_layer_norm.{e}.{p}"),
    ("layers.{i}.ffn.{e}.{fc}.{p}", "encoder.layers.{i}.ffn.{e}.{fc}.{p}"),
    ("layers.{i}.ffn.{e}.norm.{p}", "encoder.layers.{i}.ffn.{e}.ffn_layernorm.{p}"),
    ("layers.{i}.norm2.{e}.{p}", "encoder.layers.{i}.final_layer_norm.{e}.{p}"),
    ("norm.{e}.{p}", "encoder.layer_norm.{e}.{p}"),
]
_PLACEHOLDER = {"i": r"\d+", "fc": "fc1|fc2", "p": "weight|bias"}
_QKV = re.compile(r"^encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.([ABC])\.(weight|bias)$")


def _template_regex(template: str, experts: str) -> "re.Pattern":
    pattern = re.escape(template)
    for name, alternatives in {**_PLACEHOLDER, "e": experts}.items():
        pattern = pattern.replace(re.escape("{%s}" % name), f"(?P<{name}>{alternatives})")
    return re.compile(f"^{pattern}$")


_TO_OURS = [(_template_regex(released, "A|B|C"), ours) for ours, released in _KEY_TABLE]
_TO_RELEASED = [(_template_regex(ours, "vision|text|vl"), released) for ours, released in _KEY_TABLE]


def _translate(key: str, rules, experts: Dict[str, str]) -> Optional[str]:
    """Rename ``key`` with the first matching rule (experts renamed through ``experts``), or None."""
    for pattern, target in rules:
        match = pattern.match(key)
        if match:
            groups = match.groupdict()
            if "e" in groups:
                groups["e"] = experts[groups["e"]]
            return target.format(**groups)
    return None


def split_heads(state_dict: Dict[str, Tensor]) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
    """Separate task-head weights (``mlm_head``, ``logit_scale``, ...) from backbone weights."""
    heads = {k: v for k, v in state_dict.items() if k.startswith(HEAD_KEYS)}
    rest = {k: v for k, v in state_dict.items() if k not in heads}
    return rest, heads


def _is_released_layout(state_dict: Dict[str, Tensor]) -> bool:
    return any(k.startswith("beit3.") for k in state_dict)


def checkpoint_filter_fn(state_dict: Dict[str, Tensor], model: MultiwayTransformer
                         ) -> Tuple[Dict[str, Tensor], Dict[str, Tensor], list]:
    """Released BEiT-3 or VLMo keys (or our own) -> this model's keys.

    Returns (backbone state dict, head weights, notes). q/k/v projections are fused; the vision position
    table is resampled to the model's grid (first 3 rows kept) and the text table truncated when the
    model has fewer text positions. Our own state dicts (keys already in this layout) pass through the
    same resizing.
    """
    notes = []
    if "model" in state_dict and isinstance(state_dict["model"], dict):
        state_dict = state_dict["model"]
    from .vlmo import is_vlmo_state_dict, vlmo_checkpoint_filter_fn  # vlmo.py imports this module

    if is_vlmo_state_dict(state_dict):
        return vlmo_checkpoint_filter_fn(state_dict, model)
    if not _is_released_layout(state_dict):
        out, heads = split_heads({k[len("backbone."):] if k.startswith("backbone.") else k: v
                                  for k, v in state_dict.items()})
        return _fit_positions(out, model, notes), heads, notes
    out: Dict[str, Tensor] = {}
    qkv: Dict[Tuple[str, str, str], Dict[str, Tensor]] = {}
    heads: Dict[str, Tensor] = {}
    unconverted = []
    for key, value in state_dict.items():
        if not key.startswith("beit3."):
            if key.startswith(HEAD_KEYS):
                heads[key] = value
            else:
                unconverted.append(key)
            continue
        key = key[len("beit3."):]
        match = _QKV.match(key)
        if match:
            layer, which, expert, kind = match.groups()
            qkv.setdefault((layer, expert, kind), {})[which] = value
            continue
        if key == "encoder.embed_positions.A.weight":
            out["vision_pos_embed"] = value.unsqueeze(0)
            continue
        if key == "encoder.embed_positions.B.weight":
            out["text_pos_embed"] = value.unsqueeze(0)
            continue
        renamed = _translate(key, _TO_OURS, _EXPERT)
        if renamed is None:
            unconverted.append("beit3." + key)
        else:
            out[renamed] = value
    for (layer, expert, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"layer {layer} expert {expert}: incomplete q/k/v projections {sorted(parts)}")
        out[f"layers.{layer}.attn.qkv.{_EXPERT[expert]}.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], 0)
    if unconverted:
        notes.append(f"not converted (unknown to the backbone): {sorted(unconverted)}")
    return _fit_positions(out, model, notes), heads, notes


def _fit_positions(sd: Dict[str, Tensor], model: MultiwayTransformer, notes: list) -> Dict[str, Tensor]:
    from timm.layers import resample_abs_pos_embed

    cfg = model.cfg
    table = sd.get("vision_pos_embed")
    if table is not None and table.shape[1] != cfg.num_vision_positions:
        prefix = 1 + POSITION_OFFSET
        old_grid = int(round((table.shape[1] - prefix) ** 0.5))
        if old_grid ** 2 + prefix != table.shape[1]:
            raise ValueError(f"vision position table of {table.shape[1]} rows is not a square grid + {prefix}")
        sd["vision_pos_embed"] = resample_abs_pos_embed(
            table.float(), new_size=[cfg.grid_size] * 2, old_size=[old_grid] * 2, num_prefix_tokens=prefix,
            antialias=False).to(table.dtype)
        notes.append(f"vision positions resampled from a {old_grid}x{old_grid} to a "
                     f"{cfg.grid_size}x{cfg.grid_size} patch grid")
    if "rel_pos.table" in sd and cfg.relative_position_bias:
        sd["rel_pos.table"] = fit_table_to_model(sd["rel_pos.table"], cfg.grid_size, cfg.relative_text_span, notes)
    text = sd.get("text_pos_embed")
    if text is not None and text.shape[1] > cfg.max_text_positions:
        sd["text_pos_embed"] = text[:, : cfg.max_text_positions]
        notes.append(f"text positions truncated from {text.shape[1]} to {cfg.max_text_positions}")
    return sd


def to_released_state_dict(model: MultiwayTransformer, heads: Optional[Dict[str, Tensor]] = None
                           ) -> Dict[str, Tensor]:
    """This backbone's weights in the released BEiT-3 key layout (inverse of ``checkpoint_filter_fn``)."""
    if model.cfg.layout != Layout.DECOUPLED.value:
        raise ValueError("only the decoupled layout has a released BEiT-3 key layout")
    dim = model.cfg.embed_dim
    out: Dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        value = value.detach().clone()
        if key == "vision_pos_embed":
            out["beit3.encoder.embed_positions.A.weight"] = value[0]
            continue
        if key == "text_pos_embed":
            out["beit3.encoder.embed_positions.B.weight"] = value[0]
            continue
        match = re.match(r"^layers\.(\d+)\.attn\.qkv\.(\w+)\.(weight|bias)$", key)
        if match:
            layer, expert, kind = match.groups()
            for name, part in zip("qkv", value.split(dim, 0)):
                out[f"beit3.encoder.layers.{layer}.self_attn.{name}_proj.{_EXPERT_BACK[expert]}.{kind}"] = part.clone()
            continue
        renamed = _translate(key, _TO_RELEASED, _EXPERT_BACK)
        if renamed is None:
            raise KeyError(f"no released name for {key}")
        out["beit3." + renamed] = value
    for key, value in (heads or {}).items():
        out[key] = value
    return out


def build_backbone(name: str, checkpoint: Optional[str] = None, strict: bool = True,
                   pretrained: Optional[str] = None, **overrides) -> MultiwayTransformer:
    """Build a registered backbone, optionally loading a released or our own checkpoint.

    ``pretrained``: a zoo name (``list_pretrained()``; downloaded and cached, its resolution and final-norm
    setting applied unless overridden) or a local file, as timm's ``pretrained=True``.

    The load report (used, missing, unexpected keys, resampling notes) is attached as
    ``model.load_report`` and logged; with ``strict`` a missing backbone key raises.
    """
    if pretrained is not None:
        from beit3_plugins.zoo import pretrained_weights

        checkpoint, zoo_overrides = pretrained_weights(pretrained, backbone=name)
        overrides = {**zoo_overrides, **overrides}
    model = BACKBONES.build(name, **overrides)
    if checkpoint is not None:
        state = load_state_dict_file(checkpoint)
        backbone_sd, heads, notes = checkpoint_filter_fn(state, model)
        report = load_with_report(model, backbone_sd, strict=strict, source=checkpoint, notes=notes)
        report.heads = heads
        model.load_report = report
    return model
