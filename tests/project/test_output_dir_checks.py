"""An output directory the run cannot write stops every trainer before training, naming the directory.

Tests run as root (permission bits do not stop root), so the unwritable directory is a path under a
regular file (``blocker/run``): ``mkdir`` fails with ``NotADirectoryError``. Each trainer is run through its
real entry point (``fairseq-train``, ``tools/train_net.py``, ``mim train mmseg``) or its real trainer class
and must fail with ``OutputDirError`` whose message names the setting and the path, leaving the blocking
file untouched. Without the probe the frameworks fail with a bare ``NotADirectoryError`` (or, on a full
disk, only at the first checkpoint)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from beit3_plugins.io_checks import OutputDirError, prepare_output_dir, probe_output_dir, temporary_in

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PATH": f"{BIN}:{os.environ['PATH']}"}


@pytest.fixture
def blocked(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    yield blocker / "run"
    assert blocker.read_text() == "not a directory"


def _fails_naming(cmd, setting, out, env=ENV, timeout=300):
    proc = subprocess.run([str(c) for c in cmd], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log[-3000:]
    assert "OutputDirError" in log and f"{setting}={out}: cannot write there" in log, log[-3000:]
    return log


def test_probe_creates_the_dir_and_leaves_nothing(tmp_path, blocked):
    out = probe_output_dir(tmp_path / "new" / "run", setting="x")
    assert out.is_dir() and list(out.iterdir()) == []
    with pytest.raises(OutputDirError, match=f"x={blocked}: cannot write there .*NotADirectoryError"):
        probe_output_dir(blocked, setting="x")


def test_prepare_removes_only_the_temporaries_of_unfinished_writes(tmp_path, caplog):
    """What a killed atomic write or probe leaves (``temporary_in`` names) goes; the user's own files stay."""
    from beit3_plugins.checkpoint import atomic_write

    atomic_write(str(tmp_path / "model.pth"), lambda handle: handle.write(b"whole"))
    fd, _ = temporary_in(tmp_path, "model.pth")   # as a SIGKILL mid-write leaves it
    os.close(fd)
    fd, _ = temporary_in(tmp_path, "write-probe")
    os.close(fd)
    for own in ("notes.tmp", ".cache.tmp", ".model.pth.partial"):
        (tmp_path / own).write_text("mine")
    with caplog.at_level("WARNING"):
        prepare_output_dir(tmp_path, setting="work_dir")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".cache.tmp", ".model.pth.partial", "model.pth",
                                                          "notes.tmp"]
    assert "removed 2 temporary file(s)" in caplog.text
    assert (tmp_path / "model.pth").read_bytes() == b"whole"


def test_fairseq_train_refuses_an_unwritable_save_dir(data_world, tiny_spm, blocked):
    from fairseq_run import tiny_args

    world, _ = data_world
    log = _fails_naming([BIN / "fairseq-train", *tiny_args(world, tiny_spm, blocked, "--batch-size", "4",
                                                           "--max-update", "1")], "--save-dir", blocked)
    assert "num. model params" not in log  # stopped before the task and model were built


def test_detectron2_refuses_an_unwritable_output_dir(data_world, blocked):
    from detectron2.config import get_cfg

    import beit3_plugins.detection as det

    cfg = get_cfg()
    det.add_beit3_config(cfg)
    cfg.merge_from_file(str(ROOT / "detection" / "cascade_beit3_tiny.yaml"))
    cfg.OUTPUT_DIR = str(blocked)
    with pytest.raises(OutputDirError, match=f"OUTPUT_DIR={blocked}: cannot write there"):
        det.Beit3DetectionTrainer(cfg)
    # the data is there (the command checks its datasets first), the output directory is not writable
    world, _ = data_world
    _fails_naming([sys.executable, ROOT / "tools" / "train_net.py", "--config-file",
                   "detection/cascade_beit3_tiny.yaml", "DATASETS.ROOT", world, "OUTPUT_DIR", blocked],
                  "OUTPUT_DIR", blocked)


def test_mim_train_refuses_an_unwritable_work_dir(data_world, blocked):
    from beit3_plugins.segmentation.mim_runs import REPO_CONFIGS, mim_command

    _, manifest = data_world
    env = {**ENV, "ADE20K_ROOT": str(manifest.path("ade_root"))}
    _fails_naming(mim_command("train", REPO_CONFIGS / "ade20k_beit3_tiny.py", blocked), "work_dir", blocked, env)
