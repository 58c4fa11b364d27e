"""Validation of a COCO instances json before detectron2's ``load_coco_json`` reads it.

Why: detectron2 reads the file through pycocotools' ``COCO`` and trusts its structure, so a damaged file
ends in bare errors far from the cause (measured: ``JSONDecodeError`` / ``UnicodeDecodeError`` without the
path, ``IndexError`` for a file without ``images``, ``KeyError: 'segmentation'`` in ``annotations_to_instances``
when one object of an image lacks a mask, or a NaN box loaded silently that shows as a NaN loss later).
:func:`check_coco_json` reads the file once (strict UTF-8, json) and sorts what it finds into two kinds:

* the file's structure is wrong (not json, not UTF-8, no ``images``/``annotations``/``categories`` lists,
  an image without ``id``/``file_name``/``height``/``width`` of the right types, a category without an int
  ``id``): :class:`CocoAnnotationError` naming the file and the entry;
* one annotation is bad (missing/ill-typed ``id``/``image_id``/``category_id``/``bbox``, a box with NaN/inf,
  negative or zero size, an unknown image or category, a polygon with an odd count, fewer than 3 points
  or non-finite coordinates, no segmentation where others of the file have one, an RLE without int ``size``
  [h, w] or with ``counts`` neither str nor int list):
  the annotation is skipped and counted by reason (logged, and returned).

:func:`load_checked_coco_json` then hands the cleaned data to detectron2's own ``load_coco_json`` (through a
temporary file only when something was skipped), so the records are exactly detectron2's.
"""
from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

logger = logging.getLogger(__name__)

__all__ = ["CocoAnnotationError", "CocoCheckReport", "check_coco_json", "load_checked_coco_json"]


class CocoAnnotationError(ValueError):
    """The COCO json file cannot be used at all (its path is in the message)."""


@dataclass
class CocoCheckReport:
    """What :func:`check_coco_json` kept and skipped."""

    json_file: str
    annotations_total: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count

    @property
    def annotations_kept(self) -> int:
        return self.annotations_total - sum(self.skipped.values())


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _polygon_problem(segmentation: list) -> str:
    if not segmentation:
        return "segmentation: empty polygon list"
    for polygon in segmentation:
        if not isinstance(polygon, list) or not all(_is_number(v) for v in polygon):
            return "segmentation: polygon is not a list of finite numbers"
        if len(polygon) % 2 or len(polygon) < 6:
            return "segmentation: polygon with an odd coordinate count or fewer than 3 points"
    return ""


def _rle_problem(segmentation: dict, image: dict) -> str:
    size, counts = segmentation.get("size"), segmentation.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v > 0 for v in size)):
        return "segmentation: RLE size is not [height, width] of positive ints"
    if list(size) != [image["height"], image["width"]]:
        return "segmentation: RLE size differs from the image's height/width"
    if isinstance(counts, str):
        return "" if counts and counts.isascii() else "segmentation: RLE counts string is empty or not ASCII"
    if isinstance(counts, list) and counts and all(_is_int(v) and v >= 0 for v in counts):
        return "" if sum(counts) == size[0] * size[1] else "segmentation: RLE counts do not sum to height*width"
    return "segmentation: RLE counts are neither a string nor a list of non-negative ints"


def _annotation_problem(annotation: Any, images: Dict[int, dict], categories: set, with_masks: bool) -> str:
    """Why the annotation cannot be used ('' when it can)."""
    if not isinstance(annotation, dict):
        return "annotation is not an object"
    for key in ("id", "image_id", "category_id"):
        if not _is_int(annotation.get(key)):
            return f"{key} missing or not an int"
    if annotation["image_id"] not in images:
        return "image_id names no image"
    if annotation["category_id"] not in categories:
        return "category_id names no category"
    if not _is_int(annotation.get("iscrowd", 0)) or annotation.get("iscrowd", 0) not in (0, 1):
        return "iscrowd is not 0 or 1"
    bbox = annotation.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        return "bbox missing or not 4 finite numbers"
    if bbox[2] <= 0 or bbox[3] <= 0 or bbox[0] < 0 or bbox[1] < 0:
        return "bbox with a negative origin or a non-positive width/height"
    if "segmentation" in annotation:
        segmentation = annotation["segmentation"]
        if isinstance(segmentation, list):
            return _polygon_problem(segmentation)
        if isinstance(segmentation, dict):
            return _rle_problem(segmentation, images[annotation["image_id"]])
        return "segmentation is neither polygons nor an RLE object"
    if with_masks:  # detectron2's annotations_to_instances reads masks for all or none of an image's objects
        return "segmentation missing while other annotations of the file have one"
    return ""


