# Tiny CPU version of ade20k_beit3.py (same model family, toy sizes) for tests and the demo:
# beit3_tiny trunk (64 wide, 4 layers, patch 8), a 32-wide Mask2Former, 64x64 crops, the data world's
# ADE-style tree (4 classes read from its classes.json).
#   ADE20K_ROOT=<world>/ADEChallengeData2016 mim train mmseg configs/ade20k_beit3_tiny.py --work-dir runs/seg
_base_ = ['./ade20k_beit3.py']

num_classes = 4
crop_size = (64, 64)
feat = 32
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
model = dict(
    data_preprocessor=dict(size=crop_size, test_cfg=dict(size_divisor=32)),
    backbone=dict(
        backbone='beit3_tiny',
        backbone_cfg=dict(img_size=64, drop_path_rate=0.0, checkpoint_activations=False),
        interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]],
        conv_inplane=16,
        deform_num_heads=4,
        deform_ratio=0.5,
        extra_extractors=1,
        drop_path_rate=0.0,
        norm_cfg=dict(type='BN', requires_grad=True),
        with_cp=False),
    decode_head=dict(
        in_channels=[64, 64, 64, 64],
        feat_channels=feat,
        out_channels=feat,
        num_classes=num_classes,
        num_queries=12,
        pixel_decoder=dict(
            norm_cfg=dict(type='GN', num_groups=8),
            encoder=dict(
                num_layers=1,
                layer_cfg=dict(
                    self_attn_cfg=dict(embed_dims=feat, num_heads=4),
                    ffn_cfg=dict(embed_dims=feat, feedforward_channels=2 * feat))),
            positional_encoding=dict(num_feats=feat // 2)),
        positional_encoding=dict(num_feats=feat // 2),
        transformer_decoder=dict(
            num_layers=3,
            layer_cfg=dict(
                self_attn_cfg=dict(embed_dims=feat, num_heads=4),
                cross_attn_cfg=dict(embed_dims=feat, num_heads=4),
                ffn_cfg=dict(embed_dims=feat, feedforward_channels=2 * feat))),
        loss_cls=dict(class_weight=[1.0] * num_classes + [0.1]),
        train_cfg=dict(num_points=1024)),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(32, 32)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False,
                        dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

max_iters = 200
optim_wrapper = dict(
    optimizer=dict(lr=2e-3, weight_decay=0.05),
    clip_grad=dict(max_norm=1.0, norm_type=2),
    paramwise_cfg=dict(layer_decay_rate=0.9))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=20),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=20, end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=100, max_keep_ckpts=2, save_best=None),
    visualization=dict(interval=1))  # `mim test --show-dir` draws every test image (few here)
randomness = dict(seed=0)  # reproducible demo / test numbers (val mIoU varies ~45-64 across seeds at 200 iterations)

# `--tta`: the parent's multi-scale + flip protocol at this config's size (the world's 64 px images at 1x and
# 1.5x, each also flipped; slide 64/32 inference per pass)
img_ratios = [1.0, 1.5]
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale=(int(64 * r), int(64 * r)), keep_ratio=True) for r in img_ratios],
        [dict(type='RandomFlip', prob=0., direction='horizontal'),
         dict(type='RandomFlip', prob=1., direction='horizontal')],
        [dict(type='LoadAnnotations', reduce_zero_label=True)],
        [dict(type='PackSegInputs')],
    ]),
]
