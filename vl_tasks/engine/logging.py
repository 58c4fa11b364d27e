"""What a run reports: metrics.csv (long format: step, epoch, split, name, value), TensorBoard events and
``curves.png``. On resume, rows after the checkpoint's step are dropped so no step appears twice."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Dict, List, Optional

__all__ = ["MetricLog", "plot_curves"]


class MetricLog:
    FIELDS = ["step", "epoch", "split", "name", "value"]

    def __init__(self, out: Path, enabled: bool, tensorboard: bool, resume_step: Optional[int]) -> None:
        self.path = out / "metrics.csv"
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        rows = []
        if resume_step is not None and self.path.is_file():
            with self.path.open() as handle:
                rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= resume_step]
        with self.path.open("w", newline="") as handle:
            w = csv.DictWriter(handle, fieldnames=self.FIELDS)
            w.writeheader()
            w.writerows(rows)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:  # tensorboard is an extra of beit3-plugins[vl]
                raise ImportError("train.tensorboard=true needs `pip install tensorboard` "
                                  "(or set train.tensorboard=false)") from exc
            self.writer = SummaryWriter(str(out / "tb"), purge_step=resume_step + 1 if resume_step else None)

    def log(self, step: int, epoch: int, split: str, values: Dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", newline="") as handle:
            w = csv.DictWriter(handle, fieldnames=self.FIELDS)
            for name, value in values.items():
                w.writerow({"step": step, "epoch": epoch, "split": split, "name": name, "value": float(value)})
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(f"{split}/{name}", float(value), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def plot_curves(csv_path: Path, out_path: Path) -> Optional[Path]:
    """One panel per (split, metric) of metrics.csv, against the step."""
    if not csv_path.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: Dict[str, List] = {}
    with csv_path.open() as handle:
        for r in csv.DictReader(handle):
            if r["name"] in ("lr",):
                continue
            series.setdefault(f"{r['split']}/{r['name']}", []).append((int(r["step"]), float(r["value"])))
    if not series:
        return None
    n = len(series)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, (name, pts) in zip(axes.flat, sorted(series.items())):
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="." if len(xs) < 30 else None)
        ax.set_title(name)
        ax.set_xlabel("step")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_path, dpi=80)
    plt.close(fig)
    return out_path
