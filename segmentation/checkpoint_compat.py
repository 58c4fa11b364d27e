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

mmengine's checkpoint loaders (``CheckpointLoader`` schemes, behind ``load_from``, ``resume`` and every
``init_cfg=dict(type='Pretrained', checkpoint=...)``) call ``torch.load`` without ``weights_only`` (local files,
``pavi://``, ``s3://``) or through ``torch.hub.load_state_dict_from_url``, whose ``weights_only`` defaults to
False even in torch 2.14 (``http(s)://`` and the named schemes ``open-mmlab://``, ``torchvision://``,
``mmcls://`` that resolve to a URL): a crafted file behind a URL in a config would run code when read.
:func:`register_safe_checkpoint_loaders` replaces every scheme through mmengine's documented
``CheckpointLoader.register_scheme(force=True)`` with loaders that fetch the file as mmengine does (its own
name tables, torch.hub's downloader and cache folder, its file backends) and read it with
:func:`beit3_plugins.checkpoint.safe_load` (explicit ``weights_only=True``, an error that says how to re-save
the file). :data:`SAFE_SCHEMES` lists them; a test fails if mmengine gains a scheme this table lacks.

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
import io
import os
import pickle
from typing import Any, Callable, Dict, List

import torch

__all__ = ["allow_mmengine_checkpoint_globals", "register_safe_checkpoint_loaders", "register_atomic_local_backend",
           "MMENGINE_SAFE_GLOBALS", "SAFE_SCHEMES"]

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


def load_from_local_weights_only(filename, map_location=None):
    """Local files (the ``''`` scheme)."""
    from beit3_plugins.checkpoint import safe_load

    return safe_load(os.path.expanduser(filename), map_location=map_location)


def _download_to_hub_cache(url: str) -> str:
    """``url`` in mmengine's ``load_url`` cache (``<torch hub dir>/checkpoints/<file name>``): downloaded once
    by torch.hub's downloader (temporary file, then rename), reused afterwards."""
    from urllib.parse import urlparse

    from torch.hub import download_url_to_file, get_dir

    folder = os.path.join(get_dir(), "checkpoints")
    os.makedirs(folder, exist_ok=True)
    cached = os.path.join(folder, os.path.basename(urlparse(url).path))
    if not os.path.isfile(cached):
        download_url_to_file(url, cached, None, progress=False)
    return cached


def load_from_http_weights_only(filename, map_location=None):
    """``http(s)://``: rank 0 downloads first and the other ranks wait, then read the cached copy (as mmengine's
    ``load_from_http``)."""
    from mmengine.dist import get_dist_info

    from beit3_plugins.checkpoint import safe_load

    rank, world_size = get_dist_info()
    if rank == 0:
        path = _download_to_hub_cache(filename)
    if world_size > 1:
        torch.distributed.barrier()
        if rank > 0:
            path = _download_to_hub_cache(filename)
    return safe_load(path, map_location=map_location, name=f"{filename} (downloaded to {path})")


def load_from_named_url_weights_only(filename, map_location=None):
    """``torchvision://`` / ``modelzoo://``, ``open-mmlab://`` / ``openmmlab://``, ``mmcls://``: the name is
    looked up in mmengine's own tables (``open_mmlab.json`` in ``$MMENGINE_HOME`` extends them), then read
    like any URL or, for open-mmlab names that map to a relative path, like a file under ``$MMENGINE_HOME``."""
    from mmengine.runner import checkpoint as mmengine_checkpoint

    from beit3_plugins.checkpoint import safe_load

    scheme, name = filename.split("://", 1)
    if scheme in ("torchvision", "modelzoo"):
        url = mmengine_checkpoint.get_torchvision_models()[name]
    elif scheme == "mmcls":
        checkpoint = load_from_http_weights_only(mmengine_checkpoint.get_mmcls_models()[name], map_location)
        return mmengine_checkpoint._process_mmcls_checkpoint(checkpoint)
    else:
        name = mmengine_checkpoint.get_deprecated_model_names().get(name, name)
        url = mmengine_checkpoint.get_external_models()[name]
        if not url.startswith(("http://", "https://")):
            return safe_load(os.path.join(mmengine_checkpoint._get_mmengine_home(), url), map_location=map_location)
    return load_from_http_weights_only(url, map_location)


def load_from_object_store_weights_only(filename, map_location=None, backend="petrel"):
    """``s3://`` / ``petrel://`` (optionally ``name:`` in front): the bytes through mmengine's file backend."""
    from mmengine.fileio import get_file_backend

    from beit3_plugins.checkpoint import safe_load

    with io.BytesIO(get_file_backend(filename, backend_args={"backend": backend}).get(filename)) as buffer:
        return safe_load(buffer, map_location=map_location, name=filename)


def load_from_pavi_weights_only(filename, map_location=None):
    """``pavi://``: downloaded by the pavi client into a temporary folder, then read."""
    import tempfile

    from beit3_plugins.checkpoint import safe_load

    try:
        from pavi import modelcloud
    except ImportError:
        raise ImportError("pavi:// checkpoints need the pavi package (pip install pavi)") from None
    model = modelcloud.get(filename[len("pavi://"):])
    with tempfile.TemporaryDirectory() as folder:
        downloaded = os.path.join(folder, model.name)
        model.download(downloaded)
        return safe_load(downloaded, map_location=map_location)


# every prefix mmengine 0.10 registers, with its weights-only replacement (mmengine logs a loader by its name
# after "load_from_": "Loads checkpoint by http_weights_only backend")
SAFE_SCHEMES: Dict[str, Callable] = {
    "": load_from_local_weights_only,
    "http://": load_from_http_weights_only,
    "https://": load_from_http_weights_only,
    "torchvision://": load_from_named_url_weights_only,
    "modelzoo://": load_from_named_url_weights_only,
    "open-mmlab://": load_from_named_url_weights_only,
    "openmmlab://": load_from_named_url_weights_only,
    "mmcls://": load_from_named_url_weights_only,
    r"(\S+\:)?s3://": load_from_object_store_weights_only,
    r"(\S+\:)?petrel://": load_from_object_store_weights_only,
    "pavi://": load_from_pavi_weights_only,
}


def register_safe_checkpoint_loaders() -> None:
    """Make every ``CheckpointLoader`` scheme read weights-only (see the module docstring)."""
    from mmengine.runner import CheckpointLoader

    for prefix, loader in SAFE_SCHEMES.items():
        CheckpointLoader.register_scheme(prefixes=prefix, loader=loader, force=True)


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
