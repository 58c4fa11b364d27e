"""Every registered backbone and every mode of the Multiway Transformer."""
import copy

import pytest
import torch

from beit3_plugins.backbones import MultiwayTransformer, Routing
from beit3_plugins.registry import BACKBONES

TINY = ["beit3_tiny", "vlmo_tiny"]


def batch(model, b=2, t=7):
    torch.manual_seed(0)
    cfg = model.cfg
    image = torch.randn(b, 3, cfg.img_size, cfg.img_size)
    ids = torch.randint(4, cfg.vocab_size, (b, t))
    pad = torch.zeros(b, t, dtype=torch.bool)
    pad[0, 5:] = True
    return image, ids, pad


@pytest.mark.parametrize("name", BACKBONES.names())
def test_every_registered_backbone_builds_with_its_config(name):
    with torch.device("meta"):
        model = BACKBONES.build(name)
    cfg = model.cfg
    assert isinstance(model, MultiwayTransformer) and type(cfg) is BACKBONES.config_of(name)
    assert len(model.layers) == cfg.depth
    grid = cfg.img_size // cfg.patch_size
    if cfg.absolute_positions:
        assert model.vision_pos_embed.shape == (1, grid ** 2 + 3, cfg.embed_dim)
    else:
        assert model.vision_pos_embed is None and model.text_pos_embed is None
    if cfg.relative_position_bias:  # VLMo: one table, image distances + [CLS] rows, 2 cross rows, text rows
        rows = (2 * grid - 1) ** 2 + 3 + 2 + 2 * cfg.relative_text_span
        assert model.rel_pos.table.shape == (rows, cfg.num_heads * cfg.depth)
    # VLMo has relative positions, except base-plus (absolute, as released); BEiT-3 has absolute positions only
    assert cfg.relative_position_bias == (name.startswith("vlmo") and "_plus" not in name)
    with_vl = [layer.has_vl_expert for layer in model.layers]
    expected_start = cfg.depth if cfg.vl_expert_start is None else cfg.vl_expert_start
    assert with_vl == [i >= expected_start for i in range(cfg.depth)]


