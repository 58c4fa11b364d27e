"""``beit3-plugins embed``: images or texts -> a folder of L2-normalised embedding shards + a metadata table.

Output folder (one per modality)::

    manifest.json            model spec, modality, units (the plan), dim, stored dtype
    unit-00000.npy           (rows, dim) embeddings of unit 0, fp16 or fp32, L2-normalised
    unit-00000.parquet       id, source (path or "<shard>#<key>" or "<file>:<line>"), caption, width, height
    unit-00000.skips.jsonl   the items of unit 0 that were skipped, each with its reason
    summary.json             totals, skip counts by reason (written once every unit is done)

Why units: a unit is written whole (metadata and skips first, the ``.npy`` last, each by atomic rename), so
a unit whose ``.npy`` exists is complete; a killed run redoes only unfinished units (no duplicate, no missing
row). Batches never span units, so a resumed run or a run split over processes feeds the model the same
batches as one uninterrupted process, and writes the same bytes. Under ``torchrun`` process ``rank`` takes
units ``rank, rank + world, ...``; no process group is needed.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from .model import ModelSpec, add_model_args, load_embedder
from .sources import ImageItem, Unit, plan_image_units, plan_text_units, read_image_item

__all__ = ["EmbedConfig", "run_embed", "cli_main", "unit_name", "MANIFEST"]

logger = logging.getLogger(__name__)
MANIFEST = "manifest.json"


def unit_name(index: int) -> str:
    return f"unit-{index:05d}"


@dataclasses.dataclass
class EmbedConfig:
    """What one ``embed`` run reads, with which model, and how."""

    out: str
    model: ModelSpec
    images: Sequence[str] = ()
    texts: Sequence[str] = ()
    text_column: Optional[str] = None
    batch_size: int = 64
    workers: int = 2
    device: Optional[str] = None
    dtype: str = "float32"             # compute dtype
    save_dtype: str = "float16"        # stored dtype
    unit_size: int = 10000
    progress: bool = True
    rank: int = 0
    world_size: int = 1
    debug_kill_after_units: int = 0    # test hook: SIGKILL this process after writing that many units


# ---------------------------------------------------------------------------------------------- loading
class _UnitImages(torch.utils.data.Dataset):
    """The pending units' images, decoded and transformed in loader workers; never raises on a bad image."""

    def __init__(self, units: Sequence[Unit], transform) -> None:
        self.units, self.transform = list(units), transform
        self.starts = np.cumsum([0] + [u.count for u in self.units])
        self._shards: Dict[str, object] = {}

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getstate__(self):
        return {**self.__dict__, "_shards": {}}

    def __getitem__(self, flat: int) -> Dict[str, Any]:
        pos = int(np.searchsorted(self.starts, flat, side="right") - 1)
        unit, row = self.units[pos], int(flat - self.starts[pos])
        if unit.kind == "files":
            item = ImageItem(source=unit.paths[row], path=unit.paths[row], root=unit.root)
        else:
            item = ImageItem(source="", shard=unit.shard, row=row)
        decoded = read_image_item(item, self._shards)
        out = {"id": unit.first_id + row, "source": item.source, "caption": decoded.caption, "reason": decoded.reason,
               "detail": decoded.detail, "width": 0, "height": 0, "pixels": None}
        if decoded.image is not None:
            out["width"], out["height"] = decoded.image.size
            out["pixels"] = self.transform(decoded.image)
        return out


def _collate(items: List[Dict[str, Any]]) -> Dict[str, Any]:
    good = [i for i in items if i["pixels"] is not None]
    return {"pixels": torch.stack([i["pixels"] for i in good]) if good else None,
            "rows": [{k: i[k] for k in ("id", "source", "caption", "width", "height")} for i in good],
            "skips": [{k: i[k] for k in ("id", "source", "reason", "detail")} for i in items if i["pixels"] is None]}


def _batch_plan(units: Sequence[Unit], batch_size: int) -> List[List[int]]:
    """Flat item indices per batch; batches restart at every unit (same batches in every kind of run)."""
    plan, start = [], 0
    for unit in units:
        plan += [list(range(start + b, start + min(b + batch_size, unit.count)))
                 for b in range(0, unit.count, batch_size)]
        start += unit.count
    return plan


