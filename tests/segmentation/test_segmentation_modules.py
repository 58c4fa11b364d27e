"""mmseg adapter pieces in-process: ViT-Adapter / pyramid backbones, checkpoint init with key report,
layer-decay groups, the ADE20K-format dataset's input checks, slide inference. No skips: missing mmcv
ops or mmseg make these fail."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import beit3_plugins.segmentation as seg
from beit3_plugins.backbones import build_backbone, to_released_state_dict
from beit3_plugins.checkpoint import CheckpointMismatchError
from beit3_plugins.registry import UnknownComponentError
from beit3_plugins.segmentation.mim_runs import REPO_CONFIGS

TINY = dict(backbone="beit3_tiny", backbone_cfg=dict(img_size=64), conv_inplane=16, deform_num_heads=4,
            deform_ratio=0.5, extra_extractors=1)
TINY_CONFIG = REPO_CONFIGS / "ade20k_beit3_tiny.py"


def _adapter(**kw):
    torch.manual_seed(0)
    return seg.BEiT3ViTAdapter(**{**TINY, **kw})


def test_adapter_uses_mmcv_deformable_attention_and_drops_language_branch():
    from mmcv.ops import MultiScaleDeformableAttention

    model = _adapter()
    attns = [m for m in model.modules() if isinstance(m, MultiScaleDeformableAttention)]
    assert len(attns) == 4 + 4 + 1  # 4 injectors, 4 extractors, 1 extra extractor
    assert all(m.batch_first for m in attns)
    names = [n for n, _ in model.named_parameters()]
    assert not [n for n in names if ".text." in n or n.startswith("beit3.text_") or ".vl." in n]
    assert any(n.startswith("beit3.layers.3.ffn.vision.") for n in names)


@pytest.mark.parametrize("patch,size", [(8, (64, 64)), (16, (64, 96))])
def test_adapter_multiscale_outputs_and_gradients(patch, size):
    model = _adapter(backbone_cfg=dict(img_size=64, patch_size=patch))
    image = torch.randn(2, 3, *size)
    outs = model(image)
    h, w = size
    assert [tuple(o.shape) for o in outs] == [(2, 64, h // s, w // s) for s in (4, 8, 16, 32)]
    sum(o.square().mean() for o in outs).backward()
    for name in ("beit3.patch_embed.weight", "beit3.layers.0.attn.qkv.vision.weight", "spm.fc1.weight",
                 "interactions.3.extractor.attn.sampling_offsets.weight", "interactions.0.injector.gamma",
                 "level_embed"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_injector_starts_closed_so_the_trunk_sees_pretrained_features():
    """init_values=0: before training the ViT tokens equal the plain backbone's (adapter adds nothing)."""
    model = _adapter().eval()
    image = torch.randn(1, 3, 64, 64)
    x, grid = model.beit3.embed_image(image)
    for i in range(4):
        x = model.beit3.run_vision_layer(i, x, grid)
    captured = []
    hook = model.interactions[3].extractor.register_forward_hook(lambda m, a, o: captured.append(a[1]))
    with torch.no_grad():
        model(image)
    hook.remove()
    torch.testing.assert_close(captured[0], x[:, 1:])


def test_bad_inputs_and_configs_give_clear_errors():
    model = _adapter()
    with pytest.raises(ValueError, match="not a multiple of 32.*size_divisor"):
        model(torch.randn(1, 3, 72, 64))
    with pytest.raises(ValueError, match="cover layers 0..3"):
        _adapter(interaction_indexes=[[0, 0], [1, 1], [2, 2], [2, 3]])
    with pytest.raises(UnknownComponentError, match="beit3_tiny"):
        _adapter(backbone="beit3_tinny")


def test_feature_pyramid_scales():
    model = seg.BEiT3FeaturePyramid(backbone="beit3_tiny", backbone_cfg=dict(img_size=64, patch_size=16))
    assert model.out_indices == [0, 1, 2, 3]
    outs = model(torch.randn(2, 3, 64, 64))
    assert [tuple(o.shape[-2:]) for o in outs] == [(16, 16), (8, 8), (4, 4), (2, 2)]


