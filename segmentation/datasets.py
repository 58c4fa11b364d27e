"""ADE20K-format semantic segmentation data with checked inputs (mmseg dataset).

mmseg's ``ADE20KDataset`` hard-codes the 150 ADE classes and only accepts subsets of them, and it
reports a missing annotation or an out-of-range label only as a failure deep inside the loss. This
dataset reads the same tree (``images/{training,validation}/*.jpg``, ``annotations/.../*.png``, raw label
0 = unlabeled, raw k = class k - 1 with ``reduce_zero_label``), takes its class list from the config, from
``classes.json`` in the data root (as the data world writes it) or else the 150 ADE20K classes, and
fails early with the file name when an annotation is missing, a label is outside the class range, or an
image cannot be decoded.
"""
from __future__ import annotations

import os.path as osp
from typing import List, Optional

import numpy as np
from mmseg.datasets import ADE20KDataset, BaseSegDataset
from mmseg.registry import DATASETS

from beit3_plugins.data.readers import read_json

__all__ = ["ADE20KFormatDataset", "SegLabelRangeError", "MissingAnnotationError"]


class SegLabelRangeError(ValueError):
    """An annotation holds label values outside [0, num_classes) after ``reduce_zero_label``."""


class MissingAnnotationError(FileNotFoundError):
    """Images without their annotation PNG."""


@DATASETS.register_module()
class ADE20KFormatDataset(BaseSegDataset):
    """ADE20K directory layout with any class list (see module docstring).

    Args:
        classes_file: JSON file (relative to ``data_root``) with ``{"classes": [...]}``; used when the
            config's ``metainfo`` gives no classes. Missing file -> the 150 ADE20K classes.
        check_labels: verify every loaded annotation lies in ``[0, num_classes) U {ignore_index}``.
        Other arguments: :class:`mmseg.datasets.BaseSegDataset` (``reduce_zero_label`` defaults to True).
    """

    METAINFO: dict = {}  # classes come from the config, classes.json or ADE20K (see __init__)

    def __init__(self, img_suffix: str = ".jpg", seg_map_suffix: str = ".png", reduce_zero_label: bool = True,
                 metainfo: Optional[dict] = None, data_root: Optional[str] = None,
                 classes_file: str = "classes.json", check_labels: bool = True, **kwargs) -> None:
        metainfo = dict(metainfo or {})
        file_classes = self._classes_from_file(data_root, classes_file)
        if metainfo.get("classes") is None:
            if file_classes is not None:
                metainfo["classes"] = tuple(file_classes)
            else:
                metainfo["classes"] = ADE20KDataset.METAINFO["classes"]
                metainfo.setdefault("palette", ADE20KDataset.METAINFO["palette"])
        elif file_classes is not None and list(metainfo["classes"]) != list(file_classes):
            raise ValueError(f"metainfo classes {list(metainfo['classes'])} differ from {classes_file} in "
                             f"{data_root}: {file_classes}; the labels on disk follow the file")
        self.check_labels = check_labels
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, reduce_zero_label=reduce_zero_label,
                         metainfo=metainfo, data_root=data_root, **kwargs)

    @staticmethod
    def _classes_from_file(data_root: Optional[str], classes_file: str) -> Optional[List[str]]:
        if not data_root or not classes_file:
            return None
        path = osp.join(data_root, classes_file)
        if not osp.isfile(path):
            return None
        data = read_json(path, "class list")  # not UTF-8 / not JSON / too deep: a ValueError naming the file
        classes = data.get("classes") if isinstance(data, dict) else data
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise ValueError(f"{path}: expected {{\"classes\": [names...]}} or a list of names")
        return classes

    @property
    def num_classes(self) -> int:
        return len(self.metainfo["classes"])

    def load_data_list(self) -> List[dict]:
        img_dir = self.data_prefix.get("img_path", None)
        ann_dir = self.data_prefix.get("seg_map_path", None)
        if img_dir and not self.ann_file and not osp.isdir(img_dir):
            raise FileNotFoundError(f"image directory not found: {img_dir} (data_root={self.data_root!r}, "
                                    f"data_prefix={self.data_prefix})")
        if ann_dir and not osp.isdir(ann_dir):
            raise MissingAnnotationError(f"annotation directory not found: {ann_dir}")
        data_list = super().load_data_list()
        if not data_list:
            raise FileNotFoundError(f"no '*{self.img_suffix}' images under {img_dir}")
        if ann_dir:
            missing = [d["img_path"] for d in data_list if not osp.isfile(d["seg_map_path"])]
            if missing:
                raise MissingAnnotationError(
                    f"{len(missing)} of {len(data_list)} images have no annotation '*{self.seg_map_suffix}' in "
                    f"{ann_dir}: {', '.join(osp.basename(m) for m in missing[:5])}"
                    + (" ..." if len(missing) > 5 else ""))
        return data_list

    def prepare_data(self, idx: int):
        info = self.get_data_info(idx)
        try:
            data = super().prepare_data(idx)
        except SegLabelRangeError:
            raise
        except Exception as exc:  # noqa: BLE001 - name the file the pipeline failed on
            raise RuntimeError(f"loading {info.get('img_path')} (annotation {info.get('seg_map_path')}) failed: "
                               f"{type(exc).__name__}: {exc}") from exc
        if self.check_labels and data is not None:
            self._check_label_range(data, info)
        return data

    def _check_label_range(self, data: dict, info: dict) -> None:
        sample = data.get("data_samples")
        if sample is None or "gt_sem_seg" not in sample:
            return
        labels = sample.gt_sem_seg.data
        values = np.unique(labels.cpu().numpy())
        bad = [int(v) for v in values if not (0 <= v < self.num_classes or v == self.ignore_index)]
        if bad:
            shift = 1 if self.reduce_zero_label else 0
            raise SegLabelRangeError(
                f"{info.get('seg_map_path')}: label values {[b + shift for b in bad]} on disk are outside the "
                f"{self.num_classes} classes {list(self.metainfo['classes'])[:8]}"
                + ("..." if self.num_classes > 8 else "")
                + (f" (with reduce_zero_label the valid raw values are 0 = ignored and 1..{self.num_classes})"
                   if self.reduce_zero_label else f" (valid values 0..{self.num_classes - 1}, {self.ignore_index} = ignored)"))