@pytest.mark.parametrize("name", TINY)
def test_modes_shapes_and_cls_tokens(name):
    model = BACKBONES.build(name).eval()
    image, ids, pad = batch(model)
    n_vis = 1 + (model.cfg.img_size // model.cfg.patch_size) ** 2
    with torch.no_grad():
        vision = model.forward_vision(image)
        text = model.forward_text(ids, pad)
        fused = model.forward_fused(image, ids, pad)
        dual_v, dual_t = model.forward_dual(image, ids, pad)
    assert vision.hidden.shape == (2, n_vis, 64) and vision.vision_cls.shape == (2, 64)
    assert text.hidden.shape == (2, 7, 64) and torch.equal(text.text_cls, text.hidden[:, 0])
    assert fused.routing == Routing.fused(n_vis) and torch.equal(fused.text_cls, fused.hidden[:, n_vis])
    assert torch.allclose(dual_v.hidden, vision.hidden) and torch.allclose(dual_t.hidden, text.hidden)
    with pytest.raises(ValueError):
        vision.text_tokens


@pytest.mark.parametrize("name", TINY)
def test_padding_does_not_leak_into_real_tokens(name):
    model = BACKBONES.build(name).eval()
    image, ids, pad = batch(model)
    other = ids.clone()
    other[pad] = 17
    with torch.no_grad():
        a = model.forward_fused(image, ids, pad).hidden
        b = model.forward_fused(image, other, pad).hidden
    keep = torch.cat([torch.ones(2, a.shape[1] - 7, dtype=torch.bool), ~pad], 1)
    assert torch.allclose(a[keep], b[keep], atol=1e-6)


def test_decoupled_experts_are_routed_by_modality():
    model = BACKBONES.build("beit3_tiny").eval()
    image, ids, pad = batch(model)
    with torch.no_grad():
        vision_before = model.forward_vision(image).hidden
        text_before = model.forward_text(ids, pad).hidden
        fused_before = model.forward_fused(image, ids, pad).hidden
        for layer in model.layers:
            layer.ffn.text.fc2.weight.add_(1.0)
        assert torch.equal(model.forward_vision(image).hidden, vision_before)
        assert not torch.allclose(model.forward_text(ids, pad).hidden, text_before)
        # in a fused pass the text expert changes the text tokens first; attention spreads it to vision
        assert not torch.allclose(model.forward_fused(image, ids, pad).hidden, fused_before)


def test_shared_layout_uses_the_vl_expert_only_for_fused_input():
    model = BACKBONES.build("vlmo_tiny").eval()
    image, ids, pad = batch(model)
    top = model.layers[-1]
    assert top.has_vl_expert and not model.layers[0].has_vl_expert
    with torch.no_grad():
        vision_before = model.forward_vision(image).hidden
        text_before = model.forward_text(ids, pad).hidden
        fused_before = model.forward_fused(image, ids, pad).hidden
        top.ffn.vl.fc2.bias.add_(1.0)
        assert torch.equal(model.forward_vision(image).hidden, vision_before)
        assert torch.equal(model.forward_text(ids, pad).hidden, text_before)
        assert not torch.allclose(model.forward_fused(image, ids, pad).hidden, fused_before)


def test_forward_does_not_change_module_state():
    model = BACKBONES.build("beit3_tiny").eval()
    image, ids, pad = batch(model)

    def snapshot():
        return [(name, sorted((k, repr(v)) for k, v in vars(m).items() if not k.startswith("_")))
                for name, m in model.named_modules()]

    before = snapshot()
    with torch.no_grad():
        model.forward_fused(image, ids, pad)
        model.forward_vision(image)
        model.forward_text(ids, pad)
    assert snapshot() == before


def test_drop_path_is_stochastic_in_training_only():
    model = BACKBONES.build("beit3_tiny", drop_path_rate=0.5)
    image, _, _ = batch(model)
    model.train()
    torch.manual_seed(1)
    a = model.forward_vision(image).hidden
    b = model.forward_vision(image).hidden
    assert not torch.allclose(a, b)
    model.eval()
    assert torch.equal(model.forward_vision(image).hidden, model.forward_vision(image).hidden)


@pytest.mark.parametrize("name", TINY)
def test_activation_checkpointing_gives_identical_gradients(name):
    model = BACKBONES.build(name).train()
    image, ids, pad = batch(model)
    twin = copy.deepcopy(model)
    twin.set_grad_checkpointing(True)
    for m in (model, twin):
        m.forward_fused(image, ids, pad).hidden.square().mean().backward()
    for (n, p), (_, q) in zip(model.named_parameters(), twin.named_parameters()):
        assert (p.grad is None) == (q.grad is None), n
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, atol=1e-6), n


def test_any_resolution_and_feature_maps():
    model = BACKBONES.build("beit3_tiny").eval()
    with torch.no_grad():
        out = model.forward_vision(torch.randn(1, 3, 96, 48))
        maps = model.forward_intermediates(torch.randn(2, 3, 96, 48), [1, 3], intermediates_only=True)
    assert out.patch_grid == (12, 6) and out.hidden.shape == (1, 1 + 72, 64)
    assert [m.shape for m in maps] == [(2, 64, 12, 6)] * 2


def test_bad_inputs_give_clear_errors():
    model = BACKBONES.build("beit3_tiny").eval()
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model.forward_vision(torch.randn(1, 3, 60, 64))
    with pytest.raises(ValueError, match="expected images"):
        model.forward_vision(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="exceeds"):
        model.forward_text(torch.ones(1, 100, dtype=torch.long))
    with pytest.raises(ValueError, match="vocabularies differ"):
        model.forward_text(torch.full((1, 4), 5000))
    with pytest.raises(ValueError, match="batch sizes differ"):
        model.forward_fused(torch.randn(2, 3, 64, 64), torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="masked_positions"):
        model.forward_vision(torch.randn(1, 3, 64, 64), masked_positions=torch.zeros(1, 10, dtype=torch.bool))
