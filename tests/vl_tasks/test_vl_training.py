"""The Hydra trainer end to end: exact resume after a hard kill, 2-process DDP (gloo) through torchrun,
evaluation-only runs writing the benchmarks' prediction files."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from beit3_plugins.vl_tasks.train import compose_config, run

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

REPO = Path(__file__).resolve().parents[2]


def _overrides(task, root, spm, out, *extra):
    return [f"task={task}", "model=beit3_tiny", "preset=cpu_tiny", f"data.root={root}", f"data.tokenizer={spm}",
            f"train.output_dir={out}", *extra]


def _weights(out):
    return torch.load(Path(out) / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model"]


def test_resume_after_kill_gives_the_same_weights(data_world, tiny_spm, tmp_path):
    root, _ = data_world
    # random crops + flips (python and torch RNG), drop path and dropout-free attention: RNG state matters
    extra = ["train.max_steps=6", "train.epochs=2", "train.save_every_steps=2", "train.drop_path=0.1",
             "task.augment=true", "train.batch_size=16", "train.tensorboard=false"]
    ref = run(compose_config(_overrides("vqa", root, tiny_spm, tmp_path / "ref", *extra)))
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "beit3_plugins.vl_tasks.train",
           *_overrides("vqa", root, tiny_spm, killed, *extra), "train.debug_kill_after_step=3"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert res.returncode == -9, res.stderr[-2000:]          # really killed (SIGKILL), mid-epoch
    state = torch.load(killed / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 2 and state["step_in_epoch"] == 2
    # last.pt holds only tensors and plain values: it also serves as another run's model.checkpoint
    torch.load(killed / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    resumed = run(compose_config(_overrides("vqa", root, tiny_spm, killed, *extra)))
    assert resumed["steps"] == ref["steps"] == 6
    a, b = _weights(tmp_path / "ref"), _weights(killed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert resumed["eval"] == ref["eval"]
    # metrics.csv has no duplicated steps after the resume
    rows = (killed / "metrics.csv").read_text().splitlines()[1:]
    keys = [tuple(r.split(",")[:4]) for r in rows]
    assert len(keys) == len(set(keys))


def test_ddp_two_processes_with_gathered_contrastive_loss(data_world, tiny_spm, tmp_path):
    root, _ = data_world
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", "29517", "-m", "beit3_plugins.vl_tasks.train",
           *_overrides("retrieval", root, tiny_spm, out, "train.max_steps=4", "train.batch_size=8",
                       "train.tensorboard=false", "train.device=cpu")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=str(tmp_path), env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 4
    assert {"i2t_r1", "t2i_r1", "r_mean"} <= set(metrics["eval"])


def test_eval_only_writes_submission_formats(data_world, tiny_spm, tmp_path):
    root, _ = data_world
    common = ("train.eval_only=true", "train.predict=true", "train.tensorboard=false")
    vqa = run(compose_config(_overrides("vqa", root, tiny_spm, tmp_path / "vqa", *common)))
    preds = json.loads((tmp_path / "vqa" / "predictions" / "vqa_val.json").read_text())
    assert set(preds[0]) == {"question_id", "answer"} and isinstance(preds[0]["question_id"], int)
    assert 0.0 <= vqa["eval"]["vqa_accuracy"] <= 100.0
    run(compose_config(_overrides("captioning", root, tiny_spm, tmp_path / "cap", *common, "task.max_gen_len=5",
                                  "task.beam_size=2")))
    caps = json.loads((tmp_path / "cap" / "predictions" / "captioning_val.json").read_text())
    assert set(caps[0]) == {"image_id", "caption"} and isinstance(caps[0]["caption"], str)
    ret = run(compose_config(_overrides("retrieval", root, tiny_spm, tmp_path / "ret", *common)))
    ranks = json.loads((tmp_path / "ret" / "predictions" / "retrieval_val.json").read_text())
    assert set(ranks) == {"i2t", "t2i", "captions"} and len(ranks["t2i"]) == len(ranks["captions"])
    assert "i2t_r1" in ret["eval"]
