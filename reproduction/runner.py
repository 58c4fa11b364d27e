"""Cells: a checkpoint evaluated on a benchmark split with the official protocol, one JSON file each.

A cell is evaluated by the VL trainer's own evaluation (``vl_tasks.train.run`` with ``train.eval_only=true``:
the task's datasets, transforms, tokenisation and ``vl_tasks/metrics.py``), configured from the zoo entry of
the checkpoint (resolution, final norm, tokenizer) and the benchmark (split, protocol overrides). Its result
goes to ``<out>/cells/<cell>.json`` by an atomic write, after the evaluation finished; so a rerun skips the
finished cells, a killed run (even SIGKILL) redoes only the cell it was in, and ``force`` redoes them all.
Under ``torchrun`` every process runs the same plan and the trainer splits each evaluation into blocks of
whole batches (results identical to one process); rank 0 alone writes.

Table rows name the released files; ``models`` substitutes: ``"NAME|PATH=ROW"`` evaluates NAME (a zoo name,
one of ``--zoo`` FILE's entries, or a checkpoint file shaped like ROW) in every row whose model matches ROW
(a zoo name or a glob such as ``beit3_*_vqa``; ``ROW@BENCHMARK`` also matches the benchmark, e.g.
``beit3_giant@vqav2_*``); ``"NAME"`` alone evaluates the rows of NAME, or adds rows for it.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from beit3_plugins.checkpoint import atomic_write

from .benchmarks import BENCHMARKS, Benchmark
from .tables import GIANT, TABLES, Reported, Table

logger = logging.getLogger("beit3_plugins.reproduction")

__all__ = ["RunConfig", "Cell", "Plan", "plan", "run_plan", "load_cells", "register_zoo_file", "CELLS_DIR",
           "ZEROSHOT_PROMPTS"]

CELLS_DIR = "cells"
ZEROSHOT_PROMPTS = Path(__file__).resolve().parent / "data" / "imagenet_zeroshot.json"
#: where the VQA answer list of the released heads is read (the official ``answer2label.txt``, in the official
#: COCO data folder), unless the checkpoint's zoo entry names one
VQA_ANSWERS = "coco/answer2label.txt"


@dataclasses.dataclass
class RunConfig:
    data_root: Path
    out: Path
    models: Tuple[str, ...] = ()
    force: bool = False
    batch_size: Optional[int] = None
    device: str = "auto"
    dtype: str = "float32"           # float32 | bfloat16 | float16 (autocast of the evaluation)
    progress: bool = True
    detection_config: Optional[str] = None      # detectron2 config of a coco_detection_val checkpoint
    segmentation_config: Optional[str] = None   # mmseg config of an ade20k checkpoint


@dataclasses.dataclass(frozen=True)
class Cell:
    """One evaluation: ``model`` (zoo name or file) on ``benchmark``; ``like`` describes a file's settings."""

    model: str
    benchmark: str
    like: Optional[str] = None

    @property
    def id(self) -> str:
        name = self.model
        if os.path.isfile(name) or os.sep in name:
            stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(name).stem)
            name = f"{stem}-{hashlib.sha1(os.path.abspath(name).encode()).hexdigest()[:8]}"
        return f"{name}__{self.benchmark}"


@dataclasses.dataclass
class Plan:
    """What ``run`` evaluates and shows: the tables' rows, each with the cell that answers it (or None)."""

    target: str
    tables: List[Table]
    rows: List[Tuple[str, Reported, Optional[Cell]]]   # (table name, reported row, cell)

    def cells(self) -> List[Cell]:
        return list(dict.fromkeys(c for _, _, c in self.rows if c is not None))

    def to_json(self) -> Dict[str, Any]:
        return {"target": self.target, "tables": [t.name for t in self.tables],
                "rows": [{"table": t, "row": dataclasses.asdict(r), "cell": dataclasses.asdict(c) if c else None}
                         for t, r, c in self.rows]}

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "Plan":
        tables = [TABLES[n] if n in TABLES else Table(n, n, ()) for n in data["tables"]]
        rows = [(r["table"], Reported(**r["row"]), Cell(**r["cell"]) if r["cell"] else None) for r in data["rows"]]
        return cls(data["target"], tables, rows)


# ---------------------------------------------------------------------------------------------- planning
def _parse_models(models: Sequence[str]) -> List[Tuple[str, Optional[str]]]:
    out = []
    for spec in models:
        name, sep, row = spec.partition("=") if "=" in spec else (spec, "", "")
        if not name or (sep and not row):
            raise ValueError(f"--model {spec!r}: expected NAME, PATH, NAME=ROW or PATH=ROW")
        out.append((name, row or None))
    return out


