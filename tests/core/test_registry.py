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


def test_root_registries_name_no_layer_above_the_core():
    from beit3_plugins import registry

    for root in (registry.BACKBONES, registry.HEADS, registry.TASKS, registry.TOKENIZERS, registry.DATASETS,
                 registry.METRICS):
        assert root.parent is None
        assert all(m.startswith("beit3_plugins.") and m.split(".")[1] in ("tokenizer", "wordpiece", "data")
                   for m in root._locations), (
            root, root._locations)


def test_child_registries_scope_duplicates_and_parent_fallback():
    root = Registry("widget", base=torch.nn.Module)
    left = Registry("widget", parent=root, scope="left")
    right = Registry("widget", parent=root, scope="right")
    left.register("same")(torch.nn.Identity)
    with pytest.raises(DuplicateComponentError, match="'left'"):
        right.register("same")(torch.nn.ReLU)
    right.register("same", force=True)(torch.nn.ReLU)   # forced: the root refuses to guess
    with pytest.raises(DuplicateComponentError, match="several scopes"):
        root.get("same")
    assert root.get("right.same").obj is torch.nn.ReLU and root.get("left.same").obj is torch.nn.Identity
    root.register("on_root")(torch.nn.Tanh)
    assert isinstance(left.build("on_root"), torch.nn.Tanh)       # a child falls back to its parent
    assert root.names() == ["on_root", "same"] and "same" in root
    with pytest.raises(TypeError, match="must subclass"):          # a child inherits the root's base class
        left.register("bad")(dict)
    with pytest.raises(ValueError, match="scope"):
        Registry("widget", parent=root)


@pytest.mark.slow
@pytest.mark.subprocess
def test_fresh_process_builds_every_kind_through_the_root_registries(data_world, tiny_spm):
    """No prior import of any layer: the roots find the built-ins through the ``beit3_plugins`` entry points."""
    import subprocess
    import sys

    _, manifest = data_world
    code = f"""
import sys
from beit3_plugins.registry import BACKBONES, DATASETS, HEADS, METRICS, TASKS, TOKENIZERS
assert not any(m.split('.')[1:2] in (['backbones'], ['vl_tasks'], ['pretraining'])
               for m in sys.modules if m.startswith('beit3_plugins.')), sorted(sys.modules)
vq = TOKENIZERS.build('vqkd_tiny', kmeans_iters=0)
assert type(vq).__name__ == 'VQKDTokenizer' and TOKENIZERS.config_of('vqkd_base').embed_dim == 768
base = BACKBONES.build('beit3_base', depth=1)
assert base.cfg.embed_dim == 768 and len(base.layers) == 1
task = TASKS.build({{'name': 'vqa', 'image_size': 32, 'max_text_len': 24}})
head = HEADS.build('pooler', dim=8)
acc = METRICS.get('accuracy').obj([1, 0], [1, 1])
ds = DATASETS.build({{'name': 'imagenet_folder', 'root': {str(manifest.path("imagenet_val"))!r},
                     'image': {{'transform': 'imagenet', 'image_size': 32, 'train': False}}}})
print(type(task).__name__, type(head).__name__, acc, len(ds), TASKS.get('vl_tasks.vqa').name)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == ["VqaTask", "Pooler", "{'accuracy':", "50.0}", "12", "vqa"], res.stdout


def test_data_registry_reads_listed_entries_and_its_entry_point_group(tmp_path, monkeypatch):
    """A registry of data (the zoo, the CLI commands): a ``module:ATTR`` location is a list the registry reads
    itself on first lookup (importing it registers nothing), and the registry's own entry-point group adds a
    third party's entries; one lookup and one did-you-mean error for all of them."""
    (tmp_path / "thing_type.py").write_text("import dataclasses\n\n\n@dataclasses.dataclass(frozen=True)\n"
                                            "class Thing:\n    name: str\n    size: int = 0\n")
    (tmp_path / "listed_things.py").write_text(
        "from thing_type import Thing\nTHINGS = (Thing('small', 1), Thing('large', 9))\n")
    (tmp_path / "plugin_things.py").write_text("from thing_type import Thing\nEXTRA = [Thing('huge', 99)]\n"
                                               "ONE = Thing('ignored_name', 5)\n")
    info = tmp_path / "plugin_things-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: plugin-things\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[test_registry.things]\nextra = plugin_things:EXTRA\n"
                                           "single = plugin_things:ONE\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from thing_type import Thing

    reg = Registry("thing", entry_type=Thing, locations=["listed_things:THINGS"],
                   entry_point_group="test_registry.things", code_plugins=False)
    import listed_things  # noqa: F401 - importing the list registers nothing

    assert reg._entries == {}
    assert reg["small"] == Thing("small", 1) and reg["huge"].size == 99
    assert reg["single"] == Thing("ignored_name", 5)          # a lone entry point value is named by the entry point
    assert [name for name, _ in reg.items()] == ["huge", "large", "single", "small"]
    with pytest.raises(UnknownComponentError, match="Did you mean 'large'"):
        reg.get("lage")
    reg.add(Thing("small", 1))                                 # the same entry again: no conflict
    with pytest.raises(DuplicateComponentError):
        reg.add(Thing("small", 2))
    with pytest.raises(TypeError, match="must be a Thing"):
        reg.add("small")
