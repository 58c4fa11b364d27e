"""Soft-NMS (Bodla et al., "Soft-NMS -- Improving Object Detection With One Line of Code", ICCV 2017)
and a Cascade R-CNN ROI head that uses it at inference, as the BEiT-3 COCO result did.

detectron2 only has hard NMS. Soft-NMS keeps overlapping boxes but decays their scores:

* ``linear``:   s_i <- s_i * (1 - IoU(M, b_i))          if IoU(M, b_i) >= iou_threshold, else unchanged
* ``gaussian``: s_i <- s_i * exp(-IoU(M, b_i)^2 / sigma)
* ``hard``:     s_i <- 0                                 if IoU(M, b_i) >= iou_threshold (= classic NMS)

where M is the current highest-scoring box; boxes whose score falls below ``min_score`` (or to 0) are dropped.
These are the rules of ``mmcv.ops.soft_nms`` (its ``naive`` method is our ``hard``), the compiled op the
batched form runs per class when mmcv is installed: soft-NMS is quadratic in the boxes it sees, and Cascade
R-CNN feeds thousands per image, so the batched form never lets one class's boxes meet another's. Without
mmcv a pure-torch loop (same rules, no host synchronisation per kept box) runs instead.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from detectron2.config import configurable
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, CascadeROIHeads
from detectron2.structures import Boxes, Instances
from torchvision.ops import box_iou

__all__ = ["SOFT_NMS_METHODS", "SOFT_NMS_BACKENDS", "soft_nms", "batched_soft_nms",
           "soft_nms_inference_single_image", "SoftNMSCascadeROIHeads"]

SOFT_NMS_METHODS = ("linear", "gaussian", "hard")
SOFT_NMS_BACKENDS = ("auto", "mmcv", "torch")
_MMCV_METHOD = {"linear": "linear", "gaussian": "gaussian", "hard": "naive"}
_SYNC_EVERY = 32  # the torch loop checks "anything left?" once per this many picks, not per box


def _check_args(boxes: Tensor, scores: Tensor, method: str, sigma: float) -> None:
    if method not in SOFT_NMS_METHODS:
        raise ValueError(f"unknown soft-NMS method {method!r}; choose one of {SOFT_NMS_METHODS}")
    if boxes.dim() != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1]:
        raise ValueError(f"expected boxes (N, 4) and scores (N,), got {tuple(boxes.shape)}, {tuple(scores.shape)}")
    if method == "gaussian" and sigma <= 0:
        raise ValueError(f"gaussian soft-NMS needs sigma > 0, got {sigma}")


def _mmcv_soft_nms():
    """mmcv's compiled CPU op, or None when mmcv (with ops) is not installed."""
    try:
        from mmcv.ops import soft_nms as mmcv_soft_nms
    except ImportError:
        return None
    return mmcv_soft_nms


def _resolve_backend(backend: str):
    if backend not in SOFT_NMS_BACKENDS:
        raise ValueError(f"unknown soft-NMS backend {backend!r}; choose one of {SOFT_NMS_BACKENDS}")
    op = _mmcv_soft_nms() if backend in ("auto", "mmcv") else None
    if backend == "mmcv" and op is None:
        raise ImportError("soft-NMS backend 'mmcv' needs mmcv built with ops (pip install 'beit3-plugins[mmseg]')")
    return op


def _soft_nms_torch(boxes: Tensor, scores: Tensor, method: str, iou_threshold: float, sigma: float,
                    min_score: float) -> Tuple[Tensor, Tensor]:
    """The selection loop on ``boxes``' device; kept picks are written into preallocated tensors so no
    step waits for the host (one check of "anything left?" per ``_SYNC_EVERY`` picks)."""
    n = boxes.shape[0]
    ious = box_iou(boxes.float(), boxes.float())
    current = scores.float().clone()
    alive = (current >= min_score) & (current > 0)
    picked = torch.zeros(n, dtype=torch.long, device=boxes.device)
    picked_scores = current.new_zeros(n)
    picked_valid = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    neg_inf = current.new_tensor(float("-inf"))
    for step in range(n):
        if step % _SYNC_EVERY == 0 and step and not bool(alive.any()):
            break
        best = torch.argmax(torch.where(alive, current, neg_inf))
        picked[step] = best
        picked_scores[step] = current[best]
        picked_valid[step] = alive[best]
        alive[best] = False
        iou = ious[best]
        if method == "linear":
            decay = torch.where(iou >= iou_threshold, 1.0 - iou, torch.ones_like(iou))
        elif method == "gaussian":
            decay = torch.exp(-(iou * iou) / sigma)
        else:
            decay = (iou < iou_threshold).float()
        current = torch.where(alive, current * decay, current)
        alive &= (current >= min_score) & (current > 0)  # a zero score (hard suppression) is gone
    return picked[picked_valid], picked_scores[picked_valid].to(scores.dtype)


