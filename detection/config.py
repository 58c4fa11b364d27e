"""yacs keys detectron2 lacks for BEiT-3 ViTDet: backbone, pyramid, soft-NMS, AdamW + layer decay, LSJ,
datasets given as COCO json + image root, and deterministic resumable training."""
from __future__ import annotations

from dataclasses import MISSING, fields

from detectron2.config import CfgNode as CN

from .backbone import Beit3ViTDetSpec

__all__ = ["add_beit3_config"]


def add_beit3_config(cfg: CN) -> CN:
    """Add the ``MODEL.BEIT3``, ``MODEL.REPLACE_HEADS``, ``MODEL.SFP``, ``MODEL.ROI_HEADS.SOFT_NMS``, ``SOLVER.*``, ``INPUT.LSJ`` and
    ``DATASETS.COCO_INSTANCES`` keys to a detectron2 config; ``MODEL.BEIT3`` mirrors :class:`Beit3ViTDetSpec`."""
    cfg.MODEL.BEIT3 = CN()
    for spec_field in fields(Beit3ViTDetSpec):  # one source of the backbone defaults: the spec dataclass
        default = (spec_field.default_factory() if spec_field.default is MISSING else spec_field.default)
        cfg.MODEL.BEIT3[spec_field.name.upper()] = default

    # module prefixes of MODEL.WEIGHTS not loaded (fresh init): a classifier for another label set, e.g. the
    # Objects365 -> COCO stage; any other shape mismatch is an error (engine.SafeDetectionCheckpointer)
    cfg.MODEL.REPLACE_HEADS = []

    cfg.MODEL.SFP = CN()
    cfg.MODEL.SFP.OUT_CHANNELS = 256
    cfg.MODEL.SFP.SCALE_FACTORS = [4.0, 2.0, 1.0, 0.5]
    cfg.MODEL.SFP.NORM = "LN"
    cfg.MODEL.SFP.SQUARE_PAD = 1024

    cfg.MODEL.ROI_HEADS.SOFT_NMS = CN()
    cfg.MODEL.ROI_HEADS.SOFT_NMS.ENABLED = True
    cfg.MODEL.ROI_HEADS.SOFT_NMS.METHOD = "linear"     # linear | gaussian | hard
    cfg.MODEL.ROI_HEADS.SOFT_NMS.IOU_THRESHOLD = 0.3   # linear / hard
    cfg.MODEL.ROI_HEADS.SOFT_NMS.SIGMA = 0.5           # gaussian
    cfg.MODEL.ROI_HEADS.SOFT_NMS.MIN_SCORE = 0.001

    cfg.SOLVER.OPTIMIZER = "AdamW"                 # AdamW | SGD
    cfg.SOLVER.BETAS = (0.9, 0.999)
    cfg.SOLVER.LAYER_DECAY = 0.9                   # lr scale decay^(L + 1 - layer_id) inside the backbone
    cfg.SOLVER.SEED_PER_ITER = True                # reseed RNGs from (SEED, iteration): exact --resume

    cfg.INPUT.LSJ = CN()
    cfg.INPUT.LSJ.ENABLED = False                  # large-scale jitter: resize x[MIN,MAX] + fixed crop
    cfg.INPUT.LSJ.IMAGE_SIZE = 1024
    cfg.INPUT.LSJ.MIN_SCALE = 0.1
    cfg.INPUT.LSJ.MAX_SCALE = 2.0

    # [name, json_file, image_root] triples registered like detectron2's register_coco_instances (the json
    # checked first, detection/coco_checks.py);
    # relative paths are resolved against DATASETS.ROOT (default: $DETECTRON2_DATASETS or ./datasets).
    cfg.DATASETS.COCO_INSTANCES = []
    cfg.DATASETS.ROOT = ""
    return cfg
