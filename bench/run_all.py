"""One command for the whole benchmark suite: ``python -m bench.run_all`` (from the repository root).

Writes ``bench/REPORT.md`` (and ``bench/REPORT.json``): ours against the official implementation
(torchscale ``BEiT3``) and timm's ``beit3_*`` vision port on the same converted weights, with every
output checked equal before anything is timed. ``--smoke`` runs tiny sizes with a couple of iterations
(CI: it only proves that the suite runs and the outputs match; its numbers mean nothing).

Timing: every case runs the implementations round-robin in one process, repeated, and reports medians,
so that load from other processes hits them alike. Memory is measured in fresh child processes (peak RSS).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

if __package__ in (None, ""):  # `python bench/run_all.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench import attention_kernels
from bench.common import (bf16_supported, build_models, count_flops, interleaved_times, machine_info,
                          matmul_flops_per_second, max_abs_diff, median)
from beit3_plugins.registry import BACKBONES
from beit3_plugins.runtime import tune_malloc

HERE = Path(__file__).resolve().parent


@dataclass
class Setting:
    config: str = "beit3_base"
    img_size: int = 224
    text_len: int = 32
    batches: tuple = (1, 8)
    repeats: int = 5
    fp32_tol: float = 2e-3       # max |ours - reference| on LayerNorm-ed outputs (O(1) values), 12 fp32 layers
    bf16_tol: float = 0.1        # relative to the output's std, bf16 autocast on both sides
    gen_tokens: int = 20
    gen_batch: int = 1
    retrieval_sizes: tuple = (1000, 4000, 16000)
    retrieval_full_max: int = 4000   # the all-pairs evaluation needs N^2 * 12 bytes: skipped above this
    # activation checkpointing saves activations, not weight gradients: at batch 8 the gradients of a base
    # model dominate the peak, at 32 the activations do (the regime checkpointing is used for)
    memory_batches: tuple = (8, 32)
    compile: bool = False        # opt-in (--compile): inductor takes minutes per case on 2 cores
    profile: bool = True
    in_process: bool = False     # memory / retrieval in this process (smoke only: peak RSS is then polluted)
    threads: Optional[int] = None  # None: torch's default (all cores)


SMOKE = Setting(config="beit3_tiny", img_size=64, text_len=8, batches=(2,), repeats=2, fp32_tol=1e-4,
                gen_tokens=4, gen_batch=2, retrieval_sizes=(64, 256), retrieval_full_max=256, memory_batches=(2,),
                compile=False, profile=False, in_process=True, threads=1)


@dataclass
class Row:
    case: str
    batch: int
    dtype: str
    seconds: Dict[str, float]            # implementation -> median seconds per call
    max_diff: Dict[str, float] = field(default_factory=dict)
    flops: Optional[float] = None        # of ours, per call
    note: str = ""

    def ratio(self, ref: str, ours: str = "ours") -> Optional[float]:
        """Speed-up of ours over a reference (reference time / our time): > 1 means ours is faster."""
        if ref not in self.seconds or ours not in self.seconds:
            return None
        return self.seconds[ref] / self.seconds[ours]


class MismatchError(AssertionError):
    pass


def check(name: str, diff: float, tol: float) -> float:
    if not diff <= tol:
        raise MismatchError(f"{name}: outputs differ by {diff:.3g} (tolerance {tol:.3g})")
    return diff


# ---------------------------------------------------------------------------------------------- inputs
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


# ---------------------------------------------------------------------------------------------- inference
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


# ---------------------------------------------------------------------------------------------- training
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


# ---------------------------------------------------------------------------------------------- generation
def unilm_mask(n_img: int, n_txt: int) -> torch.Tensor:
    """Captioning mask (True = blocked): image<->image, text->image, causal text->text, image->text blocked."""
    n = n_img + n_txt
    blocked = torch.zeros(n, n, dtype=torch.bool)
    blocked[:n_img, n_img:] = True
    blocked[n_img:, n_img:] = torch.triu(torch.ones(n_txt, n_txt, dtype=torch.bool), diagonal=1)
    return blocked


def generate(model, image, steps: int, use_cache: bool, bos: int = 0) -> torch.Tensor:
    """Greedy caption decoding (tied word-embedding head). With the cache, image and earlier tokens are
    encoded once; without it, the whole sequence is re-encoded under the UniLM mask at every step."""
    ids = torch.full((image.shape[0], 1), bos, dtype=torch.long)
    head = model.text_embed.weight
    if use_cache:
        out = model.forward_fused(image, ids, attn_mask=unilm_mask(model.cfg.grid_size ** 2 + 1, 1),
                                  use_cache=True)
        past = out.past_kv
        for t in range(1, steps + 1):
            nxt = (out.hidden[:, -1] @ head.T).argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
            if t == steps:
                break
            out = model.forward_text_step(nxt, past, position_start=t)
            past = out.past_kv
        return ids
    n_img = model.cfg.grid_size ** 2 + 1
    for t in range(1, steps + 1):
        out = model.forward_fused(image, ids, attn_mask=unilm_mask(n_img, ids.shape[1]))
        nxt = (out.hidden[:, -1] @ head.T).argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], 1)
    return ids


def generation_case(models, s: Setting) -> Row:
    ours = models.ours.eval()
    g = torch.Generator().manual_seed(0)
    image = torch.randn(s.gen_batch, 3, s.img_size, s.img_size, generator=g)
    with torch.no_grad():
        fns = {"ours+kv-cache": lambda: generate(ours, image, s.gen_tokens, True),
               "ours recompute": lambda: generate(ours, image, s.gen_tokens, False)}
        same = torch.equal(fns["ours+kv-cache"](), fns["ours recompute"]())
        if not same:
            raise MismatchError("generation with and without the key/value cache produced different tokens")
        times = interleaved_times(fns, repeats=max(2, s.repeats // 2), warmup=0)
    return Row(f"caption generation, {s.gen_tokens} tokens", s.gen_batch, "fp32",
               {k: median(v) for k, v in times.items()}, {"tokens equal": 0.0})


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


# ---------------------------------------------------------------------------------------------- memory
def run_child(args: List[str], in_process: bool = False) -> dict:
    if in_process:
        return _child(args)
    cmd = [sys.executable, "-m", "bench.run_all", "--child", *args]
    res = subprocess.run(cmd, cwd=HERE.parent, capture_output=True, text=True, check=False)
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


# ---------------------------------------------------------------------------------------------- allocator
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


# ---------------------------------------------------------------------------------------------- retrieval
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


# ---------------------------------------------------------------------------------------------- profile
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


# ---------------------------------------------------------------------------------------------- report
def _fmt_s(x: float) -> str:
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"


def write_report(path: Path, info, s: Setting, rows: List[Row], gen: Row, mem, retr, ceiling, compile_log,
                 profiles, smoke: bool, kernels: str = "", kernel_effect: Optional[Row] = None,
                 allocator: Optional[List[dict]] = None, malloc_note: str = "") -> str:
    lines = ["# Benchmarks: ours vs the reference implementations", ""]
    if smoke:
        lines += ["**Smoke run (tiny sizes, 2 repeats): proves the suite runs and outputs match; the numbers "
                  "mean nothing.**", ""]
    lines += [f"Written by `python -m bench.run_all` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
              f"Machine: {info['cpu']}, {info['cores']} cores ({info['torch_threads']} torch threads), "
              f"ISA {info['isa']}, torch {info['torch']}, python {info['python']}, load average at start "
              f"{info['load_average']} (the machine is shared: all implementations run interleaved in one "
              f"process, {s.repeats} repeats, medians; malloc: {info['malloc']}).", "",
              f"Config `{s.config}` at {s.img_size}x{s.img_size}, {s.text_len} text tokens. References: "
              "**official** = torchscale 0.3.0 `BEiT3` (released BEiT-3 code), **timm** = "
              f"{'`beit3_base_patch16_224`' if s.config == 'beit3_base' else 'timm VisionTransformer with the beit3 options'}"
              " (vision only). Same weights (converted from the released layout), "
              "outputs checked equal before timing (max |diff| column). `ours+compile` = "
              "`torch.compile(model.forward_*)` (inductor; compile time reported below, not timed).", "",
              "## Ratios (reference time / our time; > 1 = ours faster)", "",
              "| case | batch | dtype | ours / official | ours / timm | ours+compile / official "
              "| ours+compile / timm | ours | official | timm | ours+compile | % of matmul ceiling (ours) "
              "| max diff |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def r(x):
        return "" if x is None else f"{x:.2f}x"

    for row in rows:
        ceil = ceiling.get(row.dtype)
        pct = f"{100 * row.flops / row.seconds['ours'] / ceil:.0f}%" if row.flops and ceil else ""
        if row.flops and ceil and "ours+compile" in row.seconds:
            pct += f" ({100 * row.flops / row.seconds['ours+compile'] / ceil:.0f}% compiled)"
        diffs = ", ".join(f"{k} {v:.1e}" for k, v in row.max_diff.items())
        sec = {k: _fmt_s(v) for k, v in row.seconds.items()}
        lines.append(f"| {row.case} | {row.batch} | {row.dtype} | {r(row.ratio('official'))} | "
                     f"{r(row.ratio('timm'))} | {r(row.ratio('official', 'ours+compile'))} | "
                     f"{r(row.ratio('timm', 'ours+compile'))} | {sec.get('ours', '')} | "
                     f"{sec.get('official', '')} | {sec.get('timm', '')} | {sec.get('ours+compile', '')} | "
                     f"{pct} | {diffs} |")
    lines += ["", "Matmul ceiling (one 2048^3 `torch.matmul`): " +
              ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in ceiling.items()) +
              ". '% of matmul ceiling' = the model's FLOPs (FlopCounterMode) per second / that.", ""]
    if compile_log:
        lines += ["Compilation (first call, excluded from timings): " + "; ".join(compile_log) + ".", ""]
    speed = gen.seconds["ours recompute"] / gen.seconds["ours+kv-cache"]
    lines += ["## Caption generation (greedy, batch %d)" % gen.batch, "",
              "| | time | speed-up |", "|---|---|---|",
              f"| with key/value cache | {_fmt_s(gen.seconds['ours+kv-cache'])} | {speed:.2f}x |",
              f"| recompute every step (UniLM mask) | {_fmt_s(gen.seconds['ours recompute'])} | 1.00x |", "",
              "Both produce identical tokens (checked).", "",
              "## Training peak memory (fused step, fresh process per row, glibc malloc defaults)", "",
              "| batch | implementation | activation checkpointing | peak RSS above the built model | reduction "
              "| step time |", "|---|---|---|---|---|---|"]
    for batch in sorted({m.get("batch", 0) for m in mem}):
        for impl in ("ours", "official"):
            pair = {m["checkpointing"]: m for m in mem if m["impl"] == impl and m.get("batch", 0) == batch}
            for ck in (False, True):
                m = pair[ck]
                base_peak = pair[False]["peak_above_model"]
                red = (f"{100 * (1 - m['peak_above_model'] / base_peak):.0f}%" if base_peak else "n/a") if ck else ""
                lines.append(f"| {batch} | {impl} | {'on' if ck else 'off'} | {m['peak_above_model'] / 2**20:.0f} MiB "
                             f"| {red} | {_fmt_s(m['seconds'])} |")
    lines += ["", "(model weights: %.0f MiB RSS; the peak above them includes the gradients of all weights)"
              % (mem[0]["model_bytes"] / 2**20), "",
              "## Dual-encoder retrieval evaluation (beit3_tiny encoders, N images x N texts)", "",
              "| N | scoring | encode | score | peak RSS above start | R@1 i2t / t2i |", "|---|---|---|---|---|---|"]
    for m in retr:
        if "skipped" in m:
            lines.append(f"| {m['n']} | {m['method']} | | | skipped ({m['skipped']}) | |")
            continue
        rc = m["recalls"]
        lines.append(f"| {m['n']} | {m['method']} | {_fmt_s(m['encode_s'])} | {_fmt_s(m['score_s'])} | "
                     f"{m['peak_above_start'] / 2**20:.0f} MiB | {rc['i2t_r1']:.2f} / {rc['t2i_r1']:.2f} |")
    lines += ["", "`chunked` = `bench.retrieval.chunked_recall_at_k` (rows scored in blocks of 1024, only ranks "
              "kept); `full` = `vl_tasks.metrics.recall_at_k` on the whole similarity matrix. Equal recalls "
              "checked where both run.", ""]
    if kernels:
        lines += ["## Attention kernels (`python -m bench.attention_kernels`)", "",
                  "What `attention_kernel=\"auto\"` (`backbones/attention.py`) is based on: torch's fused "
                  "`scaled_dot_product_attention` against bmm + softmax + bmm.", "", kernels]
    if kernel_effect is not None:
        sec = kernel_effect.seconds
        lines += [f"In the model (fused forward+backward, batch {kernel_effect.batch}, bf16): "
                  f"{_fmt_s(sec['ours'])} with `auto`, {_fmt_s(sec['ours, sdpa kernel'])} forced onto SDPA "
                  f"({sec['ours, sdpa kernel'] / sec['ours']:.2f}x).", ""]
    if allocator:
        lines += ["## Allocator (fused forward+backward, fp32; a fresh process per setting)", "",
                  "glibc's malloc returns large blocks to the system on free, so every new activation or gradient "
                  "is faulted in page by page; `beit3_plugins.runtime.tune_malloc()` keeps blocks below 32 MiB on "
                  "the heap for reuse. The timing tables above ran " + malloc_note + ".", "",
                  "| batch | malloc | ours | official | ours / official |", "|---|---|---|---|---|"]
        for a in allocator:
            lines.append(f"| {a['batch']} | {a['malloc']} | {_fmt_s(a['ours'])} | {_fmt_s(a['official'])} | "
                         f"{a['official'] / a['ours']:.2f}x |")
        lines.append("")
    if profiles:
        for name, table in profiles.items():
            lines += [f"### Profile: one fused training step, {name} (top operators by self CPU time)", "",
                      "```", *table, "```", ""]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def _child(argv: List[str]) -> dict:
    kind, *rest = argv
    if kind == "memory":
        config, impl, ckpt, batch, img, text = rest
        return child_memory(config, impl, bool(int(ckpt)), int(batch), int(img), int(text))
    if kind == "allocator":
        config, tuned, batches, img, text, repeats = rest
        return child_allocator(config, bool(int(tuned)), [int(b) for b in batches.split(",")], int(img), int(text),
                               int(repeats))
    return child_retrieval(int(rest[0]), rest[1])


def targets_section(data: dict) -> str:
    """The issue's targets, each marked met / not met from the numbers of this run (report.json layout)."""
    rows, lines = data["rows"], ["## Targets (ratios from this run)", "", "| target | measured | status |",
                                  "|---|---|---|"]

    def ratio(row, ref, ours="ours"):
        sec = row["seconds"]
        return sec[ref] / sec[ours] if ref in sec and ours in sec else None

    def add(target, values, ok):
        status = "not measured in this run" if ok is None else ("met" if ok else "**not met**")
        lines.append(f"| {target} | {values} | {status} |")

    def bound(row, ref):
        """The most any implementation could gain over ``ref``: the reference's time divided by the time of the
        same FLOPs at the full matmul ceiling (so a reference at 80% of the ceiling bounds the ratio at 1.25x)."""
        ceil = data["ceiling"].get(row["dtype"])
        if not (row["flops"] and ceil and ref in row["seconds"]):
            return ""
        return f" (bound {row['seconds'][ref] * ceil / row['flops']:.2f}x)"

    train = [r for r in rows if r["case"] == "fused forward+backward" and r["dtype"] == "fp32"]
    vals = [(r["batch"], ratio(r, "official"), bound(r, "official")) for r in train]
    add(">= 1.5x official, fused forward+backward (fp32)", ", ".join(f"b{b}: {v:.2f}x{c}" for b, v, c in vals),
        all(v >= 1.5 for _, v, _ in vals) if vals else None)
    train16 = [r for r in rows if r["case"] == "fused forward+backward" and r["dtype"] == "bf16"]
    if train16:
        lines.append("| (same, bf16 autocast on both) | " + ", ".join(
            f"b{r['batch']}: {ratio(r, 'official'):.2f}x{bound(r, 'official')}" for r in train16)
            + " | for information |")
    vis = [r for r in rows if r["case"] == "vision-only inference" and "timm" in r["seconds"]]
    vals = [(r["batch"], r["dtype"], ratio(r, "timm"), bound(r, "timm")) for r in vis]
    fp32 = [v for _, d, v, _ in vals if d == "fp32"]
    add(">= 1.1x timm, vision-only inference", ", ".join(f"b{b} {d}: {v:.2f}x{c}" for b, d, v, c in vals),
        all(v >= 1.1 for v in fp32) if fp32 else None)
    fwd8 = [r for r in rows if r["batch"] == 8 and "inference" in r["case"] and r["dtype"] == "fp32" and r["flops"]]
    ceil = data["ceiling"]["fp32"]
    vals = [(r["case"], r["flops"] / r["seconds"]["ours"] / ceil) for r in fwd8]
    add(">= 60% of the matmul ceiling, forward at batch 8 (fp32)",
        ", ".join(f"{c}: {100 * v:.0f}%" for c, v in vals), all(v >= 0.6 for _, v in vals) if vals else None)
    gen = data["generation"]["seconds"]
    speed = gen["ours recompute"] / gen["ours+kv-cache"]
    add(">= 3x KV-cache generation vs recomputation", f"{speed:.2f}x", speed >= 3)
    cuts = {}
    for batch in sorted({m.get("batch", 0) for m in data["memory"]}):
        mem = {m["checkpointing"]: m["peak_above_model"] for m in data["memory"]
               if m["impl"] == "ours" and m.get("batch", 0) == batch}
        cuts[batch] = 1 - mem[True] / mem[False] if mem[False] else float("nan")  # smoke peaks can be hidden
    add(">= 50% training peak memory cut by activation checkpointing",
        ", ".join(f"b{b}: {100 * c:.0f}%" for b, c in cuts.items()) + " (weight gradients are not activations: "
        "they dominate the peak at small batches)", cuts[max(cuts)] >= 0.5)
    chunked = sorted((m["n"], m["peak_above_start"]) for m in data["retrieval"]
                     if m["method"] == "chunked" and "peak_above_start" in m)
    full = sorted((m["n"], m["peak_above_start"]) for m in data["retrieval"]
                  if m["method"] == "full" and "peak_above_start" in m)
    n_max, peak_max = chunked[-1]
    add("retrieval evaluation memory bounded as N grows (chunked)",
        "chunked: " + ", ".join(f"N={n}: {p / 2**20:.0f} MiB" for n, p in chunked) + "; all-pairs: " +
        ", ".join(f"N={n}: {p / 2**20:.0f} MiB" for n, p in full) + f"; an N x N fp32 matrix at N={n_max}: "
        f"{n_max * n_max * 4 / 2**20:.0f} MiB", peak_max < n_max * n_max * 4)
    lines += ["", "\"bound\": the largest ratio any implementation could reach on this machine, the reference's "
              "time over the time its FLOPs take at 100% of the matmul ceiling. Where the bound itself is below the "
              "target, no code change can meet it here. Why a target is not met, from the profiles above, and what "
              "was tried for it: docs/benchmarks.md, \"Targets and findings\"."]
    return "\n".join(lines) + "\n"