def _read_json(json_file: str) -> Any:
    try:
        with open(json_file, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise CocoAnnotationError(f"{json_file}: cannot read the COCO json: {exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CocoAnnotationError(f"{json_file}: not UTF-8 (byte {exc.start}: {raw[exc.start:exc.start + 4]!r})") \
            from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CocoAnnotationError(f"{json_file}: not valid json (line {exc.lineno}, column {exc.colno}: "
                                  f"{exc.msg}; a truncated file?)") from exc
    except RecursionError as exc:
        raise CocoAnnotationError(f"{json_file}: json nested too deeply") from exc


def check_coco_json(json_file: str) -> Tuple[dict, CocoCheckReport]:
    """The file's data with unusable annotations removed, and the report of what was removed."""
    json_file = os.fspath(json_file)
    data = _read_json(json_file)
    if not isinstance(data, dict):
        raise CocoAnnotationError(f"{json_file}: the top level is {type(data).__name__}, not a COCO object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise CocoAnnotationError(f"{json_file}: {key!r} is missing or not a list")
    images: Dict[int, dict] = {}
    for index, image in enumerate(data["images"]):
        ok = (isinstance(image, dict) and _is_int(image.get("id")) and isinstance(image.get("file_name"), str)
              and image["file_name"] and all(_is_int(image.get(k)) and image[k] > 0 for k in ("height", "width")))
        if not ok:
            raise CocoAnnotationError(f"{json_file}: images[{index}] needs an int id, a file_name and positive int "
                                      f"height/width, got {str(image)[:200]}")
        if image["id"] in images:
            raise CocoAnnotationError(f"{json_file}: images[{index}]: duplicate image id {image['id']}")
        images[image["id"]] = image
    categories = set()
    for index, category in enumerate(data["categories"]):
        if not (isinstance(category, dict) and _is_int(category.get("id")) and isinstance(category.get("name"), str)):
            raise CocoAnnotationError(f"{json_file}: categories[{index}] needs an int id and a str name, got "
                                      f"{str(category)[:200]}")
        categories.add(category["id"])
    report = CocoCheckReport(json_file, annotations_total=len(data["annotations"]))
    kept: List[dict] = []
    seen_ids = set()
    with_masks = any(isinstance(a, dict) and "segmentation" in a for a in data["annotations"])
    for annotation in data["annotations"]:
        problem = _annotation_problem(annotation, images, categories, with_masks)
        if not problem and annotation["id"] in seen_ids:
            problem = "duplicate annotation id"
        if problem:
            report.skipped[problem] += 1
            continue
        seen_ids.add(annotation["id"])
        kept.append(annotation)
    if report.skipped:
        logger.warning("%s: skipped %d of %d annotations: %s", json_file, sum(report.skipped.values()),
                       report.annotations_total, dict(report.skipped))
    return {**data, "annotations": kept}, report


def load_checked_coco_json(json_file: str, image_root: str, dataset_name: str) -> List[dict]:
    """detectron2's ``load_coco_json`` on the checked data (what ``register_coco_datasets`` registers)."""
    from detectron2.data import MetadataCatalog
    from detectron2.data.datasets import load_coco_json

    data, report = check_coco_json(json_file)
    MetadataCatalog.get(dataset_name).skipped_annotations = dict(report.skipped)
    if not report.skipped:
        return load_coco_json(json_file, image_root, dataset_name)
    with tempfile.TemporaryDirectory(prefix="beit3_coco_") as folder:
        cleaned = os.path.join(folder, os.path.basename(json_file))
        with open(cleaned, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
        return load_coco_json(cleaned, image_root, dataset_name)
