"""A process killed while mmengine rewrites a checkpoint leaves the previous whole file, and resume loads it.

The child saves ``iter_1.pth`` through mmengine's own ``save_checkpoint`` and writes ``last_checkpoint`` as
``CheckpointHook`` does (the file backend's ``put_text``), then saves ``iter_1.pth`` again with other weights
under ``RLIMIT_FSIZE`` = half its size and ``SIGXFSZ`` at its default action: the kernel kills the process in
the middle of the write, whatever code does the writing. mmengine's stock ``LocalBackend`` writes in place
and would leave a torn ``iter_1.pth``; after ``import beit3_plugins.segmentation`` the write goes to a
temporary file that is renamed only when whole, so ``find_latest_checkpoint`` + the safe loader give the
first weights back.
"""
import os
import signal
import subprocess
import sys
import textwrap

import torch

from beit3_plugins.io_checks import TEMPORARY_SUFFIX
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

CHILD = textwrap.dedent("""
    import os, resource, signal, sys, torch
    import beit3_plugins.segmentation  # noqa: F401 - registers the atomic local backend
    from mmengine.fileio import get_file_backend
    from mmengine.runner.checkpoint import save_checkpoint

    out = sys.argv[1]
    path = os.path.join(out, "iter_1.pth")
    save_checkpoint({"state_dict": {"w": torch.full((256, 256), 1.0)}, "meta": {"iter": 1}}, path)
    get_file_backend(out).put_text(path, os.path.join(out, "last_checkpoint"))
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(path) // 2, resource.RLIM_INFINITY))
    save_checkpoint({"state_dict": {"w": torch.full((256, 256), 2.0)}, "meta": {"iter": 1}}, path)
    print("survived")
""")


def test_kill_during_mmengine_save_keeps_the_last_whole_checkpoint(tmp_path):
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGXFSZ, (proc.returncode, proc.stderr[-2000:])
    assert "survived" not in proc.stdout
    import beit3_plugins.segmentation  # noqa: F401
    from mmengine.runner import find_latest_checkpoint
    from mmengine.runner.checkpoint import _load_checkpoint

    latest = find_latest_checkpoint(str(tmp_path))
    assert latest == str(tmp_path / "iter_1.pth")
    assert torch.equal(_load_checkpoint(latest)["state_dict"]["w"], torch.full((256, 256), 1.0))
    temporaries = [p for p in os.listdir(tmp_path) if p.endswith(TEMPORARY_SUFFIX)]
    assert len(temporaries) == 1  # the unfinished write: never renamed over the whole file
    # the next run's Beit3Runner deletes it before building anything
    from beit3_plugins.segmentation import Beit3Runner

    Beit3Runner(model=torch.nn.Linear(1, 1), work_dir=str(tmp_path))
    assert not [p for p in os.listdir(tmp_path) if p.endswith(TEMPORARY_SUFFIX)]
    assert torch.equal(_load_checkpoint(latest)["state_dict"]["w"], torch.full((256, 256), 1.0))
