"""Soft-NMS against hand-worked cases, against torchvision's hard NMS, and inside the Cascade R-CNN heads."""
import math
from pathlib import Path

import pytest
import torch
from torchvision.ops import batched_nms, nms

from beit3_plugins.detection import (add_beit3_config, batched_soft_nms, soft_nms,
                                     soft_nms_inference_single_image)


@pytest.fixture
def tiny_detector_cfg():
    from detectron2.config import get_cfg

    import beit3_plugins.detection as det

    cfg = add_beit3_config(get_cfg())
    cfg.merge_from_file(str(Path(det.__file__).parent / "cascade_beit3_tiny.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    return cfg

# A = [0,0,10,10]; B = top 60% of A (IoU(A,B) = 0.6); C = bottom 60% of A (IoU(A,C) = 0.6,
# IoU(B,C) = 20 / 100 = 0.2); D far away.
BOXES = torch.tensor([[0., 0., 10., 10.], [0., 0., 10., 6.], [0., 4., 10., 10.], [30., 30., 40., 40.]])
SCORES = torch.tensor([0.9, 0.85, 0.5, 0.3])


def test_linear_hand_worked():
    keep, scores = soft_nms(BOXES, SCORES, method="linear", iou_threshold=0.3)
    # pick A (0.9): B -> 0.85 * (1 - 0.6) = 0.34, C -> 0.5 * 0.4 = 0.2 (both IoU 0.6 > 0.3), D unchanged.
    # pick B (0.34): IoU(B, C) = 0.2 <= 0.3, C stays 0.2. Then D (0.3) outranks C (0.2).
    assert keep.tolist() == [0, 1, 3, 2]
    assert scores.tolist() == pytest.approx([0.9, 0.34, 0.3, 0.2], abs=1e-6)


def test_gaussian_hand_worked():
    keep, scores = soft_nms(BOXES, SCORES, method="gaussian", sigma=0.5)
    b = 0.85 * math.exp(-0.36 / 0.5)                        # decayed by A
    c = 0.5 * math.exp(-0.36 / 0.5) * math.exp(-0.04 / 0.5)  # by A, then by B (IoU 0.2)
    assert (b, c) == pytest.approx((0.41374, 0.22466), abs=1e-5)
    assert keep.tolist() == [0, 1, 3, 2]
    assert scores.tolist() == pytest.approx([0.9, b, 0.3, c], abs=1e-6)


def test_min_score_drops_boxes_and_empty_input():
    boxes = torch.tensor([[0., 0., 10., 10.], [0., 0., 10., 9.5]])  # IoU 0.95 -> linear factor 0.05
    keep, scores = soft_nms(boxes, torch.tensor([0.9, 0.01]), method="linear", min_score=1e-3)
    assert keep.tolist() == [0]  # 0.01 * 0.05 = 5e-4 < 1e-3
    keep, scores = soft_nms(torch.zeros(0, 4), torch.zeros(0))
    assert keep.numel() == 0 and scores.numel() == 0
    with pytest.raises(ValueError, match="unknown soft-NMS method"):
        soft_nms(BOXES, SCORES, method="cubic")


def test_hard_method_equals_torchvision_nms():
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=gen) * 100
    wh = torch.rand(200, 2, generator=gen) * 40 + 5
    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.rand(200, generator=gen)
    keep, kept_scores = soft_nms(boxes, scores, method="hard", iou_threshold=0.5, min_score=0.0)
    assert keep.tolist() == nms(boxes, scores, 0.5).tolist()
    assert torch.equal(kept_scores, scores[keep])
    classes = torch.randint(0, 3, (200,), generator=gen)
    keep, _ = batched_soft_nms(boxes, scores, classes, method="hard", iou_threshold=0.5, min_score=0.0)
    assert keep.tolist() == batched_nms(boxes, scores, classes, 0.5).tolist()


def test_categories_do_not_decay_each_other():
    boxes = torch.tensor([[0., 0., 10., 10.], [0., 0., 10., 10.], [0., 0., 10., 6.]])
    keep, scores = batched_soft_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 1, 0]),
                                    method="linear", iou_threshold=0.3)
    assert keep.tolist() == [0, 1, 2]
    assert scores.tolist() == pytest.approx([0.9, 0.8, 0.7 * 0.4], abs=1e-6)


