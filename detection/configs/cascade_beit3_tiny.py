"""LazyConfig twin of detection/cascade_beit3_tiny.yaml (same modules, same parameter names): the paper
config at toy size for the synthetic shape world on CPU.

    python -m beit3_plugins.detection.train --config-file detection/configs/cascade_beit3_tiny.py datasets.root=/tmp/world
"""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator

from .cascade_beit3_vitdet import dataloader, datasets, lr_multiplier, model, optimizer, test_aug, train

IMAGE_SIZE = 128
CH = 64

model.backbone.net.spec.update(name="beit3_tiny", img_size=IMAGE_SIZE, drop_path_rate=0.0, window_size=8,
                               global_attn_indexes=[1, 3], checkpoint_activations=False)
model.backbone.update(out_channels=CH, scale_factors=(2.0, 1.0, 0.5), square_pad=IMAGE_SIZE)
model.proposal_generator.update(
    in_features=["p2", "p3", "p4", "p5"], batch_size_per_image=64, pre_nms_topk=(256, 128), post_nms_topk=(64, 32),
    anchor_generator=L(DefaultAnchorGenerator)(sizes=[[16], [32], [64], [128]], aspect_ratios=[0.5, 1.0, 2.0],
                                               strides=[4, 8, 16, 32], offset=0.0))
model.proposal_generator.head.update(in_channels=CH, num_anchors=3)
model.roi_heads.update(num_classes=3, batch_size_per_image=32, box_in_features=["p2", "p3", "p4", "p5"],
                       mask_in_features=["p2", "p3", "p4", "p5"])
for _pooler, _size in ((model.roi_heads.box_pooler, 7), (model.roi_heads.mask_pooler, 14)):
    _pooler.update(output_size=_size, scales=(1 / 4, 1 / 8, 1 / 16, 1 / 32))
for _head in model.roi_heads.box_heads:
    _head.update(input_shape=ShapeSpec(channels=CH, height=7, width=7), conv_dims=[], fc_dims=[128])
for _predictor in model.roi_heads.box_predictors:
    _predictor.update(input_shape=ShapeSpec(channels=128), test_topk_per_image=20)
model.roi_heads.mask_head.update(input_shape=ShapeSpec(channels=CH, width=14, height=14), conv_dims=[64, 64, 64])  # 2 convs + deconv

datasets.coco_instances = [
    ["beit3_world_det_train", "coco/annotations/instances_train2017.json", "coco/train2017"],
    ["beit3_world_det_val", "coco/annotations/instances_val2017.json", "coco/val2017"],
]
dataloader.train.dicts.names = "beit3_world_det_train"
dataloader.train.mapper.augmentations.update(image_size=IMAGE_SIZE, min_scale=0.8, max_scale=1.25)
dataloader.train.update(total_batch_size=4, num_workers=0)
dataloader.test.dataset.names = "beit3_world_det_val"
dataloader.test.mapper.augmentations[0].update(short_edge_length=IMAGE_SIZE, max_size=IMAGE_SIZE)
dataloader.test.num_workers = 0

test_aug.update(min_sizes=[96, 128], max_size=IMAGE_SIZE)

optimizer.params.update(base_lr=5e-4, weight_decay=0.05, layer_decay=0.9)
optimizer.lr = 5e-4
MAX_ITER = 300
lr_multiplier.scheduler.update(values=[1.0, 0.1], milestones=[240], num_updates=MAX_ITER)
lr_multiplier.warmup_length = 20 / MAX_ITER
train.update(output_dir="./output/cascade_beit3_tiny_lazy", max_iter=MAX_ITER, device="cpu")
train.amp.enabled = False
train.checkpointer.period = 100
