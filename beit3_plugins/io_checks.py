"""Output-directory checks shared by every trainer (VL trainer, fairseq, detectron2, mmengine).

A run that cannot write its checkpoints should fail in seconds with the directory in the message, not after
its first epoch: :func:`probe_output_dir` creates the directory and writes (then deletes) a 1 MiB probe file,
so a path under a regular file, a read-only mount or a (nearly) full disk is caught before training starts.
Core layer: imports no framework.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["OutputDirError", "probe_output_dir", "check_free_space", "PROBE_BYTES"]

PROBE_BYTES = 1 << 20  # a probe this large also catches a (nearly) full disk


class OutputDirError(OSError):
    """An output directory cannot hold this run's files (not creatable, not writable, or too little space)."""


def probe_output_dir(out, setting: str = "output directory") -> Path:
    """Create ``out`` and write (then delete) a probe file there, or raise :class:`OutputDirError`.

    ``setting`` names the option the user set (``--save-dir``, ``OUTPUT_DIR``, ``work_dir``...), so the
    message points at what to change. Returns ``out`` as a :class:`Path`.
    """
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=out)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(b"\0" * PROBE_BYTES)
                handle.flush()
                os.fsync(handle.fileno())
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(probe)
    except OSError as exc:
        raise OutputDirError(
            f"{setting}={out}: cannot write there ({type(exc).__name__}: {exc}); choose a writable "
            "directory with free space before training starts") from exc
    return out


def check_free_space(folder, checkpoint_bytes: int, setting: str = "output directory") -> None:
    """A checkpoint is written beside the previous one: refuse to start when two copies would not fit."""
    free = shutil.disk_usage(folder).free
    if free < 2 * checkpoint_bytes:
        raise OutputDirError(
            f"{setting}={folder}: {free / 2**20:.0f} MiB free, but checkpoints need about "
            f"{2 * checkpoint_bytes / 2**20:.0f} MiB (the new one is written beside the previous one)")