START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def publish(report: str, targets=(HERE.parent / "README.md", HERE.parent / "docs" / "benchmarks.md")) -> List[Path]:
    """Copy the report's ratio table between the bench markers of README.md / docs/benchmarks.md."""
    table = report.split("## Ratios", 1)[1].split("## Caption generation", 1)[0]
    body = "\n".join(line for line in report.splitlines() if line.startswith("Machine:")) + "\n\n## Ratios" + table
    done = []
    for path in targets:
        if not path.exists():
            continue
        text = path.read_text()
        if START in text and END in text:
            head, rest = text.split(START, 1)
            path.write_text(head + START + "\n" + body.strip() + "\n\nFull report: `bench/REPORT.md`.\n" + END
                            + rest.split(END, 1)[1])
            done.append(path)
    return done


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes, few iterations (CI)")
    p.add_argument("--out", default=str(HERE / "REPORT.md"))
    p.add_argument("--compile", action="store_true", help="add torch.compile rows (vision b8, training b8)")
    p.add_argument("--repeats", type=int)
    p.add_argument("--batches", type=int, nargs="+", help="batch sizes (default 1 8)")
    p.add_argument("--memory-batches", type=int, nargs="+", help="batch sizes of the memory rows (default 8 32)")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--default-malloc", action="store_true",
                   help="keep glibc's malloc defaults (by default the run calls runtime.tune_malloc first)")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child)))
        return 0
    s = SMOKE if args.smoke else Setting()
    s.compile = args.compile
    if args.repeats:
        s.repeats = args.repeats
    if args.batches:
        s.batches = tuple(args.batches)
    if args.memory_batches:
        s.memory_batches = tuple(args.memory_batches)
    if args.no_profile:
        s.profile = False
    if s.threads:
        torch.set_num_threads(s.threads)
    tuned = False if args.default_malloc else tune_malloc()  # before the models exist (see the allocator table)
    info = machine_info()
    info["malloc"] = "tuned by beit3_plugins.runtime.tune_malloc" if tuned else "glibc defaults"
    log: List[str] = []
    t0 = time.perf_counter()
    models = build_models(s.config, img_size=s.img_size)
    ceiling = {"fp32": matmul_flops_per_second(torch.float32)}
    if bf16_supported():
        ceiling["bf16"] = matmul_flops_per_second(torch.bfloat16)
    rows = inference_cases(models, s, log)
    print(f"[bench] inference done {time.perf_counter() - t0:.0f} s", flush=True)
    rows += training_cases(models, s, log)
    print(f"[bench] training done {time.perf_counter() - t0:.0f} s", flush=True)
    gen = generation_case(models, s)
    kernel_effect = kernel_effect_case(models, s) if bf16_supported() else None
    kernels = attention_kernels.table(attention_kernels.measure(
        attention_kernels.SMOKE_SHAPES if args.smoke else attention_kernels.SHAPES, repeats=s.repeats))
    print(f"[bench] attention kernels done {time.perf_counter() - t0:.0f} s", flush=True)
    profiles = profile_training(models, s, max(s.batches)) if s.profile else {}
    del models
    mem = memory_cases(s)
    print(f"[bench] memory done {time.perf_counter() - t0:.0f} s", flush=True)
    retr = retrieval_cases(s)
    allocator = allocator_cases(s)
    print(f"[bench] allocator done {time.perf_counter() - t0:.0f} s", flush=True)
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):  # again at the end: keep the best
        if name in ceiling:
            ceiling[name] = max(ceiling[name], matmul_flops_per_second(dtype))
    out = Path(args.out)
    text = write_report(out, info, s, rows, gen, mem, retr, ceiling, log, profiles, args.smoke, kernels,
                        kernel_effect, allocator, info["malloc"])
    data = {"machine": info, "rows": [r.__dict__ for r in rows], "generation": gen.__dict__, "memory": mem,
            "kernel_effect": kernel_effect.__dict__ if kernel_effect else None, "allocator": allocator,
            "retrieval": retr, "ceiling": ceiling, "compile": log}
    (out.with_suffix(".json")).write_text(json.dumps(data, indent=1, default=str))
    text += "\n" + targets_section(json.loads(json.dumps(data, default=str)))
    text += "".join("\n" + p.read_text() for p in [Path(__file__).with_name("pretrain_data.md")] if p.exists())
    out.write_text(text)
    print(text)
    if not args.smoke:
        for path in publish(text):
            print(f"[bench] updated the table in {path}")
    print(f"[bench] wrote {out} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
