"""Adapters own their key prefixes: each exports where its model keeps the backbone (``BACKBONE_PREFIX``) and
passes it to the one loader; a renamed attribute fails loudly (optimizer groups) or is found by its keys and
named (loading), never a quiet missing-keys report."""
import pytest
import torch
from torch import nn

from beit3_plugins.backbones import backbone_at, find_backbone_prefix, load_pretrained, param_groups_layer_decay
from beit3_plugins.registry import BACKBONES


class _Wrapper(nn.Module):
    """A whole model in the shape of an adapter's: ``outer.<attr>`` holds the backbone, plus a head."""

    def __init__(self, attr: str):
        super().__init__()
        self.outer = nn.Module()
        torch.manual_seed(0)
        self.outer.add_module(attr, BACKBONES.build("beit3_tiny"))
        self.head = nn.Linear(4, 2)


def test_the_expected_prefix_is_read_first_without_a_note():
    state = _Wrapper("trunk").state_dict()
    target = BACKBONES.build("beit3_tiny")
    assert find_backbone_prefix(state, target, expected=("outer.trunk.",)) == "outer.trunk."
    report = load_pretrained(target, state, prefixes=("outer.trunk.",))
    assert not report.missing and not report.notes and sorted(report.heads) == ["head.bias", "head.weight"]


def test_a_checkpoint_saved_after_a_rename_loads_and_names_where_it_was_read():
    """The adapter says ``outer.trunk.`` but the file was saved with the attribute renamed to ``encoder``:
    the backbone is found by its keys, every tensor loads, and the report says where it came from."""
    source = _Wrapper("encoder")
    target = BACKBONES.build("beit3_tiny")
    report = load_pretrained(target, source.state_dict(), prefixes=("outer.trunk.",))
    assert not report.missing and not report.unexpected
    assert any("'outer.encoder'" in note for note in report.notes)
    torch.testing.assert_close(target.patch_embed.weight, source.outer.encoder.patch_embed.weight)


def test_optimizer_groups_refuse_a_prefix_that_names_no_backbone():
    model = _Wrapper("encoder")
    assert backbone_at(model, "outer.encoder.") is model.outer.encoder
    with pytest.raises(ValueError, match=r"no BEiT-3 backbone at 'outer.trunk.'.*\['outer.encoder.'\]"):
        param_groups_layer_decay(model, 0.05, 0.9, backbone_prefix="outer.trunk.")
    with pytest.raises(ValueError, match="no BEiT-3 backbone at 'head.'"):
        backbone_at(model, "head.")
