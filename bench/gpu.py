"""The GPU benchmark: ours against torchscale (fused forward+backward, bf16) and timm (vision inference, bf16),
caption generation with and without the key/value cache, and peak GPU memory; outputs checked before timing.

``python -m bench.gpu --out DIR`` writes ``DIR/gpu_bench.json`` and ``DIR/gpu_bench.md``. The goal it checks:
ours >= 1.3x torchscale's fused forward+backward in bf16 at the same batch. ``--tiny`` runs the same cases at
toy sizes on whatever device there is (the CPU dry run of ``bench/device_check.sh``); its numbers mean nothing.
Timing: CUDA-synchronised wall time per call, implementations round-robin, medians (as the CPU suite).
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from bench.common import build_models, interleaved_times, median, official_model
from bench.generation import generate
from bench.training import train_step

GOAL = 1.3  # ours / torchscale throughput, fused forward+backward, bf16


@dataclass
class GpuRow:
    case: str
    batch: int
    seconds: Dict[str, float]
    peak_mib: Dict[str, float] = field(default_factory=dict)
    max_rel_diff: Optional[float] = None
    note: str = ""

    def speedup(self, ref: str) -> Optional[float]:
        return self.seconds[ref] / self.seconds["ours"] if ref in self.seconds and "ours" in self.seconds else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _synced(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    def run():
        out = fn()
        _sync(device)
        return out
    return run


def _peak_mib(fn: Callable[[], object], device: torch.device) -> float:
    if device.type != "cuda":
        return float("nan")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    _sync(device)
    return torch.cuda.max_memory_allocated(device) / 2 ** 20


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / b.std())


def training_rows(models, device, batches, img, text, repeats, bf16_tol) -> List[GpuRow]:
    rows = []
    ours = models.ours.to(device).train()
    for checkpointing in (False, True):
        ours.set_grad_checkpointing(checkpointing)
        official = official_model(ours.cfg, checkpoint_activations=checkpointing)
        official.load_state_dict(models.official.state_dict())
        official = official.to(device).train()
        for batch in batches:
            g = torch.Generator().manual_seed(batch)
            image = torch.randn(batch, 3, img, img, generator=g).to(device)
            ids = torch.randint(4, ours.cfg.vocab_size, (batch, text), generator=g).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                fns = {"ours": train_step(lambda: ours.forward_fused(image, ids).hidden, ours),
                       "torchscale": train_step(lambda: official(textual_tokens=ids, visual_tokens=image)
                                                 ["encoder_out"], official)}
                diff = _relative(fns["ours"](), fns["torchscale"]())
                if not diff < bf16_tol:
                    raise AssertionError(f"train b{batch}: ours and torchscale differ by {diff:.3g} (rel)")
                synced = {k: _synced(f, device) for k, f in fns.items()}
                times = interleaved_times(synced, repeats=repeats)
                peaks = {k: _peak_mib(f, device) for k, f in synced.items()}
            rows.append(GpuRow("fused forward+backward bf16" + (" +act. ckpt" if checkpointing else ""), batch,
                               {k: median(v) for k, v in times.items()}, peaks, diff))
        del official
    ours.set_grad_checkpointing(False)
    return rows


def vision_rows(models, device, batches, img, repeats, bf16_tol) -> List[GpuRow]:
    rows = []
    ours, tm = models.ours.to(device).eval(), models.timm.to(device).eval()
    for batch in batches:
        image = torch.randn(batch, 3, img, img, generator=torch.Generator().manual_seed(batch)).to(device)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            fns = {"ours": lambda: ours.forward_vision(image).hidden, "timm": lambda: tm.forward_features(image)}
            # timm's features stop before the final LayerNorm (its beit3 pools, then fc_norm): compare there
            pre_norm = ours.forward_vision(image, return_intermediates=(-1,)).intermediates[0]
            diff = _relative(pre_norm, fns["timm"]())
            if not diff < bf16_tol:
                raise AssertionError(f"vision b{batch}: ours and timm differ by {diff:.3g} (rel)")
            synced = {k: _synced(f, device) for k, f in fns.items()}
            times = interleaved_times(synced, repeats=repeats)
            peaks = {k: _peak_mib(f, device) for k, f in synced.items()}
        rows.append(GpuRow("vision inference bf16", batch, {k: median(v) for k, v in times.items()}, peaks, diff,
                           note="timm: beit3 vision port, same weights"))
    return rows


def generation_row(models, device, img, tokens, batch, repeats) -> GpuRow:
    ours = models.ours.to(device).eval()
    image = torch.randn(batch, 3, img, img, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        fns = {"ours+kv-cache": lambda: generate(ours, image, tokens, True),
               "ours recompute": lambda: generate(ours, image, tokens, False)}
        same = torch.equal(fns["ours+kv-cache"](), fns["ours recompute"]())
        synced = {k: _synced(f, device) for k, f in fns.items()}
        times = interleaved_times(synced, repeats=repeats)
        peaks = {k: _peak_mib(f, device) for k, f in synced.items()}
    return GpuRow(f"caption generation fp32, {tokens} tokens", batch, {k: median(v) for k, v in times.items()},
                  peaks, 0.0 if same else None, note="tokens equal" if same else "TOKENS DIFFER")


def markdown(rows: List[GpuRow], info: Dict[str, str]) -> str:
    lines = [f"### GPU benchmark ({info['device']}, torch {info['torch']}, CUDA {info['cuda']})", "",
             "| case | batch | ours ms | reference ms | speed-up | peak MiB ours / ref | max rel. diff |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = next((k for k in r.seconds if k != "ours" and k != "ours+kv-cache"), None)
        mine = "ours" if "ours" in r.seconds else "ours+kv-cache"
        speed = r.seconds[ref] / r.seconds[mine] if ref else float("nan")
        peak = " / ".join(f"{r.peak_mib.get(k, float('nan')):.0f}" for k in (mine, ref))
        diff = "-" if r.max_rel_diff is None else f"{r.max_rel_diff:.2g}"
        lines.append(f"| {r.case} | {r.batch} | {1e3 * r.seconds[mine]:.1f} | {ref}: {1e3 * r.seconds[ref]:.1f} | "
                     f"{speed:.2f}x | {peak} | {diff} |")
    train = [r.speedup("torchscale") for r in rows if r.case.startswith("fused") and r.speedup("torchscale")]
    if train:
        verdict = "met" if min(train) >= GOAL else "NOT met"
        lines += ["", f"Goal >= {GOAL}x torchscale (fused forward+backward, bf16): {verdict} "
                      f"(min {min(train):.2f}x, max {max(train):.2f}x)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="outputs/gpu_bench")
    p.add_argument("--tiny", action="store_true", help="toy sizes (dry run on the CPU)")
    p.add_argument("--repeats", type=int, default=None)
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.tiny:
        config, img, text, batches, repeats, tokens, tol = "beit3_tiny", 64, 8, (2,), 2, 4, 0.1
    else:
        config, img, text, batches, repeats, tokens, tol = "beit3_base", 224, 32, (32, 64), 10, 20, 0.1
    repeats = args.repeats or repeats
    t0 = time.perf_counter()
    models = build_models(config, img_size=img)
    rows = training_rows(models, device, batches, img, text, repeats, tol)
    rows += vision_rows(models, device, batches, img, repeats, tol)
    rows.append(generation_row(models, device, img, tokens, 1 if not args.tiny else 2, max(2, repeats // 2)))
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)",
            "torch": torch.__version__, "cuda": str(torch.version.cuda), "seconds": f"{time.perf_counter() - t0:.0f}",
            "tiny": str(args.tiny)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_bench.json").write_text(json.dumps({"machine": info, "rows": [asdict(r) for r in rows]}, indent=1))
    text_md = markdown(rows, info)
    (out / "gpu_bench.md").write_text(text_md)
    print(text_md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
