"""Our vision path exported to timm's BEiT-3 port gives the same features in timm."""
import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from beit3_plugins.backbones.timm_export import (timm_beit_kwargs, timm_model_kwargs, to_timm_beit_state_dict,
                                                  to_timm_state_dict)
from beit3_plugins.registry import BACKBONES


SHARED = {"layout": "shared", "vl_expert_start": 3, "sub_ln": False, "layer_scale_init": 0.1}


def perturbed(name, **overrides):
    torch.manual_seed(0)
    model = BACKBONES.build(name, **overrides).eval()
    with torch.no_grad():  # no LayerNorm or layer scale left at its trivial init
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def assert_same_features(ours, tm):
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = ours.forward_vision(image).hidden
        got = tm.forward_features(image)
    assert got.shape == expected.shape == (2, 1 + 8 * 8, 64)
    assert (got - expected).abs().max() < 1e-5


@pytest.mark.parametrize("overrides", [{}, SHARED], ids=["decoupled", "shared"])
def test_exported_weights_give_the_same_features_in_timm(overrides):
    ours = perturbed("beit3_tiny", **overrides)
    tm = VisionTransformer(**timm_model_kwargs(ours.cfg)).eval()
    tm.load_state_dict(to_timm_state_dict(ours), strict=True)  # every timm weight is given, nothing else
    assert_same_features(ours, tm)


def test_export_into_timms_registered_beit3_model():
    """timm's own beit3_base_patch16_224 (avg pooling + fc_norm, no token-wise norm) at tiny width."""
    ours = perturbed("beit3_tiny")
    tm = timm.create_model("beit3_base_patch16_224", pretrained=False, embed_dim=64, depth=4, num_heads=4,
                           img_size=64, patch_size=8, num_classes=0).eval()
    missing, unexpected = tm.load_state_dict(to_timm_state_dict(ours, final_norm=False), strict=False)
    assert not unexpected
    assert sorted(missing) == ["fc_norm.bias", "fc_norm.weight"]  # timm's pooled-feature norm: a new head
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before_norm = ours.forward_vision(image, return_intermediates=(-1,)).intermediates[0]
        assert (tm.forward_features(image) - before_norm).abs().max() < 1e-5


def test_export_drops_text_and_vl_experts():
    sd = to_timm_state_dict(perturbed("beit3_tiny", **SHARED))
    assert not [k for k in sd if ".text." in k or ".vl." in k or "text" in k or "mask_token" in k]
    assert sd["pos_embed"].shape == (1, 1 + 8 * 8, 64)
    assert "blocks.3.ls2.gamma" in sd and "blocks.0.attn.qkv.weight" in sd


def test_vlmo_exports_to_timms_beit_with_the_same_features():
    """VLMo's vision path (relative positions, q/v biases, layer scale) in timm's Beit."""
    from timm.models.beit import Beit

    ours = perturbed("vlmo_tiny")
    tm = Beit(**timm_beit_kwargs(ours.cfg)).eval()
    tm.load_state_dict(to_timm_beit_state_dict(ours), strict=True)
    assert_same_features(ours, tm)
    with pytest.raises(ValueError, match="to_timm_beit_state_dict"):
        to_timm_state_dict(ours)
    with pytest.raises(ValueError, match="to_timm_state_dict"):
        to_timm_beit_state_dict(perturbed("beit3_tiny"))
