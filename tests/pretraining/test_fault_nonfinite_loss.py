"""A NaN loss in a fairseq run stops it the way fairseq does, with a message naming the update.

``--debug-nan-loss-at-update 1`` (a test hook of our task) multiplies the loss of the second update by NaN;
the first update trains normally. fairseq's trainer then finds a non-finite gradient norm and raises
``FloatingPointError: gradients are Nan/Inf`` (after writing ``crash.pt`` and re-running the step under its
``NanDetector``); our task logs the update number and objective losses first. Real ``fairseq-train``."""
import json
import subprocess

from fairseq_run import BIN, ENV, ROOT, tiny_args
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]


def test_fairseq_stops_on_a_nan_loss_naming_the_update(data_world, tiny_spm, tmp_path):
    world, _ = data_world
    save = tmp_path / "ckpt"
    proc = subprocess.run([str(BIN / "fairseq-train"), *tiny_args(world, tiny_spm, save, "--batch-size", "4",
                                                                  "--max-update", "3", "--debug-nan-loss-at-update", "1")],
                          env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log[-3000:]
    assert "FloatingPointError: gradients are Nan/Inf" in log, log[-3000:]
    assert "non-finite loss nan at update 1" in log, log[-3000:]
    assert (save / "crash.pt").is_file()  # fairseq's own crash dump
    updates = [json.loads(line[line.index("{"):]) for line in log.splitlines() if '"num_updates"' in line]
    assert [int(u["num_updates"]) for u in updates if "train_loss" in u or "loss" in u][:1] == [1]
    assert all(int(u["num_updates"]) <= 1 for u in updates)  # the NaN update was never applied
