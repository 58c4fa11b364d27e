"""Training cases: one fused forward+backward of each implementation, the attention-kernel effect on
it, and a profiler table of one step.
"""
from __future__ import annotations

from typing import Callable, Dict, List

import torch

from bench.common import bf16_supported, count_flops, max_abs_diff
from bench.settings import Setting, Row, check
from bench.inference import make_inputs, autocast, compiled, _check_pair, _timed
from beit3_plugins.registry import BACKBONES


def train_step(model_call: Callable[[], torch.Tensor], model: torch.nn.Module) -> Callable[[], torch.Tensor]:
    """One timed training step: fresh gradients, forward, loss = mean square of the output, backward."""
    def run():
        model.zero_grad(set_to_none=True)
        out = model_call()
        out.float().pow(2).mean().backward()
        return out
    return run


def training_cases(models, s: Setting, log: List[str]) -> List[Row]:
    ours, official = models.ours.train(), models.official.train()
    rows = []
    dtypes = ["fp32"] + (["bf16"] if bf16_supported() else [])

    for batch in s.batches:
        image, ids = make_inputs(models, batch, s)
        for dtype in dtypes:
            with autocast(dtype):
                fns = {"ours": train_step(lambda: ours.forward_fused(image, ids).hidden, ours),
                       "official": train_step(lambda: official(textual_tokens=ids, visual_tokens=image)["encoder_out"],
                                              official)}
                tol = s.fp32_tol if dtype == "fp32" else None
                diffs = {"official": _check_pair("train fused", fns["ours"](), fns["official"](), tol)}
                grad_ours = ours.patch_embed.weight.grad
                grad_ref = official.vision_embed.proj.weight.grad
                gtol = None if tol is None else tol * max(1.0, float(grad_ref.abs().max()))
                diffs["official grad"] = _check_pair("train grad", grad_ours, grad_ref, gtol)
                if s.compile and dtype == "fp32" and batch == max(s.batches):
                    comp = compiled(ours.forward_fused, log, f"train fused b{batch}")
                    fns["ours+compile"] = train_step(lambda: comp(image, ids).hidden, ours)
                    diffs["ours+compile"] = check("ours+compile train", max_abs_diff(fns["ours+compile"](),
                                                                                    fns["ours"]()), s.fp32_tol)
                flops = count_flops(fns["ours"])
                rows.append(_timed("fused forward+backward", batch, dtype, fns, diffs, s, flops=flops))
    ours.zero_grad(set_to_none=True)
    official.zero_grad(set_to_none=True)
    ours.eval(), official.eval()
    return rows




def kernel_effect_case(models, s: Setting) -> Row:
    """Our fused training step in bf16 with attention_kernel="auto" (the matmul path on CPU) against the same
    weights forced onto torch's fused SDPA kernel: what the kernel choice alone is worth in the model."""
    ours = models.ours.train()
    forced = BACKBONES.build(s.config, img_size=s.img_size, attention_kernel="sdpa")
    forced.load_state_dict(ours.state_dict())
    forced.train()
    batch = max(s.batches)
    image, ids = make_inputs(models, batch, s)
    with autocast("bf16"):
        fns = {"ours": train_step(lambda: ours.forward_fused(image, ids).hidden, ours),
               "ours, sdpa kernel": train_step(lambda: forced.forward_fused(image, ids).hidden, forced)}
        diff = _check_pair("kernel choice", fns["ours"](), fns["ours, sdpa kernel"](), None)
        row = _timed("fused forward+backward, attention kernel", batch, "bf16", fns, {"sdpa kernel": diff}, s)
    ours.zero_grad(set_to_none=True)
    ours.eval()
    return row




def profile_training(models, s: Setting, batch: int) -> Dict[str, List[str]]:
    """Top operators by self CPU time of one fused training step (ours and the official implementation)."""
    from torch.profiler import ProfilerActivity, profile

    out = {}
    image, ids = make_inputs(models, batch, s)
    for name, model, call in (
            ("ours", models.ours, lambda: models.ours.forward_fused(image, ids).hidden),
            ("official", models.official,
             lambda: models.official(textual_tokens=ids, visual_tokens=image)["encoder_out"])):
        model.train()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            call().float().pow(2).mean().backward()
        model.zero_grad(set_to_none=True)
        model.eval()
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40)
        out[name] = table.splitlines()
    return out
