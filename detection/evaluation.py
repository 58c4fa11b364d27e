"""COCO evaluation against the ground truth the run was actually given.

detectron2's ``COCOEvaluator`` reads the registered json again with pycocotools, which trusts it: an
annotation that :mod:`.coco_checks` skipped while loading (a NaN box, a polygon with an odd count, no
``bbox``) crashes ``COCOeval`` or stays in the ground truth as an object no model could match. So the
skip counted at load time would silently change the score, or end a long run at its first evaluation.
:class:`CheckedCOCOEvaluator` scores against the cleaned json when, and only when, something was skipped:
the cleaned file is written once per run beside the first evaluator's outputs
(``<output_dir>/<name>_checked_gt.json``) and registered as the metadata of ``<name>_checked``, which later
evaluations reuse; a file with nothing skipped is evaluated from the original, exactly as detectron2 does.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator

from beit3_plugins.checkpoint import atomic_write

from .coco_checks import check_coco_json, load_checked_coco_json

logger = logging.getLogger(__name__)

__all__ = ["CheckedCOCOEvaluator", "checked_ground_truth"]


def _registered_by_us(dataset_name: str) -> bool:
    loader = DatasetCatalog[dataset_name] if dataset_name in DatasetCatalog else None  # the registered function
    return getattr(loader, "func", None) is load_checked_coco_json  # register_coco_datasets' partial


def checked_ground_truth(dataset_name: str, output_dir: Optional[str] = None) -> str:
    """The dataset name whose metadata ``COCOEvaluator`` should read: ``dataset_name`` itself, or, when the
    checked loader skipped annotations of its json, ``<dataset_name>_checked`` pointing at the cleaned json."""
    if not _registered_by_us(dataset_name):
        return dataset_name  # detectron2's builtin registrations and others: untouched
    meta = MetadataCatalog.get(dataset_name)
    if not hasattr(meta, "skipped_annotations"):
        DatasetCatalog.get(dataset_name)  # the loader records what it skipped (and the id maps the evaluator uses)
    if not meta.skipped_annotations:
        return dataset_name
    checked = f"{dataset_name}_checked"
    if checked in MetadataCatalog.list() and os.path.isfile(MetadataCatalog.get(checked).json_file):
        return checked  # written by an earlier evaluation of this run (e.g. the previous EVAL_PERIOD, or TTA's)
    data, report = check_coco_json(meta.json_file)
    folder = output_dir or tempfile.mkdtemp(prefix="beit3_coco_eval_")
    os.makedirs(folder, exist_ok=True)
    cleaned = os.path.join(folder, f"{dataset_name}_checked_gt.json")
    atomic_write(cleaned, lambda handle: handle.write(json.dumps(data).encode("utf-8")))
    logger.warning("%s: evaluating against %s, without the %d annotations the loader skipped (%s)",
                   dataset_name, cleaned, sum(report.skipped.values()), dict(report.skipped))
    fields = {k: v for k, v in meta.as_dict().items() if k not in ("name", "json_file")}
    if checked in MetadataCatalog.list():
        MetadataCatalog.remove(checked)  # its file was deleted since: point at the one just written
    MetadataCatalog.get(checked).set(json_file=cleaned, **fields)
    return checked


class CheckedCOCOEvaluator(COCOEvaluator):
    """``COCOEvaluator`` over :func:`checked_ground_truth` (same arguments, same official COCO API scores)."""

    def __init__(self, dataset_name: str, *args, output_dir: Optional[str] = None, **kwargs) -> None:
        super().__init__(checked_ground_truth(dataset_name, output_dir), *args, output_dir=output_dir, **kwargs)
