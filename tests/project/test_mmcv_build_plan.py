"""tools/mmcv_build_plan.sh: how setup builds mmcv's ops. CPU unless the CUDA toolkit is present and a GPU is
visible (or BEIT3_MMCV_CUDA=1 forces it); BEIT3_MMCV_CUDA=0 always builds for the CPU. Runs the real script
with this machine's torch and nvcc (if any)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "mmcv_build_plan.sh"


def _plan(**env):
    full = {k: v for k, v in os.environ.items() if k not in ("BEIT3_MMCV_CUDA", "TORCH_CUDA_ARCH_LIST")}
    full.update(env)
    return subprocess.run(["bash", str(SCRIPT), sys.executable], env=full, capture_output=True, text=True,
                          check=True).stdout.split()


def test_cpu_forced_is_always_cpu():
    assert _plan(BEIT3_MMCV_CUDA="0") == ["cpu"]


def test_default_follows_the_visible_gpu():
    has_gpu = shutil.which("nvidia-smi") is not None and torch.cuda.is_available()
    toolkit = shutil.which("nvcc") is not None
    plan = _plan()
    if has_gpu and toolkit and torch.version.cuda:
        assert plan[0] == "cuda"
    elif not has_gpu:
        assert plan == ["cpu"]   # a machine without a GPU keeps today's CPU build (and setup time)


@pytest.mark.skipif(shutil.which("nvcc") is None or not torch.version.cuda, reason="no CUDA toolkit here")
def test_forced_cuda_build_names_the_toolkit_and_architectures():
    plan = _plan(BEIT3_MMCV_CUDA="1", TORCH_CUDA_ARCH_LIST="8.0;9.0")
    assert plan[0] == "cuda" and Path(plan[1]).name == "nvcc" and plan[2] == "8.0;9.0"
    assert _plan(BEIT3_MMCV_CUDA="1")[2] in ("9.0",) or torch.cuda.is_available()
