# EncoderDecoder = BEiT-3 vision path in a ViT-Adapter + mmseg's Mask2Former head (over mmdet's).
# Sizes: BEiT-3 large + the head widths of ViT-Adapter's BEiT-L Mask2Former ADE20K setting.
num_classes = 150
crop_size = (896, 896)
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
        type='BEiT3ViTAdapter',
        backbone='beit3_large',                       # any name in beit3_plugins BACKBONES
        backbone_cfg=dict(img_size=896, drop_path_rate=0.3, checkpoint_activations=True),
        pretrained=None,                              # released BEiT-3 .pth or our export
        interaction_indexes=[[0, 5], [6, 11], [12, 17], [18, 23]],
        conv_inplane=64,
        deform_num_heads=16,
        n_points=4,
        deform_ratio=0.5,
        cffn_ratio=0.25,
        init_values=0.0,
        extra_extractors=2,
        drop_path_rate=0.3,
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        with_cp=True),
    decode_head=dict(
        type='SlideMask2FormerHead',  # mmseg's Mask2FormerHead + slide-inference fix
        in_channels=[1024, 1024, 1024, 1024],
        strides=[4, 8, 16, 32],
        feat_channels=1024,
        out_channels=1024,
        num_classes=num_classes,
        num_queries=200,
        num_transformer_feat_level=3,
        align_corners=False,
        pixel_decoder=dict(
            type='mmdet.MSDeformAttnPixelDecoder',
            num_outs=3,
            norm_cfg=dict(type='GN', num_groups=32),
            act_cfg=dict(type='ReLU'),
            encoder=dict(
                num_layers=6,
                layer_cfg=dict(
                    self_attn_cfg=dict(embed_dims=1024, num_heads=32, num_levels=3, num_points=4,
                                       im2col_step=64, dropout=0.0, batch_first=True, norm_cfg=None,
                                       init_cfg=None),
                    ffn_cfg=dict(embed_dims=1024, feedforward_channels=4096, num_fcs=2, ffn_drop=0.0,
                                 act_cfg=dict(type='ReLU', inplace=True))),
                init_cfg=None),
            positional_encoding=dict(num_feats=512, normalize=True),
            init_cfg=None),
        enforce_decoder_input_project=False,
        positional_encoding=dict(num_feats=512, normalize=True),
        transformer_decoder=dict(
            return_intermediate=True,
            num_layers=9,
            layer_cfg=dict(
                self_attn_cfg=dict(embed_dims=1024, num_heads=32, attn_drop=0.0, proj_drop=0.0,
                                   dropout_layer=None, batch_first=True),
                cross_attn_cfg=dict(embed_dims=1024, num_heads=32, attn_drop=0.0, proj_drop=0.0,
                                    dropout_layer=None, batch_first=True),
                ffn_cfg=dict(embed_dims=1024, feedforward_channels=4096, num_fcs=2,
                             act_cfg=dict(type='ReLU', inplace=True), ffn_drop=0.0, dropout_layer=None,
                             add_identity=True)),
            init_cfg=None),
        loss_cls=dict(type='mmdet.CrossEntropyLoss', use_sigmoid=False, loss_weight=2.0, reduction='mean',
                      class_weight=[1.0] * num_classes + [0.1]),
        loss_mask=dict(type='mmdet.CrossEntropyLoss', use_sigmoid=True, reduction='mean', loss_weight=5.0),
        loss_dice=dict(type='mmdet.DiceLoss', use_sigmoid=True, activate=True, reduction='mean',
                       naive_dice=True, eps=1.0, loss_weight=5.0),
        train_cfg=dict(
            num_points=12544,
            oversample_ratio=3.0,
            importance_sample_ratio=0.75,
            assigner=dict(
                type='mmdet.HungarianAssigner',
                match_costs=[
                    dict(type='mmdet.ClassificationCost', weight=2.0),
                    dict(type='mmdet.CrossEntropyLossCost', weight=5.0, use_sigmoid=True),
                    dict(type='mmdet.DiceCost', weight=5.0, pred_act=True, eps=1.0),
                ]),
            sampler=dict(type='mmdet.MaskPseudoSampler'))),
    train_cfg=dict(),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(512, 512)))
