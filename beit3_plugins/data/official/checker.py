"""``data check``: is a data root complete and readable in the official layout, per benchmark and split?

For every raw file a benchmark split needs (:mod:`.layout`) the report says present (with a count: records of
an annotation file, images of a folder), missing (with the official download link) or malformed (the reader's
error: invalid JSON, a wrong field, ...); then every image the annotation files refer to is looked up and, unless
``decode=False``, fully decoded with the project's one image loader, so a missing or truncated image is named too.
Derived files (``data prepare``'s outputs) are listed as present or not (absent never fails a check), and each
present one is parsed: an unreadable one is a problem, as the evaluation would read it.
:meth:`DataReport.raise_for_problems` turns any problem into one :class:`DataCheckError` naming every file, so a
caller never scores a partial split silently.
"""
from __future__ import annotations

import dataclasses
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from beit3_plugins.data.official.layout import BENCHMARKS, Benchmark, RawFile, benchmark
from beit3_plugins.data.readers import (IMAGE_EXTENSIONS, AnswerVocab, CorruptImageError, load_image,
                                        read_coco_captions, read_json, read_jsonl, read_karpathy, read_nlvr2)

__all__ = ["FileStatus", "BenchmarkReport", "DataReport", "DataCheckError", "check", "parse_selection",
           "referenced_images"]

PathLike = Union[str, os.PathLike]
MAX_LISTED = 20  # image problems listed by name per benchmark (all are counted)


class DataCheckError(RuntimeError):
    """Data a benchmark needs is missing or damaged; the message names every file."""


@dataclasses.dataclass
class FileStatus:
    path: str                      # relative to the data root
    what: str
    status: str                    # "ok" | "missing" | "malformed"
    count: Optional[int] = None    # records of an annotation file, images of a folder
    detail: str = ""               # the error of a malformed file
    link: str = ""                 # where the official download is
    unit: str = "records"

    def line(self) -> str:
        if self.status == "ok":
            return f"  ok        {self.path} ({self.count} {self.unit})"
        if self.status == "missing":
            return f"  MISSING   {self.path}: {self.what}; download: {self.link}"
        return f"  DAMAGED   {self.path}: {self.detail}"


@dataclasses.dataclass
class BenchmarkReport:
    name: str
    title: str
    folder: str
    splits: Tuple[str, ...]
    files: List[FileStatus]
    images_expected: int = 0       # images the annotation files refer to
    images_missing: List[str] = dataclasses.field(default_factory=list)     # relative to the data root
    images_damaged: List[Tuple[str, str]] = dataclasses.field(default_factory=list)  # (path, error)
    derived: Dict[str, bool] = dataclasses.field(default_factory=dict)     # file -> present
    derived_damaged: List[Tuple[str, str]] = dataclasses.field(default_factory=list)  # (path, error)
    setup: str = ""

    @property
    def ok(self) -> bool:
        return (all(f.status == "ok" for f in self.files) and not self.images_missing
                and not self.images_damaged and not self.derived_damaged)

    def problems(self) -> List[str]:
        out = [f.line().strip() for f in self.files if f.status != "ok"]
        out += [f"MISSING   {p}: image referred to by the annotations" for p in self.images_missing]
        out += [f"DAMAGED   {p}: {err}" for p, err in self.images_damaged]
        out += [f"DAMAGED   {p}: {err} (rerun `beit3-plugins data prepare`)" for p, err in self.derived_damaged]
        return out

    def format(self) -> str:
        head = f"{self.title} [{self.name}: {', '.join(self.splits)}] in {self.folder}/ -- " + (
            "ok" if self.ok else "PROBLEMS")
        lines = [head] + [f.line() for f in self.files]
        if self.images_expected:
            bad = len(self.images_missing) + len(self.images_damaged)
            lines.append(f"  images referred to by the annotations: {self.images_expected - bad} of "
                         f"{self.images_expected} readable")
        for p in self.images_missing[:MAX_LISTED]:
            lines.append(f"  MISSING   {p}")
        for p, err in self.images_damaged[:MAX_LISTED]:
            lines.append(f"  DAMAGED   {p}: {err}")
        hidden = len(self.images_missing) + len(self.images_damaged) - 2 * MAX_LISTED
        if hidden > 0:
            lines.append(f"  ... and more image problems ({len(self.images_missing)} missing, "
                         f"{len(self.images_damaged)} damaged in all)")
        for p, err in self.derived_damaged:
            lines.append(f"  DAMAGED   {p}: {err}")
        if self.derived:
            absent = [name for name, present in self.derived.items() if not present]
            lines.append("  derived files: " + ("all present" if not absent else
                                                 f"{len(absent)} not built ({', '.join(absent)}); run `beit3-plugins "
                                                 "data prepare`"))
        if not self.ok:
            lines.append(f"  official setup: {self.setup}")
        return "\n".join(lines)


