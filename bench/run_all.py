"""One command for the whole benchmark suite: ``python -m bench.run_all`` (from the repository root).

Writes ``bench/REPORT.md`` (and ``bench/REPORT.json``): ours against the official implementation
(torchscale ``BEiT3``) and timm's ``beit3_*`` vision port on the same converted weights, with every
output checked equal before anything is timed. ``--smoke`` runs tiny sizes with a couple of iterations
(CI: it only proves that the suite runs and the outputs match; its numbers mean nothing).

Timing: every case runs the implementations round-robin in one process, repeated, and reports medians,
so that load from other processes hits them alike. Memory is measured in fresh child processes (peak RSS).

This module is only the command; the parts live beside it: ``settings`` (sizes, rows, the equality check),
``inference`` / ``training`` / ``generation`` (the timed cases), ``children`` (cases measured in fresh
processes: memory, allocator, retrieval), ``attention_kernels``, ``report`` (REPORT.md, targets, publishing
the table into docs/benchmarks.md) and ``common`` (models, timers, machine facts).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List

import torch

from bench import attention_kernels
from bench.children import allocator_cases, memory_cases, retrieval_cases
from bench.common import bf16_supported, build_models, machine_info, matmul_flops_per_second
from bench.generation import generation_case
from bench.inference import inference_cases
from bench.report import publish, targets_section, write_report
from bench.settings import SMOKE, Setting
from bench.training import kernel_effect_case, profile_training, training_cases
from beit3_plugins.runtime import tune_malloc

HERE = Path(__file__).resolve().parent


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
    args = p.parse_args(argv)
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
    # the separately run benchmarks' last reports (`python -m bench.pretrain_data`, `python -m bench.pipelines`)
    text += "".join("\n" + p.read_text() for p in map(Path(__file__).with_name, ("pretrain_data.md", "pipelines.md"))
                    if p.exists())
    out.write_text(text)
    print(text)
    if not args.smoke:
        for path in publish(text):
            print(f"[bench] updated the table in {path}")
    print(f"[bench] wrote {out} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
