# Runtime shared by the BEiT-3 segmentation configs (mmseg 1.x / mmengine).
# Importing beit3_plugins.segmentation registers the BEiT-3 backbones, the layer-decay optimizer
# constructor and the ADE20K-format dataset; mmdet.models provides Mask2Former's pixel decoder and losses.
custom_imports = dict(imports=['mmdet.models', 'beit3_plugins.segmentation'], allow_failed_imports=False)
default_scope = 'mmseg'
runner_type = 'Beit3Runner'  # mmengine's Runner + a write probe of work_dir before anything is built
env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer', alpha=0.6)
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=8000, max_keep_ckpts=2, save_best='mIoU'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
train_cfg = dict(type='IterBasedTrainLoop', max_iters=80000, val_interval=8000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
