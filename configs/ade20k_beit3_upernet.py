# BEiT-3 base + UperNet on ADE20K at 512x512: the VL-BEiT / BEiT segmentation setting (features after
# layers 3, 5, 7, 11 rescaled to strides 4, 8, 16, 32; auxiliary FCN head on the stride-16 map).
#   ADE20K_ROOT=/data/ADEChallengeData2016 mim train mmseg configs/ade20k_beit3_upernet.py \
#       --launcher pytorch --gpus 8 --cfg-options model.backbone.pretrained=/ckpt/beit3_base_patch16_224.pth
_base_ = ['./_base_/seg_runtime.py', './_base_/seg_ade20k.py']

num_classes = 150
crop_size = (512, 512)
norm_cfg = dict(type='SyncBN', requires_grad=True)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=crop_size,
    test_cfg=dict(size_divisor=32))
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='BEiT3FeaturePyramid',
        backbone='beit3_base',
        backbone_cfg=dict(img_size=512, drop_path_rate=0.1),
        pretrained=None,
        out_indices=[3, 5, 7, 11],
        norm_cfg=norm_cfg),
    decode_head=dict(
        type='UPerHead',
        in_channels=[768, 768, 768, 768],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=768,
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=768,
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))

train_dataloader = dict(batch_size=2)
optim_wrapper = dict(
    type='Beit3GuardedOptimWrapper',  # see segmentation/nonfinite_guard.py
    optimizer=dict(type='AdamW', lr=3e-5, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='Beit3LayerDecayOptimizerConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.9))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=1500, end=160000),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=160000, val_interval=16000)
default_hooks = dict(checkpoint=dict(interval=16000))
auto_scale_lr = dict(enable=False, base_batch_size=16)

# `mim test ... --tta`: BEiT's multi-scale + flip test at this config's (2048, 512) scale, inherited from
# _base_/seg_ade20k.py (tta_model, tta_pipeline)
