"""mmsegmentation adapter (installed as ``beit3_plugins.segmentation``).

Importing this package registers into mmseg's registries (it is what ``custom_imports`` in the configs
names): the ``BEiT3ViTAdapter`` and ``BEiT3FeaturePyramid`` backbones (MODELS), the
``SlideMask2FormerHead`` (mmseg's Mask2Former head with a sliding-window fix) (MODELS), the
``Beit3LayerDecayOptimizerConstructor`` (OPTIM_WRAPPER_CONSTRUCTORS) and the ``ADE20KFormatDataset``
(DATASETS), the ``Beit3GuardedOptimWrapper`` that refuses non-finite losses/gradients before the
optimizer step (OPTIM_WRAPPERS), the ``Beit3Runner`` that probes ``work_dir`` before building anything
(RUNNERS); it also allow-lists the plain-data types of mmengine checkpoints for torch's weights-only loading
so that ``--resume`` and ``mim test`` work, makes mmengine read checkpoints from every source (local files,
URLs, named schemes) through the package's safe loader, and makes it write them atomically; and it routes
mmcv's deformable attention to its PyTorch path on devices the compiled op has no kernel for
(``mmcv_ops.py``). Nothing else in the library imports mmseg.
"""
from beit3_plugins.optional import require

for _module in ("mmengine", "mmcv.ops", "mmdet", "mmseg"):
    require(_module, "mmseg", "beit3_plugins.segmentation")

from .checkpoint_compat import (allow_mmengine_checkpoint_globals, register_atomic_local_backend,
                                register_safe_checkpoint_loaders)
from .datasets import ADE20KFormatDataset, MissingAnnotationError, SegLabelRangeError  # noqa: F401
from .feature_pyramid import BEiT3FeaturePyramid  # noqa: F401
from .heads import SlideMask2FormerHead  # noqa: F401
from .mmcv_ops import install_deform_attn_fallback
from .nonfinite_guard import Beit3GuardedOptimWrapper, NonFiniteLossError  # noqa: F401
from .optimizer import Beit3LayerDecayOptimizerConstructor  # noqa: F401
from .runner import Beit3Runner  # noqa: F401
from .vision_backbone import BACKBONE_PREFIX, Beit3VisionTrunk  # noqa: F401
from .vit_adapter import BEiT3ViTAdapter, default_interaction_indexes  # noqa: F401

allow_mmengine_checkpoint_globals()
register_safe_checkpoint_loaders()  # load_from / resume / Pretrained init: every scheme reads weights-only
register_atomic_local_backend()  # iter_N.pth / last_checkpoint: temp file + rename, never torn by a kill
install_deform_attn_fallback()  # a CUDA forward never reaches an mmcv build without a CUDA kernel
