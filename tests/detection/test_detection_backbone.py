"""The ViTDet wrapper of our backbone: window / global attention, padding masks, pyramid, lr decay, init."""
import json
from pathlib import Path

import pytest
import torch

import beit3_plugins.detection as det
from beit3_plugins.backbones import Routing, to_released_state_dict
from beit3_plugins.checkpoint import CheckpointMismatchError
from beit3_plugins.registry import BACKBONES


def _tiny(**kw):
    torch.manual_seed(0)
    return BACKBONES.build("beit3_tiny", **kw).eval()


def _net(img_size=64, window=4, global_idx=(1, 3), **kw):
    return det.Beit3ViTDet(_tiny(img_size=img_size), window_size=window, global_attn_indexes=global_idx, **kw).eval()


def test_all_global_equals_plain_encoder_on_patch_tokens():
    net = _net(global_idx=(0, 1, 2, 3))
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens, (h, w) = net.beit3.embed_image(image)
        reference = net.beit3.encode(tokens[:, 1:], Routing.vision()).hidden  # includes the final norm
        out = net(image)["last_feat"]
    assert out.shape == (2, 64, 8, 8)
    assert torch.allclose(out, reference.transpose(1, 2).reshape(2, 64, 8, 8), atol=1e-5)


def test_one_window_covering_the_grid_equals_global_attention():
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        windowed = _net(window=8, global_idx=())(image)["last_feat"]
        global_ = _net(window=8, global_idx=(0, 1, 2, 3))(image)["last_feat"]
    assert torch.allclose(windowed, global_, atol=1e-5)


def test_padded_windows_match_attention_over_each_window_alone():
    """A 6 x 6 grid with 4 x 4 windows is padded to 8 x 8; padded keys must not change any real token."""
    net = _net(img_size=48, window=4, global_idx=())
    net.final_norm = False
    image = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        out = net(image)["last_feat"][0].permute(1, 2, 0)  # (6, 6, D)
        tokens, (h, w) = net.beit3.embed_image(image)
        x = tokens[0, 1:].reshape(h, w, -1)
        for i in range(len(net.beit3.layers)):  # reference: every window on its own, no padding at all
            new = torch.empty_like(x)
            for r0 in range(0, h, 4):
                for c0 in range(0, w, 4):
                    win = x[r0:r0 + 4, c0:c0 + 4]
                    rows, cols = win.shape[:2]
                    y = net.beit3.run_layer(i, win.reshape(1, rows * cols, -1), Routing.vision(), None)[0]
                    new[r0:r0 + rows, c0:c0 + cols] = y.reshape(rows, cols, -1)
            x = new
    assert torch.allclose(out, x, atol=1e-5)


@pytest.mark.parametrize("name, expert", [("beit3_tiny", "vision"), ("vlmo_tiny", "shared")])
def test_activation_checkpointing_gives_same_outputs_and_gradients(name, expert):
    image = torch.randn(1, 3, 64, 64)
    results = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        net = det.Beit3ViTDet(BACKBONES.build(name), window_size=4, global_attn_indexes=(1, 3),
                              checkpoint_activations=ckpt).train()
        assert net.beit3.grad_checkpointing is ckpt
        out = net(image)["last_feat"]
        out.square().mean().backward()
        results.append((out.detach(), getattr(net.beit3.layers[0].attn.qkv, expert).weight.grad.clone()))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-6)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-6)


def test_vision_only_parameters_and_bad_settings():
    net = _net()
    names = [n for n, _ in net.named_parameters()]
    assert not [n for n in names if ".text." in n or n.startswith("beit3.text")]
    assert "beit3.layers.0.ffn.vision.fc1.weight" in names
    assert any(".text." in n for n in net.removed_parameters)
    with pytest.raises(ValueError, match="outside"):
        det.Beit3ViTDet(_tiny(), window_size=4, global_attn_indexes=(7,))
    assert det.default_global_attn_indexes(12) == [2, 5, 8, 11]
    assert det.default_global_attn_indexes(24) == [5, 11, 17, 23]


