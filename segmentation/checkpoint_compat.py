"""Let mmengine resume its own checkpoints under torch's ``weights_only`` loading, without unpickling code.

torch >= 2.6 loads with ``weights_only=True`` by default; mmengine 0.10.7 checkpoints carry the message
hub's ``HistoryBuffer`` objects and numpy arrays / scalars, so ``--resume`` and ``mim test`` fail with
"Unsupported global". Setting ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` would allow *any* pickle; instead
the few plain-data classes mmengine actually writes are allow-listed here (called once when the plugin
is imported, like a registry registration).

One more global is needed: ``HistoryBuffer.__getstate__`` stores its statistics methods, which pickle as
``getattr(HistoryBuffer, "min")``. Allowing the real ``builtins.getattr`` would let a crafted file reach
any attribute of any allowed object (e.g. ``ndarray.tofile``), so the pickled name ``builtins.getattr``
is mapped to :func:`_history_buffer_getattr`, which only returns HistoryBuffer's statistics methods.

mmengine's own local-file loader (``load_from_local``, behind ``load_from`` and ``resume``) calls ``torch.load``
without ``weights_only``, which ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` would turn into a full unpickler, and its
refusal names no remedy. :func:`register_safe_local_loader` replaces that loader through mmengine's documented
``CheckpointLoader.register_scheme`` with :func:`beit3_plugins.checkpoint.safe_load` (explicit
``weights_only=True``, an error that says how to re-save the file).

mmengine writes checkpoints in place: ``save_checkpoint`` serialises to bytes and hands them to the local
file backend's ``put``, which opens ``iter_N.pth`` (and ``CheckpointHook``'s ``last_checkpoint``, through
``put_text``) with ``open(path, 'wb')``; a run killed mid-write leaves a torn file (a torn ``last_checkpoint``
makes ``resume='auto'`` start again from scratch). :func:`register_atomic_local_backend` re-registers the
``local`` backend (prefix ``''``) through mmengine's ``register_backend(force=True)`` as
:class:`AtomicLocalBackend`, whose writes go through :func:`beit3_plugins.checkpoint.atomic_write`
(temp file, fsync, rename): a kill leaves the previous file or the whole new one.
"""
from __future__ import annotations

import importlib
import pickle
from typing import Any, List

import torch

__all__ = ["allow_mmengine_checkpoint_globals", "register_safe_local_loader", "register_atomic_local_backend",
           "MMENGINE_SAFE_GLOBALS"]

# (module, attribute): plain-data types found in mmengine 0.10 runner checkpoints
MMENGINE_SAFE_GLOBALS = [
    ("mmengine.logging.history_buffer", "HistoryBuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
]
_NUMPY_DTYPES = ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "Float16DType", "BoolDType",
                 "UInt8DType")


_STATISTICS = ("min", "max", "current", "mean")


def _history_buffer_getattr(obj: Any, name: str) -> Any:
    """``getattr`` as weights-only unpickling may call it: HistoryBuffer's statistics methods only."""
    from mmengine.logging import HistoryBuffer

    if obj is HistoryBuffer and name in _STATISTICS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f"weights-only load refused getattr({getattr(obj, '__name__', type(obj).__name__)}, {name!r}): only "
        f"mmengine HistoryBuffer statistics methods {_STATISTICS} are allowed")


def allow_mmengine_checkpoint_globals() -> List[str]:
    """Allow-list the types above for ``torch.load(weights_only=True)``; returns what was added."""
    found, added = [], []
    for module_name, attr in MMENGINE_SAFE_GLOBALS:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        obj = getattr(module, attr, None)
        if obj is not None:
            found.append((obj, f"{module_name}.{attr}"))
    try:
        import numpy.dtypes as np_dtypes

        found += [(getattr(np_dtypes, n), f"numpy.dtypes.{n}") for n in _NUMPY_DTYPES if hasattr(np_dtypes, n)]
    except ImportError:
        pass
    for obj, name in found:
        # numpy 2 exposes numpy.core as an alias of numpy._core: register under the pickled path too
        if name.startswith("numpy.core.") or name.startswith("numpy._core."):
            torch.serialization.add_safe_globals([(obj, name)])
        else:
            torch.serialization.add_safe_globals([obj])
        added.append(name)
    if "mmengine.logging.history_buffer.HistoryBuffer" in added:
        torch.serialization.add_safe_globals([(_history_buffer_getattr, "builtins.getattr")])
        added.append("builtins.getattr (HistoryBuffer statistics methods only)")
    return added


def _safe_load_from_local(filename, map_location):
    """mmengine's local-file checkpoint loader, reading through the package's one safe loader."""
    import os.path as osp

    from beit3_plugins.checkpoint import safe_load

    return safe_load(osp.expanduser(filename), map_location=map_location)


def register_safe_local_loader() -> None:
    """Make ``CheckpointLoader`` read local files (the ``''`` scheme) with :func:`_safe_load_from_local`."""
    from mmengine.runner import CheckpointLoader

    CheckpointLoader.register_scheme(prefixes="", loader=_safe_load_from_local, force=True)


def register_atomic_local_backend() -> None:
    """Make mmengine's local file backend write atomically (see the module docstring)."""
    import os

    from mmengine.fileio import io as mmengine_io
    from mmengine.fileio.backends import LocalBackend, register_backend

    from beit3_plugins.checkpoint import atomic_write

    class AtomicLocalBackend(LocalBackend):
        """``LocalBackend`` whose ``put`` / ``put_text`` write a temporary file and rename it over the target."""

        def put(self, obj: bytes, filepath) -> None:
            os.makedirs(os.path.dirname(os.path.abspath(filepath)), exist_ok=True)
            atomic_write(str(filepath), lambda handle: handle.write(obj))

        def put_text(self, obj: str, filepath, encoding: str = "utf-8") -> None:
            self.put(obj.encode(encoding), filepath)

    register_backend("local", AtomicLocalBackend, force=True, prefixes="")
    for key in [k for k in mmengine_io.backend_instances if k.startswith(":")]:  # instances built before this
        del mmengine_io.backend_instances[key]
