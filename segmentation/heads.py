"""mmseg's Mask2Former head, made usable with sliding-window inference.

mmseg 1.2.2's ``Mask2FormerHead.predict`` upsamples the masks to ``pad_shape`` when present, but
``EncoderDecoder.slide_inference`` only overwrites ``img_shape`` with each window's size, so every
window's logits come out at the whole image's size and the accumulation fails (open upstream fix:
open-mmlab/mmsegmentation PR #3752). ViT-Adapter's ADE20K setting tests with sliding windows, so this
subclass upsamples to the window in slide mode and is otherwise mmseg's head unchanged.
"""
from __future__ import annotations

from typing import List, Tuple

from mmseg.models.decode_heads import Mask2FormerHead
from mmseg.registry import MODELS
from torch import Tensor

__all__ = ["SlideMask2FormerHead"]


@MODELS.register_module()
class SlideMask2FormerHead(Mask2FormerHead):
    def predict(self, x: Tuple[Tensor], batch_img_metas: List[dict], test_cfg) -> Tensor:
        if test_cfg is not None and test_cfg.get("mode") == "slide":
            # the window's size is in img_shape; pad_shape still holds the whole padded image's
            batch_img_metas = [{k: v for k, v in meta.items() if k != "pad_shape"} for meta in batch_img_metas]
        return super().predict(x, batch_img_metas, test_cfg)
