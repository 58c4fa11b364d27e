"""mmcv's compiled multi-scale deformable attention, or its PyTorch path where the build has no kernel.

``mmcv.ops.MultiScaleDeformableAttention`` (ViT-Adapter's injector/extractor here, and mmdet's Mask2Former
pixel decoder) sends CUDA tensors to the compiled op, whatever the build: an mmcv compiled without CUDA
(``tools/setup_env.sh`` on a machine without the CUDA toolkit), or for other GPU architectures, then fails on
the first GPU forward. mmcv looks the op up by its module-global name at every call, so replacing that name
with :class:`DeformAttnDispatch` reaches every caller: it runs the compiled op where it has a kernel for the
tensor's device, and otherwise mmcv's own ``multi_scale_deformable_attn_pytorch`` (same arithmetic, more
memory), with one logged warning per device type. Why not a subclass registered in MODELS: mmdet builds the
pixel decoder's attention by class, not through the registry, so a subclass would miss it.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Dict, Set

import torch

__all__ = ["DeformAttnDispatch", "compiled_kernel_available", "install_deform_attn_fallback",
           "reset_kernel_probe"]

logger = logging.getLogger(__name__)

_LOCK = threading.RLock()  # the probe runs under it
_PROBED: Dict[str, bool] = {}   # device type -> whether the compiled op ran there
_WARNED: Set[str] = set()


def _compiled_function():
    """mmcv's own autograd Function (never the dispatch that replaces its name)."""
    if DeformAttnDispatch.compiled is not None:
        return DeformAttnDispatch.compiled
    from mmcv.ops.multi_scale_deform_attn import MultiScaleDeformableAttnFunction

    return MultiScaleDeformableAttnFunction


def _pytorch_path() -> Callable:
    from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch

    return multi_scale_deformable_attn_pytorch


def _build_has_cuda() -> bool:
    """Whether mmcv's extension was compiled with CUDA at all (``not available`` in a CPU-only build)."""
    try:
        from mmcv.ops import get_compiling_cuda_version
    except ImportError:
        return False
    version = str(get_compiling_cuda_version())
    return bool(version) and version != "not available"


def _probe(device: torch.device) -> bool:
    """Run the compiled op once on a tiny input on ``device``: True when it has a kernel there."""
    if device.type == "cuda" and not _build_has_cuda():
        return False
    value = torch.zeros(1, 1, 1, 2, device=device)
    shapes = torch.tensor([[1, 1]], dtype=torch.long, device=device)
    start = torch.zeros(1, dtype=torch.long, device=device)
    locations = torch.full((1, 1, 1, 1, 1, 2), 0.5, device=device)
    weights = torch.ones(1, 1, 1, 1, 1, device=device)
    try:
        _compiled_function().apply(value, shapes, start, locations, weights, 64)
        return True
    except (RuntimeError, NotImplementedError) as err:  # no kernel for this device / architecture
        logger.debug("mmcv deformable attention probe on %s failed: %s", device, err)
        return False


def compiled_kernel_available(device: torch.device) -> bool:
    """Whether mmcv's compiled deformable attention runs on ``device`` (probed once per device type)."""
    with _LOCK:
        if device.type not in _PROBED:
            _PROBED[device.type] = _probe(device)
        return _PROBED[device.type]


def reset_kernel_probe() -> None:
    """Forget probe results and warnings (tests)."""
    with _LOCK:
        _PROBED.clear()
        _WARNED.clear()


class DeformAttnDispatch:
    """Stands in for ``MultiScaleDeformableAttnFunction`` inside mmcv: same ``apply`` signature."""

    compiled = None  # the original autograd Function, set by install_deform_attn_fallback

    @staticmethod
    def apply(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step):
        compiled = _compiled_function()
        if compiled_kernel_available(value.device):
            return compiled.apply(value, spatial_shapes, level_start_index, sampling_locations,
                                  attention_weights, im2col_step)
        with _LOCK:
            first = value.device.type not in _WARNED
            _WARNED.add(value.device.type)
        if first:
            logger.warning("mmcv was built without a %s kernel for multi-scale deformable attention: using its "
                           "PyTorch implementation (same results, more memory). Rebuild mmcv with CUDA "
                           "(tools/setup_env.sh does when nvcc is present) for the fused kernel.",
                           value.device.type)
        return _pytorch_path()(value, spatial_shapes, sampling_locations, attention_weights)


def install_deform_attn_fallback() -> None:
    """Route mmcv's deformable attention through :class:`DeformAttnDispatch` (idempotent)."""
    import mmcv.ops.multi_scale_deform_attn as msda

    if msda.MultiScaleDeformableAttnFunction is DeformAttnDispatch:
        return
    DeformAttnDispatch.compiled = msda.MultiScaleDeformableAttnFunction
    msda.MultiScaleDeformableAttnFunction = DeformAttnDispatch
