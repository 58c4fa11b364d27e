"""Registry behaviour: registration, duplicate and unknown names, base-class checks, build specs."""
import dataclasses

import pytest
import torch
from omegaconf import OmegaConf

from beit3_plugins.registry import (BACKBONES, DuplicateComponentError, Registry, UnknownComponentError,
                                    config_from_dict)


@dataclasses.dataclass
class InnerConfig:
    width: int = 4


@dataclasses.dataclass
class ToyConfig:
    depth: int = 2
    name_tag: str = "toy"
    inner: InnerConfig = dataclasses.field(default_factory=InnerConfig)
    sizes: tuple = (1, 2)


def make_registry():
    reg = Registry("widget", base=torch.nn.Module)

    @reg.register("toy", config=ToyConfig)
    class Toy(torch.nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.cfg = cfg

    @reg.register("plain")
    class Plain(torch.nn.Module):
        def __init__(self, scale=1.0):
            super().__init__()
            self.scale = scale

    return reg, Toy, Plain


def test_build_from_every_spec_kind():
    reg, Toy, Plain = make_registry()
    assert reg.build("toy").cfg == ToyConfig()
    assert reg.build({"name": "toy", "depth": 5}).cfg.depth == 5
    assert reg.build({"type": "toy", "inner": {"width": 9}}).cfg.inner.width == 9
    assert reg.build(ToyConfig(depth=7)).cfg.depth == 7
    assert reg.build(OmegaConf.create({"name": "toy", "sizes": [3, 4]})).cfg.sizes == (3, 4)
    assert reg.build("toy", depth=3).cfg.depth == 3
    assert reg.build({"name": "plain", "scale": 2.0}).scale == 2.0
    assert reg.names() == ["plain", "toy"]


def test_duplicate_name_raises_unless_forced():
    reg, _, _ = make_registry()
    with pytest.raises(DuplicateComponentError, match="already registered"):
        reg.register("toy")(torch.nn.Identity)
    reg.register("toy", force=True)(torch.nn.Identity)
    assert isinstance(reg.build("toy"), torch.nn.Identity)


def test_unknown_name_lists_registered_and_suggests():
    reg, _, _ = make_registry()
    with pytest.raises(UnknownComponentError) as err:
        reg.build("toyy")
    message = str(err.value)
    assert "Did you mean 'toy'" in message and "plain, toy" in message
    with pytest.raises(UnknownComponentError, match="beit3_base"):
        BACKBONES.build("beit3_bsae")


def test_base_class_is_enforced_at_registration_and_build():
    reg, _, _ = make_registry()
    with pytest.raises(TypeError, match="must subclass"):
        reg.register("bad")(dict)
    reg.register("factory")(lambda: "not a module")
    with pytest.raises(TypeError, match="not a Module"):
        reg.build("factory")


def test_config_errors_are_explicit():
    reg, _, _ = make_registry()
    with pytest.raises(TypeError, match="no field"):
        reg.build({"name": "toy", "dpeth": 3})
    with pytest.raises(TypeError, match="exactly one of 'name' or 'type'"):
        reg.build({"depth": 3})
    with pytest.raises(TypeError, match="dataclass"):
        reg.register("x", config=dict)
    assert config_from_dict(ToyConfig, {"inner": {"width": 1}}).inner == InnerConfig(1)


def test_every_backbone_has_its_own_config_dataclass():
    configs = [BACKBONES.config_of(n) for n in BACKBONES.names()]
    assert len(set(configs)) == len(configs)
    assert {"beit3_tiny", "beit3_base", "beit3_large", "beit3_giant", "vlmo_base", "vlmo_large"} <= set(
        BACKBONES.names())
