"""detectron2 adapter (installed as ``beit3_plugins.detection``): BEiT-3 as a ViTDet backbone with Cascade
Mask R-CNN and soft-NMS. Importing this package registers ``build_beit3_vitdet_backbone`` in detectron2's
``BACKBONE_REGISTRY`` and ``SoftNMSCascadeROIHeads`` in its ``ROI_HEADS_REGISTRY``; it is the only module
of the project that imports detectron2."""
from beit3_plugins.optional import require

require("detectron2", "detectron2", "beit3_plugins.detection")
require("pycocotools", "detectron2", "beit3_plugins.detection (COCO evaluation)")

from .config import add_beit3_config
from .backbone import (BACKBONE_PREFIX, Beit3ViTDet, Beit3ViTDetSpec, build_beit3_net, build_beit3_vitdet_backbone,
                       build_simple_feature_pyramid, default_global_attn_indexes)
from .soft_nms import SoftNMSCascadeROIHeads, batched_soft_nms, soft_nms, soft_nms_inference_single_image
from .optimizer import beit3_optimizer_params, build_beit3_optimizer
from .coco_checks import CocoAnnotationError, check_coco_json
from .data import (ResumableTrainingStream, SeededMapper, build_resumable_train_loader, build_train_mapper,
                   check_dataset_files, lsj_augmentations, register_coco_datasets)
from .evaluation import CheckedCOCOEvaluator, checked_ground_truth
from .engine import Beit3DetectionTrainer, SafeDetectionCheckpointer, SeedPerIteration
from .visualize import visualize_predictions

__all__ = [
    "BACKBONE_PREFIX",
    "CocoAnnotationError", "check_coco_json", "CheckedCOCOEvaluator", "checked_ground_truth",
    "add_beit3_config", "Beit3ViTDet", "Beit3ViTDetSpec", "build_beit3_net", "build_beit3_vitdet_backbone",
    "build_simple_feature_pyramid", "default_global_attn_indexes", "SoftNMSCascadeROIHeads", "batched_soft_nms",
    "soft_nms", "soft_nms_inference_single_image", "beit3_optimizer_params", "build_beit3_optimizer",
    "ResumableTrainingStream", "SeededMapper", "build_resumable_train_loader", "build_train_mapper",
    "check_dataset_files", "lsj_augmentations", "register_coco_datasets", "Beit3DetectionTrainer",
    "SafeDetectionCheckpointer", "SeedPerIteration", "visualize_predictions",
]