def _soft_nms_mmcv(op, boxes: Tensor, scores: Tensor, method: str, iou_threshold: float, sigma: float,
                   min_score: float) -> Tuple[Tensor, Tensor]:
    """mmcv's op on CPU tensors. Boxes under ``min_score`` are dropped first (mmcv would keep its first pick
    whatever its score) and picks decayed to exactly 0 after (mmcv keeps them at 0 when ``min_score`` is 0):
    both make it follow the rules above exactly."""
    start = (scores >= min_score) & (scores > 0)
    index = start.nonzero().squeeze(1)
    if index.numel() == 0:
        return index, scores.new_zeros(0)
    dets, inds = op(boxes[index].float().contiguous(), scores[index].float().contiguous(),
                    iou_threshold=float(iou_threshold), sigma=float(sigma), min_score=float(min_score),
                    method=_MMCV_METHOD[method], offset=0)
    new_scores = dets[:, 4]
    positive = new_scores > 0
    return index[inds[positive].long()], new_scores[positive].to(scores.dtype)


def soft_nms(boxes: Tensor, scores: Tensor, method: str = "linear", iou_threshold: float = 0.3,
             sigma: float = 0.5, min_score: float = 1e-3, backend: str = "auto") -> Tuple[Tensor, Tensor]:
    """Soft-NMS over one set of (N, 4) xyxy boxes.

    Returns (kept indices into ``boxes`` in selection order, their decayed scores); selection order is
    non-increasing in decayed score. ``backend``: "mmcv" (compiled CPU op), "torch", or "auto" (mmcv if
    installed).
    """
    _check_args(boxes, scores, method, sigma)
    if boxes.shape[0] == 0:
        return boxes.new_zeros(0, dtype=torch.long), scores.new_zeros(0)
    op = _resolve_backend(backend)
    if op is None:
        return _soft_nms_torch(boxes, scores, method, iou_threshold, sigma, min_score)
    keep, kept_scores = _soft_nms_mmcv(op, boxes.cpu(), scores.cpu(), method, iou_threshold, sigma, min_score)
    return keep.to(boxes.device), kept_scores.to(scores.device)


def batched_soft_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, method: str = "linear",
                     iou_threshold: float = 0.3, sigma: float = 0.5, min_score: float = 1e-3,
                     backend: str = "auto") -> Tuple[Tensor, Tensor]:
    """Soft-NMS within each category of ``idxs`` independently (boxes of other categories never decay a
    score). Returns (kept indices, decayed scores) sorted by decayed score, highest first.

    Each category runs on its own boxes only, so the cost is the sum of the per-class squares, not the square
    of all boxes. The grouping costs one host synchronisation per image (the class sizes); with mmcv the image's
    boxes move to the CPU once and the results move back once.
    """
    _check_args(boxes, scores, method, sigma)
    if idxs.shape != scores.shape:
        raise ValueError(f"expected idxs (N,) like scores, got {tuple(idxs.shape)} and {tuple(scores.shape)}")
    if boxes.numel() == 0:
        return boxes.new_zeros(0, dtype=torch.long), scores.new_zeros(0)
    op = _resolve_backend(backend)
    device = boxes.device
    work_boxes, work_scores, work_idxs = (boxes.cpu(), scores.cpu(), idxs.cpu()) if op is not None else (
        boxes, scores, idxs)
    by_class = torch.argsort(work_idxs, stable=True)
    _, counts = torch.unique_consecutive(work_idxs[by_class], return_counts=True)
    keeps: List[Tensor] = []
    kept_scores: List[Tensor] = []
    for members in torch.split(by_class, counts.tolist()):
        if op is not None:
            keep, new_scores = _soft_nms_mmcv(op, work_boxes[members], work_scores[members], method,
                                              iou_threshold, sigma, min_score)
        else:
            keep, new_scores = _soft_nms_torch(work_boxes[members], work_scores[members], method,
                                               iou_threshold, sigma, min_score)
        keeps.append(members[keep])
        kept_scores.append(new_scores)
    keep, new_scores = torch.cat(keeps), torch.cat(kept_scores)
    order = torch.argsort(new_scores, descending=True, stable=True)
    return keep[order].to(device), new_scores[order].to(device)


