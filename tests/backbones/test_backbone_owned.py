"""What the backbone owns, for every registered backbone: timm's feature API (``forward_intermediates``,
``prune_intermediate_layers``), pruning to the vision path, the one parameter-group rule, the
grad-checkpointing flag, and the relative position bias of a window or a whole grid (VLMo)."""
import copy

import pytest
import torch
from torch import nn

from beit3_plugins.backbones import MultiwayTransformer, param_groups_layer_decay
from beit3_plugins.backbones.relative_position import TokenSpan
from beit3_plugins.registry import BACKBONES

ALL = BACKBONES.names()
TINY = ["beit3_tiny", "vlmo_tiny"]


def _meta(name):
    with torch.device("meta"):
        return BACKBONES.build(name).eval()


def _tiny(name):
    torch.manual_seed(0)
    model = BACKBONES.build(name).eval()
    if model.rel_pos is not None:  # a zero table (its init) would hide a wrong bias
        with torch.no_grad():
            model.rel_pos.table.normal_()
    return model


@pytest.mark.parametrize("name", ALL)
def test_forward_intermediates_and_pruned_layers_every_backbone(name):
    model = _meta(name)
    cfg, g = model.cfg, model.cfg.grid_size
    image = torch.zeros(1, 3, cfg.img_size, cfg.img_size, device="meta")
    final, maps = model.forward_intermediates(image, indices=2)
    assert final.shape == (1, 1 + g * g, cfg.embed_dim)
    assert [m.shape for m in maps] == [(1, cfg.embed_dim, g, g)] * 2
    first = model.forward_intermediates(image, [0], output_fmt="NLC", intermediates_only=True)
    assert [m.shape for m in first] == [(1, g * g, cfg.embed_dim)]
    assert model.prune_intermediate_layers([1]) == [1]
    assert len(model.layers) == 2 and model.is_pruned_key(f"layers.{cfg.depth - 1}.ffn.vision.fc1.weight")
    assert not model.is_pruned_key("layers.1.ffn.vision.fc1.weight")


@pytest.mark.parametrize("name", TINY)
def test_forward_intermediates_equal_the_encoder(name):
    model = _tiny(name)
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model.forward_vision(image, return_intermediates=[1, 3])
        final, maps = model.forward_intermediates(image, [1, 3], return_prefix_tokens=True)
        normed = model.forward_intermediates(image, [-1], norm=True, intermediates_only=True)[0]
    torch.testing.assert_close(final, out.hidden)
    for tokens, (patches, prefix) in zip(out.intermediates, maps):
        torch.testing.assert_close(patches, tokens[:, 1:].transpose(1, 2).reshape(2, -1, 8, 8))
        torch.testing.assert_close(prefix, tokens[:, :1])
    torch.testing.assert_close(normed, out.hidden[:, 1:].transpose(1, 2).reshape(2, -1, 8, 8))


@pytest.mark.parametrize("name", ALL)
def test_prune_to_vision_every_backbone(name):
    model = _meta(name)
    removed = model.prune_to_vision(keep_final_norm=False)
    names = [n for n, _ in model.named_parameters()]
    assert removed and not [n for n in names if ".text." in n or ".vl." in n or n.startswith(("text_", "mask_token",
                                                                                              "norm."))]
    assert all(model.is_pruned_key(n) for n in removed) and not any(model.is_pruned_key(n) for n in names)
    # the standard (non-Multiway) Transformer has one FFN for every modality: it stays whole
    assert any(n.startswith(("layers.0.ffn.vision.", "layers.0.ffn.shared.")) for n in names)
    assert not [n for n in names if model.is_language_parameter(n)]
    assert all(model.is_language_parameter(n) for n in removed if ".vl." not in n and n not in ("mask_token",)
               and not n.startswith("norm."))
    cfg = model.cfg
    image = torch.zeros(1, 3, cfg.img_size, cfg.img_size, device="meta")
    assert model.forward_vision(image).hidden.shape == (1, 1 + cfg.grid_size ** 2, cfg.embed_dim)
    with pytest.raises(ValueError, match="pruned"):
        model.forward_text(torch.zeros(1, 4, dtype=torch.long, device="meta"))
    with pytest.raises(ValueError, match="pruned"):
        model.forward_vision(image, masked_positions=torch.zeros(1, cfg.grid_size ** 2, device="meta"))


@pytest.mark.parametrize("name", TINY)
def test_pruning_leaves_the_vision_path_unchanged(name):
    model = _tiny(name)
    pruned = copy.deepcopy(model)
    pruned.prune_to_vision()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(pruned.forward_vision(image).hidden, model.forward_vision(image).hidden)


