"""detectron2 on an NVIDIA GPU: the tiny Cascade Mask R-CNN config a few iterations with detectron2's AMP trainer
(``SOLVER.AMP.ENABLED``), then evaluation. Marked ``cuda`` (the dry run uses the CPU without AMP: detectron2's
AMP trainer is CUDA-only)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.cuda, pytest.mark.subprocess]

ROOT = Path(__file__).resolve().parents[2]


def test_train_net_few_iterations_with_amp(data_world, tmp_path, gpu):
    root, manifest = data_world
    entry = json.dumps([["world_train", str(manifest.path("instances_train")), "coco/train2017"]])
    args = ["--config-file", str(ROOT / "detection" / "cascade_beit3_tiny.yaml"), "OUTPUT_DIR", str(tmp_path / "out"),
            "MODEL.DEVICE", gpu.type, "SOLVER.AMP.ENABLED", str(gpu.type == "cuda"), "SOLVER.MAX_ITER", "4",
            "SOLVER.IMS_PER_BATCH", "2", "TEST.EVAL_PERIOD", "0", "DATASETS.ROOT", str(root),
            "DATASETS.COCO_INSTANCES", entry, "DATASETS.TRAIN", "('world_train',)", "DATASETS.TEST", "()",
            "INPUT.LSJ.ENABLED", "False"]
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "train_net.py"), *args], cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = [json.loads(line) for line in (tmp_path / "out" / "metrics.json").read_text().splitlines()]
    losses = [m["total_loss"] for m in metrics if "total_loss" in m]
    assert losses and all(loss == loss for loss in losses)
