"""A downloaded checkpoint can never run code: files whose pickle carries a payload are refused before it runs.

Each case writes a crafted ``evil.pt`` whose unpickling would create a marker file, hands it to an entry
point as a user would, and checks that the marker never appears and that the error says why and how to
re-save the file.
"""
import subprocess
import sys
from pathlib import Path

import pytest

from beit3_plugins.checkpoint import UnsafeCheckpointError, load_state_dict_file, safe_load
from evil_pickle import write_evil_checkpoint


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "pwned"
    path = write_evil_checkpoint(tmp_path / "evil.pt", marker)
    # the file really is dangerous: a plain unpickler runs the payload
    import torch

    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    return path, marker


def test_safe_load_refuses_the_payload(evil):
    path, marker = evil
    for loader in (safe_load, load_state_dict_file):
        with pytest.raises(UnsafeCheckpointError, match="weights-only") as info:
            loader(path)
        assert "re-save" in str(info.value) and str(path) in str(info.value)
        assert not marker.exists()


@pytest.mark.slow
@pytest.mark.subprocess
def test_vl_trainer_model_checkpoint_refuses_the_payload(evil, data_world, tiny_spm, tmp_path):
    path, marker = evil
    root, _ = data_world
    cmd = [sys.executable, "-m", "beit3_plugins.vl_tasks.train", "task=vqa", "model=beit3_tiny", "preset=cpu_tiny",
           f"data.root={root}", f"data.tokenizer={tiny_spm}", f"train.output_dir={tmp_path / 'out'}",
           f"model.checkpoint={path}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert res.returncode != 0
    assert "weights-only" in res.stderr and "re-save" in res.stderr, res.stderr[-2000:]
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.subprocess
def test_vl_trainer_resume_file_refuses_the_payload(evil, data_world, tiny_spm, tmp_path):
    path, marker = evil
    root, _ = data_world
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.pt").write_bytes(path.read_bytes())
    cmd = [sys.executable, "-m", "beit3_plugins.vl_tasks.train", "task=vqa", "model=beit3_tiny", "preset=cpu_tiny",
           f"data.root={root}", f"data.tokenizer={tiny_spm}", f"train.output_dir={out}", "train.resume=true"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert res.returncode != 0
    assert "weights-only" in res.stderr, res.stderr[-2000:]
    assert not marker.exists()


def test_no_weights_only_false_in_the_package():
    root = Path(__file__).resolve().parents[2]
    folders = ["beit3_plugins", "backbones", "pretraining", "detection", "segmentation", "vl_tasks", "tools"]
    offenders = [str(p.relative_to(root)) for folder in folders for p in (root / folder).rglob("*.py")
                 if "weights_only=False" in p.read_text()]
    assert offenders == []
