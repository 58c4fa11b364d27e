# BEiT-3 + ViT-Adapter + Mask2Former on ADE20K at 896x896 (paper scale; 150 classes).
#   ADE20K_ROOT=/data/ADEChallengeData2016 mim train mmseg configs/ade20k_beit3.py \
#       --launcher pytorch --gpus 8 --cfg-options model.backbone.pretrained=/ckpt/beit3_large_patch16_224.pth
# The paper's 62.8 mIoU used BEiT-3 giant (not released; `model.backbone.backbone=beit3_giant`, patch 14:
# set data_preprocessor test size_divisor 224 and in_channels/feat widths 1408). Recipe (batch 16 =
# 8 GPUs x 2, AdamW 2e-5, layer decay 0.9, 80k iterations, 1.5k warmup, slide test 896/512) follows the
# ViT-Adapter BEiT-large Mask2Former setting the BEiT-3 paper says it follows.
_base_ = ['./_base_/seg_runtime.py', './_base_/seg_ade20k.py', './_base_/seg_mask2former_beit3_adapter.py']

crop_size = (896, 896)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(3584, 896), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(3584, 896), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(
    type='Beit3GuardedOptimWrapper',  # OptimWrapper + stop on a non-finite loss/gradient before the step
    on_nonfinite='stop',  # or 'skip' (counted, at most max_skips)
    optimizer=dict(type='AdamW', lr=2e-5, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='Beit3LayerDecayOptimizerConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.9, no_weight_decay_keys=('query_embed', 'query_feat', 'level_embed')))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=1500, end=80000),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=80000, val_interval=8000)
auto_scale_lr = dict(enable=False, base_batch_size=16)

# Multi-scale + flip test ("+MS", BEiT-3 Table 6), `mim test mmseg configs/ade20k_beit3.py --checkpoint
# ckpt.pth --tta`: the protocol of _base_/seg_ade20k.py at ViT-Adapter's scale, MultiScaleFlipAug(
# img_scale=(3584, 896), img_ratios=[0.5, ..., 1.75]); slide inference per pass.
img_ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale=(int(3584 * r), int(896 * r)), keep_ratio=True) for r in img_ratios],
        [dict(type='RandomFlip', prob=0., direction='horizontal'),
         dict(type='RandomFlip', prob=1., direction='horizontal')],
        [dict(type='LoadAnnotations', reduce_zero_label=True)],
        [dict(type='PackSegInputs')],
    ]),
]
