"""mmseg on an NVIDIA GPU: `mim train mmseg` a few iterations of the tiny ViT-Adapter + Mask2Former config with
mmengine's AMP optimizer wrapper. Deformable attention runs mmcv's CUDA kernel, or (an mmcv built without one)
its PyTorch path through segmentation/mmcv_ops.py, never a crash. Marked ``cuda`` (the dry run uses the CPU
without AMP)."""
import json

import pytest

from beit3_plugins.segmentation.mim_runs import REPO_CONFIGS, run_mim

pytestmark = [pytest.mark.cuda, pytest.mark.subprocess]


def test_mim_train_few_iterations_with_amp(data_world, tmp_path, gpu):
    _, manifest = data_world
    config = tmp_path / "amp.py"
    # mmengine's AMP wrapper in place of the guarded one (whose stop/skip options it does not take)
    wrapper = ("dict(_delete_=True, type='AmpOptimWrapper', dtype='bfloat16', "
               "optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.05), clip_grad=dict(max_norm=1.0), "
               "constructor='Beit3LayerDecayOptimizerConstructor', paramwise_cfg=dict(layer_decay_rate=0.9))"
               if gpu.type == "cuda" else "dict()")
    config.write_text(f"_base_ = [{str(REPO_CONFIGS / 'ade20k_beit3_tiny.py')!r}]\n"
                      f"max_iters = 4\n"
                      f"optim_wrapper = {wrapper}\n"
                      "train_dataloader = dict(batch_size=2, dataset=dict(indices=4))\n"
                      "train_cfg = dict(max_iters=max_iters, val_interval=1000)\n"
                      "default_hooks = dict(checkpoint=dict(interval=max_iters))\n")
    work = tmp_path / "work"
    proc = run_mim("train", config, work, env={"ADE20K_ROOT": str(manifest.path("ade_root"))}, timeout=400,
                   gpus=1 if gpu.type == "cuda" else 0)
    assert proc.returncode == 0, proc.log[-4000:]
    scalars = [json.loads(line) for line in next(work.rglob("scalars.json")).read_text().splitlines()]
    losses = [row["loss"] for row in scalars if "loss" in row]
    assert losses and all(loss == loss and abs(loss) < 1e6 for loss in losses)