def test_single_image_inference_thresholds_clips_and_caps():
    boxes = torch.tensor([[-5., 0., 10., 10.], [0., 0., 10., 6.], [50., 50., 70., 70.]])  # class-agnostic
    # columns: class 0, class 1, background
    scores = torch.tensor([[0.9, 0.02, 0.08], [0.85, 0.1, 0.05], [0.01, 0.6, 0.39]])
    out = soft_nms_inference_single_image(boxes, scores, (64, 64), score_thresh=0.05, topk_per_image=10,
                                          method="linear", iou_threshold=0.3)
    # candidates: (0, c0) 0.9, (1, c0) 0.85, (1, c1) 0.1, (2, c1) 0.6; box 0 clipped to x >= 0 and box 2 to 64
    assert out.pred_classes.tolist() == [0, 1, 0, 1]
    assert out.scores.tolist() == pytest.approx([0.9, 0.6, 0.85 * 0.4, 0.1], abs=1e-6)
    assert out.pred_boxes.tensor[0].tolist() == [0., 0., 10., 10.]
    assert out.pred_boxes.tensor[1].tolist() == [50., 50., 64., 64.]
    capped = soft_nms_inference_single_image(boxes, scores, (64, 64), 0.05, topk_per_image=2)
    assert len(capped) == 2 and capped.scores.tolist() == pytest.approx([0.9, 0.6])


def test_cascade_heads_hard_mode_reproduces_detectron2_inference(tiny_detector_cfg):
    """With method 'hard' at detectron2's NMS threshold, our inference path must give exactly what
    detectron2's CascadeROIHeads gives (stage score averaging, last-stage boxes, clipping, top-k)."""
    from detectron2.modeling import build_model

    cfg = tiny_detector_cfg.clone()
    cfg.MODEL.ROI_HEADS.SOFT_NMS.METHOD = "hard"
    cfg.MODEL.ROI_HEADS.SOFT_NMS.IOU_THRESHOLD = cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST
    cfg.MODEL.ROI_HEADS.SOFT_NMS.MIN_SCORE = 0.0
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    image = torch.randint(0, 255, (3, 128, 128), dtype=torch.uint8)
    with torch.no_grad():
        ours = model([{"image": image}])[0]["instances"]
        model.roi_heads.soft_nms_enabled = False
        theirs = model([{"image": image}])[0]["instances"]
        model.roi_heads.soft_nms_enabled = True
        model.roi_heads.soft_nms_method = "linear"
        soft = model([{"image": image}])[0]["instances"]
    assert len(theirs) > 0
    order = torch.argsort(theirs.scores, descending=True, stable=True)
    assert torch.allclose(ours.scores, theirs.scores[order])
    assert torch.allclose(ours.pred_boxes.tensor, theirs.pred_boxes.tensor[order])
    assert torch.equal(ours.pred_classes, theirs.pred_classes[order])
    # soft-NMS keeps overlapping boxes that hard NMS removed (with lower scores), up to the per-image cap
    assert len(soft) >= len(theirs)


def _random_detections(n, num_classes, seed):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen) * 200
    wh = torch.rand(n, 2, generator=gen) * 60 + 2
    return torch.cat([xy, xy + wh], 1), torch.rand(n, generator=gen), torch.randint(0, num_classes, (n,), generator=gen)


@pytest.mark.parametrize("method", ["linear", "gaussian", "hard"])
def test_batched_soft_nms_keeps_what_mmcv_keeps_per_class(method):
    """Reference: ``mmcv.ops.soft_nms`` (mmcv 2.1.0's compiled op) called directly on each class's boxes.
    Ours must keep the same boxes with the same decayed scores, with both backends."""
    from mmcv.ops import soft_nms as mmcv_soft_nms

    boxes, scores, classes = _random_detections(600, 7, seed=1)
    expected = {}
    for c in classes.unique().tolist():
        members = (classes == c).nonzero().squeeze(1)
        dets, inds = mmcv_soft_nms(boxes[members], scores[members], iou_threshold=0.3, sigma=0.5, min_score=0.05,
                                   method={"hard": "naive"}.get(method, method))
        for i, s in zip(members[inds].tolist(), dets[:, 4].tolist()):
            if s > 0:
                expected[i] = s
    assert 50 < len(expected) < 600  # soft-NMS really decayed and dropped boxes here
    for backend in ("mmcv", "torch"):
        keep, kept_scores = batched_soft_nms(boxes, scores, classes, method=method, iou_threshold=0.3, sigma=0.5,
                                             min_score=0.05, backend=backend)
        assert sorted(keep.tolist()) == sorted(expected), backend
        assert kept_scores.tolist() == pytest.approx([expected[i] for i in keep.tolist()], abs=1e-5), backend
        assert torch.all(kept_scores[:-1] >= kept_scores[1:])


def test_batched_soft_nms_per_class_matches_one_class_at_a_time():
    boxes, scores, classes = _random_detections(300, 4, seed=2)
    keep, kept_scores = batched_soft_nms(boxes, scores, classes, backend="torch")
    for c in range(4):
        members = (classes == c).nonzero().squeeze(1)
        alone, alone_scores = soft_nms(boxes[members], scores[members], backend="torch")
        mine = classes[keep] == c
        assert keep[mine].tolist() == members[alone].tolist()
        assert torch.allclose(kept_scores[mine], alone_scores)
    with pytest.raises(ValueError, match="unknown soft-NMS backend"):
        batched_soft_nms(boxes, scores, classes, backend="cuda-magic")
