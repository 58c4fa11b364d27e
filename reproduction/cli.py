"""``beit3-plugins benchmark list | run TABLE|BENCHMARK --data-root DIR [...] | show DIR``.

    beit3-plugins benchmark list
    beit3-plugins benchmark run beit3_release --data-root /data          # every released file, downloaded
    beit3-plugins benchmark run coco_retrieval_test --data-root /data \
        --model my.pth=beit3_base_patch16_384_coco_retrieval
    torchrun --nproc_per_node 2 -m beit3_plugins.reproduction.cli run nlvr2_dev --data-root /data
    beit3-plugins benchmark show results/

Exit status: 0 when every planned cell has a result, 1 when a cell failed (its row names the error).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["benchmark_main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="beit3-plugins benchmark",
                                description="reproduce the published tables: evaluate, compare, report")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="tables and benchmarks")
    run = sub.add_parser("run", help="evaluate the cells of a table or benchmark and write the comparison")
    run.add_argument("target", help="a table (beit3-plugins benchmark list), 'all', or a benchmark")
    run.add_argument("--data-root", required=True, help="datasets in the official download layout")
    run.add_argument("--model", nargs="+", default=[], metavar="NAME|PATH[=ROW]",
                     help="evaluate these instead of the released files: NAME=ROW puts NAME in the rows of ROW "
                          "(a zoo name or a glob); a NAME alone fills its own rows")
    run.add_argument("--zoo", nargs="+", default=[], metavar="FILE",
                     help="JSON list of extra zoo entries (your own checkpoints with their settings)")
    run.add_argument("--out", default="benchmark_results", help="results folder (cells/, tables, chart)")
    run.add_argument("--force", action="store_true", help="evaluate finished cells again")
    run.add_argument("--batch-size", type=int, help="evaluation batch size (default: the task's)")
    run.add_argument("--device", default="auto", help="auto | cpu | cuda")
    run.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 (autocast)")
    run.add_argument("--no-progress", action="store_true")
    run.add_argument("--detection-config", help="detectron2 config of the coco_detection_val checkpoints")
    run.add_argument("--segmentation-config", help="mmseg config of the ade20k checkpoints")
    show = sub.add_parser("show", help="print the comparison of a results folder again")
    show.add_argument("out")
    return p


def _list() -> int:
    from .benchmarks import BENCHMARKS
    from .tables import TABLES

    print("tables:")
    for t in TABLES.values():
        print(f"  {t.name:<22} {len(t.rows):>3} numbers  {t.title}")
    print("benchmarks:")
    for _, b in BENCHMARKS.items():
        where = "local" if b.local else f"server: {b.server}"
        print(f"  {b.name:<34} {b.split} [{', '.join(b.metrics)}] ({where})")
    return 0


def _report(plan, results, errors, out: Path) -> int:
    from .report import compare, render_markdown, write_outputs

    rows = compare(plan, results, errors)
    paths = write_outputs(plan, rows, out)
    print(render_markdown(plan, rows))
    print(f"written: {paths['markdown']}, {paths['csv']}, {paths['chart']}")
    return 1 if errors else 0


def benchmark_main(argv: Optional[Sequence[str]] = None) -> int:
    """Reproduce the published tables: list | run TABLE|BENCHMARK --data-root DIR | show DIR."""
    args = _parser().parse_args(argv)
    if args.command == "list":
        return _list()
    from .runner import Plan, RunConfig, load_cells, plan, register_zoo_file, run_plan

    if args.command == "show":
        out = Path(args.out)
        if not (out / "plan.json").is_file():
            raise SystemExit(f"{out / 'plan.json'}: not a results folder of `beit3-plugins benchmark run`")
        saved = Plan.from_json(json.loads((out / "plan.json").read_text()))
        errors = json.loads((out / "errors.json").read_text()) if (out / "errors.json").is_file() else {}
        return _report(saved, load_cells(out), errors, out)
    for path in args.zoo:
        register_zoo_file(Path(path))
    p = plan(args.target, args.model)
    cfg = RunConfig(data_root=Path(args.data_root), out=Path(args.out), models=tuple(args.model), force=args.force,
                    batch_size=args.batch_size, device=args.device, dtype=args.dtype, progress=not args.no_progress,
                    detection_config=args.detection_config, segmentation_config=args.segmentation_config)
    results, errors = run_plan(p, cfg)
    from beit3_plugins.vl_tasks.engine.distributed import DistContext

    if not DistContext().main:
        return 0
    from beit3_plugins.checkpoint import atomic_write

    data = json.dumps(errors, indent=1).encode()
    atomic_write(str(Path(args.out) / "errors.json"), lambda f: f.write(data))
    return _report(p, results, errors, Path(args.out))


def main() -> None:  # python -m beit3_plugins.reproduction.cli (torchrun)
    sys.exit(benchmark_main())


if __name__ == "__main__":
    main()
