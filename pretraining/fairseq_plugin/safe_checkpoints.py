"""fairseq reads ``--restore-file`` and ``--finetune-from-model`` (and its own ``checkpoint_last.pt``) with
``checkpoint_utils.load_checkpoint_to_cpu``, whose ``torch.load`` passes no ``weights_only``.

Under torch >= 2.6 that is a weights-only load, unless ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set, which turns
it into a full unpickler; and torch's refusal of a crafted file says nothing about how to fix it. fairseq has no
hook for its checkpoint reader, so :func:`install` wraps the module function once (fairseq's trainer and its
own helpers look it up on the module at call time): the wrapper refuses to run under the environment
variable, and turns a refused pickle into :class:`beit3_plugins.checkpoint.UnsafeCheckpointError`, which
says why and how to re-save the file.
"""
from __future__ import annotations

import functools
import pickle

from fairseq import checkpoint_utils

from beit3_plugins.checkpoint import refuse_forced_unsafe_loading, unsafe_checkpoint_error

__all__ = ["install"]


def install() -> None:
    original = checkpoint_utils.load_checkpoint_to_cpu
    if getattr(original, "beit3_weights_only", False):
        return

    @functools.wraps(original)
    def load_checkpoint_to_cpu(path, *args, **kwargs):
        refuse_forced_unsafe_loading(f"fairseq checkpoint {path}")
        try:
            return original(path, *args, **kwargs)
        except pickle.UnpicklingError as exc:
            raise unsafe_checkpoint_error(path, exc) from exc

    load_checkpoint_to_cpu.beit3_weights_only = True
    checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu
