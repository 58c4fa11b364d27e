"""VLMo variants of the Multiway Transformer and conversion from the released VLMo checkpoints.

Paper: "VLMo: Unified Vision-Language Pre-Training with Mixture-of-Modality-Experts" (Bao et al., 2021).
Source of the key layout: microsoft/unilm ``vlmo/`` (``transformer.blocks.N.*`` with shared attention,
``q_bias``/``v_bias``, ``norm2_{text,imag,vl}`` / ``mlp_{text,imag,vl}`` experts, ``gamma_1``/``gamma_2``
layer scales, one ``relative_position_bias_table`` for all layers, BERT text embeddings and a 2-row
``token_type_embeddings`` for text/image).

Two things are folded on load, exactly (they are constants per modality): BERT's token-type vector 0 into
the word embeddings, and VLMo's modality-type vectors into the text embedding norm's bias (text) and the
patch projection bias and [CLS] token (image). k has no bias in VLMo; the fused q/k/v bias gets zeros there
(a key bias shifts every score of a query equally, so softmax ignores it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from beit3_plugins.registry import BACKBONES

from .beit3 import Beit3TinyConfig, _template_regex, _translate
from .multiway import POSITION_OFFSET, Layout, MultiwayConfig, MultiwayTransformer
from .relative_position import fit_table_to_model, resize_table_to_grid

__all__ = ["VlmoTinyConfig", "VlmoBaseConfig", "VlmoLargeConfig", "is_vlmo_state_dict", "vlmo_checkpoint_filter_fn",
           "VLMO_HEAD_PREFIXES", "vlmo_state_dict_from_beit", "BEIT_INIT_EXPERTS"]


@dataclass
class _VlmoArchitecture:
    """What makes a Multiway Transformer VLMo, whatever its size (mixed into the sized configs below)."""

    layout: str = Layout.SHARED.value
    sub_ln: bool = False
    layer_scale_init: Optional[float] = 0.1
    layer_norm_eps: float = 1e-6
    shared_final_norm: bool = True
    absolute_positions: bool = False
    relative_position_bias: bool = True
    relative_text_span: int = 196
    text_embed_norm: bool = True


@dataclass
class VlmoBaseConfig(_VlmoArchitecture, MultiwayConfig):
    """VLMo-Base: 12 layers, VL expert from layer 10, BERT's uncased vocabulary."""

    vl_expert_start: Optional[int] = 10
    vocab_size: int = 30522
    max_text_positions: int = 196 + POSITION_OFFSET


@dataclass
class VlmoLargeConfig(VlmoBaseConfig):
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    ffn_dim: int = 4096
    vl_expert_start: Optional[int] = 21


@dataclass
class VlmoTinyConfig(_VlmoArchitecture, Beit3TinyConfig):
    """VLMo's architecture at the size of ``beit3_tiny``, for tests and the CPU demo."""

    vl_expert_start: Optional[int] = 3
    relative_text_span: int = 64


for _name, _cfg in {"vlmo_tiny": VlmoTinyConfig, "vlmo_base": VlmoBaseConfig, "vlmo_large": VlmoLargeConfig}.items():
    BACKBONES.register(_name, config=_cfg)(MultiwayTransformer)


# ---------------------------------------------------------------------------------------------- conversion
# Task heads of the released VLMo checkpoints, kept aside for the task plugins.
VLMO_HEAD_PREFIXES = ("pooler.", "mlm_score.", "itm_score.", "itc_", "logit_scale", "logit_vl_scale",
                      "vqa_classifier.", "nlvr2_classifier.")
# VLMo's buffers and tables this model rebuilds or does not use.
_UNUSED = ("text_embeddings.position_ids", "text_embeddings.position_embeddings.weight", "relative_position_index",
           "text_relative_position_index", "text_imag_relative_position_index")
_EXPERT = {"imag": "vision", "text": "text", "vl": "vl"}

