"""Multi-scale + flip test-time augmentation through detectron2's own ``GeneralizedRCNNWithTTA``.

BEiT-3 reports COCO with multi-scale evaluation (paper, Table 5). detectron2 already implements it: every
image is resized to each short edge in ``TEST.AUG.MIN_SIZES`` (long edge capped at ``TEST.AUG.MAX_SIZE``),
also flipped with ``TEST.AUG.FLIP``; boxes of all passes are merged with NMS, masks are averaged over the
passes for the merged boxes. This module only adds what the ViTDet backbone needs: the square padding of
the pyramid must hold the largest augmented image (a larger image would be cropped by the padding), and the
LazyConfig path gets the few yacs keys detectron2's TTA reads.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import Dict, Sequence

from detectron2.config import CfgNode, get_cfg
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.modeling import GeneralizedRCNNWithTTA

__all__ = ["check_tta_sizes", "build_tta_model", "test_with_tta", "lazy_tta_cfg"]

logger = logging.getLogger(__name__)


def check_tta_sizes(min_sizes: Sequence[int], max_size: int, square_pad: int) -> None:
    """Every augmented image must fit the pyramid's square padding (0 = no padding constraint)."""
    if not min_sizes:
        raise ValueError("TEST.AUG.MIN_SIZES is empty: give the short-edge sizes of the test-time scales")
    if square_pad and (max_size > square_pad or max(min_sizes) > square_pad):
        raise ValueError(f"test-time augmentation sizes (MIN_SIZES {tuple(min_sizes)}, MAX_SIZE {max_size}) exceed "
                         f"MODEL.SFP.SQUARE_PAD {square_pad}: the padding would crop the image. Lower "
                         "TEST.AUG.MAX_SIZE / MIN_SIZES or raise SQUARE_PAD")


def build_tta_model(cfg: CfgNode, model) -> GeneralizedRCNNWithTTA:
    """detectron2's TTA wrapper for a yacs ``cfg`` (``TEST.AUG.*``), after the padding check."""
    square_pad = cfg.MODEL.SFP.SQUARE_PAD if "SFP" in cfg.MODEL else 0
    check_tta_sizes(cfg.TEST.AUG.MIN_SIZES, cfg.TEST.AUG.MAX_SIZE, square_pad)
    return GeneralizedRCNNWithTTA(cfg, model)


def test_with_tta(cfg: CfgNode, model, build_evaluator, data_loader_for) -> Dict[str, Dict[str, float]]:
    """Evaluate ``model`` with TTA on every ``cfg.DATASETS.TEST`` set; results keyed ``<task>_TTA`` as
    detectron2's ``tools/train_net.py`` names them."""
    logger.info("Running inference with test-time augmentation: sizes %s, max %d, flip %s",
                tuple(cfg.TEST.AUG.MIN_SIZES), cfg.TEST.AUG.MAX_SIZE, cfg.TEST.AUG.FLIP)
    tta = build_tta_model(cfg, model)
    results = OrderedDict()
    for name in cfg.DATASETS.TEST:
        evaluator = build_evaluator(cfg, name, os.path.join(cfg.OUTPUT_DIR, "inference_TTA", name))
        result = inference_on_dataset(tta, data_loader_for(cfg, name), evaluator)
        print_csv_format(result)
        results[name] = result
    if len(results) == 1:
        results = next(iter(results.values()))
    return OrderedDict((f"{k}_TTA", v) for k, v in results.items())


def lazy_tta_cfg(model, test_aug: dict, square_pad: int = 0) -> CfgNode:
    """The yacs keys ``GeneralizedRCNNWithTTA`` reads, filled from an instantiated LazyConfig detector and the
    config's ``test_aug`` dict (``min_sizes``, ``max_size``, ``flip``)."""
    check_tta_sizes(test_aug["min_sizes"], test_aug["max_size"], square_pad)
    cfg = get_cfg()
    cfg.MODEL.MASK_ON = bool(getattr(model.roi_heads, "mask_on", False))
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = model.roi_heads.num_classes
    predictor = model.roi_heads.box_predictor
    predictor = predictor[-1] if isinstance(predictor, (list, tuple)) or hasattr(predictor, "__getitem__") else predictor
    cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST = predictor.test_nms_thresh
    cfg.TEST.DETECTIONS_PER_IMAGE = predictor.test_topk_per_image
    cfg.TEST.AUG.MIN_SIZES = tuple(test_aug["min_sizes"])
    cfg.TEST.AUG.MAX_SIZE = int(test_aug["max_size"])
    cfg.TEST.AUG.FLIP = bool(test_aug.get("flip", True))
    return cfg
