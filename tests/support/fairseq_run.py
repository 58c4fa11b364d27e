"""The fairseq command line as the pretraining tests run it: paths, environment, the tiny run's flags.

As users type it: no ``--user-dir`` (the installed autoload registers the task) and run from a folder outside
the checkout."""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
USER_DIR = ROOT / "pretraining" / "fairseq_user_dir" / "beit3_mdm"  # = `beit3-plugins paths fairseq-user-dir`
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PATH": f"{BIN}:{os.environ['PATH']}"}


def tiny_args(world, spm, save_dir, *extra, task="beit3_mdm", arch="beit3_tiny"):
    return [str(world), "--task", task, "--arch", arch, "--criterion", "beit3_mdm",
            "--spm-model", str(spm), "--image-size", "64", "--patch-size", "8", "--max-text-len", "32",
            "--min-mask-block", "4", "--tokenizer-arch", "vqkd_tiny", "--cpu", "--optimizer", "beit3_adamw",
            "--adam-betas", "(0.9,0.98)", "--adam-eps", "1e-6", "--weight-decay", "0.05", "--lr", "1e-3",
            "--lr-scheduler", "cosine", "--warmup-updates", "4", "--drop-path-rate", "0.0", "--save-dir",
            str(save_dir), "--no-epoch-checkpoints", "--log-format", "json", "--log-interval", "1",
            "--num-workers", "0", "--seed", "3", *extra]


def run(cmd, timeout=300):
    proc = subprocess.run(cmd, env=ENV, cwd=tempfile.gettempdir(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout + proc.stderr


def model_weights(path):
    from fairseq import checkpoint_utils

    return checkpoint_utils.load_checkpoint_to_cpu(str(path))["model"]
