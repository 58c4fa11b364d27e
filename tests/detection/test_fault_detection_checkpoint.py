"""kill -9 in the middle of a detectron2 checkpoint write: the next start resumes from the last whole file.

A child process saves ``model_final`` through ``SafeDetectionCheckpointer`` (the checkpointer
``Beit3DetectionTrainer`` installs), then saves it again with different weights and is SIGKILLed by the
operating system after half of the bytes reached the file. fvcore's own ``save`` writes in place, which
would leave a torn ``model_final.pth``; ours must leave the first file whole and loadable.
"""
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from beit3_plugins.io_checks import TEMPORARY_SUFFIX, prepare_output_dir

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

CHILD = textwrap.dedent("""
    import os, signal, sys, torch
    from beit3_plugins.detection import SafeDetectionCheckpointer

    out = sys.argv[1]
    model = torch.nn.Linear(64, 64)
    torch.nn.init.constant_(model.weight, 1.0)
    checkpointer = SafeDetectionCheckpointer(model, out)
    checkpointer.save("model_final", iteration=1)
    torch.nn.init.constant_(model.weight, 2.0)
    real_save = torch.save

    def save_then_die(obj, handle, *args, **kwargs):
        import io
        buffer = io.BytesIO()
        real_save(obj, buffer)
        data = buffer.getvalue()
        handle.write(data[: len(data) // 2])
        handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = save_then_die
    checkpointer.save("model_final", iteration=2)
""")


def test_kill_during_detectron2_save_keeps_the_last_whole_checkpoint(tmp_path):
    from beit3_plugins.detection import SafeDetectionCheckpointer

    res = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    model = torch.nn.Linear(64, 64)
    extra = SafeDetectionCheckpointer(model, str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 1 and torch.equal(model.weight, torch.ones(64, 64))
    names = {p.name for p in tmp_path.iterdir()}
    assert {n for n in names if not n.endswith(TEMPORARY_SUFFIX)} == {"last_checkpoint", "model_final.pth"}
    assert len(names) == 3  # besides them, the dead writer's temporary
    # the next run's trainer (Beit3DetectionTrainer, tools/train_net.py) prepares OUTPUT_DIR first: it goes
    prepare_output_dir(tmp_path, setting="OUTPUT_DIR")
    assert {p.name for p in tmp_path.iterdir()} == {"last_checkpoint", "model_final.pth"}


def test_detectron2_stops_on_a_non_finite_loss():
    """detectron2's ``SimpleTrainer`` (what ``Beit3DetectionTrainer`` runs on CPU and on CUDA without AMP)
    raises ``FloatingPointError`` naming the iteration when the loss turns NaN; the guard is on by default
    and our trainer does not switch it off."""
    import pytest
    from detectron2.engine import SimpleTrainer
    from detectron2.utils.events import EventStorage

    class Regressor(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(1))

        def forward(self, batch):
            return {"loss_box": (self.weight * batch).sum()}

    model = Regressor()
    batches = iter([torch.ones(1), torch.ones(1), torch.tensor([float("nan")]), torch.ones(1)])
    trainer = SimpleTrainer(model, batches, torch.optim.SGD(model.parameters(), lr=0.1))
    with EventStorage(0) as storage, pytest.raises(FloatingPointError, match="iteration=2"):
        trainer.storage = storage
        for trainer.iter in range(4):
            trainer.run_step()


def _fairseq_state(updates):
    return {"model": {"w": torch.full((4,), float(updates))}, "args": None, "cfg": None, "extra_state": {},
            "optimizer_history": [{"criterion_name": "beit3_mdm", "optimizer_name": "beit3_adamw",
                                   "lr_scheduler_state": {}, "num_updates": updates}]}


def test_fairseq_resumes_past_a_torn_checkpoint_last(tmp_path):
    """fairseq writes checkpoint_E_U.pt atomically, then copies it to checkpoint_last.pt in place; a kill
    inside the copy (simulated: the copy holds half the bytes) must not stop the next start. fairseq's reader
    (wrapped by the plugin) then reads the checkpoint the copy came from."""
    import beit3_plugins.pretraining.fairseq_plugin  # noqa: F401
    import pytest
    from fairseq import checkpoint_utils

    older, newest = tmp_path / "checkpoint_1_3.pt", tmp_path / "checkpoint_1_6.pt"
    torch.save(_fairseq_state(3), older)
    torch.save(_fairseq_state(6), newest)
    os.utime(older, ns=(1, 1))  # the newest file is the one the copy came from
    last = tmp_path / "checkpoint_last.pt"
    last.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    state = checkpoint_utils.load_checkpoint_to_cpu(str(last))
    assert state["optimizer_history"][-1]["num_updates"] == 6 and torch.equal(state["model"]["w"], torch.full((4,), 6.))
    older.unlink()
    newest.unlink()
    with pytest.raises(RuntimeError, match="is torn .* no whole checkpoint"):
        checkpoint_utils.load_checkpoint_to_cpu(str(last))
