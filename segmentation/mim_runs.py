"""Run ``mim train mmseg`` / ``mim test mmseg`` on our configs and read their results back.

Used by the demo stage and the integration tests, which go through exactly the command users type.
mmengine writes one directory per run under the work dir (``<work_dir>/<timestamp>/``) with
``vis_data/scalars.json`` (one JSON record per logged step, validation metrics included) and, for
``mim test``, ``<timestamp>.json`` with the test metrics.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from beit3_plugins.paths import location

__all__ = ["REPO_CONFIGS", "mim_command", "run_mim", "read_scalars", "last_metric", "read_test_metrics",
           "latest_checkpoint"]

# the mmseg configs as installed (`beit3-plugins paths mmseg-configs`; the checkout's configs/ when editable)
REPO_CONFIGS = location("mmseg-configs")


def _mim_executable() -> str:
    candidate = Path(sys.executable).parent / "mim"
    return str(candidate) if candidate.exists() else "mim"


def mim_command(action: str, config: os.PathLike, work_dir: os.PathLike,
                cfg_options: Sequence[str] = (), extra: Sequence[str] = (), gpus: int = 0) -> List[str]:
    """``mim <action> mmseg <config> --work-dir ... [extra] --cfg-options k=v ...`` (no launcher; CPU unless
    ``gpus``)."""
    cmd = [_mim_executable(), action, "mmseg", str(config), "--launcher", "none", "--gpus", str(gpus),
           "--work-dir", str(work_dir), *extra]
    if cfg_options:
        cmd += ["--cfg-options", *cfg_options]
    return cmd


def run_mim(action: str, config: os.PathLike, work_dir: os.PathLike, cfg_options: Sequence[str] = (),
            extra: Sequence[str] = (), env: Optional[Dict[str, str]] = None, timeout: float = 600,
            log_file: Optional[os.PathLike] = None, gpus: int = 0) -> subprocess.CompletedProcess:
    """Run mim synchronously from ``work_dir`` (outside any checkout, as users would); stdout+stderr go to
    ``log_file`` (default ``<work_dir>/mim_<action>.log``)."""
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    log_path = Path(log_file or Path(work_dir) / f"mim_{action}.log")
    full_env = {**os.environ, **(env or {})}
    # tiny models on a shared CPU: one intra-op thread avoids OpenMP spin-waiting under load (20x slower)
    full_env.setdefault("OMP_NUM_THREADS", "1")
    with open(log_path, "w") as log:
        proc = subprocess.run(mim_command(action, config, work_dir, cfg_options, extra, gpus), env=full_env,
                              cwd=work_dir, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
    proc.log = log_path.read_text()  # type: ignore[attr-defined]
    return proc


def _run_dirs(work_dir: os.PathLike) -> List[Path]:
    return sorted(p for p in Path(work_dir).iterdir() if p.is_dir() and re.fullmatch(r"\d{8}_\d{6}", p.name))


def read_scalars(work_dir: os.PathLike) -> List[dict]:
    """All scalar records of every run in ``work_dir``, oldest run first."""
    records = []
    for run in _run_dirs(work_dir):
        path = run / "vis_data" / "scalars.json"
        if path.is_file():
            records += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return records


def last_metric(work_dir: os.PathLike, key: str = "mIoU") -> float:
    values = [r[key] for r in read_scalars(work_dir) if key in r]
    if not values:
        raise KeyError(f"no {key!r} logged under {work_dir}")
    return float(values[-1])


def read_test_metrics(work_dir: os.PathLike) -> Dict[str, float]:
    """Metrics of the newest ``mim test`` run in ``work_dir``."""
    for run in reversed(_run_dirs(work_dir)):
        path = run / f"{run.name}.json"
        if path.is_file():
            return json.loads(path.read_text())
    raise FileNotFoundError(f"no test metrics json under {work_dir}")


def latest_checkpoint(work_dir: os.PathLike) -> Path:
    marker = Path(work_dir) / "last_checkpoint"
    if not marker.is_file():
        raise FileNotFoundError(f"{work_dir} has no last_checkpoint (did training save one?)")
    return Path(marker.read_text().strip())
