"""End-to-end demo: generated data world -> tokenizer -> pretraining -> VL finetuning -> detection ->
segmentation, each stage through the same command a user runs, ending in a markdown report and a PNG.

Usage: ``python tools/demo.py --out outputs/demo [--only STAGE ...] [--skip STAGE ...]``.
Each stage writes ``<out>/<stage>/metrics.json``::

    {"metrics": {name: value}, "chance": {name: value},
     "curves": {name: [[step, value], ...] or {line label: [[step, value], ...]}}}

and later stages start from the pretraining stage's exported backbone checkpoint when it exists.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


@dataclasses.dataclass
class Context:
    out: Path
    world: Path
    spm: Path

    @property
    def backbone(self) -> Optional[Path]:
        path = self.out / "pretrain" / "backbone.pth"
        return path if path.exists() else None

    def init_args(self) -> List[str]:
        return ["--init", str(self.backbone)] if self.backbone else []


@dataclasses.dataclass
class Stage:
    name: str
    what: str
    command: Callable[[Context, Path], List[str]]
    # adjacent stages of one group run side by side: detection and segmentation each train on one thread
    # (OMP_NUM_THREADS=1) and need only the pretraining export, so on 2 cores they take the time of one
    group: str = ""


def _world(ctx: Context, out: Path) -> List[str]:
    return [PY, "-m", "beit3_plugins.cli", "make-world", str(ctx.world), "--seed", "0"]


def _spm(ctx: Context, out: Path) -> List[str]:
    return [PY, "-m", "beit3_plugins.cli", "train-spm", str(ctx.world / "text" / "corpus.txt"),
            str(ctx.spm.with_suffix("")), "--vocab-size", "300"]


def _backbone_smoke(ctx: Context, out: Path) -> List[str]:
    return [PY, str(ROOT / "tools" / "demo_stages" / "backbone.py"), "--world", str(ctx.world), "--out", str(out)]


def _stage_script(name: str) -> Callable[[Context, Path], List[str]]:
    def command(ctx: Context, out: Path) -> List[str]:
        script = ROOT / "tools" / "demo_stages" / name
        runner = ["bash"] if script.suffix == ".sh" else [PY]
        return runner + [str(script), "--world", str(ctx.world), "--spm", str(ctx.spm), "--out", str(out)] \
            + ([] if name.startswith("pretrain") else ctx.init_args())
    return command


STAGES = [
    Stage("world", "generate the synthetic data world in real dataset formats", _world),
    Stage("tokenizer", "train a sentencepiece model (XLM-R id layout) on the world's text corpus", _spm),
    Stage("backbone", "build beit3_tiny / vlmo_tiny through the registry, run every mode", _backbone_smoke),
    Stage("pretrain", "fairseq-train --task beit3_mdm (MLM + MIM + MVLM) on the tiny recipe",
          _stage_script("pretrain.sh")),
    Stage("vl_tasks", "finetune + evaluate VQA, NLVR2, retrieval, captioning, classification",
          _stage_script("vl_tasks.py")),
    Stage("detection", "beit3_plugins.detection.train: ViTDet + Cascade Mask R-CNN on the world's COCO instances",
          _stage_script("detection.sh"), group="dense"),
    Stage("segmentation", "mim train mmseg: ViT-Adapter + Mask2Former on the world's ADE20K tree",
          _stage_script("segmentation.sh"), group="dense"),
]


def run_stage(stage: Stage, ctx: Context) -> Dict:
    out = ctx.out / stage.name
    out.mkdir(parents=True, exist_ok=True)
    cmd = stage.command(ctx, out)
    print(f"\n=== {stage.name}: {stage.what}\n$ {' '.join(cmd)}", flush=True)
    start = time.time()
    with open(out / "log.txt", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        for line in proc.stdout:
            log.write(line)
            if any(k in line for k in ("metric", "loss", "acc", "AP", "mIoU", "[stage]", "Error", "error")):
                print(f"  {stage.name}: " + line.rstrip()[:200], flush=True)
        proc.wait()
    seconds = time.time() - start
    metrics_file = out / "metrics.json"
    result = {"stage": stage.name, "what": stage.what, "seconds": round(seconds, 1), "ok": proc.returncode == 0,
              "command": " ".join(cmd)}
    if metrics_file.exists():
        result.update(_normalise(json.loads(metrics_file.read_text())))
    status = "ok" if result["ok"] else f"FAILED (exit {proc.returncode}; see {out / 'log.txt'})"
    print(f"=== {stage.name}: {status} in {seconds:.0f}s", flush=True)
    return result


def _normalise(data: Dict) -> Dict:
    """Stages that run several tasks write ``{"tasks": {name: {"metric", "value", "chance" | "controls"}}}``;
    flatten them into the common ``metrics`` / ``chance`` form of the report, and ``controls`` (model, blind,
    shuffled, constant, margin, clearly_ahead) for the tasks that see images."""
    for name, task in data.get("tasks", {}).items():
        if "metric" not in task:
            continue
        key = f"{name}.{task['metric']}"
        data.setdefault("metrics", {})[key] = task["value"]
        if task.get("controls"):
            data.setdefault("controls", {})[key] = task["controls"]
        elif task.get("chance") is not None:
            data.setdefault("chance", {})[key] = task["chance"]
    return data


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def write_report(results: List[Dict], out: Path, wall_seconds: Optional[float] = None) -> None:
    lines = ["# beit3-plugins demo report", "",
             f"Machine: {os.cpu_count()} CPU cores; " + (
                 f"{wall_seconds:.0f} s wall clock (stages of one group run side by side)." if wall_seconds is not None
                 else f"stages took {sum(r['seconds'] for r in results):.0f} s in all."), "",
             "| stage | status | seconds | metrics (chance) |", "|---|---|---|---|"]
    for r in results:
        metrics = r.get("metrics", {})
        chance = r.get("chance", {})
        shown = ", ".join(f"{k} {_fmt(v)}" + (f" ({_fmt(chance[k])})" if k in chance else "")
                          for k, v in metrics.items() if k not in r.get("controls", {}))
        if r.get("controls"):
            shown = (shown + ", " if shown else "") + "vision-language tasks: see below"
        lines.append(f"| {r['stage']} | {'ok' if r['ok'] else '**failed**'} | {r['seconds']} | {shown} |")
    controls = {k: v for r in results for k, v in r.get("controls", {}).items()}
    if controls:
        lines += ["", "Vision-language tasks against controls computed on the same split (vl_tasks/controls.py): "
                  "**blind** = the best question-/text-only predictor built from the training split, **shuffled** "
                  "= the same model with the images permuted across the split, **constant** = the same model fed "
                  "one image for all; *clearly ahead* = the model beats blind and shuffled by the margin (3 "
                  "standard errors).", "",
                  "| task.metric | n | model | blind | shuffled | constant | margin | clearly ahead |",
                  "|---|---|---|---|---|---|---|---|"]
        for key, c in controls.items():
            lines.append(f"| {key} | {c['n']} | **{_fmt(c['model'])}** | {_fmt(c['blind'])} | {_fmt(c['shuffled'])} "
                         f"| {_fmt(c['constant'])} | {_fmt(c['margin'])} | {'yes' if c['clearly_ahead'] else '**no**'} |")
    lines += ["", "![curves](report.png)", ""]
    for r in results:
        lines.append(f"- **{r['stage']}**: {r['what']}  \n  `{r['command']}`")
    (out / "REPORT.md").write_text("\n".join(lines) + "\n")
    _plot(results, out / "report.png")
    print(f"\nreport: {out / 'REPORT.md'}")


def _plot(results: List[Dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [(r["stage"], name, pts) for r in results for name, pts in r.get("curves", {}).items() if pts]
    controls = {k: v for r in results for k, v in r.get("controls", {}).items()}
    panels = len(curves) + (1 if controls else 0)
    cols = 3
    rows = max(1, (panels + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    panel_axes = iter(axes.flat)
    if controls:
        ax = next(panel_axes)
        ax.axis("on")
        names = list(controls)
        for offset, (label, color) in enumerate((("model", "tab:blue"), ("blind", "tab:gray"),
                                                 ("shuffled", "tab:orange"))):
            ax.bar([i + (offset - 1) * 0.27 for i in range(len(names))],
                   [controls[n][label] or 0.0 for n in names], width=0.27, label=label, color=color)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([n.replace(".", "\n") for n in names], fontsize=6)
        ax.set_title("vision-language: model vs blind vs shuffled images", fontsize=9)
        ax.legend(fontsize=7)
        ax.tick_params(labelsize=7)
    for ax, (stage, name, pts) in zip(panel_axes, curves):
        ax.axis("on")
        series = pts.items() if isinstance(pts, dict) else [(None, pts)]  # several labelled lines or one
        for label, line in series:
            if not line:
                continue
            xs, ys = zip(*line) if isinstance(line[0], (list, tuple)) else (range(len(line)), line)
            ax.plot(xs, ys, label=label)
        if isinstance(pts, dict):
            ax.legend(fontsize=6)
        ax.set_title(f"{stage}: {name}", fontsize=9)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/demo")
    parser.add_argument("--only", nargs="*", default=None, help="run only these stages")
    parser.add_argument("--skip", nargs="*", default=[], help="skip these stages")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(out=out, world=out / "world", spm=out / "tokenizer" / "spm.model")
    names = [s.name for s in STAGES]
    for name in (args.only or []) + args.skip:
        if name not in names:
            parser.error(f"unknown stage {name!r}; stages: {', '.join(names)}")
    selected = [s for s in STAGES if not (args.only and s.name not in args.only) and s.name not in args.skip]
    steps: List[List[Stage]] = []
    for stage in selected:   # adjacent stages of one group form one step
        if steps and stage.group and steps[-1][-1].group == stage.group:
            steps[-1].append(stage)
        else:
            steps.append([stage])
    results, start = [], time.time()
    for step in steps:
        with ThreadPoolExecutor(max_workers=len(step)) as pool:   # threads only wait on child processes
            results += list(pool.map(lambda stage: run_stage(stage, ctx), step))
        if step[0].name in ("world", "tokenizer") and not results[-1]["ok"]:
            break
    write_report(results, out, time.time() - start)
    failed = [r["stage"] for r in results if not r["ok"]]
    if failed:
        print(f"failed stages: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
