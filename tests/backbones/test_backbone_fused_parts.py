"""The encoder keeps fused input as (vision part, text part) through the layers (``TokenParts``): same results
as running each layer on the whole sequence (``run_layer``, split and joined around every layer), including
stochastic depth and a VL-expert output norm."""
import pytest
import torch

from beit3_plugins.backbones import Routing
from beit3_plugins.backbones.relative_position import TokenSpan
from beit3_plugins.registry import BACKBONES


def reference_encode(model, x, routing, allowed):
    """Each layer on the whole sequence (split and joined again around every layer)."""
    masks = [allowed] * len(model.layers)
    if model.rel_pos is not None:  # VLMo: each layer adds its slice of the shared relative position bias
        span = TokenSpan(routing.split, (8, 8), 0, x.shape[1] - routing.split)
        blocked = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
        masks = [bias[None] + blocked for bias in model.rel_pos(span, span)]
    for index, mask in enumerate(masks):
        x, _ = model.run_layer(index, x, routing, mask)
    return model.norm(x, routing) if model.norm is not None else x


@pytest.mark.parametrize("name,overrides", [("beit3_tiny", {}), ("vlmo_tiny", {}),
                                            ("vlmo_tiny", {"vl_expert_start": 4}),
                                            ("beit3_tiny", {"layout": "shared", "vl_expert_start": 3})])
def test_parts_path_equals_the_concatenated_path(name, overrides):
    torch.manual_seed(0)
    model = BACKBONES.build(name, drop_path_rate=0.5, **overrides)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    image, ids = torch.randn(4, 3, 64, 64), torch.randint(4, 1000, (4, 6))
    x = torch.cat([model.embed_image(image)[0], model.embed_text(ids)], 1)
    routing = Routing.fused(65)
    blocked = torch.zeros(71, 71, dtype=torch.bool)
    blocked[:65, 65:] = True
    for training in (False, True):
        model.train(training)
        torch.manual_seed(1)
        expected = reference_encode(model, x, routing, ~blocked[None, None])
        torch.manual_seed(1)
        got = model.encode(x, routing, attn_mask=blocked).hidden
        assert (got - expected).abs().max() < 1e-5, training
