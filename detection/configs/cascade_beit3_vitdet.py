"""LazyConfig (ViTDet style) of detection/cascade_beit3.yaml: BEiT-3 large as a ViTDet backbone, Cascade
Mask R-CNN with soft-NMS, 1280 px LSJ, AdamW with layer decay, 100-epoch schedule on COCO.

    python -m beit3_plugins.detection.train --config-file detection/configs/cascade_beit3_vitdet.py --num-gpus 8 \
        model.backbone.net.spec.weights=/path/to/beit3_large_patch16_224.pth
"""
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.data import DatasetMapper, build_detection_test_loader, get_detection_dataset_dicts
from detectron2.data import transforms as T
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.roi_heads import FastRCNNConvFCHead, FastRCNNOutputLayers
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler
import torch

from beit3_plugins.detection import (Beit3ViTDetSpec, CheckedCOCOEvaluator, SoftNMSCascadeROIHeads,
                                     beit3_optimizer_params, build_beit3_net, build_resumable_train_loader,
                                     build_simple_feature_pyramid, lsj_augmentations)

IMAGE_SIZE = 1280

# ViTDet's Mask R-CNN (LN in the pyramid and heads, 2-conv RPN head, 4conv1fc box head), RGB ImageNet norm
model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model
model.backbone = L(build_simple_feature_pyramid)(
    net=L(build_beit3_net)(spec=L(Beit3ViTDetSpec)(
        name="beit3_large", img_size=IMAGE_SIZE, drop_path_rate=0.4, window_size=16,
        global_attn_indexes=[5, 11, 17, 23], checkpoint_activations=True, final_norm=True, weights="")),
    out_channels=256, scale_factors=(4.0, 2.0, 1.0, 0.5), norm="LN", square_pad=IMAGE_SIZE)

# Cascade R-CNN (3 stages, IoU 0.5 / 0.6 / 0.7) with soft-NMS at inference
[model.roi_heads.pop(k) for k in ["box_head", "box_predictor", "proposal_matcher"]]
model.roi_heads.update(
    _target_=SoftNMSCascadeROIHeads,
    box_heads=[L(FastRCNNConvFCHead)(input_shape=ShapeSpec(channels=256, height=7, width=7),
                                     conv_dims=[256, 256, 256, 256], fc_dims=[1024], conv_norm="LN")
               for _ in range(3)],
    box_predictors=[L(FastRCNNOutputLayers)(input_shape=ShapeSpec(channels=1024), test_score_thresh=0.05,
                                            test_topk_per_image=100,
                                            box2box_transform=L(Box2BoxTransform)(weights=(w1, w1, w2, w2)),
                                            cls_agnostic_bbox_reg=True, num_classes="${...num_classes}")
                    for (w1, w2) in [(10, 5), (20, 10), (30, 15)]],
    proposal_matchers=[L(Matcher)(thresholds=[th], labels=[0, 1], allow_low_quality_matches=False)
                       for th in [0.5, 0.6, 0.7]],
    soft_nms_enabled=True, soft_nms_method="linear", soft_nms_iou_threshold=0.3, soft_nms_sigma=0.5,
    soft_nms_min_score=0.001,
)

# datasets: detectron2's builtin COCO (under $DETECTRON2_DATASETS/coco); extra [name, json, image_root]
# entries in datasets.coco_instances are registered by beit3_plugins.detection.train
datasets = dict(root="", coco_instances=[])
dataloader = dict(
    train=L(build_resumable_train_loader)(
        dicts=L(get_detection_dataset_dicts)(names="coco_2017_train", filter_empty=True),
        mapper=L(DatasetMapper)(is_train=True, augmentations=L(lsj_augmentations)(image_size=IMAGE_SIZE),
                                image_format="RGB", use_instance_mask=True, recompute_boxes=True),
        total_batch_size=64, seed=42, num_workers=4, start_iter=0),
    test=L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names="coco_2017_val", filter_empty=False),
        mapper=L(DatasetMapper)(is_train=False, augmentations=[
            L(T.ResizeShortestEdge)(short_edge_length=IMAGE_SIZE, max_size=IMAGE_SIZE)], image_format="RGB"),
        num_workers=4),
    # detectron2's COCOEvaluator, scoring against the annotations the loader kept (detection/evaluation.py)
    evaluator=L(CheckedCOCOEvaluator)(dataset_name="${..test.dataset.names}", use_fast_impl=False),
)

# multi-scale + flip evaluation with detectron2's GeneralizedRCNNWithTTA (detection.train --tta or
# test_aug.enabled=True; yacs twin: TEST.AUG in cascade_beit3.yaml)
test_aug = dict(enabled=False, min_sizes=[640, 800, 960, 1120, 1280], max_size=IMAGE_SIZE, flip=True)

optimizer = L(torch.optim.AdamW)(
    params=L(beit3_optimizer_params)(base_lr=1e-4, weight_decay=0.1, layer_decay=0.9),  # model set by detection.train
    lr=1e-4, betas=(0.9, 0.999))

MAX_ITER = 184375  # 100 epochs at batch 64
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=[163889, 177546],
                                         num_updates=MAX_ITER),
    warmup_length=250 / MAX_ITER, warmup_factor=0.001)

train = model_zoo.get_config("common/train.py").train
train.update(output_dir="./output/cascade_beit3_vitdet", max_iter=MAX_ITER, init_checkpoint="", eval_period=0,
             seed=42, device="cuda")
train.amp.enabled = True
train.checkpointer.period = 5000