@pytest.mark.parametrize("patch,scales,expected", [
    (8, (2.0, 1.0, 0.5), {"p2": 4, "p3": 8, "p4": 16, "p5": 32}),                 # tiny config
    (16, (4.0, 2.0, 1.0, 0.5), {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}),  # paper config
])
def test_simple_feature_pyramid_levels(patch, scales, expected):
    torch.manual_seed(0)
    beit3 = BACKBONES.build("beit3_tiny", img_size=128, patch_size=patch)
    sfp = det.build_simple_feature_pyramid(det.Beit3ViTDet(beit3, window_size=4, global_attn_indexes=(3,)),
                                           out_channels=32, scale_factors=scales, square_pad=128)
    feats = sfp(torch.randn(1, 3, 128, 128))
    assert {k: 128 // v.shape[-1] for k, v in feats.items()} == expected
    assert {k: s.stride for k, s in sfp.output_shape().items()} == expected


def test_layer_decay_groups_follow_our_parameter_names():
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = det.add_beit3_config(get_cfg())
    cfg.merge_from_file(str(Path(det.__file__).parent / "cascade_beit3_tiny.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    groups = det.beit3_optimizer_params(model, base_lr=1.0, weight_decay=0.1, layer_decay=0.5)
    by_param = {id(p): g for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    depth = 4

    def group(name):
        return by_param[id(named[name])]

    assert group("backbone.net.beit3.patch_embed.weight")["lr"] == pytest.approx(0.5 ** (depth + 1))
    assert group("backbone.net.beit3.vision_pos_embed")["lr"] == pytest.approx(0.5 ** (depth + 1))
    assert group("backbone.net.beit3.layers.0.attn.qkv.vision.weight")["lr"] == pytest.approx(0.5 ** depth)
    assert group("backbone.net.beit3.layers.3.ffn.vision.fc1.weight")["lr"] == pytest.approx(0.5)
    assert group("roi_heads.box_predictor.2.cls_score.weight")["lr"] == pytest.approx(1.0)
    assert group("backbone.simfp_2.1.weight")["lr"] == pytest.approx(1.0)
    assert group("backbone.net.beit3.layers.0.attn.qkv.vision.weight")["weight_decay"] == 0.1
    assert id(named["backbone.net.beit3.cls_token"]) not in by_param  # frozen: dropped before the layers
    for name in ("backbone.net.beit3.vision_pos_embed",
                 "backbone.net.beit3.layers.0.attn.qkv.vision.bias", "backbone.net.beit3.layers.0.norm1.vision.weight"):
        assert group(name)["weight_decay"] == 0.0, name


def _released_checkpoint(tmp_path, drop=None):
    torch.manual_seed(1)
    source = BACKBONES.build("beit3_tiny")  # 64 px, 8 x 8 grid: the detector will run at 128 px
    sd = to_released_state_dict(source, heads={"mlm_head.weight": torch.randn(1024, 64)})
    if drop:
        sd.pop(drop)
    path = tmp_path / "beit3_tiny_released.pth"
    torch.save({"model": sd}, path)
    return source, path


def test_init_from_released_checkpoint_reports_keys(tmp_path):
    source, path = _released_checkpoint(tmp_path)
    spec = det.Beit3ViTDetSpec(name="beit3_tiny", img_size=128, window_size=8, global_attn_indexes=[1, 3],
                               drop_path_rate=0.0, weights=str(path))
    net = det.build_beit3_net(spec)
    report = net.init_report
    own = set(net.beit3.state_dict())
    assert set(report.loaded) == own and not report.missing and not report.unexpected
    assert "layers.0.ffn.text.fc1.weight" in report.pruned and "text_embed.weight" in report.pruned
    assert sorted(report.heads) == ["mlm_head.weight"]
    assert any("8x8 to a 16x16" in n for n in report.notes)
    assert torch.equal(net.beit3.layers[2].attn.qkv.vision.weight, source.layers[2].attn.qkv.vision.weight)
    assert torch.equal(net.beit3.patch_embed.weight, source.patch_embed.weight)
    report.write(str(tmp_path / "report.json"))
    assert "layers.0.ffn.text.fc1.weight" in json.loads((tmp_path / "report.json").read_text())["pruned"]


def test_init_strict_missing_key_and_pickled_objects_fail(tmp_path):
    _, path = _released_checkpoint(tmp_path, drop="beit3.encoder.layers.1.ffn.A.fc2.weight")
    spec = det.Beit3ViTDetSpec(name="beit3_tiny", img_size=64, window_size=4, weights=str(path))
    with pytest.raises(CheckpointMismatchError, match="layers.1.ffn.vision.fc2.weight"):
        det.build_beit3_net(spec)
    spec.strict_init = False
    assert "layers.1.ffn.vision.fc2.weight" in det.build_beit3_net(spec).init_report.missing
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "obj": Path("/")}, evil)  # a non-tensor object
    spec.weights = str(evil)
    with pytest.raises(CheckpointMismatchError, match="weights-only"):
        det.build_beit3_net(spec)


@pytest.mark.parametrize("config, backbone_params_m", [("cascade_beit3.yaml", 309.9), ("cascade_beit3_giant.yaml", 1020.7)])
def test_paper_scale_configs_build_on_the_meta_device(config, backbone_params_m):
    """The shipped paper-scale configs build (no memory: meta tensors) with a 1280 px pyramid p2..p6."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = det.add_beit3_config(get_cfg())
    cfg.merge_from_file(str(Path(det.__file__).parent / config))
    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        model = build_model(cfg)
    assert isinstance(model.roi_heads, det.SoftNMSCascadeROIHeads) and model.roi_heads.num_cascade_stages == 3
    assert sum(p.numel() for p in model.backbone.net.parameters()) / 1e6 == pytest.approx(backbone_params_m, abs=0.1)
    feats = model.backbone(torch.zeros(1, 3, 1280, 1280, device="meta"))
    assert {k: v.shape[-1] for k, v in feats.items()} == {"p2": 320, "p3": 160, "p4": 80, "p5": 40, "p6": 20}


def test_vlmo_windows_get_their_relative_bias_and_padding_masks():
    """VLMo in ViTDet: a 6 x 6 grid in 4 x 4 windows (padded to 8 x 8). Reference: every window on its own,
    unpadded, with the bias its cells have in the whole grid (read from the encoder's own bias, [CLS] dropped)."""
    from beit3_plugins.backbones.relative_position import TokenSpan

    torch.manual_seed(0)
    vlmo = BACKBONES.build("vlmo_tiny", img_size=48).eval()
    with torch.no_grad():
        vlmo.rel_pos.table.normal_()
    net = det.Beit3ViTDet(vlmo, window_size=4, global_attn_indexes=(3,)).eval()
    net.final_norm = False
    image = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        out = net(image)["last_feat"][0].permute(1, 2, 0)  # (6, 6, D)
        whole = vlmo.rel_pos(TokenSpan(37, (6, 6)), TokenSpan(37, (6, 6)))[:, :, 1:, 1:]  # (depth, H, 36, 36)
        tokens, (h, w) = vlmo.embed_image(image)
        x = tokens[0, 1:].reshape(h, w, -1)
        for i in range(len(vlmo.layers)):
            if i == 3:
                x = vlmo.run_layer(i, x.reshape(1, 36, -1), Routing.vision(), whole[i][None])[0].reshape(6, 6, -1)
                continue
            new = torch.empty_like(x)
            for r0 in range(0, h, 4):
                for c0 in range(0, w, 4):
                    win = x[r0:r0 + 4, c0:c0 + 4]
                    rows, cols = win.shape[:2]
                    cells = [(r0 + r) * 6 + c0 + c for r in range(rows) for c in range(cols)]
                    bias = whole[i][:, cells][:, :, cells][None]
                    y = vlmo.run_layer(i, win.reshape(1, rows * cols, -1), Routing.vision(), bias)[0]
                    new[r0:r0 + rows, c0:c0 + cols] = y.reshape(rows, cols, -1)
            x = new
    assert torch.allclose(out, x, atol=1e-5)
    names = [n for n, _ in net.named_parameters()]
    assert "beit3.rel_pos.table" in names and not [n for n in names if ".vl." in n or "text_embed" in n]


def test_backbone_prefix_names_the_built_detectors_backbone():
    """BACKBONE_PREFIX is where detectron2's built detector keeps our backbone; with the attribute renamed the
    optimizer fails naming the new place instead of training the backbone at the heads' lr."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from beit3_plugins.backbones import MultiwayTransformer

    cfg = det.add_beit3_config(get_cfg())
    cfg.merge_from_file(str(Path(det.__file__).parent / "cascade_beit3_tiny.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    assert isinstance(model.get_submodule(det.BACKBONE_PREFIX[:-1]), MultiwayTransformer)
    net = model.backbone.net
    net._modules["trunk"] = net._modules.pop("beit3")
    with pytest.raises(ValueError, match=r"it sits at \['backbone.net.trunk.'\]"):
        det.beit3_optimizer_params(model, base_lr=1.0, weight_decay=0.1, layer_decay=0.5)