def _row_matches(pattern: str, r: Reported) -> bool:
    """``ROW`` or ``ROW@BENCHMARK`` (globs): the row's model, and its benchmark when given."""
    model, _, bench = pattern.partition("@")
    return fnmatch.fnmatchcase(r.model, model) and (not bench or fnmatch.fnmatchcase(r.benchmark, bench))


def _target_tables(target: str) -> List[Table]:
    if target in TABLES:
        return [TABLES[target]]
    if target == "all":
        return list(TABLES.values())
    if target in BENCHMARKS:
        tables = []
        for table in TABLES.values():
            rows = tuple(r for r in table.rows if r.benchmark == target)
            if rows:
                tables.append(dataclasses.replace(table, rows=rows))
        return tables or [Table(target, BENCHMARKS[target].split, ())]
    raise KeyError(f"unknown table or benchmark {target!r}; tables: {', '.join(TABLES)}, all; benchmarks: "
                   f"{', '.join(BENCHMARKS.names())}")


def _task_of(name: str) -> Optional[str]:
    from beit3_plugins.zoo import get_pretrained

    try:
        return get_pretrained(name).task
    except KeyError:
        return None


def plan(target: str, models: Sequence[str] = ()) -> Plan:
    """The rows of ``target`` (a table, ``all`` or a benchmark) and the cell each one is answered by."""
    tables = _target_tables(target)
    specs = _parse_models(models)
    rows: List[Tuple[str, Reported, Optional[Cell]]] = []
    covered = set()
    for table in tables:
        for r in table.rows:
            cell = None
            if not specs:
                if r.model != GIANT:   # the paper's giant model has no file: only a substituted one fills it
                    cell = Cell(r.model, r.benchmark)
            else:
                for name, row in specs:
                    if (row is None and name == r.model) or (row is not None and _row_matches(row, r)):
                        like = r.model if (os.path.isfile(name) and r.model != GIANT) else None
                        cell = Cell(name, r.benchmark, like)
                        covered.add(name)
                        break
            rows.append((table.name, r, cell))
    # a model named alone that has no row: rows of its own, once per benchmark of the target its kind fits
    for name, row in specs:
        if row is not None or name in covered:
            continue
        kind = _task_of(name)
        seen = set()
        for table in tables:
            for bench in dict.fromkeys(r.benchmark for r in table.rows):
                b = BENCHMARKS[bench]
                if kind in b.zoo_tasks and bench not in seen:
                    seen.add(bench)
                    rows += [(table.name, Reported(name, bench, m, None, "-"), Cell(name, bench)) for m in b.metrics]
    return Plan(target, tables, rows)


# ---------------------------------------------------------------------------------------------- zoo files
def register_zoo_file(path: Path) -> List[str]:
    """Register the entries of a JSON file (a list of ``ZooEntry`` fields; ``weights`` / tokenizer ``file`` /
    ``answer_vocab`` as {"url": ...} or a path relative to the JSON file): a lab's own checkpoints, with the
    settings a zoo entry carries, evaluated by name."""
    from beit3_plugins.zoo import TokenizerSpec, ZooEntry, ZooFile, register_pretrained

    path = Path(path)
    try:
        items = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable JSON list of zoo entries ({exc})") from None
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a JSON list of zoo entries")

    def file_of(value) -> Optional[ZooFile]:
        if value is None:
            return None
        if isinstance(value, str):
            local = Path(value) if os.path.isabs(value) else path.parent / value
            return ZooFile("file://" + str(local.resolve()), filename=local.name)
        return ZooFile(**value)

    names = []
    for i, item in enumerate(items):
        try:
            item = dict(item)
            tok = item.pop("tokenizer", None)
            if tok is not None:
                tok = TokenizerSpec(tok["kind"], file_of(tok.get("file")), int(tok.get("max_length", 64)))
            entry = ZooEntry(weights=file_of(item.pop("weights")), tokenizer=tok,
                             answer_vocab=file_of(item.pop("answer_vocab", None)), **item)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: entry {i}: {exc}") from None
        register_pretrained(entry, force=True)
        names.append(entry.name)
    return names


# ---------------------------------------------------------------------------------------------- one cell
def _local(file) -> str:
    from beit3_plugins.zoo import download_file

    if file.url.startswith("file://"):
        local = file.url[len("file://"):]
        if not os.path.isfile(local):
            raise FileNotFoundError(f"{local}: checkpoint file not found")
        return local
    return str(download_file(file))


