"""Detection and ADE20K cells: a user's own checkpoint through the framework adapters' evaluation commands.

No detector or segmenter is released, so these cells evaluate a file the user trained with this project:

* ``coco_detection_val``: ``tools/train_net.py --eval-only --tta`` (detectron2, Cascade Mask R-CNN + soft-NMS,
  multi-scale + flip test-time augmentation as the paper); ours = ``bbox_TTA`` / ``segm_TTA`` AP of
  ``eval_results.json``. The detector config is ``--detection-config`` (default ``detection/cascade_beit3.yaml``).
* ``ade20k_val`` / ``ade20k_val_ms``: ``mim test mmseg CONFIG --checkpoint FILE`` (``--tta`` for the
  multi-scale + flip pipeline of ``configs/_base_/seg_ade20k.py``); the config is ``--segmentation-config``
  (default ``configs/ade20k_beit3.py``), the data ``<data-root>/ADEChallengeData2016``.

Each runs as a child process (the frameworks own their process state) with its output under the cell's work
folder; a failure is an error naming the command and its log, never a number.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

__all__ = ["evaluate_dense_cell"]

REPO = Path(__file__).resolve().parent.parent


def _checkpoint(cell) -> str:
    if not os.path.isfile(cell.model):
        raise FileNotFoundError(f"{cell.model}: {cell.benchmark} evaluates your own checkpoint file (none is "
                                "released); pass --model PATH=beit3_giant")
    return os.path.abspath(cell.model)


def _run(cmd: List[str], work: Path, env: Dict[str, str]) -> None:
    work.mkdir(parents=True, exist_ok=True)
    log = work / "command.log"
    with log.open("w") as handle:
        proc = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **env})
    if proc.returncode != 0:
        tail = log.read_text()[-2000:]
        raise ValueError(f"{' '.join(cmd)} failed (exit {proc.returncode}); log {log}:\n{tail}")


def evaluate_dense_cell(cell, bench, cfg) -> Dict[str, Any]:
    """The cell's result; the runner adds the weights fingerprint (this module imports nothing of it)."""
    work = Path(cfg.out) / "work" / cell.id
    root = Path(cfg.data_root).resolve()
    ckpt = _checkpoint(cell)
    start = time.perf_counter()
    if bench.kind == "detection":
        script = REPO / "tools" / "train_net.py"
        if not script.is_file():
            raise FileNotFoundError(f"{script}: detection cells run the repository's tools/train_net.py")
        if not (root / "coco" / "annotations" / "instances_val2017.json").is_file():
            raise FileNotFoundError(f"{root / 'coco' / 'annotations' / 'instances_val2017.json'}: COCO val2017 "
                                    "instances are missing")
        config = getattr(cfg, "detection_config", None) or "detection/cascade_beit3.yaml"
        if os.path.isfile(work / "eval_results.json"):
            os.unlink(work / "eval_results.json")
        _run([sys.executable, str(script), "--config-file", config, "--eval-only", "--tta", "MODEL.WEIGHTS", ckpt,
              "DATASETS.ROOT", str(root), "OUTPUT_DIR", str(work)], work, {})
        import json

        results = json.loads((work / "eval_results.json").read_text())
        metrics = {"bbox_AP": float(results["bbox_TTA"]["AP"]), "segm_AP": float(results["segm_TTA"]["AP"]),
                   "bbox_AP_single_scale": float(results["bbox"]["AP"]),
                   "segm_AP_single_scale": float(results["segm"]["AP"])}
    else:
        from beit3_plugins.segmentation.mim_runs import read_test_metrics

        ade = root / "ADEChallengeData2016"
        if not (ade / "images" / "validation").is_dir():
            raise FileNotFoundError(f"{ade / 'images' / 'validation'}: ADE20K validation images are missing")
        config = getattr(cfg, "segmentation_config", None) or str(REPO / "configs" / "ade20k_beit3.py")
        mim = shutil.which("mim", path=os.path.dirname(sys.executable)) or shutil.which("mim")
        if mim is None:
            raise FileNotFoundError("mim: the openmim command is not installed (pip install -e '.[mmseg]')")
        shutil.rmtree(work / "test", ignore_errors=True)
        cmd = [mim, "test", "mmseg", config, "--launcher", "none", "--gpus", "0", "--checkpoint", ckpt,
               "--work-dir", str(work / "test")]
        if bench.name.endswith("_ms"):
            cmd.append("--tta")
        _run(cmd, work, {"ADE20K_ROOT": str(ade)})
        metrics = {"mIoU": float(read_test_metrics(work / "test")["mIoU"])}
    return {"cell": cell.id, "model": cell.model, "like": cell.like, "benchmark": bench.name, "split": bench.split,
            "metrics": metrics, "world_size": 1, "seconds": round(time.perf_counter() - start, 2)}
