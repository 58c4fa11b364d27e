"""What ``embed`` reads, cut into units: the unit is the resume and output granule.

Inputs and their units:

- an image folder (recursive, sorted) or a file list (one path a line, relative to the list's folder):
  ``unit_size`` files per unit;
- tar shards as ``make-shards`` / img2dataset write them (``KEY.jpg`` + ``KEY.txt`` / ``KEY.json``), named by a
  brace pattern or glob: one shard per unit, read with the pretraining layer's :class:`TarShardIndex`;
- text: a file with one text a line, or a column of a parquet / CSV file: ``unit_size`` texts per unit.

An item is addressed by (unit, row); its id is the unit's first id plus the row, so ids are the same in every
run, resumed or split over processes, and an item skipped because it cannot be decoded leaves a gap.
"""
from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from beit3_plugins.data.readers import IMAGE_EXTENSIONS, SkipCounter

__all__ = ["Unit", "ImageItem", "plan_image_units", "plan_text_units", "read_image_item", "text_column",
           "DecodedImage", "decode_image"]


@dataclasses.dataclass(frozen=True)
class Unit:
    """``count`` consecutive items of one input: files ``paths`` or rows of ``shard``, or texts."""

    index: int
    first_id: int
    count: int
    kind: str                                  # "files" | "shard" | "text"
    shard: str = ""                            # the tar shard of a "shard" unit
    paths: Tuple[str, ...] = ()                # the files of a "files" unit
    texts: Tuple[str, ...] = ()                # the texts of a "text" unit
    sources: Tuple[str, ...] = ()              # text units: "file:line"
    root: str = ""                             # the folder whose files a "files" unit holds (thumbnail root)


def _folder_files(folder: Path) -> List[str]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: image folder not found")
    return sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and not p.is_dir())


def _list_files(path: Path) -> List[str]:
    base = path.parent
    with open(path, encoding="utf-8") as handle:
        names = [line.strip() for line in handle if line.strip() and not line.startswith("#")]
    return [os.path.normpath(n if os.path.isabs(n) else str(base / n)) for n in names]


def plan_image_units(inputs: Sequence[str], unit_size: int) -> List[Unit]:
    """Units over image inputs in the order given: a folder, a ``.txt`` file list, or a tar shard pattern."""
    from beit3_plugins.pretraining.shards import ShardLimits, TarShardIndex, expand_shards, is_shard_spec

    if unit_size < 1:
        raise ValueError(f"unit size must be >= 1, got {unit_size}")
    units: List[Unit] = []
    next_id = 0

    def add(**fields) -> None:
        nonlocal next_id
        units.append(Unit(index=len(units), first_id=next_id, **fields))
        next_id += fields["count"]

    for spec in inputs:
        path = Path(spec)
        if path.is_dir():
            files, root = _folder_files(path), os.path.abspath(path)
        elif not is_shard_spec(spec) and path.is_file():
            files = _list_files(path)
            root = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files]) if files else ""
        elif is_shard_spec(spec):
            for shard in expand_shards(spec):
                if not os.path.isfile(shard):
                    raise FileNotFoundError(f"{shard}: shard not found")
                index = TarShardIndex(shard, SkipCounter(), ShardLimits())
                index.close()
                add(count=len(index), kind="shard", shard=os.path.abspath(shard))
            continue
        else:
            raise FileNotFoundError(f"{spec}: neither an image folder, a file list nor a tar shard pattern")
        files = [os.path.abspath(f) for f in files]
        for start in range(0, len(files), unit_size):
            chunk = tuple(files[start:start + unit_size])
            add(count=len(chunk), kind="files", paths=chunk, root=root)
    return units


def text_column(path: str, column: Optional[str] = None) -> List[Tuple[str, str]]:
    """(text, source) of every row: a parquet / CSV column (``column`` required) or a text file's lines."""
    suffix = Path(path).suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        if not column:
            raise ValueError(f"{path}: name the text column (--text-column)")
        table = pq.read_table(path, columns=[column])
        values = table.column(column).to_pylist()
    elif suffix in (".csv", ".tsv"):
        if not column:
            raise ValueError(f"{path}: name the text column (--text-column)")
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")
            if column not in (reader.fieldnames or []):
                raise ValueError(f"{path}: no column {column!r}; columns: {reader.fieldnames}")
            values = [row[column] for row in reader]
    else:
        with open(path, encoding="utf-8") as handle:
            values = [line.rstrip("\r\n") for line in handle]
    return [(str(v).strip(), f"{path}:{i + 1}") for i, v in enumerate(values)
            if v is not None and str(v).strip()]


def plan_text_units(inputs: Sequence[str], unit_size: int, column: Optional[str] = None) -> List[Unit]:
    rows = [row for spec in inputs for row in text_column(spec, column)]
    units = []
    for start in range(0, len(rows), unit_size):
        chunk = rows[start:start + unit_size]
        units.append(Unit(index=len(units), first_id=start, count=len(chunk), kind="text",
                          texts=tuple(t for t, _ in chunk), sources=tuple(s for _, s in chunk)))
    return units


@dataclasses.dataclass
class ImageItem:
    """Where one image comes from: a file, or a row of a tar shard."""

    source: str                  # absolute path, or "<shard>#<key>"
    path: str = ""
    shard: str = ""
    row: int = -1
    root: str = ""


@dataclasses.dataclass
class DecodedImage:
    image: object                # a PIL image, or None when skipped
    caption: str
    reason: str = ""             # why it was skipped
    detail: str = ""


def _within(path: str, root: str) -> bool:
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def read_image_item(item: ImageItem, shard_cache: Dict[str, object]) -> DecodedImage:
    """Decode one item with the core's one decoder (``beit3_plugins.data.load_image``); a failure is a reason,
    never an exception. A shard item's ``source`` ("<shard>#<key>") is filled in here, from the shard's index."""
    from beit3_plugins.pretraining.shards import ShardLimits, TarShardIndex, caption_of

    if item.path:
        if item.root and not _within(item.path, item.root):
            return DecodedImage(None, "", "outside_root", f"{item.path} resolves outside {item.root}")
        return decode_image(item.path, item.path)
    index = shard_cache.get(item.shard)
    if index is None:
        for old in list(shard_cache.values()):
            old.close()
        shard_cache.clear()
        index = shard_cache[item.shard] = TarShardIndex(item.shard, SkipCounter(), ShardLimits())
    item.source = f"{item.shard}#{index.keys[item.row]}"
    data = index.read(item.row, 0)
    caption = caption_of(index.read(item.row, 1), index.read(item.row, 2), item.source, SkipCounter()) or ""
    if data is None:
        return DecodedImage(None, caption, "missing_image", f"{item.source}: no image member")
    return decode_image(data, item.source, caption)


def decode_image(source, where: str, caption: str = "") -> DecodedImage:
    """A path or encoded bytes (a shard member, an upload) -> RGB image, or the reason it is refused."""
    from beit3_plugins.data import load_image

    skips = SkipCounter()
    image = load_image(source, skips, where=where)
    if image is None:
        reason = next(iter(skips.counts))
        return DecodedImage(None, caption, reason, skips.examples[reason][0])
    return DecodedImage(image, caption)