def _q(value: Any) -> str:
    """A Hydra override value: paths and free text quoted, so '=' ',' or spaces in them stay literal."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


_AMP = {"float32": "off", "fp32": "off", "bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "fp16": "fp16"}


def cell_overrides(cell: Cell, bench: Benchmark, cfg: RunConfig, work: Path) -> List[str]:
    """The trainer overrides that evaluate ``cell`` with the official protocol."""
    from beit3_plugins.pipelines.factory import resolve_entry
    from beit3_plugins.vl_tasks.train import CONFIG_DIR

    entry, weights = resolve_entry(cell.model, like=cell.like)
    if entry.task not in bench.zoo_tasks:
        raise ValueError(f"{cell.model} is a {entry.task} checkpoint; {bench.name} evaluates "
                         f"{' / '.join(bench.zoo_tasks)} checkpoints")
    if entry.tokenizer is None or entry.tokenizer.file is None:
        raise ValueError(f"{cell.model}: its zoo entry names no tokenizer file")
    if cfg.dtype not in _AMP:
        raise ValueError(f"--dtype {cfg.dtype!r}: one of {', '.join(_AMP)}")
    model = (f"model={entry.backbone}" if (CONFIG_DIR / "model" / f"{entry.backbone}.yaml").is_file()
             else f"model.name={entry.backbone}")
    root = Path(cfg.data_root).resolve()
    out = [f"task={bench.task}", model, f"model.checkpoint={_q(_local(weights))}",
           f"++model.tokenizer={entry.tokenizer.kind}", f"data.root={_q(root)}",
           f"data.tokenizer={_q(_local(entry.tokenizer.file))}", f"task.image_size={entry.image_size}",
           f"task.max_text_len={entry.tokenizer.max_length}",
           f"++model.overrides.normalize_output={str(entry.normalize_output).lower()}",
           "train.eval_only=true", f"train.eval_split={bench.eval_split}", f"train.output_dir={_q(work)}",
           "train.predict=true", f"train.device={cfg.device}", f"train.amp={_AMP[cfg.dtype]}",
           "train.tensorboard=false", f"train.progress={str(cfg.progress).lower()}", "train.resume=false",
           "task.image_decode=official",  # images decoded as the reference's loader (PIL convert("RGB"), no EXIF)
           *bench.overrides]
    if cfg.batch_size:
        out.append(f"task.eval_batch_size={int(cfg.batch_size)}")
    if bench.task == "image_classification":
        out.append(f"task.transform={entry.image_transform}")
    if bench.task == "vqa":
        answers = Path(_local(entry.answer_vocab)) if entry.answer_vocab is not None else root / VQA_ANSWERS
        if not answers.is_file():
            raise FileNotFoundError(f"{answers}: the VQA answer list (answer2label.txt) of the released heads is "
                                    "missing; build it from the VQA v2 annotations (beit3-plugins data prepare)")
        out.append(f"task.answer_vocab={_q(answers)}")
    if bench.task == "image_text_classification":
        out.append(f"task.templates_json={_q(ZEROSHOT_PROMPTS)}")
        classes = root / "imagenet" / "classes.json"
        if classes.is_file() and len(json.loads(classes.read_text())) == 1000:   # ImageNet-1k: CLIP's names
            out.append(f"task.classnames_json={_q(ZEROSHOT_PROMPTS)}")
    # a task yaml lists only the fields its recipe sets: ++ sets the others too
    return ["++" + o if o.startswith("task.") else o for o in out]


def _fingerprint(cell: Cell) -> Dict[str, Any]:
    """What the cached result depends on besides the protocol: the weights file's size and mtime."""
    from beit3_plugins.pipelines.factory import resolve_entry

    if os.path.isfile(cell.model):   # a local file: a detector / segmenter checkpoint has no zoo entry to resolve
        path = os.path.abspath(cell.model)
    else:
        _, weights = resolve_entry(cell.model, like=cell.like)
        if not weights.url.startswith("file://"):
            return {"weights": weights.url}
        path = weights.url[len("file://"):]
    st = os.stat(path)
    return {"weights": "file://" + path, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _check_data(root: Path, bench: Benchmark) -> None:
    """The data layer's check of the official files a benchmark reads (``beit3_plugins.data.official.check``,
    where installed), so a missing or damaged file is named before anything is evaluated; the datasets' own
    readers name a missing file either way."""
    try:
        from beit3_plugins.data.official import check
    except ImportError:
        return
    if not bench.data:
        return
    problems = check(root, [bench.data], decode=False).problems()
    if problems:
        raise FileNotFoundError(f"{bench.name} ({bench.data}): " + "; ".join(map(str, problems)))


def evaluate_cell(cell: Cell, cfg: RunConfig) -> Dict[str, Any]:
    """Evaluate one cell through the trainer (every rank under torchrun); the result dict (rank 0)."""
    from beit3_plugins.vl_tasks.train import compose_config, run

    bench = BENCHMARKS[cell.benchmark]
    if bench.kind != "vl":
        from .dense import evaluate_dense_cell

        return {**evaluate_dense_cell(cell, bench, cfg), **_fingerprint(cell)}
    _check_data(Path(cfg.data_root), bench)
    work = Path(cfg.out) / "work" / cell.id
    overrides = cell_overrides(cell, bench, cfg, work)
    start = time.perf_counter()
    results = run(compose_config(overrides))
    metrics = {k: float(v) for k, v in (results.get("eval") or {}).items()}
    out: Dict[str, Any] = {"cell": cell.id, "model": cell.model, "like": cell.like, "benchmark": bench.name,
                           "split": bench.split, "metrics": metrics, "world_size": results.get("world_size", 1),
                           "seconds": round(time.perf_counter() - start, 2), "overrides": overrides,
                           "skipped": results.get("skipped", {}), **_fingerprint(cell)}
    if bench.task == "captioning":   # a Java scorer that cannot run here: the row says what it needs
        from beit3_plugins.vl_tasks.metrics import caption_scorers_unavailable

        out["not_computed"] = {m: f"not computed: {m} needs {why}" for m, why in caption_scorers_unavailable().items()
                               if m in bench.metrics and m not in metrics}
    if not bench.local:
        task_name = results["task"]
        predictions = work / "predictions" / f"{task_name}_{bench.eval_split}.json"
        submission = Path(cfg.out) / "submissions" / f"{cell.id}.json"
        submission.parent.mkdir(parents=True, exist_ok=True)
        data = predictions.read_bytes()
        atomic_write(str(submission), lambda f: f.write(data))
        out.update(submission=str(submission), server=bench.server, submission_format=bench.submission)
    return out


# ---------------------------------------------------------------------------------------------- the run
def load_cells(out: Path) -> Dict[str, Dict[str, Any]]:
    """The finished cells of a results folder ({cell id: result})."""
    cells = {}
    for path in sorted((Path(out) / CELLS_DIR).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except ValueError:
            logger.warning("%s: unreadable cell file, it will be evaluated again", path)
            continue
        cells[data.get("cell", path.stem)] = data
    return cells


def _is_current(cell: Cell, cached: Optional[Dict[str, Any]]) -> bool:
    if not cached or "metrics" not in cached:
        return False
    try:
        return all(cached.get(k) == v for k, v in _fingerprint(cell).items())
    except (OSError, KeyError):
        return False


def run_plan(p: Plan, cfg: RunConfig) -> Tuple[Dict[str, Dict[str, Any]], Dict[str, str]]:
    """Evaluate the plan's cells that are not finished (all with ``force``); (results, errors) by cell id.

    A cell whose data or checkpoint is missing is an error naming the file; the others still run."""
    from beit3_plugins.vl_tasks.engine.distributed import DistContext

    dist = DistContext()
    out = Path(cfg.out)
    cells_dir = out / CELLS_DIR
    if dist.main:
        cells_dir.mkdir(parents=True, exist_ok=True)
        plan_json = json.dumps(p.to_json(), indent=1).encode()
        atomic_write(str(out / "plan.json"), lambda f: f.write(plan_json))
    done = load_cells(out)
    todo = [c for c in p.cells() if cfg.force or not _is_current(c, done.get(c.id))]
    errors: Dict[str, str] = {}
    bar = None
    if cfg.progress and dist.main and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="cells", dynamic_ncols=True)
    for cell in todo:
        if bar is not None:
            bar.set_postfix_str(cell.id)
        try:
            result = evaluate_cell(cell, cfg)
        except (FileNotFoundError, ValueError, KeyError, ImportError, NotImplementedError) as exc:
            errors[cell.id] = f"{type(exc).__name__}: {exc}"
            logger.error("%s: %s", cell.id, errors[cell.id])
        else:
            if dist.main:
                data = json.dumps(result, indent=1, default=str).encode()
                atomic_write(str(cells_dir / f"{cell.id}.json"), lambda f: f.write(data))
                done[cell.id] = result
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return done, errors
