"""mmcv's deformable attention picks its PyTorch path whenever the compiled op has no kernel for the tensor's
device (segmentation/mmcv_ops.py), with the probe patched both ways, and the module path is rerouted once."""
import logging

import pytest
import torch

import beit3_plugins.segmentation  # noqa: F401 - installs the dispatch
from beit3_plugins.segmentation import mmcv_ops


def _inputs():
    g = torch.Generator().manual_seed(0)
    shapes = torch.tensor([[4, 4], [2, 2]])
    start = torch.cat([shapes.new_zeros(1), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]])
    value = torch.randn(2, int((shapes[:, 0] * shapes[:, 1]).sum()), 2, 8, generator=g)   # (B, S, heads, dim)
    locations = torch.rand(2, 5, 2, 2, 3, 2, generator=g)                                  # (B, Q, heads, L, P, 2)
    weights = torch.rand(2, 5, 2, 2, 3, generator=g)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    return value, shapes, start, locations, weights


@pytest.fixture(autouse=True)
def fresh_probe():
    mmcv_ops.reset_kernel_probe()
    yield
    mmcv_ops.reset_kernel_probe()


def test_the_module_global_is_rerouted_once():
    import mmcv.ops.multi_scale_deform_attn as msda

    assert msda.MultiScaleDeformableAttnFunction is mmcv_ops.DeformAttnDispatch
    original = mmcv_ops.DeformAttnDispatch.compiled
    mmcv_ops.install_deform_attn_fallback()   # idempotent: the original stays the one the dispatch calls
    assert mmcv_ops.DeformAttnDispatch.compiled is original
    assert original is not mmcv_ops.DeformAttnDispatch and hasattr(original, "forward")


def test_no_kernel_for_the_device_uses_the_pytorch_path_and_warns_once(monkeypatch, caplog):
    from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch

    monkeypatch.setattr(mmcv_ops, "_probe", lambda device: False)
    value, shapes, start, locations, weights = _inputs()
    with caplog.at_level(logging.WARNING, logger=mmcv_ops.__name__):
        got = mmcv_ops.DeformAttnDispatch.apply(value, shapes, start, locations, weights, 64)
        again = mmcv_ops.DeformAttnDispatch.apply(value, shapes, start, locations, weights, 64)
    expected = multi_scale_deformable_attn_pytorch(value, shapes, locations, weights)
    assert torch.equal(got, expected) and torch.equal(again, expected)
    assert sum("PyTorch implementation" in r.message for r in caplog.records) == 1


def test_a_kernel_for_the_device_runs_the_compiled_op(monkeypatch):
    calls = []

    class Recorder:  # stands in for the compiled op only to see that the dispatch hands the call over
        @staticmethod
        def apply(*args):
            calls.append(args)
            return torch.zeros(())

    monkeypatch.setattr(mmcv_ops, "_probe", lambda device: True)
    monkeypatch.setattr(mmcv_ops.DeformAttnDispatch, "compiled", Recorder)
    value, shapes, start, locations, weights = _inputs()
    mmcv_ops.DeformAttnDispatch.apply(value, shapes, start, locations, weights, 64)
    assert len(calls) == 1 and calls[0][0] is value and calls[0][-1] == 64


def test_the_probe_is_asked_once_per_device_type(monkeypatch):
    asked = []
    monkeypatch.setattr(mmcv_ops, "_probe", lambda device: asked.append(device.type) or False)
    for _ in range(3):
        mmcv_ops.compiled_kernel_available(torch.device("cpu"))
    assert asked == ["cpu"]


def test_a_cpu_only_build_reports_no_cuda_kernel(monkeypatch):
    monkeypatch.setattr(mmcv_ops, "_build_has_cuda", lambda: False)
    assert mmcv_ops._probe(torch.device("cuda")) is False   # decided without touching a GPU


def test_the_probe_on_the_cpu_matches_what_the_compiled_op_does():
    """The real probe on this machine: True exactly when mmcv's compiled op runs CPU tensors."""
    value, shapes, start, locations, weights = _inputs()
    try:
        mmcv_ops.DeformAttnDispatch.compiled.apply(value, shapes, start, locations, weights, 64)
        runs = True
    except (RuntimeError, NotImplementedError):
        runs = False
    assert mmcv_ops.compiled_kernel_available(torch.device("cpu")) is runs