@dataclasses.dataclass
class DataReport:
    root: str
    benchmarks: List[BenchmarkReport]

    @property
    def ok(self) -> bool:
        return all(b.ok for b in self.benchmarks)

    def __getitem__(self, name: str) -> BenchmarkReport:
        for b in self.benchmarks:
            if b.name == name:
                return b
        raise KeyError(name)

    def problems(self) -> List[str]:
        return [f"{b.name}: {p}" for b in self.benchmarks for p in b.problems()]

    def format(self) -> str:
        return f"data root {self.root}\n" + "\n".join(b.format() for b in self.benchmarks)

    def raise_for_problems(self) -> "DataReport":
        problems = self.problems()
        if problems:
            raise DataCheckError(f"{len(problems)} problem(s) in the data under {self.root}:\n  "
                                 + "\n  ".join(problems))
        return self

    def to_json(self) -> Dict[str, Any]:
        data = dataclasses.asdict(self)
        for b, report in zip(data["benchmarks"], self.benchmarks):
            b["ok"] = report.ok
        data["ok"] = self.ok
        return data


# ---------------------------------------------------------------------------------------------- raw files
def _count_images(folder: Path, recursive: bool) -> int:
    files = folder.rglob("*") if recursive else folder.iterdir()
    return sum(1 for p in files if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _check_raw(root: Path, bench: Benchmark, raw: RawFile) -> FileStatus:
    rel = f"{bench.folder}/{raw.path}"
    path = root / rel
    status = FileStatus(rel, raw.what, "ok", link=raw.link,
                        unit="images" if raw.kind in ("images", "class_folders") else "records")
    exists = path.is_dir() if raw.kind in ("images", "class_folders") else path.is_file()
    if not exists:
        status.status = "missing"
        return status
    try:
        if raw.kind == "json":
            data = read_json(path, raw.what)
            if not isinstance(data, dict) or any(k not in data for k in raw.keys):
                raise ValueError(f"not a {raw.what} file: needs the top-level key(s) {list(raw.keys)}")
            lists = [data[k] for k in raw.keys]
            if not all(isinstance(v, list) for v in lists):
                raise ValueError(f"{list(raw.keys)} must be lists")
            status.count = len(lists[0])
        elif raw.kind == "jsonl":
            status.count = len(read_jsonl(path, raw.what))
        elif raw.kind == "class_folders":
            classes = [p for p in path.iterdir() if p.is_dir()]
            if not classes:
                flat = _count_images(path, recursive=False)
                raise ValueError(f"no class folders ({flat} images lie flat in it; `beit3-plugins data prepare` "
                                 "sorts them into class folders with the ImageNet devkit)")
            status.count = _count_images(path, recursive=True)
        else:
            status.count = _count_images(path, recursive=True)
        if status.count == 0:
            raise ValueError("empty")
    except (ValueError, OSError) as exc:
        status.status = "malformed"
        status.detail = str(exc)
    return status


# ---------------------------------------------------------------------------------------------- referred images
def _vqa_images(folder: Path, split: str) -> List[Path]:
    questions = {"train": ["train2014", "val2014"], "val": ["val2014"], "test": ["test2015"],
                 "test-dev": ["test-dev2015"]}[split]
    out = []
    for name in questions:
        data = read_json(folder / f"vqa/v2_OpenEnded_mscoco_{name}_questions.json", "VQA v2 questions")
        images = "test2015" if name.startswith("test") else name  # test-dev questions are on test2015 images
        for q in data.get("questions", []):
            if isinstance(q, dict) and isinstance(q.get("image_id"), int):
                out.append(folder / images / f"COCO_{images}_{q['image_id']:012d}.jpg")
    return out


def _karpathy_images(json_name: str, image_root: str) -> Callable[[Path, str], List[Path]]:
    def images(folder: Path, split: str) -> List[Path]:
        wanted = ("train", "restval") if split == "train" else (split,)
        records = read_karpathy(folder / json_name, folder / image_root if image_root else folder, wanted)
        return [Path(r.image_path) for r in records]
    return images


def _nlvr2_images(folder: Path, split: str) -> List[Path]:
    name, images = {"train": ("train", "images/train"), "dev": ("dev", "dev"), "test-P": ("test1", "test1")}[split]
    out = []
    for record in read_nlvr2(folder / f"nlvr/nlvr2/data/{name}.json", folder / images):
        out += [Path(record.left_path), Path(record.right_path)]
    return out


def _nocaps_images(folder: Path, split: str) -> List[Path]:
    json_name = {"val": "nocaps_val_4500_captions.json", "test": "nocaps_test_image_info.json"}[split]
    records = read_coco_captions(folder / json_name, folder / split, with_captions=split == "val")
    return [Path(r.image_path) for r in records]


_REFERRED: Dict[str, Callable[[Path, str], List[Path]]] = {
    "vqav2": _vqa_images, "nlvr2": _nlvr2_images, "nocaps": _nocaps_images,
    "coco_captioning": _karpathy_images("dataset_coco.json", ""),
    "coco_retrieval": _karpathy_images("dataset_coco.json", ""),
    "flickr30k": _karpathy_images("dataset_flickr30k.json", "flickr30k-images"),
}


def referenced_images(root: PathLike, name: str, split: str) -> List[Path]:
    """Every image file the annotation files of ``name``/``split`` refer to (sorted, unique); ImageNet: every
    image of the split's class folders."""
    bench = benchmark(name)
    folder = Path(root) / bench.folder
    if name == "imagenet":
        split_dir = folder / split
        return sorted(p for p in split_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    return sorted(set(_REFERRED[name](folder, split)))


def _derived_problem(path: Path) -> Optional[str]:
    """A derived file that is there but unreadable (a killed ``prepare``, an edit): its error, else None."""
    try:
        if path.name == "answer2label.txt":
            AnswerVocab.load(path)
        else:
            read_jsonl(path, "index written by `data prepare`")
    except ValueError as exc:
        return str(exc)
    return None


def _decode_problem(path: Path) -> Optional[str]:
    try:
        load_image(path)
    except FileNotFoundError:
        return "missing"
    except CorruptImageError as exc:
        return str(exc.__cause__ or exc)
    return None


# ---------------------------------------------------------------------------------------------- check
def parse_selection(names: Optional[Iterable[str]]) -> List[Tuple[Benchmark, Tuple[str, ...]]]:
    """``["vqav2", "nlvr2:dev", "flickr30k:test"]`` -> [(benchmark, splits)]; None = every benchmark, all splits."""
    picked: Dict[str, List[str]] = {}
    for item in (names if names is not None else list(BENCHMARKS)):
        name, _, split = item.partition(":")
        bench = benchmark(name)
        if split and split not in bench.splits:
            raise KeyError(f"{name} has no split {split!r}; splits: {list(bench.splits)}")
        chosen = picked.setdefault(name, [])
        for s in ([split] if split else bench.splits):
            if s not in chosen:
                chosen.append(s)
    return [(benchmark(n), tuple(s for s in benchmark(n).splits if s in chosen)) for n, chosen in picked.items()]


def check(root: PathLike, benchmarks: Optional[Sequence[str]] = None, *, decode: bool = True,
          workers: int = 8) -> DataReport:
    """Check ``root`` for ``benchmarks`` (names, or ``name:split``; None = all). ``decode=False`` only looks the
    referred images up instead of decoding each one. Never raises for bad data: see
    :meth:`DataReport.raise_for_problems`."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data root (a directory) not found")
    reports = []
    for bench, splits in parse_selection(benchmarks):
        files = [_check_raw(root, bench, raw) for raw in bench.raw_for(splits)]
        report = BenchmarkReport(bench.name, bench.title, bench.folder, splits, files, setup=bench.setup)
        report.derived = {name: (root / bench.folder / name).is_file() for name in bench.derived}
        for name in [n for n, present in report.derived.items() if present]:
            problem = _derived_problem(root / bench.folder / name)
            if problem:
                report.derived_damaged.append((f"{bench.folder}/{name}", problem))
        if all(f.status == "ok" for f in files):
            images: List[Path] = []
            for split in splits:
                try:
                    images += referenced_images(root, bench.name, split)
                except (ValueError, OSError) as exc:  # a record the quick file check did not look at
                    report.files.append(FileStatus(f"{bench.folder}", f"{split} annotations", "malformed",
                                                   detail=str(exc)))
            images = sorted(set(images))
            report.images_expected = len(images)
            if decode:
                with ThreadPoolExecutor(max(1, workers)) as pool:  # Pillow decodes without the GIL
                    outcomes = list(pool.map(_decode_problem, images))
            else:
                outcomes = [None if p.is_file() else "missing" for p in images]
            for path, problem in zip(images, outcomes):
                rel = path.relative_to(root).as_posix()
                if problem == "missing":
                    report.images_missing.append(rel)
                elif problem is not None:
                    report.images_damaged.append((rel, problem))
        reports.append(report)
    return DataReport(str(root), reports)


def cli_main(argv: Optional[Sequence[str]] = None) -> int:
    """``beit3-plugins data check ROOT [--benchmark NAME[:SPLIT] ...] [--no-decode] [--json FILE]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="beit3-plugins data check", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="data root: coco/, nlvr2/, flickr30k/, nocaps/, imagenet/ below it")
    parser.add_argument("--benchmark", "-b", action="append", metavar="NAME[:SPLIT]",
                        help=f"repeatable; one of {sorted(BENCHMARKS)} (default: all)")
    parser.add_argument("--no-decode", action="store_true", help="look images up without decoding them")
    parser.add_argument("--json", help="also write the report as JSON here")
    args = parser.parse_args(argv)
    try:
        report = check(args.root, args.benchmark, decode=not args.no_decode)
    except (KeyError, FileNotFoundError) as exc:
        parser.error(str(exc).strip("'\""))
    print(report.format())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_json(), indent=1) + "\n")
    if not report.ok:
        problems = report.problems()
        print(f"\n{len(problems)} problem(s); every file above marked MISSING or DAMAGED must be fixed:")
        for p in problems:
            print(f"  {p}")
        return 1
    return 0