def _released_checkpoint(tmp_path):
    torch.manual_seed(1)
    source = build_backbone("beit3_tiny")
    heads = {"mim_head.weight": torch.randn(8, 64), "mim_head.bias": torch.zeros(8)}
    path = tmp_path / "beit3_tiny_released.pth"
    torch.save({"model": to_released_state_dict(source, heads)}, path)
    return source, path


def test_pretrained_released_checkpoint_with_key_report(tmp_path):
    source, path = _released_checkpoint(tmp_path)
    model = _adapter(pretrained=str(path))
    model.init_weights()
    report = model.load_report
    assert report.missing == [] and "mim_head.weight" in report.heads
    assert "layers.0.ffn.text.fc1.weight" in report.pruned and "text_embed.weight" in report.pruned
    assert "norm.vision.weight" in report.pruned and not report.unexpected  # the dense head has its own norms
    theirs = source.state_dict()
    for key, value in model.beit3.state_dict().items():
        torch.testing.assert_close(value, theirs[key], msg=key)
    # our own export (plain state dict, backbone. prefix) loads the same way
    own = tmp_path / "export.pth"
    torch.save({"backbone." + k: v for k, v in source.state_dict().items()}, own)
    other = _adapter(pretrained=str(own))
    other.init_weights()
    torch.testing.assert_close(other.beit3.patch_embed.weight, source.patch_embed.weight)


def test_pretrained_checkpoint_missing_vision_keys_is_refused(tmp_path):
    source, _ = _released_checkpoint(tmp_path)
    sd = to_released_state_dict(source)
    del sd["beit3.encoder.layers.2.ffn.A.fc1.weight"]
    path = tmp_path / "broken.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointMismatchError, match="layers.2.ffn.vision.fc1.weight"):
        _adapter(pretrained=str(path)).init_weights()


def _segmentor():
    from mmengine.config import Config
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules()
    import mmdet.models  # noqa: F401 - Mask2Former pieces, as custom_imports does
    cfg = Config.fromfile(str(TINY_CONFIG))
    torch.manual_seed(0)
    return cfg, MODELS.build(cfg.model)


def test_backbone_prefix_names_the_built_segmentors_backbone():
    from beit3_plugins.backbones import MultiwayTransformer
    from beit3_plugins.segmentation import BACKBONE_PREFIX

    _, model = _segmentor()
    assert isinstance(model.get_submodule(BACKBONE_PREFIX[:-1]), MultiwayTransformer)


def test_layer_decay_constructor_follows_our_parameter_names():
    from mmseg.registry import OPTIM_WRAPPER_CONSTRUCTORS

    cfg, model = _segmentor()
    wrapper_cfg = dict(cfg.optim_wrapper)
    constructor = OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
        type=wrapper_cfg.pop("constructor"), optim_wrapper_cfg=wrapper_cfg,
        paramwise_cfg=wrapper_cfg.pop("paramwise_cfg")))
    optimizer = constructor(model).optimizer
    lr, wd, rate = cfg.optim_wrapper.optimizer.lr, cfg.optim_wrapper.optimizer.weight_decay, 0.9
    by_name = {n: g for g in optimizer.param_groups for n in g["param_names"]}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(by_name) == trainable
    expect = {  # depth 4 trunk: embeddings 0, layer k -> k + 1, new modules 5
        "backbone.beit3.patch_embed.weight": (lr * rate ** 5, wd),
        "backbone.beit3.cls_token": (lr * rate ** 5, 0.0),
        "backbone.beit3.vision_pos_embed": (lr * rate ** 5, 0.0),
        "backbone.beit3.layers.0.attn.qkv.vision.weight": (lr * rate ** 4, wd),
        "backbone.beit3.layers.3.ffn.vision.fc1.weight": (lr * rate, wd),
        "backbone.beit3.layers.3.ffn.vision.fc1.bias": (lr * rate, 0.0),
        "backbone.spm.fc1.weight": (lr, wd),
        "backbone.level_embed": (lr, 0.0),
        "decode_head.query_embed.weight": (lr, 0.0),
        "decode_head.cls_embed.weight": (lr, wd),
    }
    for name, (want_lr, want_wd) in expect.items():
        assert by_name[name]["lr"] == pytest.approx(want_lr), name
        assert by_name[name]["weight_decay"] == pytest.approx(want_wd), name


