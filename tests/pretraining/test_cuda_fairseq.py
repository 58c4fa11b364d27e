"""fairseq `beit3_mdm` pretraining on an NVIDIA GPU: a few updates in bf16 (``--bf16``) through fairseq-train.
Marked ``cuda`` (the dry run uses the CPU in fp32: fairseq's bf16 path is CUDA-only)."""
import json
import subprocess

import pytest

from fairseq_run import BIN, ENV, ROOT, tiny_args

pytestmark = [pytest.mark.cuda, pytest.mark.subprocess]


def test_beit3_mdm_updates_in_bf16(data_world, tiny_spm, tmp_path, gpu):
    world, _ = data_world
    args = tiny_args(world, tiny_spm, tmp_path / "ckpt", "--batch-size", "4", "--max-update", "8",
                     "--disable-validation")
    if gpu.type == "cuda":
        args = [a for a in args if a != "--cpu"] + ["--bf16"]
    proc = subprocess.run([str(BIN / "fairseq-train"), *args], env=ENV, cwd=ROOT, capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    losses = [json.loads(line[line.index("{"):])["loss"] for line in proc.stdout.splitlines()
              if '"loss"' in line and "{" in line]
    assert losses and all(float(x) == float(x) for x in losses)
