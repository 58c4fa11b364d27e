"""One crafted-pickle test per entry point that reads a checkpoint (issue 14): the marker file the payload
would create never appears, and the error says why the file was refused and how to re-save it.

The payload and its check come from ``tests/support/evil_pickle.py`` (``write_evil_checkpoint``): the
fixture first proves the file really runs code under a plain unpickler. Framework entry points run through
the frameworks' real code: fairseq-train's ``--restore-file`` / ``--finetune-from-model`` / ``--init-from``,
detectron2's ``DetectionCheckpointer.resume_or_load`` (MODEL.WEIGHTS and --resume) in the class our trainer
uses, mmengine's ``_load_checkpoint`` (behind the Runner's ``load_from`` and ``resume``). Each also runs with
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``, which would turn the frameworks' own ``torch.load`` into a full unpickler.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from beit3_plugins.checkpoint import CheckpointMismatchError, UnsafeCheckpointError, load_state_dict_file, safe_load
from evil_pickle import write_evil_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FORCE = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "pwned"
    path = write_evil_checkpoint(tmp_path / "evil.pt", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()  # the file really runs code when unpickled
    marker.unlink()
    return path, marker


def _refused(info, path, marker):
    message = str(info.value)
    assert "weights-only" in message or FORCE in message, message
    assert "re-save" in message and str(path) in message, message
    assert not marker.exists()


@pytest.fixture(params=[False, True], ids=["default", "force-env"])
def force_env(request, monkeypatch):
    if request.param:
        monkeypatch.setenv(FORCE, "1")
    return request.param


def test_backbone_loader(evil, force_env):
    from beit3_plugins.backbones import build_backbone

    path, marker = evil
    with pytest.raises(UnsafeCheckpointError) as info:
        build_backbone("beit3_tiny", checkpoint=str(path))
    _refused(info, path, marker)


def test_task_loader(evil, force_env):
    from beit3_plugins.vl_tasks.checkpoints import load_task_checkpoint

    path, marker = evil
    with pytest.raises(UnsafeCheckpointError) as info:
        load_task_checkpoint(torch.nn.Linear(1, 1), str(path))
    _refused(info, path, marker)


def test_vqkd_loader(evil, force_env):
    from beit3_plugins.pretraining.vqkd import build_vqkd

    path, marker = evil
    with pytest.raises(UnsafeCheckpointError) as info:
        build_vqkd("vqkd_tiny").load_checkpoint(str(path))
    _refused(info, path, marker)


def test_export_pretrained_cli(evil, tmp_path):
    path, marker = evil
    res = subprocess.run([BIN / "beit3-plugins", "export-pretrained", str(path), str(tmp_path / "out.pth")],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode != 0
    assert "weights-only" in res.stderr and "re-save" in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr  # a usage error, not a crash
    assert not marker.exists() and not (tmp_path / "out.pth").exists()


def test_fairseq_checkpoint_reader_in_process(evil, force_env):
    """fairseq's own ``load_checkpoint_to_cpu`` (behind --restore-file, --finetune-from-model and
    export-pretrained) once the plugin is imported."""
    import beit3_plugins.pretraining.fairseq_plugin  # noqa: F401 - installs the weights-only reader
    from fairseq import checkpoint_utils

    path, marker = evil
    with pytest.raises(UnsafeCheckpointError) as info:
        checkpoint_utils.load_checkpoint_to_cpu(str(path))
    _refused(info, path, marker)


@pytest.mark.parametrize("option", ["--restore-file", "--finetune-from-model", "--init-from"])
def test_fairseq_train_options(evil, data_world, tiny_spm, tmp_path, option):
    from fairseq_run import ENV, tiny_args

    path, marker = evil
    world, _ = data_world
    cmd = [BIN / "fairseq-train", *tiny_args(world, tiny_spm, tmp_path / "ckpt", option, str(path),
                                             "--batch-size", "2", "--max-update", "1", "--disable-validation")]
    env = {**ENV, FORCE: "1"} if option == "--restore-file" else ENV  # the env var must not open the door
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert "re-save" in res.stderr and str(path) in res.stderr, res.stderr[-3000:]
    assert not marker.exists()


@pytest.fixture
def tiny_detector():
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    import beit3_plugins.detection as det

    cfg = det.add_beit3_config(get_cfg())
    cfg.merge_from_file(str(Path(det.__file__).parent / "cascade_beit3_tiny.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    return build_model(cfg)


def test_detectron2_model_weights_and_resume(evil, force_env, tiny_detector, tmp_path):
    """``MODEL.WEIGHTS=evil.pt`` and ``--resume`` onto a directory whose last checkpoint is evil, through
    the checkpointer ``Beit3DetectionTrainer`` installs (detectron2's ``resume_or_load``)."""
    from beit3_plugins.detection import Beit3DetectionTrainer, SafeDetectionCheckpointer

    path, marker = evil
    with pytest.raises(UnsafeCheckpointError) as info:
        SafeDetectionCheckpointer(tiny_detector).resume_or_load(str(path), resume=False)
    _refused(info, path, marker)
    out = tmp_path / "out"
    out.mkdir()
    (out / "model_0000009.pth").write_bytes(path.read_bytes())
    (out / "last_checkpoint").write_text("model_0000009.pth")
    with pytest.raises(UnsafeCheckpointError) as info:
        SafeDetectionCheckpointer(tiny_detector, str(out)).resume_or_load("", resume=True)
    _refused(info, out / "model_0000009.pth", marker)
    pickled = tmp_path / "zoo.pkl"
    pickled.write_bytes(path.read_bytes())
    with pytest.raises(CheckpointMismatchError, match="pickled checkpoints are not loaded"):
        SafeDetectionCheckpointer(tiny_detector).resume_or_load(str(pickled), resume=False)
    assert not marker.exists()
    assert "SafeDetectionCheckpointer" in Beit3DetectionTrainer.build_hooks.__code__.co_names


def test_mmengine_load_from_and_resume(evil, force_env, tmp_path):
    """mmengine's Runner reads ``load_from`` and ``resume`` files with ``_load_checkpoint``; once the
    segmentation plugin is imported (``custom_imports`` of our configs) that is our safe loader."""
    import beit3_plugins.segmentation  # noqa: F401
    from mmengine.runner.checkpoint import _load_checkpoint, load_checkpoint

    path, marker = evil
    with pytest.raises(UnsafeCheckpointError) as info:
        _load_checkpoint(str(path), map_location="cpu")
    _refused(info, path, marker)
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(torch.nn.Linear(1, 1), str(path), map_location="cpu")
    assert not marker.exists()
    # mmengine's own checkpoints (message hub with HistoryBuffer, numpy scalars) still load
    from mmengine.logging import HistoryBuffer

    good = tmp_path / "epoch_1.pth"
    buffer = HistoryBuffer()
    buffer.update(1.0)
    torch.save({"state_dict": {"w": torch.ones(1)}, "message_hub": {"log": buffer}}, good)
    assert torch.equal(_load_checkpoint(str(good), map_location="cpu")["state_dict"]["w"], torch.ones(1))


def test_mmengine_remote_schemes(evil, force_env, tmp_path, monkeypatch):
    """A checkpoint behind a URL (``load_from='https://...'``, ``init_cfg=dict(type='Pretrained', ...)``) or a
    named scheme (``open-mmlab://``, resolved through ``$MMENGINE_HOME/open_mmlab.json``): mmengine's own
    loaders pass it to ``torch.hub.load_state_dict_from_url``, whose ``weights_only`` defaults to False. Served
    from 127.0.0.1: the crafted file is refused, a plain one still loads."""
    import json

    import beit3_plugins.segmentation  # noqa: F401
    from mmengine.model import BaseModule
    from mmengine.runner.checkpoint import _load_checkpoint
    from zoo_server import ZooServer

    path, marker = evil
    served = tmp_path / "served"
    served.mkdir()
    (served / "evil.pth").write_bytes(path.read_bytes())
    torch.save({"state_dict": {"layer.weight": torch.full((1, 1), 3.0), "layer.bias": torch.zeros(1)}},
               served / "good.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))      # torch.hub's download cache
    home = tmp_path / "mmengine_home"
    home.mkdir()
    monkeypatch.setenv("MMENGINE_HOME", str(home))
    (home / "evil_local.pth").write_bytes(path.read_bytes())

    class Linear(BaseModule):
        def __init__(self, checkpoint):
            super().__init__(init_cfg=dict(type="Pretrained", checkpoint=checkpoint))
            self.layer = torch.nn.Linear(1, 1)

    with ZooServer(served) as server:
        (home / "open_mmlab.json").write_text(json.dumps(
            {"evil_net": server.url + "/evil.pth", "good_net": server.url + "/good.pth",
             "evil_local": "evil_local.pth"}))
        for source in (server.url + "/evil.pth", "open-mmlab://evil_net", "openmmlab://evil_local"):
            with pytest.raises(UnsafeCheckpointError) as info:
                _load_checkpoint(source, map_location="cpu")
            assert "re-save" in str(info.value) and not marker.exists(), (source, str(info.value))
        with pytest.raises(UnsafeCheckpointError):
            Linear(server.url + "/evil.pth").init_weights()
        assert not marker.exists()
        good = _load_checkpoint("open-mmlab://good_net", map_location="cpu")
        assert torch.equal(good["state_dict"]["layer.weight"], torch.full((1, 1), 3.0))
        model = Linear(server.url + "/good.pth")
        model.init_weights()
        assert model.layer.weight.item() == 3.0
    assert (tmp_path / "torch_home" / "hub" / "checkpoints" / "good.pth").is_file()  # mmengine's cache folder


def test_every_mmengine_scheme_reads_weights_only():
    """Each prefix mmengine, mmdet and mmseg register in ``CheckpointLoader`` is one of our weights-only loaders;
    a scheme added by a newer release fails here instead of silently unpickling."""
    import beit3_plugins.segmentation  # noqa: F401
    import mmdet.models  # noqa: F401
    import mmseg.models  # noqa: F401
    from mmengine.runner import CheckpointLoader

    from beit3_plugins.segmentation.checkpoint_compat import SAFE_SCHEMES

    assert set(CheckpointLoader._schemes) == set(SAFE_SCHEMES)
    assert all(CheckpointLoader._schemes[prefix] is loader for prefix, loader in SAFE_SCHEMES.items())


def test_safetensors(evil, force_env, tmp_path):
    from safetensors.torch import save_file

    path, marker = evil
    good = tmp_path / "weights.safetensors"
    save_file({"w": torch.arange(3.0)}, str(good))
    assert torch.equal(load_state_dict_file(str(good))["w"], torch.arange(3.0))
    disguised = tmp_path / "evil.safetensors"
    disguised.write_bytes(path.read_bytes())
    with pytest.raises(CheckpointMismatchError, match="not a valid .safetensors file") as info:
        safe_load(str(disguised))
    assert str(disguised) in str(info.value) and not marker.exists()


def test_zoo_download(evil, force_env, tmp_path):
    """A zoo file served over HTTP (loopback ``ZooServer``): a file that does not match the published hash
    is discarded unread; one that does (a compromised entry) is still refused when the backbone loads it."""
    import hashlib

    from beit3_plugins.backbones import build_backbone
    from beit3_plugins.zoo import ZooDownloadError, ZooFile, download_file
    from zoo_server import ZooServer

    path, marker = evil
    served = tmp_path / "served"
    served.mkdir()
    (served / "evil.pth").write_bytes(path.read_bytes())
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    with ZooServer(served) as server:
        with pytest.raises(ZooDownloadError, match="sha256"):
            download_file(ZooFile(server.url + "/evil.pth", sha256="00" * 32), cache=tmp_path / "c1", progress=False)
        local = download_file(ZooFile(server.url + "/evil.pth", sha256=sha), cache=tmp_path / "c2", progress=False)
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError) as info:
        build_backbone("beit3_tiny", checkpoint=str(local))
    _refused(info, local, marker)


def test_init_vlmo_from_beit_cli(evil, tmp_path, capsys):
    """``beit3-plugins init-vlmo-from-beit`` reads the BEiT file weights-only: a usage error, nothing written."""
    from beit3_plugins.pretraining.init_vlmo import cli_main

    path, marker = evil
    with pytest.raises(SystemExit) as info:
        cli_main([str(path), str(tmp_path / "out.pth"), "--arch", "vlmo_tiny"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "weights-only" in err and "re-save" in err and str(path) in err, err
    assert not marker.exists() and not (tmp_path / "out.pth").exists()