# (our key, VLMo key); placeholders as in beit3._KEY_TABLE, {e} = imag/text/vl.
_VLMO_KEY_TABLE = [
    ("text_embed.weight", "text_embeddings.word_embeddings.weight"),
    ("text_embed_norm.{p}", "text_embeddings.LayerNorm.{p}"),
    ("patch_embed.{p}", "transformer.patch_embed.proj.{p}"),
    ("cls_token", "transformer.cls_token"),
    ("layers.{i}.norm1.shared.{p}", "transformer.blocks.{i}.norm1.{p}"),
    ("layers.{i}.attn.qkv.shared.weight", "transformer.blocks.{i}.attn.qkv.weight"),
    ("layers.{i}.attn.proj.shared.{p}", "transformer.blocks.{i}.attn.proj.{p}"),
    ("layers.{i}.gamma_attn", "transformer.blocks.{i}.gamma_1"),
    ("layers.{i}.gamma_ffn", "transformer.blocks.{i}.gamma_2"),
    ("layers.{i}.norm2.{e}.{p}", "transformer.blocks.{i}.norm2_{e}.{p}"),
    ("layers.{i}.ffn.{e}.{fc}.{p}", "transformer.blocks.{i}.mlp_{e}.{fc}.{p}"),
    ("norm.shared.{p}", "transformer.norm.{p}"),
    ("rel_pos.table", "relative_position_bias_table"),
]
_TO_OURS = [(_template_regex(vlmo, "imag|text|vl"), ours) for ours, vlmo in _VLMO_KEY_TABLE]


def is_vlmo_state_dict(state_dict: Dict[str, Tensor]) -> bool:
    return any(k.startswith(("transformer.blocks.", "module.transformer.blocks.")) for k in state_dict)


def _check_config(model: MultiwayTransformer) -> None:
    cfg = model.cfg
    wanted = {"layout": Layout.SHARED.value, "relative_position_bias": True, "text_embed_norm": True,
              "shared_final_norm": True, "sub_ln": False}
    wrong = {k: getattr(cfg, k) for k, v in wanted.items() if getattr(cfg, k) != v}
    if wrong or cfg.layer_scale_init is None:
        raise ValueError(f"a VLMo checkpoint needs a VLMo architecture (vlmo_base, vlmo_large, vlmo_tiny); this "
                         f"model's config differs in {wrong or {'layer_scale_init': None}}")


def vlmo_checkpoint_filter_fn(state_dict: Dict[str, Tensor], model: MultiwayTransformer
                              ) -> Tuple[Dict[str, Tensor], Dict[str, Tensor], List[str]]:
    """Released VLMo keys -> this model's keys. Returns (backbone state dict, head weights, notes)."""
    _check_config(model)
    state_dict = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    notes: List[str] = []
    if "transformer.pos_embed" in state_dict:
        raise NotImplementedError("this VLMo checkpoint uses absolute positions (VLMo base-plus); only the relative "
                                  "position models (VLMo base and large) convert")
    out: Dict[str, Tensor] = {}
    heads: Dict[str, Tensor] = {}
    q_v_bias: Dict[str, Dict[str, Tensor]] = {}
    unconverted = []
    for key, value in state_dict.items():
        if key.startswith(VLMO_HEAD_PREFIXES):
            heads[key] = value
        elif key.startswith(_UNUSED) or key in ("token_type_embeddings.weight",
                                                "text_embeddings.token_type_embeddings.weight"):
            continue  # folded below or rebuilt by this model
        elif key.endswith((".attn.q_bias", ".attn.v_bias")):
            layer = key.split(".")[2]
            q_v_bias.setdefault(layer, {})[key.rsplit(".", 1)[1][0]] = value
        else:
            renamed = _translate(key, _TO_OURS, _EXPERT)
            if renamed is None:
                unconverted.append(key)
            else:
                out[renamed] = value
    for layer, parts in q_v_bias.items():
        out[f"layers.{layer}.attn.qkv.shared.bias"] = torch.cat([parts["q"], torch.zeros_like(parts["q"]), parts["v"]])

    modality_type = state_dict["token_type_embeddings.weight"]          # row 0 text, row 1 image (2: NLVR2)
    if modality_type.shape[0] > 2:
        heads["token_type_embeddings.weight"] = modality_type
        notes.append("token_type_embeddings has rows beyond text/image (NLVR2's second image); rows 0 and 1 are "
                     "folded into the backbone, the full table is kept with the heads")
    bert_type = state_dict["text_embeddings.token_type_embeddings.weight"][0]
    out["text_embed.weight"] = out["text_embed.weight"] + bert_type
    out["text_embed_norm.bias"] = out["text_embed_norm.bias"] + modality_type[0]
    out["patch_embed.bias"] = out["patch_embed.bias"] + modality_type[1]
    out["cls_token"] = out["cls_token"] + modality_type[1]
    out["rel_pos.table"] = fit_table_to_model(out["rel_pos.table"], model.cfg.grid_size, model.cfg.relative_text_span,
                                              notes)
    # VLMo has no masked image modeling: keep this model's [MASK] token
    out["mask_token"] = model.mask_token.detach().clone()
    notes.append("VLMo has no [MASK] image token: mask_token keeps its initial value")
    notes.append("token-type vectors folded into text_embed / text_embed_norm.bias / patch_embed.bias / cls_token")
    if unconverted:
        notes.append(f"not converted (unknown to the backbone): {sorted(unconverted)}")
    return out, heads, notes


