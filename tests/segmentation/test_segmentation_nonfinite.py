"""The non-finite loss guard (``Beit3GuardedOptimWrapper``) in real `mim train mmseg` runs of the tiny config:
a NaN loss injected at iteration N stops the run naming N (or is skipped and counted, and the weights stay
finite), and a diverging run (lr 1e30) stops with the same kind of message instead of scipy's bare
"matrix contains invalid numeric entries" from the Hungarian matcher."""
from pathlib import Path

import pytest
import torch

from beit3_plugins.segmentation.mim_runs import REPO_CONFIGS, latest_checkpoint, run_mim

TINY = REPO_CONFIGS / "ade20k_beit3_tiny.py"


def _short_run(tmp_path, name, iters, extra=""):
    path = Path(tmp_path) / f"{name}.py"
    path.write_text(f"_base_ = [{str(TINY)!r}]\n" + f"""
max_iters = {iters}
train_dataloader = dict(batch_size=2, dataset=dict(indices=2))
val_dataloader = dict(dataset=dict(indices=1))
test_dataloader = val_dataloader
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end=max_iters)]
train_cfg = dict(max_iters=max_iters, val_interval=1000)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=max_iters))
""" + extra)
    return path


def _env(data_world):
    return {"ADE20K_ROOT": str(data_world[1].path("ade_root"))}


def test_nan_loss_at_iteration_n_stops_the_run_naming_n(data_world, tmp_path):
    config = _short_run(tmp_path, "stop", 4, "optim_wrapper = dict(debug_nan_loss_at_iter=3)\n")
    proc = run_mim("train", config, tmp_path / "work", env=_env(data_world), timeout=300)
    assert proc.returncode != 0
    assert "NonFiniteLossError: non-finite loss (nan) at training iteration 3" in proc.log, proc.log[-3000:]
    assert "Iter(train) [2/4]" in proc.log and "Iter(train) [3/4]" not in proc.log  # 2 steps ran, not the 3rd
    assert not list((tmp_path / "work").glob("iter_*.pth"))


def test_skip_mode_drops_the_nan_iteration_counts_it_and_keeps_weights_finite(data_world, tmp_path):
    config = _short_run(tmp_path, "skip", 4,
                        "optim_wrapper = dict(on_nonfinite='skip', debug_nan_loss_at_iter=2)\n")
    work = tmp_path / "work"
    proc = run_mim("train", config, work, env=_env(data_world), timeout=300)
    assert proc.returncode == 0, proc.log[-3000:]
    assert "iteration skipped (1 skipped so far: [2])" in proc.log, proc.log[-3000:]
    final = torch.load(latest_checkpoint(work), map_location="cpu", weights_only=True)
    assert final["meta"]["iter"] == 4
    assert all(torch.isfinite(v).all() for v in final["state_dict"].values() if v.is_floating_point())
    # AdamW stepped on 3 of the 4 iterations: the NaN one never reached the optimizer
    assert {int(s["step"]) for s in final["optimizer"]["state"].values()} == {3}


def test_diverging_run_stops_with_the_guard_message_not_scipys(data_world, tmp_path):
    """lr 1e30 without clipping: the first step is finite, its update is not; the next forward yields
    NaN/inf predictions (the matcher's cost matrix, or the loss) and the run stops naming the iteration."""
    config = _short_run(tmp_path, "diverge", 3,
                        "optim_wrapper = dict(optimizer=dict(lr=1e30), clip_grad=None)\n")
    proc = run_mim("train", config, tmp_path / "work", env=_env(data_world), timeout=300)
    assert proc.returncode != 0
    final = [line for line in proc.log.splitlines() if line.startswith("beit3_plugins.")]
    assert final and final[-1].startswith(
        "beit3_plugins.segmentation.nonfinite_guard.NonFiniteLossError: non-finite"), proc.log[-3000:]
    assert "at training iteration 2" in final[-1] or "at training iteration 3" in final[-1], final[-1]
