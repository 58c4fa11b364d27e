"""Task heads of the released BEiT-3 fine-tuning code, registered in ``HEADS``.

Module and parameter names follow the released checkpoints so their head weights load unchanged:
VQA ``pooler.{norm,dense}`` + ``head.{0,1,3}``, NLVR2 ``head.{norm1,dense1,norm2,dense2}``, ImageNet
``fc_norm`` + ``head``, retrieval ``vision_head`` / ``language_head`` / ``logit_scale``, captioning
``mlm_head``. Source: "Image as a Foreign Language" (Wang et al., 2022) and microsoft/unilm ``beit3/``.

VLMo's heads (microsoft/unilm ``vlmo/``, ``vlmo_module.py`` / ``heads.py``) are the same modules with two
differences, expressed as arguments here rather than copies: its pooler has no LayerNorm
(``Pooler(norm=False)``, applied to the text [CLS] of the fused encoder), and its NLVR2 classifier is an
:class:`MlpClassifier` over the two pooled pairs (2D) instead of BEiT-3's :class:`TwoLayerMLP` over 4D.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from beit3_plugins.vl_tasks.registry import HEADS

__all__ = ["Pooler", "MlpClassifier", "VqaClassifier", "TwoLayerMLP", "ImageClassifier", "ContrastiveHeads", "ItmHead",
           "MlmHead", "init_head_weights"]


def init_head_weights(module: nn.Module, scale: float = 1.0) -> None:
    """trunc-normal(0.02) linears, unit layer norms; ``scale`` shrinks the linears (0.001 for NLVR2/ImageNet)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            m.weight.data.mul_(scale)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@HEADS.register("pooler")
class Pooler(nn.Module):
    """First token -> LayerNorm -> Linear -> Tanh (the fused-encoder pooler of VQA / ITM / text tasks);
    ``norm=False`` drops the LayerNorm, as VLMo's pooler has none."""

    def __init__(self, dim: int, eps: float = 1e-5, norm: bool = True) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps) if norm else nn.Identity()
        self.dense = nn.Linear(dim, dim)
        self.activation = nn.Tanh()

    def forward(self, tokens: Tensor) -> Tensor:
        return self.activation(self.dense(self.norm(tokens[:, 0])))


@HEADS.register("mlp_classifier")
class MlpClassifier(nn.Sequential):
    """Linear -> LN -> GELU -> Linear; keys ``0``, ``1``, ``3`` as released (BEiT-3 VQA, VLMo VQA and NLVR2)."""

    def __init__(self, in_features: int, hidden: int, num_classes: int) -> None:
        super().__init__(nn.Linear(in_features, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, num_classes))
        init_head_weights(self)


@HEADS.register("vqa_classifier")
class VqaClassifier(MlpClassifier):
    """Linear(D, 2D) -> LN -> GELU -> Linear(2D, num_answers)."""

    def __init__(self, dim: int, num_answers: int) -> None:
        super().__init__(dim, 2 * dim, num_answers)


@HEADS.register("two_layer_mlp")
class TwoLayerMLP(nn.Module):
    """LN -> Linear -> LN -> GELU -> Linear (NLVR2 over 4D pooled pairs); small init as released."""

    def __init__(self, in_features: int, hidden: int, out_features: int, init_scale: float = 0.001) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(in_features)
        self.dense1 = nn.Linear(in_features, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.act = nn.GELU()
        self.dense2 = nn.Linear(hidden, out_features)
        init_head_weights(self, init_scale)

    def forward(self, x: Tensor) -> Tensor:
        return self.dense2(self.act(self.norm2(self.dense1(self.norm1(x)))))


@HEADS.register("image_classifier")
class ImageClassifier(nn.Module):
    """Mean of the patch tokens (CLS excluded) -> ``fc_norm`` -> ``head`` (BEiT-3 ImageNet fine-tuning)."""

    def __init__(self, dim: int, num_classes: int, init_scale: float = 0.001) -> None:
        super().__init__()
        self.fc_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        init_head_weights(self.fc_norm)
        init_head_weights(self.head, init_scale)

    def forward(self, vision_tokens: Tensor) -> Tensor:
        return self.head(self.fc_norm(vision_tokens[:, 1:].mean(1)))


@HEADS.register("contrastive")
class ContrastiveHeads(nn.Module):
    """Bias-free vision / language projections and the learnable temperature of the dual encoder."""

    def __init__(self, dim: int, init_temperature: float = 0.07) -> None:
        super().__init__()
        self.vision_head = nn.Linear(dim, dim, bias=False)
        self.language_head = nn.Linear(dim, dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        init_head_weights(self)

    def embed_image(self, vision_cls: Tensor) -> Tensor:
        return nn.functional.normalize(self.vision_head(vision_cls), dim=-1)

    def embed_text(self, text_cls: Tensor) -> Tensor:
        return nn.functional.normalize(self.language_head(text_cls), dim=-1)


@HEADS.register("itm")
class ItmHead(nn.Module):
    """Image-text matching on the fused encoder (VLMo / VL-BEiT re-ranking): pooled text CLS -> 2 logits
    (``pooler_norm=False``: VLMo's pooler)."""

    def __init__(self, dim: int, pooler_norm: bool = True) -> None:
        super().__init__()
        self.pooler = Pooler(dim, norm=pooler_norm)
        self.fc = nn.Linear(dim, 2)
        init_head_weights(self)

    def forward(self, text_tokens: Tensor) -> Tensor:
        return self.fc(self.pooler(text_tokens))


@HEADS.register("mlm")
class MlmHead(nn.Linear):
    """D -> vocabulary logits (masked-token captioning and MLM)."""

    def __init__(self, dim: int, vocab_size: int) -> None:
        super().__init__(dim, vocab_size)
        init_head_weights(self)