# ---------------------------------------------------------------------------------------------- from BEiT
# BEiT / BEiT v2 image checkpoints (microsoft/unilm ``beit/``, ``beit2/``; timm ``beit_*``) carry ViT-like keys:
# ``blocks.N.{norm1,attn.qkv,attn.q_bias,attn.v_bias,attn.proj,norm2,mlp.fc1,mlp.fc2,gamma_1,gamma_2}``, a
# relative position table per layer (``blocks.N.attn.relative_position_bias_table``) or one shared by all
# (``rel_pos_bias.relative_position_bias_table``), ``cls_token``, ``patch_embed.proj``, ``norm``.
BEIT_INIT_EXPERTS = ("all", "vision")
_BEIT_KEY_TABLE = [
    ("patch_embed.{p}", "patch_embed.proj.{p}"),
    ("cls_token", "cls_token"),
    ("mask_token", "mask_token"),
    ("layers.{i}.norm1.shared.{p}", "blocks.{i}.norm1.{p}"),
    ("layers.{i}.attn.qkv.shared.weight", "blocks.{i}.attn.qkv.weight"),
    ("layers.{i}.attn.proj.shared.{p}", "blocks.{i}.attn.proj.{p}"),
    ("layers.{i}.gamma_attn", "blocks.{i}.gamma_1"),
    ("layers.{i}.gamma_ffn", "blocks.{i}.gamma_2"),
    ("layers.{i}.norm2.{e}.{p}", "blocks.{i}.norm2.{p}"),
    ("layers.{i}.ffn.{e}.{fc}.{p}", "blocks.{i}.mlp.{fc}.{p}"),
    ("norm.shared.{p}", "norm.{p}"),
]
_BEIT_TO_OURS = [(_template_regex(beit, ""), ours) for ours, beit in _BEIT_KEY_TABLE]
_BEIT_IGNORED = ("lm_head.", "head.", "fc_norm.", "pos_embed", "rel_pos_bias.relative_position_index")


def _beit_targets(key: str, experts: List[str], vl_start: Optional[int]) -> Optional[List[str]]:
    """Our key(s) for a BEiT key: one per target expert for FFN / norm2 weights (VL experts only where the
    layer has one), None for an unknown key."""
    for pattern, target in _BEIT_TO_OURS:
        match = pattern.match(key)
        if match:
            groups = match.groupdict()
            if "{e}" not in target:
                return [target.format(**groups)]
            layer = int(groups["i"])
            return [target.format(e=e, **groups) for e in experts
                    if e != "vl" or (vl_start is not None and layer >= vl_start)]
    return None


