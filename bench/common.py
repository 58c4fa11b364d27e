"""Shared pieces of the benchmark suite: the three implementations on one set of weights, timing, machine info.

The references are the official implementation (torchscale's ``BEiT3``, the code the released checkpoints
come from) and timm's ``beit3_*`` vision port. All three get the same weights: a torchscale model is
initialised, perturbed so that no LayerNorm is trivial, saved in the released key layout, and converted
into ours with our ``load_pretrained`` and into timm with timm's own ``checkpoint_filter_fn``.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch

from beit3_plugins.backbones import load_pretrained
from beit3_plugins.registry import BACKBONES


@dataclass
class Models:
    ours: torch.nn.Module
    official: torch.nn.Module
    timm: Optional[torch.nn.Module]
    config_name: str


def official_model(cfg, checkpoint_activations: bool = False) -> torch.nn.Module:
    """torchscale's BEiT3 with the shape of one of our configs (decoupled layout only)."""
    from torchscale.architecture.config import EncoderConfig
    from torchscale.model.BEiT3 import BEiT3

    args = EncoderConfig(encoder_embed_dim=cfg.embed_dim, encoder_attention_heads=cfg.num_heads,
                         encoder_ffn_embed_dim=cfg.ffn_dim, encoder_layers=cfg.depth, img_size=cfg.img_size,
                         patch_size=cfg.patch_size, vocab_size=cfg.vocab_size, multiway=True,
                         max_source_positions=cfg.max_text_positions, normalize_output=True,
                         no_output_layer=True, layernorm_embedding=False,
                         checkpoint_activations=checkpoint_activations)
    return BEiT3(args)


def timm_model(cfg) -> torch.nn.Module:
    """timm's BEiT-3 vision port (a VisionTransformer with sub-LN) of the same shape."""
    import timm
    from functools import partial

    name = {768: "beit3_base_patch16_224", 1024: "beit3_large_patch16_224"}.get(cfg.embed_dim)
    kwargs = dict(img_size=cfg.img_size, patch_size=cfg.patch_size, num_classes=0)
    if name is None:  # toy sizes: timm's generic ViT with the beit3 options
        from timm.layers import LayerNorm
        from timm.models.vision_transformer import VisionTransformer

        return VisionTransformer(embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads,
                                 mlp_ratio=cfg.ffn_dim / cfg.embed_dim, scale_attn_norm=True,
                                 scale_mlp_norm=True, class_token=True, global_pool="avg",
                                 norm_layer=partial(LayerNorm, eps=cfg.layer_norm_eps), **kwargs)
    return timm.create_model(name, **kwargs)


def build_models(config_name: str = "beit3_base", seed: int = 0, with_timm: bool = True,
                 **overrides) -> Models:
    """Ours, torchscale's and timm's models holding the same (random, perturbed) weights."""
    torch.manual_seed(seed)
    cfg = BACKBONES.default_config(config_name, **overrides)
    official = official_model(cfg)
    with torch.no_grad():
        for p in official.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    released = {"beit3." + k: v for k, v in official.state_dict().items()}
    ours = BACKBONES.build(config_name, **overrides)
    report = load_pretrained(ours, {"model": released}, strict=True)
    assert not report.missing and not report.unexpected and not report.heads
    tm = None
    if with_timm:
        from timm.models.vision_transformer import checkpoint_filter_fn as timm_filter

        tm = timm_model(cfg)
        converted = timm_filter({"model": dict(released)}, tm)
        missing, unexpected = tm.load_state_dict(converted, strict=False)
        # timm's converter keeps the final encoder LayerNorm under a name its model has no slot for
        # (its beit3 models pool with fc_norm instead); nothing else may be left over.
        # fc_norm belongs to timm's pooled classification head (new in fine-tuning), not to the features
        assert all(k.startswith("fc_norm.") for k in missing), missing
        assert all(k.startswith("layer_norm.") for k in unexpected), unexpected
    return Models(ours=ours, official=official, timm=tm, config_name=config_name)


# ---------------------------------------------------------------------------------------------- timing
def interleaved_times(fns: Dict[str, Callable[[], object]], repeats: int, iters: int = 1,
                      warmup: int = 1) -> Dict[str, List[float]]:
    """Seconds per call of each function, measured round-robin (A, B, C, A, B, C, ...) so that load from
    other processes on the machine hits every implementation alike. Returns every repeat's mean."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(iters):
                fn()
            times[name].append((time.perf_counter() - start) / iters)
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def matmul_flops_per_second(dtype: torch.dtype = torch.float32, size: int = 2048, repeats: int = 10) -> float:
    """Throughput of one large square torch.matmul: the physical ceiling a model's matmuls can reach.

    The fastest of ``repeats`` calls, not the median: a ceiling is what the machine can do, and a shared
    machine only ever makes a call slower (a median once read 201 instead of 323 GFLOP/s, which put
    models at "124% of the ceiling")."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size ** 3 / min(times)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call (matmuls, convolutions and attention), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def machine_info() -> Dict[str, str]:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        flags = ""
    extras = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "isa": " ".join(extras),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }


def bf16_supported() -> bool:
    """bf16 matmuls are worth benchmarking on CPUs with native bf16 (AVX512-BF16 / AMX) or on CUDA."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return False


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())
