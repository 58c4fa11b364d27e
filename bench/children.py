"""Cases measured in fresh child processes (``python -m bench.children KIND ...``): peak memory of a
training step, the allocator's effect over repeated steps, and retrieval evaluation at several corpus sizes.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import torch

from bench.common import build_models, interleaved_times, median
from bench.settings import MismatchError, Setting
from bench.inference import make_inputs
from bench.training import train_step
from beit3_plugins.runtime import tune_malloc

REPO = Path(__file__).resolve().parent.parent


def run_child(args: List[str], in_process: bool = False) -> dict:
    if in_process:
        return measure(args)
    cmd = [sys.executable, "-m", "bench.children", *args]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if res.returncode:
        raise RuntimeError(f"child {' '.join(args)} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    """High-water RSS of this process's memory map (VmHWM). Not ru_maxrss: Linux carries the parent's
    high-water mark into a child across exec, which made children report the parent's size."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child_memory(config: str, impl: str, ckpt: bool, batch: int, img_size: int, text_len: int) -> dict:
    """Peak RSS of one fused training step above the RSS of the built model (fresh process)."""
    from beit3_plugins.registry import BACKBONES
    from bench.common import official_model

    torch.manual_seed(0)
    cfg = BACKBONES.default_config(config, checkpoint_activations=ckpt)
    model = (BACKBONES.build(config, checkpoint_activations=ckpt) if impl == "ours"
             else official_model(cfg, checkpoint_activations=ckpt)).train()
    image = torch.randn(batch, 3, img_size, img_size)
    ids = torch.randint(4, cfg.vocab_size, (batch, text_len))
    import gc
    gc.collect()
    base = _rss_bytes()
    build_peak = _peak_rss_bytes() - base  # a step peak below this would be hidden (reported, never seen so far)
    start = time.perf_counter()
    out = (model.forward_fused(image, ids).hidden if impl == "ours"
           else model(textual_tokens=ids, visual_tokens=image)["encoder_out"])
    out.float().pow(2).mean().backward()
    seconds = time.perf_counter() - start
    return {"model_bytes": base, "peak_above_model": _peak_rss_bytes() - base, "build_peak_above_model": build_peak,
            "seconds": seconds}


def memory_cases(s: Setting) -> List[dict]:
    rows = []
    for batch in s.memory_batches:
        for impl in ("ours", "official"):
            for ckpt in (False, True):
                r = run_child(["memory", s.config, impl, str(int(ckpt)), str(batch), str(s.img_size),
                               str(s.text_len)], s.in_process)
                rows.append({"impl": impl, "checkpointing": ckpt, "batch": batch, **r})
    return rows


def child_allocator(config: str, tuned: bool, batches: List[int], img_size: int, text_len: int,
                    repeats: int) -> dict:
    """Fused fp32 training steps of ours and the official implementation in a fresh process, with glibc's
    default malloc or with ``runtime.tune_malloc`` (applied before anything is allocated)."""
    applied = tune_malloc() if tuned else False
    models = build_models(config, with_timm=False, img_size=img_size)
    s = Setting(config=config, img_size=img_size, text_len=text_len)
    out = {"tuned": applied, "seconds": {}}
    for batch in batches:
        image, ids = make_inputs(models, batch, s)
        models.ours.train(), models.official.train()
        fns = {"ours": train_step(lambda: models.ours.forward_fused(image, ids).hidden, models.ours),
               "official": train_step(lambda: models.official(textual_tokens=ids, visual_tokens=image)["encoder_out"],
                                      models.official)}
        times = interleaved_times(fns, repeats=repeats)
        out["seconds"][str(batch)] = {k: median(v) for k, v in times.items()}
    return out


def allocator_cases(s: Setting) -> List[dict]:
    """Always in child processes: a malloc setting cannot be undone within a process."""
    rows = []
    for tuned in (False, True):
        r = run_child(["allocator", s.config, str(int(tuned)), ",".join(map(str, s.batches)), str(s.img_size),
                       str(s.text_len), str(s.repeats)])
        for batch, sec in r["seconds"].items():
            rows.append({"malloc": "tuned" if r["tuned"] else "glibc default", "batch": int(batch), **sec})
    return rows


def child_retrieval(n: int, method: str, batch: int = 250) -> dict:
    """Dual-encoder retrieval evaluation of n images x n texts with beit3_tiny: encode in batches, score."""
    import torch.nn.functional as F

    from beit3_plugins.registry import BACKBONES
    from bench.retrieval import chunked_recall_at_k

    torch.manual_seed(0)
    model = BACKBONES.build("beit3_tiny").eval()
    size, length = model.cfg.img_size, 16
    import gc
    gc.collect()
    base = _rss_bytes()
    start = time.perf_counter()
    img_emb, txt_emb = [], []
    with torch.no_grad():
        for b in range(0, n, batch):
            g = torch.Generator().manual_seed(b)
            k = min(batch, n - b)
            image = torch.randn(k, 3, size, size, generator=g)
            ids = torch.randint(4, model.cfg.vocab_size, (k, length), generator=g)
            v, t = model.forward_dual(image, ids)
            img_emb.append(F.normalize(v.vision_cls, dim=-1))
            txt_emb.append(F.normalize(t.text_cls, dim=-1))
    img_emb, txt_emb = torch.cat(img_emb), torch.cat(txt_emb)
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    t2i = list(range(n))
    if method == "chunked":
        recalls = chunked_recall_at_k(img_emb, txt_emb, t2i)
    else:
        from beit3_plugins.vl_tasks.metrics import recall_at_k

        recalls = recall_at_k(img_emb @ txt_emb.T, t2i)
    score_s = time.perf_counter() - start
    return {"n": n, "method": method, "encode_s": encode_s, "score_s": score_s,
            "peak_above_start": _peak_rss_bytes() - base, "recalls": recalls}


def retrieval_cases(s: Setting) -> List[dict]:
    rows = []
    for n in s.retrieval_sizes:
        for method in ("chunked", "full"):
            if method == "full" and n > s.retrieval_full_max:
                rows.append({"n": n, "method": method, "skipped": f"needs {n * n * 12 / 1e9:.1f} GB for scores"})
                continue
            rows.append(run_child(["retrieval", str(n), method], s.in_process))
    for n in s.retrieval_sizes:
        pair = [r for r in rows if r["n"] == n and "recalls" in r]
        if len(pair) == 2 and any(abs(pair[0]["recalls"][k] - v) > 1e-4 for k, v in pair[1]["recalls"].items()):
            raise MismatchError(f"chunked and full retrieval disagree at N={n}: {pair}")
    return rows




def measure(argv: List[str]) -> dict:
    kind, *rest = argv
    if kind == "memory":
        config, impl, ckpt, batch, img, text = rest
        return child_memory(config, impl, bool(int(ckpt)), int(batch), int(img), int(text))
    if kind == "allocator":
        config, tuned, batches, img, text, repeats = rest
        return child_allocator(config, bool(int(tuned)), [int(b) for b in batches.split(",")], int(img), int(text),
                               int(repeats))
    return child_retrieval(int(rest[0]), rest[1])




if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1:])))
