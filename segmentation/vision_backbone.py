"""The BEiT-3 vision path as a dense-prediction trunk: build, prune the language branch, load weights.

Shared by the ViT-Adapter backbone (``vit_adapter.py``) and the BEiT / VL-BEiT style feature pyramid
(``feature_pyramid.py``). The Multiway Transformer comes from our own ``BACKBONES`` registry; only its
vision experts run for segmentation, so the language experts are removed after building (they would be
unused parameters under DDP and waste optimizer memory: about half of the model). Pretrained weights
(a released BEiT-3 file or our own export) are loaded in ``init_weights`` with a key report in the log.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from beit3_plugins.backbones import MultiwayTransformer, Routing, checkpoint_filter_fn
from beit3_plugins.checkpoint import LoadReport, load_state_dict_file, load_with_report
from beit3_plugins.registry import BACKBONES

__all__ = ["Beit3VisionTrunk", "drop_language_branch"]


def drop_language_branch(model: MultiwayTransformer) -> List[str]:
    """Remove every text / vision-language expert and the text embeddings; return the removed names.

    Vision-only routing never touches them (``PerModality`` picks ``.vision``), so the forward is unchanged.
    """
    removed = []
    for name, module in list(model.named_modules()):
        for attr in ("text", "vl"):
            if isinstance(getattr(module, attr, None), nn.Module) and hasattr(module, "vision"):
                setattr(module, attr, None)
                removed.append(f"{name}.{attr}" if name else attr)
    for attr in ("text_embed", "text_pos_embed"):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)
            removed.append(attr)
    return removed


class Beit3VisionTrunk(BaseModule):
    """Owns ``self.beit3`` (a registered Multiway Transformer, vision experts only).

    Args:
        backbone: name in ``beit3_plugins.registry.BACKBONES`` (``beit3_large``, ``beit3_tiny``, ...).
        backbone_cfg: overrides of that backbone's config dataclass (``img_size``, ``drop_path_rate``,
            ``checkpoint_activations``, ...).
        pretrained: released BEiT-3 checkpoint (``"model"`` dict, ``beit3.`` keys) or our own export;
            loaded in ``init_weights``. Vision keys must all be present; language keys are reported as
            not used.
    """

    def __init__(self, backbone: str = "beit3_base", backbone_cfg: Optional[dict] = None,
                 pretrained: Optional[str] = None, init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.backbone_name = backbone
        self.pretrained = pretrained
        self.beit3: MultiwayTransformer = BACKBONES.build(backbone, **dict(backbone_cfg or {}))
        self.beit3.require_absolute_positions("the segmentation backbone")
        self.dropped_language_keys = drop_language_branch(self.beit3)
        # the final per-modality norm is unused too: the adapter / pyramid normalise their own outputs
        self.beit3.norm = None
        # [MASK] only serves masked image modelling: kept for checkpoint compatibility, frozen so that DDP
        # sees no parameter without a gradient
        self.beit3.mask_token.requires_grad_(False)
        self.load_report: Optional[LoadReport] = None

    # ------------------------------------------------------------------ properties
    @property
    def embed_dim(self) -> int:
        return self.beit3.cfg.embed_dim

    @property
    def patch_size(self) -> int:
        return self.beit3.cfg.patch_size

    @property
    def depth(self) -> int:
        return self.beit3.cfg.depth

    def layer_id(self, name: str) -> int:
        """Layer-decay depth of a parameter of this module (name relative to it).

        Trunk parameters follow the backbone (embeddings 0, layer i -> i + 1); everything the adapter or
        pyramid adds is new and gets the full learning rate (depth + 1), as in ViT-Adapter / BEiT.
        """
        if name.startswith("beit3."):
            return self.beit3.layer_id(name[len("beit3."):])
        return self.depth + 1

    def no_weight_decay_names(self) -> set:
        return {f"beit3.{n}" for n in self.beit3.no_weight_decay()}

    # ------------------------------------------------------------------ running the vision path
    def check_input(self, image: Tensor, multiple: int) -> None:
        if image.dim() != 4:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(image.shape)}")
        h, w = image.shape[-2:]
        if h % multiple or w % multiple:
            raise ValueError(
                f"input {h}x{w} is not a multiple of {multiple} (patch size {self.patch_size} and the "
                f"adapter's strides); pad it: SegDataPreProcessor(size_divisor={multiple}) or a crop size "
                f"that is a multiple of {multiple}")

    def run_layer(self, index: int, x: Tensor) -> Tensor:
        layer = self.beit3.layers[index]
        if self.beit3.cfg.checkpoint_activations and self.training and torch.is_grad_enabled():
            x, _ = checkpoint(layer, x, Routing.vision(), None, None, use_reentrant=False)
        else:
            x, _ = layer(x, Routing.vision(), None)
        return x

    # ------------------------------------------------------------------ weights
    def load_pretrained(self, path: str) -> LoadReport:
        """Load a released BEiT-3 file or our export into the vision trunk; log and return a key report."""
        logger = MMLogger.get_current_instance()
        state = load_state_dict_file(path)
        backbone_sd, heads, notes = checkpoint_filter_fn(state, self.beit3)
        own = set(self.beit3.state_dict())
        language = sorted(k for k in backbone_sd if k not in own and _is_language_key(k))
        final_norm = sorted(k for k in backbone_sd if k not in own and k.startswith("norm."))
        backbone_sd = {k: v for k, v in backbone_sd.items() if k not in language and k not in final_norm}
        notes = list(notes)
        if language:
            notes.append(f"language-branch tensors not used for segmentation: {len(language)}")
        if final_norm:
            notes.append(f"final output norm not used (the dense head has its own norms): {final_norm}")
        report = load_with_report(self.beit3, backbone_sd, strict=True, source=path, notes=notes)
        report.heads = heads
        logger.info("BEiT-3 vision trunk initialised from a checkpoint:\n" + report.summary())
        self.load_report = report
        return report

    def init_weights(self) -> None:
        # Sub-modules initialise themselves on construction (the backbone's Magneto init, mmcv's
        # deformable-attention grid init, our adapter init); here only the pretrained trunk is loaded.
        if self.pretrained:
            self.load_pretrained(self.pretrained)
        self._is_init = True


def _is_language_key(key: str) -> bool:
    parts = key.split(".")
    return key.startswith(("text_embed", "text_pos_embed")) or "text" in parts or "vl" in parts

