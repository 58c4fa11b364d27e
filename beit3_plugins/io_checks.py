"""Output-directory checks shared by every trainer (VL trainer, fairseq, detectron2, mmengine).

A run that cannot write its checkpoints should fail in seconds with the directory in the message, not after
its first epoch: :func:`probe_output_dir` creates the directory and writes (then deletes) a 1 MiB probe file,
so a path under a regular file, a read-only mount or a (nearly) full disk is caught before training starts.
:func:`prepare_output_dir` (what every trainer calls) also deletes the temporaries that a killed process left
behind: atomic writes (:func:`atomic_write`, also exported by ``beit3_plugins.checkpoint``) and probes name
theirs through :func:`temporary_in`, so only files of that pattern are ever removed.
Core layer: imports no framework.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Callable

logger = logging.getLogger(__name__)

__all__ = ["OutputDirError", "probe_output_dir", "prepare_output_dir", "check_free_space", "temporary_in",
           "remove_stale_temporaries", "atomic_write", "PROBE_BYTES", "TEMPORARY_SUFFIX"]

PROBE_BYTES = 1 << 20  # a probe this large also catches a (nearly) full disk
TEMPORARY_SUFFIX = ".beit3-partial"  # distinct enough that cleaning up never touches a user's own files


def temporary_in(folder, name: str):
    """``(fd, path)`` of a new hidden temporary ``.<name>.<random>`` + :data:`TEMPORARY_SUFFIX` in ``folder``
    (same filesystem, so it can be renamed over the target)."""
    return tempfile.mkstemp(prefix=f".{name}.", suffix=TEMPORARY_SUFFIX, dir=folder)


def remove_stale_temporaries(folder) -> int:
    """Delete the temporaries of writes (or probes) a killed process never finished; return how many."""
    removed = 0
    folder = Path(folder)
    if folder.is_dir():
        for stale in folder.glob(f".*{TEMPORARY_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
                removed += 1
    return removed


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
        fd, probe = temporary_in(out, "write-probe")
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


def prepare_output_dir(out, setting: str = "output directory") -> Path:
    """What a trainer's main process runs before building anything: :func:`remove_stale_temporaries`, then
    :func:`probe_output_dir`. Returns ``out`` as a :class:`Path`."""
    removed = remove_stale_temporaries(out)
    if removed:
        logger.warning("%s=%s: removed %d temporary file(s) of writes that a killed run never finished",
                       setting, out, removed)
    return probe_output_dir(out, setting)


def check_free_space(folder, checkpoint_bytes: int, setting: str = "output directory") -> None:
    """A checkpoint is written beside the previous one: refuse to start when two copies would not fit."""
    free = shutil.disk_usage(folder).free
    if free < 2 * checkpoint_bytes:
        raise OutputDirError(
            f"{setting}={folder}: {free / 2**20:.0f} MiB free, but checkpoints need about "
            f"{2 * checkpoint_bytes / 2**20:.0f} MiB (the new one is written beside the previous one)")


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` so that a reader (or a resume after kill -9) sees the old file or the whole new one:
    ``write`` fills a temporary file in the same folder, which is fsynced and renamed over ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = temporary_in(directory, os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable (not every filesystem lets a directory be opened or fsynced)
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
