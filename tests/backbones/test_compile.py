"""The backbone traces into one graph: no host synchronisation (``int(tensor)``, ``.item()``) and nothing else
that makes ``torch.compile`` break the forward into pieces, for every routing (issue 26). Checked with
``torch._dynamo.explain``, which traces without compiling kernels (seconds, not minutes)."""
import pytest
import torch

from beit3_plugins.backbones import unilm_attention_mask
from beit3_plugins.registry import BACKBONES


@pytest.mark.parametrize("name", ["beit3_tiny", "vlmo_tiny"])
@pytest.mark.parametrize("mode", ["vision", "text", "fused", "captioning"])
def test_forward_has_no_graph_break(name, mode):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = BACKBONES.build(name).eval()
    image, ids = torch.randn(2, 3, 64, 64), torch.randint(4, 1000, (2, 6))
    padding = torch.zeros(2, 6, dtype=torch.bool)
    padding[1, -2:] = True
    calls = {"vision": (model.forward_vision, (image,), {}),
             "text": (model.forward_text, (ids, padding), {}),
             "fused": (model.forward_fused, (image, ids, padding), {}),
             "captioning": (model.forward_fused, (image, ids, padding),
                            {"attn_mask": unilm_attention_mask(65, 6)})}
    fn, args, kwargs = calls[mode]
    explanation = torch._dynamo.explain(fn)(*args, **kwargs)
    assert explanation.graph_break_count == 0, [str(b.reason) for b in explanation.break_reasons]
    assert explanation.graph_count == 1


def test_out_of_range_ids_are_still_refused_on_the_host():
    model = BACKBONES.build("beit3_tiny").eval()
    with pytest.raises(ValueError, match="token id out of range"):
        model.forward_text(torch.tensor([[1, model.cfg.vocab_size]]))
