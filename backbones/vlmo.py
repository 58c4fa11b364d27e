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

from beit3_plugins.backbones.registry import BACKBONES

from .beit3 import Beit3TinyConfig, _template_regex, _translate
from .multiway import POSITION_OFFSET, Layout, MultiwayConfig, MultiwayTransformer
from .relative_position import fit_table_to_model

__all__ = ["VlmoTinyConfig", "VlmoBaseConfig", "VlmoLargeConfig", "is_vlmo_state_dict", "vlmo_checkpoint_filter_fn",
           "VLMO_HEAD_PREFIXES"]


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
