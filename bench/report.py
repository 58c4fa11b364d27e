"""The report: bench/REPORT.md tables, the targets section (met / not met from this run's numbers) and
the publisher that copies the table into docs/benchmarks.md.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

from bench.settings import Setting, Row

HERE = Path(__file__).resolve().parent


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


def publish(report: str, targets=(HERE.parent / "docs" / "benchmarks.md",)) -> List[Path]:
    """Copy the report's ratio table between the bench markers of docs/benchmarks.md (the README links there)."""
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