# ---------------------------------------------------------------------------------------------- writing
class _UnitWriter:
    def __init__(self, out: Path, save_dtype: str) -> None:
        self.out = out
        self.dtype = np.float16 if save_dtype in ("float16", "fp16") else np.float32

    def done(self, unit: Unit) -> bool:
        return (self.out / f"{unit_name(unit.index)}.npy").is_file()

    def write(self, unit: Unit, emb: np.ndarray, rows: List[Dict[str, Any]], skips: List[Dict[str, Any]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from beit3_plugins.checkpoint import atomic_write

        base = self.out / unit_name(unit.index)
        table = pa.table({"id": pa.array([r["id"] for r in rows], pa.int64()),
                          "source": pa.array([r["source"] for r in rows], pa.string()),
                          "caption": pa.array([r["caption"] for r in rows], pa.string()),
                          "width": pa.array([r["width"] for r in rows], pa.int32()),
                          "height": pa.array([r["height"] for r in rows], pa.int32())})

        def parquet(handle) -> None:
            buffer = io.BytesIO()
            pq.write_table(table, buffer)
            handle.write(buffer.getvalue())

        atomic_write(str(base) + ".parquet", parquet)
        atomic_write(str(base) + ".skips.jsonl",
                     lambda h: h.write("".join(json.dumps(s) + "\n" for s in skips).encode("utf-8")))
        array = np.ascontiguousarray(emb.astype(self.dtype))
        atomic_write(str(base) + ".npy", lambda h: np.save(h, array))      # last: marks the unit complete


def _normalise(emb: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(emb.float(), dim=-1).cpu().numpy()


# ---------------------------------------------------------------------------------------------- run
def _manifest(cfg: EmbedConfig, kind: str, units: Sequence[Unit], dim: int) -> Dict[str, Any]:
    return {"format": 1, "kind": kind, "model": dataclasses.asdict(cfg.model), "dim": dim,
            "save_dtype": "float16" if cfg.save_dtype in ("float16", "fp16") else "float32",
            "inputs": [os.path.abspath(p) if os.path.exists(p) else p for p in (cfg.images or cfg.texts)],
            "text_column": cfg.text_column, "unit_size": cfg.unit_size,
            "roots": sorted({u.root for u in units if u.root} | {os.path.dirname(u.shard) for u in units if u.shard}),
            "units": [{"index": u.index, "first_id": u.first_id, "count": u.count, "kind": u.kind,
                       **({"shard": u.shard} if u.shard else {})} for u in units]}


def _check_manifest(out: Path, manifest: Dict[str, Any]) -> None:
    """A resumed run must be the same run: same inputs, model and plan, else its units would not line up."""
    from beit3_plugins.checkpoint import atomic_write

    path = out / MANIFEST
    if path.is_file():
        old = json.loads(path.read_text())
        keys = ("kind", "model", "inputs", "text_column", "unit_size", "units", "save_dtype")
        changed = [k for k in keys if old.get(k) != manifest.get(k)]
        if changed:
            raise ValueError(f"{out} holds embeddings of another run (differs in {changed}); choose a new --out "
                             "or delete the folder")
        return
    atomic_write(str(path), lambda h: h.write(json.dumps(manifest, indent=1).encode("utf-8")))


def run_embed(cfg: EmbedConfig) -> Dict[str, Any]:
    """Embed ``cfg.images`` or ``cfg.texts`` into ``cfg.out``; returns this process's counts and timing."""
    from tqdm.auto import tqdm

    from beit3_plugins.io_checks import prepare_output_dir

    if bool(cfg.images) == bool(cfg.texts):
        raise ValueError("give image inputs or text inputs (one modality per output folder)")
    if cfg.batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {cfg.batch_size}")
    out = Path(cfg.out)
    if cfg.rank == 0:
        prepare_output_dir(out, "--out")
    else:
        out.mkdir(parents=True, exist_ok=True)
    kind = "image" if cfg.images else "text"
    units = (plan_image_units(cfg.images, cfg.unit_size) if cfg.images
             else plan_text_units(cfg.texts, cfg.unit_size, cfg.text_column))
    device = cfg.device
    if device is None and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    pipe = load_embedder(cfg.model, device=device, dtype=cfg.dtype, batch_size=cfg.batch_size)
    dim = _dim(pipe)
    _check_manifest(out, _manifest(cfg, kind, units, dim))
    writer = _UnitWriter(out, cfg.save_dtype)
    mine = [u for u in units if u.index % cfg.world_size == cfg.rank]
    pending = [u for u in mine if not writer.done(u)]
    stats = {"units": len(mine), "units_done_before": len(mine) - len(pending), "items": 0, "skipped": 0,
             "seconds": 0.0, "model_seconds": 0.0}
    total = sum(u.count for u in pending)
    rank = f" [rank {cfg.rank}]" if cfg.world_size > 1 else ""
    bar = tqdm(total=total, unit="img" if kind == "image" else "text", desc=f"embed {kind}s{rank}",
               disable=not cfg.progress, dynamic_ncols=True, smoothing=0.1)
    start = time.perf_counter()
    batches = _text_batches(pending, cfg.batch_size) if kind == "text" else _image_batches(pending, pipe, cfg, device)
    unit_iter = iter(pending)
    current, parts, rows, skips, seen = None, [], [], [], 0
    for batch in batches:
        if current is None:
            current = next(unit_iter)
            while current.count == 0:            # an empty shard: nothing to batch, still a finished unit
                writer.write(current, np.zeros((0, dim), np.float32), [], [])
                current = next(unit_iter)
        t0 = time.perf_counter()
        if batch["pixels"] is not None or batch.get("texts"):
            with pipe.inference(), pipe.autocast():
                emb = (pipe.model.embed_images(batch["pixels"].to(pipe.device, non_blocking=True)) if kind == "image"
                       else pipe.model.embed_texts(*pipe.texts(batch["texts"])))
            parts.append(_normalise(emb))
        stats["model_seconds"] += time.perf_counter() - t0
        rows += batch["rows"]
        skips += batch["skips"]
        n = len(batch["rows"]) + len(batch["skips"])
        seen += n
        bar.update(n)
        if seen == current.count:
            emb_all = np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
            writer.write(current, emb_all, rows, skips)
            stats["items"] += len(rows)
            stats["skipped"] += len(skips)
            stats["units_written"] = stats.get("units_written", 0) + 1
            if stats["units_written"] == cfg.debug_kill_after_units:
                import signal

                os.kill(os.getpid(), signal.SIGKILL)
            current, parts, rows, skips, seen = None, [], [], [], 0
    for rest in unit_iter:                           # trailing empty units
        writer.write(rest, np.zeros((0, dim), np.float32), [], [])
    bar.close()
    stats["seconds"] = time.perf_counter() - start
    stats["items_per_second"] = (stats["items"] + stats["skipped"]) / max(stats["seconds"], 1e-9)
    _write_summary_when_complete(out, units, writer)
    return stats


def _dim(pipe) -> int:
    with pipe.inference():
        return int(pipe.model.embed_texts(*pipe.texts(["a"])).shape[-1])


def _text_batches(units: Sequence[Unit], batch_size: int):
    for unit in units:
        for b in range(0, unit.count, batch_size):
            sl = slice(b, min(b + batch_size, unit.count))
            texts = list(unit.texts[sl])
            yield {"pixels": None, "texts": texts, "skips": [],
                   "rows": [{"id": unit.first_id + b + i, "source": s, "caption": t, "width": 0, "height": 0}
                            for i, (t, s) in enumerate(zip(texts, unit.sources[sl]))]}


def _image_batches(units: Sequence[Unit], pipe, cfg: EmbedConfig, device):
    dataset = _UnitImages([u for u in units if u.count], pipe.transform)
    if not len(dataset):
        return
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=_batch_plan(dataset.units, cfg.batch_size),
                                         num_workers=cfg.workers, collate_fn=_collate,
                                         pin_memory=str(device or "").startswith("cuda"),
                                         persistent_workers=False, prefetch_factor=4 if cfg.workers else None)
    yield from loader


def _write_summary_when_complete(out: Path, units: Sequence[Unit], writer: _UnitWriter) -> None:
    from beit3_plugins.checkpoint import atomic_write

    if not all(writer.done(u) for u in units):
        return
    reasons: Dict[str, int] = {}
    skipped = 0
    for u in units:
        for line in (out / f"{unit_name(u.index)}.skips.jsonl").read_text().splitlines():
            reason = json.loads(line)["reason"]
            reasons[reason] = reasons.get(reason, 0) + 1
            skipped += 1
    rows = sum(int(np.load(out / f"{unit_name(u.index)}.npy", mmap_mode="r").shape[0]) for u in units)
    summary = {"units": len(units), "rows": rows, "skipped": skipped, "skip_reasons": reasons}
    atomic_write(str(out / "summary.json"), lambda h: h.write(json.dumps(summary, indent=1).encode("utf-8")))


# ---------------------------------------------------------------------------------------------- CLI
def cli_main(argv: Optional[Sequence[str]] = None) -> int:
    """Embed images (folders, file lists, tar shards) or texts into L2-normalised shards, resumably."""
    parser = argparse.ArgumentParser(prog="beit3-plugins embed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (one modality)")
    parser.add_argument("--images", nargs="+", default=[],
                        help="image folders (recursive), file lists (.txt, one path a line) or tar shard patterns")
    parser.add_argument("--texts", nargs="+", default=[], help="text files (one a line) or .parquet/.csv files")
    parser.add_argument("--text-column", help="the text column of .parquet / .csv inputs")
    add_model_args(parser)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers decoding images")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: this process's GPU, else cpu)")
    parser.add_argument("--dtype", default="float32", help="compute dtype: float32 | bfloat16 | float16 | auto")
    parser.add_argument("--save-dtype", default="float16", choices=["float16", "float32"])
    parser.add_argument("--unit-size", type=int, default=10000, help="files or texts per output unit (tar: a shard)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--debug-kill-after-units", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s | %(name)s | %(message)s")
    cfg = EmbedConfig(out=args.out, model=ModelSpec.from_args(args), images=args.images, texts=args.texts,
                      text_column=args.text_column, batch_size=args.batch_size, workers=args.workers,
                      device=args.device, dtype=args.dtype, save_dtype=args.save_dtype, unit_size=args.unit_size,
                      progress=not args.no_progress, rank=int(os.environ.get("RANK", 0)),
                      world_size=int(os.environ.get("WORLD_SIZE", 1)),
                      debug_kill_after_units=args.debug_kill_after_units)
    try:
        stats = run_embed(cfg)
    except (ValueError, FileNotFoundError) as exc:
        parser.exit(2, f"beit3-plugins embed: {exc}\n")
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":  # `torchrun --nproc_per_node N -m beit3_plugins.search.embed ...`
    import sys

    sys.exit(cli_main())
