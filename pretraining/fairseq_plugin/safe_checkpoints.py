"""fairseq reads ``--restore-file`` and ``--finetune-from-model`` (and its own ``checkpoint_last.pt``) with
``checkpoint_utils.load_checkpoint_to_cpu``, whose ``torch.load`` passes no ``weights_only``.

Under torch >= 2.6 that is a weights-only load, unless ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set, which turns
it into a full unpickler; and torch's refusal of a crafted file says nothing about how to fix it. fairseq has no
hook for its checkpoint reader, so :func:`install` wraps the module function once (fairseq's trainer and its
own helpers look it up on the module at call time): the wrapper refuses to run under the environment
variable, and turns a refused pickle into :class:`beit3_plugins.checkpoint.UnsafeCheckpointError`, which
says why and how to re-save the file.

The wrapper also resumes past a torn ``checkpoint_last.pt``: fairseq writes ``checkpoint_<epoch>_<update>.pt``
atomically (temp file + rename) and then *copies* it to ``checkpoint_last.pt``, which is not atomic; a run
killed inside that copy leaves a torn file that the next start would fail on. A ``checkpoint_last.pt`` that
is not a whole zip archive is replaced by the newest whole ``checkpoint*.pt`` beside it (with a warning), and
when there is none the error says so.

:func:`install_save_dir_probe`: fairseq's ``verify_checkpoint_directory`` (run on the master before the
task is set up) creates ``--save-dir`` and touches an empty file; a path under a regular file fails with a
bare ``NotADirectoryError`` and a full disk is not noticed until the first checkpoint. It is replaced by
:func:`beit3_plugins.io_checks.prepare_output_dir` (a 1 MiB probe write, an ``OutputDirError`` naming
``--save-dir``), so the run stops before any training.
"""
from __future__ import annotations

import functools
import logging
import os
import pickle
import zipfile
from pathlib import Path

from fairseq import checkpoint_utils

from beit3_plugins.checkpoint import checkpoint_read_error, refuse_forced_unsafe_loading
from beit3_plugins.io_checks import prepare_output_dir

__all__ = ["install", "install_save_dir_probe", "last_whole_checkpoint"]

logger = logging.getLogger(__name__)


def last_whole_checkpoint(path: str) -> str:
    """``path`` itself unless it is a torn ``checkpoint_last.pt``; then the newest whole checkpoint beside it."""
    last = Path(path)
    if last.name != "checkpoint_last.pt" or not last.is_file() or zipfile.is_zipfile(last):
        return path
    whole = [p for p in last.parent.glob("checkpoint*.pt")
             if p.name not in ("checkpoint_last.pt", "checkpoint_best.pt") and zipfile.is_zipfile(p)]
    if not whole:
        raise RuntimeError(f"{path} is torn (the run was killed while fairseq copied it) and no whole "
                           f"checkpoint*.pt is beside it to resume from; start again without it")
    newest = max(whole, key=lambda p: p.stat().st_mtime_ns)
    logger.warning(f"{path} is torn (killed during fairseq's copy); resuming from {newest}, the checkpoint "
                   "it was copied from")
    return str(newest)


def install() -> None:
    original = checkpoint_utils.load_checkpoint_to_cpu
    if getattr(original, "beit3_weights_only", False):
        return

    @functools.wraps(original)
    def load_checkpoint_to_cpu(path, *args, **kwargs):
        refuse_forced_unsafe_loading(f"fairseq checkpoint {path}")
        if isinstance(path, (str, os.PathLike)):
            path = last_whole_checkpoint(str(path))
        try:
            return original(path, *args, **kwargs)
        except pickle.UnpicklingError as exc:
            raise checkpoint_read_error(path, exc) from exc

    load_checkpoint_to_cpu.beit3_weights_only = True
    checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu


def install_save_dir_probe() -> None:
    """Make fairseq's start-of-run ``--save-dir`` check the package's probe (see the module docstring)."""
    if getattr(checkpoint_utils.verify_checkpoint_directory, "beit3_probe", False):
        return

    def verify_checkpoint_directory(save_dir: str) -> None:
        prepare_output_dir(save_dir, setting="--save-dir")

    verify_checkpoint_directory.beit3_probe = True
    checkpoint_utils.verify_checkpoint_directory = verify_checkpoint_directory