def soft_nms_inference_single_image(boxes: Tensor, scores: Tensor, image_shape: Tuple[int, int],
                                    score_thresh: float, topk_per_image: int, method: str = "linear",
                                    iou_threshold: float = 0.3, sigma: float = 0.5, min_score: float = 1e-3
                                    ) -> Instances:
    """detectron2's ``fast_rcnn_inference_single_image`` with soft-NMS instead of hard NMS.

    ``boxes``: (R, K*4) or class-agnostic (R, 4); ``scores``: (R, K+1) with background last.
    """
    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    if not valid.all():
        boxes, scores = boxes[valid], scores[valid]
    scores = scores[:, :-1]
    num_bbox_reg_classes = boxes.shape[1] // 4
    boxes = Boxes(boxes.reshape(-1, 4))
    boxes.clip(image_shape)
    boxes = boxes.tensor.view(-1, num_bbox_reg_classes, 4)
    candidates = scores > score_thresh
    inds = candidates.nonzero()
    if num_bbox_reg_classes == 1:
        boxes = boxes[inds[:, 0], 0]
    else:
        boxes = boxes[candidates]
    scores = scores[candidates]
    keep, new_scores = batched_soft_nms(boxes, scores, inds[:, 1], method=method, iou_threshold=iou_threshold,
                                        sigma=sigma, min_score=min_score)
    if topk_per_image >= 0:
        keep, new_scores = keep[:topk_per_image], new_scores[:topk_per_image]
    result = Instances(image_shape)
    result.pred_boxes = Boxes(boxes[keep])
    result.scores = new_scores
    result.pred_classes = inds[keep, 1]
    return result


@ROI_HEADS_REGISTRY.register()
class SoftNMSCascadeROIHeads(CascadeROIHeads):
    """detectron2's Cascade R-CNN heads; inference merges the stages as detectron2 does (mean of the
    stages' class scores, last stage's boxes) and then applies soft-NMS (``MODEL.ROI_HEADS.SOFT_NMS``)."""

    @configurable
    def __init__(self, *, soft_nms_enabled: bool = True, soft_nms_method: str = "linear",
                 soft_nms_iou_threshold: float = 0.3, soft_nms_sigma: float = 0.5,
                 soft_nms_min_score: float = 1e-3, **kwargs) -> None:
        super().__init__(**kwargs)
        if soft_nms_method not in SOFT_NMS_METHODS:
            raise ValueError(f"unknown soft-NMS method {soft_nms_method!r}; choose one of {SOFT_NMS_METHODS}")
        self.soft_nms_enabled = soft_nms_enabled
        self.soft_nms_method = soft_nms_method
        self.soft_nms_iou_threshold = soft_nms_iou_threshold
        self.soft_nms_sigma = soft_nms_sigma
        self.soft_nms_min_score = soft_nms_min_score

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        s = cfg.MODEL.ROI_HEADS.SOFT_NMS
        ret.update(soft_nms_enabled=s.ENABLED, soft_nms_method=s.METHOD, soft_nms_iou_threshold=s.IOU_THRESHOLD,
                   soft_nms_sigma=s.SIGMA, soft_nms_min_score=s.MIN_SCORE)
        return ret

    def _forward_box(self, features, proposals, targets=None):
        if self.training or not self.soft_nms_enabled:
            return super()._forward_box(features, proposals, targets)
        features = [features[f] for f in self.box_in_features]
        head_outputs = []
        prev_pred_boxes = None
        image_sizes = [x.image_size for x in proposals]
        for k in range(self.num_cascade_stages):
            if k > 0:
                proposals = self._create_proposals_from_boxes(prev_pred_boxes, image_sizes)
            predictions = self._run_stage(features, proposals, k)
            prev_pred_boxes = self.box_predictor[k].predict_boxes(predictions, proposals)
            head_outputs.append((self.box_predictor[k], predictions, proposals))
        scores_per_stage = [p.predict_probs(pred, props) for p, pred, props in head_outputs]
        scores = [sum(per_image) * (1.0 / self.num_cascade_stages) for per_image in zip(*scores_per_stage)]
        predictor, predictions, proposals = head_outputs[-1]
        boxes = predictor.predict_boxes(predictions, proposals)
        return [
            soft_nms_inference_single_image(
                b, s, size, predictor.test_score_thresh, predictor.test_topk_per_image,
                method=self.soft_nms_method, iou_threshold=self.soft_nms_iou_threshold,
                sigma=self.soft_nms_sigma, min_score=self.soft_nms_min_score)
            for b, s, size in zip(boxes, scores, image_sizes)
        ]
