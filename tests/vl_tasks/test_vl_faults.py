"""The VL trainer under faults: non-finite losses (skipped and counted, or a clear stop), a hard kill in the
middle of a checkpoint write (the previous checkpoint survives whole and the next start resumes from it),
and an output directory that cannot be written (a clear error before any training)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from beit3_plugins.io_checks import TEMPORARY_SUFFIX

from beit3_plugins.vl_tasks.engine.loop import NonFiniteLossError
from beit3_plugins.vl_tasks.engine.state import OutputDirError, check_free_space
from beit3_plugins.vl_tasks.train import compose_config, run

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]


def _overrides(root, spm, out, *extra):
    return ["task=vqa", "model=beit3_tiny", "preset=cpu_tiny", f"data.root={root}", f"data.tokenizer={spm}",
            f"train.output_dir={out}", "train.tensorboard=false", "train.batch_size=16", "train.epochs=1",
            "train.eval_every_epochs=0", *extra]


def test_nonfinite_losses_are_skipped_and_counted_or_stop_the_run(data_world, tiny_spm, tmp_path):
    root, _ = data_world
    out = tmp_path / "skip"
    res = run(compose_config(_overrides(root, tiny_spm, out, "train.max_steps=4",
                                        "train.debug_nonfinite_loss_steps=[2,3]")))
    assert res["steps"] == 4 and res["nonfinite_loss_skips"] == 2
    saved = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert saved["nonfinite_skips"] == 2
    adam_steps = {int(s["step"]) for s in saved["optimizer"]["state"].values()}
    assert adam_steps == {2}                      # 4 steps, 2 of them without an update
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())
    rows = [r.split(",") for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert [(r[0], r[4]) for r in rows if r[2] == "train" and r[3] == "nonfinite_skips"][-1] == ("4", "2.0")

    with pytest.raises(NonFiniteLossError, match=r"at step 2 .*train.nonfinite_loss=skip"):
        run(compose_config(_overrides(root, tiny_spm, tmp_path / "stop", "train.max_steps=3",
                                      "train.nonfinite_loss=stop", "train.debug_nonfinite_loss_steps=[2]")))
    with pytest.raises(NonFiniteLossError, match=r"2 steps skipped, more than train.max_nonfinite_skips=1"):
        run(compose_config(_overrides(root, tiny_spm, tmp_path / "budget", "train.max_steps=3",
                                      "train.max_nonfinite_skips=1", "train.debug_nonfinite_loss_steps=[1,2]")))
    with pytest.raises(ValueError, match="nonfinite_loss must be one of"):
        run(compose_config(_overrides(root, tiny_spm, tmp_path / "bad", "train.max_steps=1",
                                      "train.nonfinite_loss=ignore")))


def test_kill_during_checkpoint_write_keeps_the_previous_checkpoint(data_world, tiny_spm, tmp_path):
    root, _ = data_world
    out = tmp_path / "killed"
    extra = ["train.max_steps=4", "train.save_every_steps=2"]
    cmd = [sys.executable, "-m", "beit3_plugins.vl_tasks.train", *_overrides(root, tiny_spm, out, *extra),
           "train.debug_kill_during_save=4"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert res.returncode == -9, res.stderr[-2000:]          # SIGKILL while step 4's checkpoint was written
    ckpt = out / "checkpoints"
    partial = list(ckpt.glob(".last.pt.*" + TEMPORARY_SUFFIX))
    assert len(partial) == 1 and partial[0].stat().st_size > 0
    with pytest.raises(Exception):                              # the interrupted write is not a checkpoint
        torch.load(partial[0], map_location="cpu", weights_only=True)
    assert torch.load(ckpt / "last.pt", map_location="cpu", weights_only=True)["global_step"] == 2
    resumed = run(compose_config(_overrides(root, tiny_spm, out, *extra)))
    assert resumed["steps"] == 4
    assert torch.load(ckpt / "last.pt", map_location="cpu", weights_only=True)["global_step"] == 4
    assert not list(ckpt.glob(".*" + TEMPORARY_SUFFIX))
    keys = [tuple(r.split(",")[:4]) for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert keys and len(keys) == len(set(keys)) and max(int(k[0]) for k in keys) == 4  # no step logged twice


def test_unwritable_output_dir_fails_before_training(data_world, tiny_spm, tmp_path):
    root, _ = data_world
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    out = blocker / "run"
    with pytest.raises(OutputDirError, match=f"train.output_dir={out}"):
        run(compose_config(_overrides(root, tiny_spm, out, "train.max_steps=1")))
    assert blocker.read_text() == "not a directory"
    with pytest.raises(OutputDirError, match="MiB free"):
        check_free_space(tmp_path, 1 << 60)
