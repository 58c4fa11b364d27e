"""Every task model and the bare backbone saved as a folder and loaded back (weights identical), and the ONNX
export of the dual encoder (two towers), VQA, NLVR2 and image classification checked against PyTorch with
onnxruntime at another batch size and text length than the export's; captioning is refused with the reason."""
import os

import pytest
import torch

from beit3_plugins import zoo
from beit3_plugins.backbones import build_backbone
from beit3_plugins.pipelines import create_model_and_transforms, save_pretrained
from beit3_plugins.pipelines.onnx_export import check_onnx, export_onnx

from zoo_server import ZooServer
from zoo_twins import ANSWERS, KINDS, make_twins

pytest.importorskip("onnxruntime", reason="pip install 'beit3-plugins[onnx]' (tools/setup_env.sh installs it)")


@pytest.fixture(scope="module")
def twins(tmp_path_factory, tiny_spm):
    root = tmp_path_factory.mktemp("share_zoo")
    old = os.environ.get(zoo.CACHE_ENV)
    os.environ[zoo.CACHE_ENV] = str(root / "cache")
    (root / "served").mkdir()
    with ZooServer(root / "served") as server:
        make_twins(root / "served", server.url, tiny_spm)
        yield {name: create_model_and_transforms(name)[0] for name in KINDS}
    if old is None:
        os.environ.pop(zoo.CACHE_ENV, None)
    else:
        os.environ[zoo.CACHE_ENV] = old


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", list(KINDS))
def test_every_task_model_saves_and_loads_back(twins, name, tmp_path):
    model = twins[name]
    folder = save_pretrained(model, tmp_path / name)
    config = zoo.ModelConfig.read(folder / "config.json")
    assert config.task == model.zoo_entry.task and config.image_size == model.zoo_entry.image_size
    loaded = create_model_and_transforms(str(folder))[0]
    assert _same(model, loaded)
    assert loaded.zoo_entry.backbone_overrides() == model.zoo_entry.backbone_overrides()
    assert loaded.zoo_entry.labels == (tuple(ANSWERS) if name == "twin_vqa" else ())  # answers move into config.json


def test_bare_backbone_saves_and_loads_through_build_backbone(tmp_path):
    torch.manual_seed(0)
    backbone = build_backbone("beit3_tiny", img_size=32, drop_path_rate=0.1)
    save_pretrained(backbone, tmp_path / "bb")
    config = zoo.ModelConfig.read(tmp_path / "bb" / "config.json")
    assert config.task == "pretrain" and config.backbone_config["drop_path_rate"] == 0.1
    assert config.tokenizer is None
    loaded = build_backbone("beit3_tiny", pretrained=str(tmp_path / "bb"))
    assert loaded.cfg.img_size == 32 and loaded.cfg.drop_path_rate == 0.1 and _same(backbone, loaded)
    with pytest.raises(ValueError, match="beit3_tiny weights, not vlmo_tiny"):
        build_backbone("vlmo_tiny", pretrained=str(tmp_path / "bb"))


def test_hand_built_vlmo_model_saves_with_its_description(tiny_spm, tmp_path):
    from beit3_plugins.registry import TASKS

    torch.manual_seed(0)
    backbone = build_backbone("vlmo_tiny", img_size=32)
    model = TASKS.build("vqa").model_for(backbone, {"num_answers": 3})
    with pytest.raises(ValueError, match="pass task="):
        save_pretrained(model, tmp_path / "no_task")
    folder = save_pretrained(model, tmp_path / "vlmo", task="vqa", labels=["yes", "no", "two"],
                             head={"num_answers": 3}, tokenizer=tiny_spm)
    config = zoo.ModelConfig.read(folder / "config.json")
    assert (config.family, config.backbone, config.tokenizer.kind, config.head) == (
        "vlmo", "vlmo_tiny", "wordpiece", {"num_answers": 3})
    loaded = create_model_and_transforms(str(folder))[0]
    assert type(loaded) is type(model) and _same(model, loaded) and loaded.zoo_entry.labels == ("yes", "no", "two")


@pytest.mark.slow
@pytest.mark.parametrize("name,graphs", [("twin_itc", {"image_tower", "text_tower"}), ("twin_vqa", {"model"}),
                                         ("twin_nlvr2", {"model"}), ("twin_in1k", {"model"})])
def test_onnx_export_matches_pytorch(twins, name, graphs, tmp_path):
    paths = export_onnx(twins[name], tmp_path)
    assert set(paths) == graphs
    diffs = check_onnx(twins[name], paths)
    print(f"{name}: max |onnxruntime - torch| = {diffs}")
    assert max(diffs.values()) < 1e-4, diffs


def test_captioning_is_refused_with_the_reason(twins, tmp_path):
    with pytest.raises(ValueError, match="captioning cannot be exported.*beam search"):
        export_onnx(twins["twin_captioning"], tmp_path)
