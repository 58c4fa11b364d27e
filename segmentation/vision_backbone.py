"""The BEiT-3 / VLMo vision path as a dense-prediction trunk: build, prune to vision, load weights.

Shared by the ViT-Adapter backbone (``vit_adapter.py``) and the BEiT / VL-BEiT style feature pyramid
(``feature_pyramid.py``). The Multiway Transformer comes from our own ``BACKBONES`` registry and is pruned
with its own ``prune_to_vision`` (the language experts would be unused parameters under DDP and waste
optimizer memory: about half of the model; the final norm too, the dense heads have their own). Layers run
through the backbone's ``run_vision_layer``, which adds a relative position bias when the model has one
(VLMo). Pretrained weights (a released BEiT-3 / VLMo file or our own export) are loaded in ``init_weights``
by the backbone's one loader, with its key report in the log.
"""
from __future__ import annotations

from typing import List, Optional

from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from torch import Tensor

from beit3_plugins.backbones import MultiwayTransformer, load_pretrained
from beit3_plugins.checkpoint import LoadReport
from beit3_plugins.registry import BACKBONES

__all__ = ["BACKBONE_PREFIX", "Beit3VisionTrunk"]

# Where a segmentor built here keeps the Multiway backbone: EncoderDecoder.backbone (this trunk) .beit3; read
# by the optimizer constructor and the loader, checked against the built model in tests.
BACKBONE_PREFIX = "backbone.beit3."


class Beit3VisionTrunk(BaseModule):
    """Owns ``self.beit3`` (a registered Multiway Transformer, vision experts only).

    Args:
        backbone: name in ``beit3_plugins.registry.BACKBONES`` (``beit3_large``, ``vlmo_base``, ``beit3_tiny``, ...).
        backbone_cfg: overrides of that backbone's config dataclass (``img_size``, ``drop_path_rate``,
            ``checkpoint_activations``, ...).
        pretrained: released BEiT-3 / VLMo checkpoint or our own export; loaded in ``init_weights``. Vision
            keys must all be present; tensors of the pruned language branch are reported as not used.
    """

    def __init__(self, backbone: str = "beit3_base", backbone_cfg: Optional[dict] = None,
                 pretrained: Optional[str] = None, init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.backbone_name = backbone
        self.pretrained = pretrained
        self.beit3: MultiwayTransformer = BACKBONES.build(backbone, **dict(backbone_cfg or {}))
        self.dropped_language_keys: List[str] = self.beit3.prune_to_vision(keep_final_norm=False)
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

    # ------------------------------------------------------------------ input checks
    def check_input(self, image: Tensor, multiple: int) -> None:
        if image.dim() != 4:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(image.shape)}")
        h, w = image.shape[-2:]
        if h % multiple or w % multiple:
            raise ValueError(
                f"input {h}x{w} is not a multiple of {multiple} (patch size {self.patch_size} and the "
                f"adapter's strides); pad it: SegDataPreProcessor(size_divisor={multiple}) or a crop size "
                f"that is a multiple of {multiple}")

    # ------------------------------------------------------------------ weights
    def load_pretrained(self, path: str) -> LoadReport:
        """Load a released BEiT-3 / VLMo file or our export into the vision trunk; log and return the report."""
        report = load_pretrained(self.beit3, path, strict=True, prefixes=(BACKBONE_PREFIX,))
        MMLogger.get_current_instance().info("BEiT-3 vision trunk initialised from a checkpoint:\n" + report.summary())
        self.load_report = report
        return report

    def init_weights(self) -> None:
        # Sub-modules initialise themselves on construction (the backbone's Magneto init, mmcv's
        # deformable-attention grid init, our adapter init); here only the pretrained trunk is loaded.
        if self.pretrained:
            self.load_pretrained(self.pretrained)
        self._is_init = True