class _Task(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        dim = backbone.cfg.embed_dim
        self.head = nn.Linear(dim, 3, device="meta")
        self.logit_scale = nn.Parameter(torch.zeros((), device="meta"))


@pytest.mark.parametrize("name", ALL)
def test_param_groups_every_backbone(name):
    task = _Task(_meta(name))
    task.backbone.cls_token.requires_grad_(False)   # frozen parameters are left out
    groups = param_groups_layer_decay(task, weight_decay=0.05, layer_decay=0.5, head_lr_scale=10.0)
    listed = [n for g in groups for n in g["param_names"]]
    trainable = [n for n, p in task.named_parameters() if p.requires_grad]
    assert sorted(listed) == sorted(trainable)                      # every trainable parameter exactly once
    by = {n: g for g in groups for n in g["param_names"]}
    depth = task.backbone.cfg.depth
    expert = "vision" if task.backbone.cfg.layout == "decoupled" else "shared"

    def check(param, lr_scale, wd):
        assert by[param]["lr_scale"] == pytest.approx(lr_scale) and by[param]["weight_decay"] == wd, param

    check("backbone.patch_embed.weight", 0.5 ** (depth + 1), 0.05)
    check("backbone.patch_embed.bias", 0.5 ** (depth + 1), 0.0)
    check("backbone.layers.0.attn.qkv.%s.weight" % expert, 0.5 ** depth, 0.05)
    ffn_expert = "vision" if task.backbone.cfg.multiway else "shared"   # a standard Transformer has one FFN
    check(f"backbone.layers.{depth - 1}.ffn.{ffn_expert}.fc1.weight", 0.5, 0.05)
    check("backbone.layers.0.norm1.%s.weight" % expert, 0.5 ** depth, 0.0)
    check("head.weight", 10.0, 0.05)
    check("head.bias", 10.0, 0.0)
    check("logit_scale", 10.0, 0.0)
    if task.backbone.vision_pos_embed is not None:
        check("backbone.vision_pos_embed", 0.5 ** (depth + 1), 0.0)
    if task.backbone.rel_pos is not None:
        check("backbone.rel_pos.table", 1.0, 0.0)
    assert "backbone.cls_token" not in by
    with pytest.raises(ValueError, match="layer decay"):
        param_groups_layer_decay(task, 0.05, 1.5)


def test_grad_checkpointing_is_a_module_flag_not_a_shared_config_change():
    cfg = BACKBONES.default_config("beit3_tiny")
    first, second = MultiwayTransformer(cfg), MultiwayTransformer(cfg)
    first.set_grad_checkpointing(True)
    assert first.grad_checkpointing and not second.grad_checkpointing
    assert cfg.checkpoint_activations is False and first.cfg is second.cfg


def test_window_bias_reads_the_whole_grids_patch_distances():
    """A ViTDet window's relative bias is the one its patches have inside the whole grid (same distances in
    patches), wherever the window sits; at the model's grid with [CLS] it is exactly the encoder's bias."""
    model = _tiny("vlmo_tiny")
    with torch.no_grad():
        whole = model.vision_attention_bias(1, (8, 8), cls_token=False)
        window = model.vision_attention_bias(1, (3, 4), cls_token=False)
        encoder = model.rel_pos(TokenSpan(65, (8, 8)), TokenSpan(65, (8, 8)))[1]
        with_cls = model.vision_attention_bias(1, (8, 8))
    assert window.shape == (4, 12, 12)
    for top, left in [(0, 0), (2, 3), (5, 4)]:
        cells = [(top + r) * 8 + left + c for r in range(3) for c in range(4)]
        assert torch.equal(window, whole[:, cells][:, :, cells])
    assert torch.equal(with_cls, encoder)
    assert BACKBONES.build("beit3_tiny").vision_attention_bias(0, (8, 8)) is None


@pytest.mark.parametrize("prefix", ["", "backbone.", "backbone.beit3.", "backbone.net.beit3.", "core.backbone."])
def test_our_own_layout_loads_from_a_whole_model_checkpoint(prefix):
    """A task model, segmentor, detector or fairseq checkpoint: the backbone part loads, the rest is kept
    aside as heads (never unexpected), the format is named."""
    from beit3_plugins.backbones import convert_checkpoint, load_pretrained

    source = _tiny("vlmo_tiny")
    state = {prefix + k: v for k, v in source.state_dict().items()}
    if prefix:
        state["decode_head.conv_seg.weight"] = torch.zeros(4, 64)
    target = BACKBONES.build("vlmo_tiny")
    report = load_pretrained(target, {"model": state})
    assert not report.missing and not report.unexpected
    assert sorted(report.heads) == (["decode_head.conv_seg.weight"] if prefix else [])
    assert convert_checkpoint(state, target).source_format == "ours"
    torch.testing.assert_close(target.rel_pos.table, source.rel_pos.table)
