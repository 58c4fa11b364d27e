"""What a run must keep to resume exactly, and how it reaches the disk without ever being half-written.

* RNG state as tensors and plain Python values, so ``last.pt`` also loads with ``torch.load(weights_only=True)``.
* :func:`atomic_save`: the core ``atomic_write`` (temporary file in the checkpoint's own directory, fsync,
  ``os.replace``, fsync of the directory). A kill at any moment leaves either the previous whole checkpoint
  or the new whole one; the next start deletes the orphaned temporary (``prepare_output_dir``).
* :func:`prepare_output_dir` / :func:`check_free_space` (from the core ``beit3_plugins.io_checks``, shared by
  every trainer): an unwritable or full output directory fails before training, naming the path.
"""
from __future__ import annotations

import dataclasses
import os
import random
import signal
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from beit3_plugins.checkpoint import atomic_write
from beit3_plugins.io_checks import OutputDirError, check_free_space, prepare_output_dir  # re-exported

__all__ = ["TrainState", "OutputDirError", "rng_state", "set_rng_state", "seed_everything", "atomic_save",
           "prepare_output_dir", "check_free_space"]


@dataclasses.dataclass
class TrainState:
    """Position of a run: epoch, step inside it, optimisation steps so far, best metric, skipped steps."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best: Optional[float] = None
    nonfinite_skips: int = 0

    @classmethod
    def from_checkpoint(cls, saved: Dict[str, Any]) -> "TrainState":
        return cls(epoch=saved["epoch"], step_in_epoch=saved["step_in_epoch"], global_step=saved["global_step"],
                   best=saved.get("best"), nonfinite_skips=int(saved.get("nonfinite_skips", 0)))


def rng_state() -> Dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _KillMidWrite:
    """Test hook (``train.debug_kill_during_save``): SIGKILL the process once part of the file is written."""

    def __init__(self, handle) -> None:
        self.handle, self.writes = handle, 0

    def write(self, data) -> int:
        written = self.handle.write(data)
        self.writes += 1
        if self.writes >= 2:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        return written

    def flush(self) -> None:
        self.handle.flush()


def atomic_save(obj: Any, path: Path, debug_kill_midway: bool = False) -> None:
    """``torch.save(obj, path)`` through :func:`beit3_plugins.checkpoint.atomic_write`: never a partial ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(str(path), lambda handle: torch.save(obj, _KillMidWrite(handle) if debug_kill_midway else handle))
