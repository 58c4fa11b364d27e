"""Inference cases: vision-only, text-only and fused forwards of ours against the official torchscale
model and timm's vision port, outputs checked equal, timed round-robin (optionally also compiled).
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional

import torch

from bench.common import bf16_supported, count_flops, interleaved_times, max_abs_diff, median
from bench.settings import Setting, Row, check


def make_inputs(models, batch: int, s: Setting):
    g = torch.Generator().manual_seed(batch)
    image = torch.randn(batch, 3, s.img_size, s.img_size, generator=g)
    ids = torch.randint(4, models.ours.cfg.vocab_size, (batch, s.text_len), generator=g)
    return image, ids


def autocast(dtype: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")


def compiled(fn: Callable, log: List[str], label: str) -> Callable:
    """torch.compile (inductor) of a bound method; the first call (compilation) is timed and reported."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = not torch.is_grad_enabled()
    comp = torch.compile(fn)
    return _TimedFirstCall(comp, log, label)


class _TimedFirstCall:
    def __init__(self, fn, log, label):
        self.fn, self.log, self.label, self.done = fn, log, label, False

    def __call__(self, *args, **kwargs):
        if self.done:
            return self.fn(*args, **kwargs)
        start = time.perf_counter()
        out = self.fn(*args, **kwargs)
        self.log.append(f"{self.label}: compiled in {time.perf_counter() - start:.1f} s (not in the timed loop)")
        self.done = True
        return out


def inference_cases(models, s: Setting, log: List[str]) -> List[Row]:
    ours, official, tm = models.ours.eval(), models.official.eval(), models.timm
    if tm is not None:
        tm.eval()
    rows = []
    dtypes = ["fp32"] + (["bf16"] if bf16_supported() else [])
    compiled_fns = {}
    for batch in s.batches:
        image, ids = make_inputs(models, batch, s)
        for dtype in dtypes:
            tol = s.fp32_tol if dtype == "fp32" else None
            with torch.no_grad(), autocast(dtype):
                # ---- vision only
                fns = {"ours": lambda: ours.forward_vision(image).hidden,
                       "official": lambda: official(visual_tokens=image)["encoder_out"]}
                if tm is not None:
                    fns["timm"] = lambda: tm.forward_features(image)
                diffs = _compare_vision(ours, fns, image, tol)
                if s.compile and dtype == "fp32" and batch == max(s.batches):
                    key = ("vision", batch)
                    compiled_fns[key] = compiled(ours.forward_vision, log, f"vision b{batch}")
                    fns["ours+compile"] = (lambda f=compiled_fns[key]: f(image).hidden)
                    diffs["ours+compile"] = check("ours+compile vision", max_abs_diff(fns["ours+compile"](),
                                                                                     fns["ours"]()), s.fp32_tol)
                rows.append(_timed("vision-only inference", batch, dtype, fns, diffs, s,
                                   flops=count_flops(fns["ours"])))
                # ---- text only
                fns = {"ours": lambda: ours.forward_text(ids).hidden,
                       "official": lambda: official(textual_tokens=ids)["encoder_out"]}
                diffs = {"official": _check_pair("text", fns["ours"](), fns["official"](), tol)}
                rows.append(_timed("text-only inference", batch, dtype, fns, diffs, s,
                                   flops=count_flops(fns["ours"])))
                # ---- fused
                fns = {"ours": lambda: ours.forward_fused(image, ids).hidden,
                       "official": lambda: official(textual_tokens=ids, visual_tokens=image)["encoder_out"]}
                diffs = {"official": _check_pair("fused", fns["ours"](), fns["official"](), tol)}
                if s.compile and dtype == "fp32" and batch == max(s.batches):
                    comp = compiled(ours.forward_fused, log, f"fused b{batch}")
                    fns["ours+compile"] = lambda: comp(image, ids).hidden
                    diffs["ours+compile"] = check("ours+compile fused", max_abs_diff(fns["ours+compile"](),
                                                                                    fns["ours"]()), s.fp32_tol)
                rows.append(_timed("fused inference", batch, dtype, fns, diffs, s,
                                   flops=count_flops(fns["ours"])))
    return rows


def _check_pair(name: str, got: torch.Tensor, expected: torch.Tensor, tol: Optional[float]) -> float:
    diff = max_abs_diff(got, expected)
    if tol is None:  # bf16: relative to the scale of the output
        tol = 0.1 * float(expected.float().std()) * 10
    return check(name, diff, tol)


def _compare_vision(ours, fns, image, tol) -> Dict[str, float]:
    diffs = {"official": _check_pair("vision", fns["ours"](), fns["official"](), tol)}
    if "timm" in fns:
        # timm's features stop before the final LayerNorm (its beit3 models pool first, then fc_norm)
        pre_norm = ours.forward_vision(image, return_intermediates=(-1,)).intermediates[0]
        diffs["timm"] = _check_pair("vision vs timm", pre_norm, fns["timm"](), tol)
    return diffs


def _timed(case, batch, dtype, fns, diffs, s: Setting, flops=None, note="") -> Row:
    times = interleaved_times(fns, repeats=s.repeats, warmup=0)  # the equality check was the warm-up
    return Row(case, batch, dtype, {k: median(v) for k, v in times.items()}, diffs, flops, note)