def vlmo_state_dict_from_beit(state_dict: Dict[str, Tensor], model: MultiwayTransformer, experts: str = "all"
                              ) -> Tuple[Dict[str, Tensor], List[str]]:
    """A VLMo model's state dict initialised from a BEiT image checkpoint, as VLMo starts stagewise pretraining.

    Attention, its norm, layer scales, patch embedding, [CLS] and the final norm come from BEiT. The BEiT FFN
    (and ``norm2``) becomes the vision expert; with ``experts="all"`` (VLMo paper, Sec. 4.6: "use the parameters
    of BEiT-Base to initialize the self-attention module and all modality experts") it is copied into the
    language and vision-language experts too, with ``"vision"`` (the official code's ``convert_to_textpt_ckpt``
    before text-only pretraining) they keep this model's initial values. BEiT's per-layer relative position
    tables are concatenated by layer into the 2-D rows of VLMo's one table (a shared BEiT table is repeated for
    every layer); text rows and the text embedding keep their initial values. Returns (state dict, notes).
    """
    _check_config(model)
    if experts not in BEIT_INIT_EXPERTS:
        raise ValueError(f"experts must be one of {list(BEIT_INIT_EXPERTS)}, got {experts!r}")
    if "pos_embed" in state_dict:
        raise NotImplementedError("this BEiT checkpoint uses absolute positions; VLMo base / large use the relative "
                                  "position bias only (convert a BEiT with use_rel_pos_bias)")
    state_dict = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    if "blocks.0.attn.qkv.weight" not in state_dict or "patch_embed.proj.weight" not in state_dict:
        raise ValueError("not a BEiT image checkpoint: no blocks.0.attn.qkv.weight / patch_embed.proj.weight")
    cfg, notes = model.cfg, []
    depth = len({k.split(".")[1] for k in state_dict if k.startswith("blocks.")})
    if depth != cfg.depth:
        raise ValueError(f"the BEiT checkpoint has {depth} layers, the VLMo model {cfg.depth}: pick the matching "
                         "size (vlmo_base for BEiT-Base, vlmo_large for BEiT-Large)")
    out = {k: v.detach().clone() for k, v in model.state_dict().items()}
    targets = ["vision"] + (["text"] + (["vl"] if cfg.vl_expert_start is not None else []) if experts == "all" else [])
    q_v_bias: Dict[str, Dict[str, Tensor]] = {}
    tables: Dict[int, Tensor] = {}
    unconverted = []
    for key, value in state_dict.items():
        if key.startswith(_BEIT_IGNORED) or key.endswith(("relative_position_index", ".attn.k_bias")):
            continue
        if key.endswith((".attn.q_bias", ".attn.v_bias")):
            q_v_bias.setdefault(key.split(".")[1], {})[key.rsplit(".", 1)[1][0]] = value
            continue
        if key.endswith("relative_position_bias_table"):
            if key.startswith("rel_pos_bias."):
                tables.update({i: value for i in range(cfg.depth)})
                notes.append("BEiT's shared relative position table repeated for every layer")
            else:
                tables[int(key.split(".")[1])] = value
            continue
        renamed = _beit_targets(key, targets, cfg.vl_expert_start)
        if renamed is None:
            unconverted.append(key)
        for target in renamed or ():
            out[target] = value.clone()
    for layer, parts in q_v_bias.items():
        out[f"layers.{layer}.attn.qkv.shared.bias"] = torch.cat([parts["q"], torch.zeros_like(parts["q"]), parts["v"]])
    if tables:
        if sorted(tables) != list(range(cfg.depth)):
            raise ValueError(f"BEiT checkpoint has relative position tables for layers {sorted(tables)}, the model "
                             f"{cfg.depth} layers")
        merged = torch.cat([tables[i] for i in range(cfg.depth)], dim=1)
        side = (int(round((merged.shape[0] - 3) ** 0.5)) + 1) // 2
        if side != cfg.grid_size:
            notes.append(f"relative position bias resampled from a {side}x{side} to a {cfg.grid_size}x"
                         f"{cfg.grid_size} patch grid")
            merged = resize_table_to_grid(merged, (side, side), (cfg.grid_size, cfg.grid_size))
        out["rel_pos.table"][: merged.shape[0]] = merged
    notes.append(f"BEiT FFN copied into the {', '.join(targets)} expert(s); text embeddings and text position rows "
                 "keep their initial values")
    if unconverted:
        notes.append(f"not converted (unknown to the backbone): {sorted(unconverted)}")
    return out, notes