def test_slide_inference_over_several_windows():
    from mmseg.structures import SegDataSample

    _, model = _segmentor()
    model.eval()
    image = torch.randint(0, 255, (3, 64, 128), dtype=torch.uint8)
    sample = SegDataSample(metainfo=dict(img_shape=(64, 128), ori_shape=(64, 128)))
    with torch.no_grad():
        out = model.test_step(dict(inputs=[image], data_samples=[sample]))[0]
    assert tuple(out.seg_logits.data.shape) == (4, 64, 128)
    assert tuple(out.pred_sem_seg.data.shape) == (1, 64, 128)


# ------------------------------------------------------------------ dataset
def _dataset(root, split="training", **kw):
    return seg.ADE20KFormatDataset(
        data_root=str(root), data_prefix=dict(img_path=f"images/{split}", seg_map_path=f"annotations/{split}"),
        pipeline=[dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"), dict(type="PackSegInputs")], **kw)


def test_dataset_reads_world_tree_and_class_list(data_world):
    root, manifest = data_world
    ade = manifest.path("ade_root")
    ds = _dataset(ade)
    assert list(ds.metainfo["classes"]) == manifest.classes["ade20k"] == ["background", "circle", "square", "triangle"]
    assert len(ds) == manifest.counts["ade_training"]
    labels = ds[0]["data_samples"].gt_sem_seg.data
    assert set(labels.unique().tolist()) <= {0, 1, 2, 3, 255} and (labels == 255).any()  # outlines ignored
    with pytest.raises(ValueError, match="differ from classes.json"):
        _dataset(ade, metainfo=dict(classes=("a", "b")))


def _copy_ade(data_world, tmp_path):
    _, manifest = data_world
    dst = tmp_path / "ADEChallengeData2016"
    shutil.copytree(manifest.path("ade_root"), dst)
    return dst


def test_dataset_missing_annotation_is_named(data_world, tmp_path):
    ade = _copy_ade(data_world, tmp_path)
    (ade / "annotations/training/ADE_train_00000003.png").unlink()
    with pytest.raises(seg.MissingAnnotationError, match="1 of 24 images have no annotation.*ADE_train_00000003"):
        _dataset(ade)
    with pytest.raises(FileNotFoundError, match="image directory not found"):
        _dataset(ade, split="testing")


def test_dataset_label_out_of_range_is_named(data_world, tmp_path):
    ade = _copy_ade(data_world, tmp_path)
    path = ade / "annotations/training/ADE_train_00000002.png"
    labels = np.array(Image.open(path))
    labels[:4, :4] = 9  # raw 9 -> class 8 of 4
    Image.fromarray(labels).save(path)
    ds = _dataset(ade)
    ds[0]  # other files are fine
    with pytest.raises(seg.SegLabelRangeError, match=r"ADE_train_00000002.png: label values \[9\].*1\.\.4"):
        ds[1]


def test_dataset_corrupt_image_is_named(data_world, tmp_path):
    ade = _copy_ade(data_world, tmp_path)
    path = ade / "images/training/ADE_train_00000001.jpg"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(RuntimeError, match="ADE_train_00000001.jpg"):
        _dataset(ade)[0]


def test_classes_file_must_list_names(tmp_path, data_world):
    ade = _copy_ade(data_world, tmp_path)
    (ade / "classes.json").write_text(json.dumps({"classes": [1, 2]}))
    with pytest.raises(ValueError, match="classes.json"):
        _dataset(ade)


def test_mmengine_checkpoint_globals_are_allow_listed(tmp_path):
    from mmengine.logging import HistoryBuffer

    buf = HistoryBuffer()
    buf.update(np.float64(1.5))
    path = Path(tmp_path) / "hub.pth"
    torch.save({"log_scalars": {"train/loss": buf}, "arr": np.arange(3)}, path)
    state = torch.load(path, weights_only=True)
    assert state["log_scalars"]["train/loss"].current() == 1.5


def test_weights_only_getattr_stand_in_refuses_other_attributes(tmp_path):
    """The allow-listed getattr only serves HistoryBuffer statistics: a file reaching for anything else
    (here ndarray.tofile, which would write files) is refused."""
    import pickle

    class Evil:
        def __reduce__(self):
            return (getattr, (np.ndarray, "tofile"))

    path = Path(tmp_path) / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(pickle.UnpicklingError, match="refused getattr"):
        torch.load(path, weights_only=True)


def test_upernet_config_builds_and_trains_a_step_at_toy_size():
    """configs/ade20k_beit3_upernet.py (VL-BEiT setting) with its sizes shrunk: loss is finite, every
    trainable parameter gets a gradient (no unused parameters under DDP)."""
    from mmengine.config import Config
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules()
    import beit3_plugins.segmentation  # noqa: F401
    cfg = Config.fromfile(str(REPO_CONFIGS / "ade20k_beit3_upernet.py"))
    bn = dict(type="BN", requires_grad=True)
    cfg.merge_from_dict({
        "model.backbone.backbone": "beit3_tiny", "model.backbone.backbone_cfg": dict(img_size=64),
        "model.backbone.out_indices": [0, 1, 2, 3], "model.backbone.norm_cfg": bn,
        "model.decode_head.in_channels": [64] * 4, "model.decode_head.channels": 32,
        "model.decode_head.norm_cfg": bn, "model.decode_head.num_classes": 4,
        "model.auxiliary_head.in_channels": 64, "model.auxiliary_head.channels": 16,
        "model.auxiliary_head.norm_cfg": bn, "model.auxiliary_head.num_classes": 4,
        "model.data_preprocessor.size": (64, 64)})
    torch.manual_seed(0)
    _assert_one_step_trains_every_parameter(MODELS.build(cfg.model))


def _assert_one_step_trains_every_parameter(model):
    """One loss step on two random 64x64 samples: finite loss, and every trainable parameter gets a
    gradient (DDP without find_unused_parameters)."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    samples = []
    for _ in range(2):
        sample = SegDataSample(metainfo=dict(img_shape=(64, 64), pad_shape=(64, 64), ori_shape=(64, 64)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 4, (1, 64, 64)))
        samples.append(sample)
    losses = model.loss(torch.randn(2, 3, 64, 64), samples)
    total = sum(v for k, v in losses.items() if "loss" in k)
    assert torch.isfinite(total)
    total.backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


def test_mask2former_segmentor_trains_a_step_with_no_unused_parameter():
    """Every trainable parameter of the tiny ViT-Adapter + Mask2Former gets a gradient (DDP without
    find_unused_parameters), and the loss is finite."""
    _, model = _segmentor()
    _assert_one_step_trains_every_parameter(model)


def test_vlmo_trunk_segmentor_trains_a_step_with_no_unused_parameter():
    """VLMo (relative position bias) as the ViT-Adapter trunk: its pruned vision path, relative table
    included, all get gradients; the bias reaches the trunk's layers (changing the table changes the output)."""
    from mmengine.config import Config
    from mmseg.registry import MODELS

    _segmentor()  # registers the modules
    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.merge_from_dict({"model.backbone.backbone": "vlmo_tiny"})
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    assert model.backbone.beit3.rel_pos is not None
    _assert_one_step_trains_every_parameter(model)
    trunk = model.backbone.eval()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = trunk(image)[2]
        trunk.beit3.rel_pos.table.normal_()
        assert not torch.allclose(trunk(image)[2], before, atol=1e-4)


def test_paper_scale_config_reads_as_documented(monkeypatch):
    from mmengine.config import Config

    monkeypatch.setenv("ADE20K_ROOT", "/data/ade/ADEChallengeData2016")
    cfg = Config.fromfile(str(REPO_CONFIGS / "ade20k_beit3.py"))
    assert cfg.model.backbone.type == "BEiT3ViTAdapter" and cfg.model.backbone.backbone == "beit3_large"
    assert cfg.model.decode_head.num_classes == 150 and len(cfg.model.decode_head.loss_cls.class_weight) == 151
    assert cfg.model.data_preprocessor.size == (896, 896)
    assert cfg.model.test_cfg == dict(mode="slide", crop_size=(896, 896), stride=(512, 512))
    assert cfg.train_dataloader.dataset.data_root == "/data/ade/ADEChallengeData2016"
    assert cfg.optim_wrapper.constructor == "Beit3LayerDecayOptimizerConstructor"
    assert cfg.train_cfg.max_iters == 80000
    assert "beit3_plugins.segmentation" in cfg.custom_imports.imports
