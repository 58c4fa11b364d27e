"""Datasets and the training data stream.

* Datasets are registered the detectron2 way (what ``register_coco_instances`` does: COCO json + image root)
  from ``DATASETS.COCO_INSTANCES``; the json is checked first (``coco_checks.py``: a clear error naming the
  file, or counted skips of bad annotations) and then read by detectron2's ``load_coco_json``.
* Large-scale jitter (ViTDet / BEiT-3 recipe): random flip, resize by a factor in [0.1, 2.0] of the
  target, fixed-size crop; boxes recomputed from the cropped masks.
* The training stream is a pure function of (seed, sample position): the order of images and every
  augmentation draw depend only on where a sample sits in the stream. Resuming at iteration ``i`` restarts
  the stream at batch ``i``, so ``--resume`` continues exactly as if the run had not stopped (detectron2's
  ``TrainingSampler`` restarts its shuffle from scratch instead).
"""
from __future__ import annotations

import functools
import logging
import os
import random
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog, build_detection_train_loader
from detectron2.data import transforms as T
from detectron2.utils import comm

from beit3_plugins.input_checks import require_paths

from .coco_checks import load_checked_coco_json

logger = logging.getLogger(__name__)

__all__ = ["register_coco_datasets", "check_dataset_files", "dataset_root", "lsj_augmentations", "build_train_mapper",
           "ResumableTrainingStream", "SeededMapper", "build_resumable_train_loader", "mix_seed"]


def dataset_root(cfg) -> str:
    return cfg.DATASETS.ROOT or os.environ.get("DETECTRON2_DATASETS", "datasets")


def _coco_entry_paths(entry: Sequence[str], root: str) -> Tuple[str, str, str]:
    if len(entry) != 3:
        raise ValueError(f"DATASETS.COCO_INSTANCES entries are [name, json_file, image_root], got {entry!r}")
    name, json_file, image_root = (str(e) for e in entry)
    return (name, json_file if os.path.isabs(json_file) else os.path.join(root, json_file),
            image_root if os.path.isabs(image_root) else os.path.join(root, image_root))


def check_dataset_files(names: Sequence[str], entries: Sequence[Sequence[str]], root: str,
                        root_key: str = "DATASETS.ROOT") -> None:
    """Before anything is built: the annotation json and image folder of every dataset in ``names`` are on
    disk, else one :class:`~beit3_plugins.input_checks.MissingDataError` naming each missing path. Datasets
    come from ``entries`` (``[name, json_file, image_root]`` under ``root``) or detectron2's builtin
    registrations (``coco_2017_train``... under ``$DETECTRON2_DATASETS``)."""
    ours = {entry[0]: _coco_entry_paths(entry, root) for entry in entries}
    wanted: List[Tuple[str, str, str]] = []
    for name in dict.fromkeys(names):
        if name in ours:
            _, json_file, image_root = ours[name]
        elif name in DatasetCatalog.list():
            meta = MetadataCatalog.get(name)
            json_file, image_root = getattr(meta, "json_file", None), getattr(meta, "image_root", None)
            if json_file is None or image_root is None:
                continue  # not a COCO-json dataset: detectron2 reads it its own way
        else:
            continue  # an unknown name: detectron2 lists the registered ones
        wanted += [(json_file, "file", f"dataset {name}: annotations"),
                   (image_root, "dir", f"dataset {name}: images")]
    builtin_root = os.environ.get("DETECTRON2_DATASETS") or "unset: ./datasets"
    require_paths("detection datasets", wanted,
                  f"$DETECTRON2_DATASETS for detectron2's builtin datasets (now {builtin_root}) or {root_key} "
                  f"for the config's own [name, json, image root] entries (now {root!r})")


def register_coco_datasets(entries: Sequence[Sequence[str]], root: str = "") -> List[str]:
    """Register ``[name, json_file, image_root]`` entries as ``register_coco_instances`` would (json checked).

    Relative paths are taken under ``root``. Re-registering a name with the same files is a no-op; with
    other files it is an error (detectron2's catalogs are process-global).
    """
    names = []
    for entry in entries:
        name, json_file, image_root = _coco_entry_paths(entry, root)
        require_paths(f"dataset {name!r}", [(json_file, "file", "annotations"), (image_root, "dir", "images")],
                      f"DATASETS.ROOT={root!r} or $DETECTRON2_DATASETS (the folder holding the COCO files)")
        if name in DatasetCatalog.list():
            meta = MetadataCatalog.get(name)
            if getattr(meta, "json_file", None) == json_file and getattr(meta, "image_root", None) == image_root:
                names.append(name)
                continue
            raise ValueError(f"dataset {name!r} is already registered with other files "
                             f"({getattr(meta, 'json_file', '?')}); pick another name")
        # what detectron2's register_coco_instances does, with the json checked first (coco_checks.py)
        DatasetCatalog.register(name, functools.partial(load_checked_coco_json, json_file, image_root, name))
        MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco")
        names.append(name)
    return names


def lsj_augmentations(image_size: int, min_scale: float = 0.1, max_scale: float = 2.0) -> List[T.Augmentation]:
    """Large-scale jitter as in ViTDet: flip, resize x[min, max] of ``image_size``, crop ``image_size``."""
    return [T.RandomFlip(horizontal=True),
            T.ResizeScale(min_scale=min_scale, max_scale=max_scale, target_height=image_size,
                          target_width=image_size),
            T.FixedSizeCrop(crop_size=(image_size, image_size), pad=False)]


def build_train_mapper(cfg) -> DatasetMapper:
    if not cfg.INPUT.LSJ.ENABLED:
        return DatasetMapper(cfg, is_train=True)
    lsj = cfg.INPUT.LSJ
    return DatasetMapper(cfg, is_train=True,
                         augmentations=lsj_augmentations(lsj.IMAGE_SIZE, lsj.MIN_SCALE, lsj.MAX_SCALE),
                         recompute_boxes=cfg.MODEL.MASK_ON)


def mix_seed(*parts: int) -> int:
    """A 32-bit seed from integers (stable across processes, unlike ``hash``)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


class ResumableTrainingStream(IterableDataset):
    """Infinite shuffled stream of ``(position, dataset_dict)``, a pure function of (seed, position).

    Epoch ``e`` is a permutation seeded by (seed, e). Batches are the unit of sharding: rank ``r`` of
    ``world`` takes samples ``(b * world + r) * batch_size + t`` of global batch ``b``; data-loader worker
    ``w`` of ``W`` yields batches ``start + w + k * W``, which torch's loader interleaves back in order.
    """

    def __init__(self, dicts: List[Dict[str, Any]], batch_size: int, seed: int, start_batch: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        if not dicts:
            raise ValueError("the training set is empty (check DATASETS.TRAIN and FILTER_EMPTY_ANNOTATIONS)")
        self.dicts, self.batch_size, self.seed = dicts, batch_size, seed
        self.start_batch, self.rank, self.world_size = start_batch, rank, world_size
        self._perms: Dict[int, np.ndarray] = {}

    def _index(self, position: int) -> int:
        n = len(self.dicts)
        epoch = position // n
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng(mix_seed(self.seed, epoch)).permutation(n)}
        return int(self._perms[epoch][position % n])

    def __iter__(self) -> Iterator[Tuple[int, Dict[str, Any]]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        batch = self.start_batch + worker
        while True:
            first = (batch * self.world_size + self.rank) * self.batch_size
            for position in range(first, first + self.batch_size):
                yield position, self.dicts[self._index(position)]
            batch += workers


class SeededMapper:
    """Seeds Python's and numpy's RNGs (what detectron2 augmentations draw from) from (seed, position)
    before mapping a sample, so augmentations do not depend on workers, timing or resumption."""

    def __init__(self, mapper: Callable[[Dict[str, Any]], Optional[Dict[str, Any]]], seed: int) -> None:
        self.mapper, self.seed = mapper, seed

    def __call__(self, item: Tuple[int, Dict[str, Any]]) -> Dict[str, Any]:
        position, record = item
        sample_seed = mix_seed(self.seed, 1, position)
        random.seed(sample_seed)
        np.random.seed(sample_seed)
        try:
            mapped = self.mapper(record)
        except Exception as exc:  # noqa: BLE001 - name the sample: detectron2's errors often do not
            raise RuntimeError(f"cannot load training sample {record.get('file_name')!r} (stream position "
                               f"{position}): {type(exc).__name__}: {exc}") from exc
        if mapped is None:  # the detectron2 contract allows skipping; a stream must keep its positions
            raise RuntimeError(f"the mapper dropped {record.get('file_name')!r}; fix or filter the record")
        return mapped


def build_resumable_train_loader(dicts: List[Dict[str, Any]], mapper, total_batch_size: int, seed: int,
                                 num_workers: int = 0, start_iter: int = 0):
    """detectron2's batched loader over :class:`ResumableTrainingStream`, starting at batch ``start_iter``."""
    world = comm.get_world_size()
    if total_batch_size % world:
        raise ValueError(f"total batch size {total_batch_size} is not divisible by the {world} processes")
    seed = seed if seed >= 0 else 0
    stream = ResumableTrainingStream(dicts, total_batch_size // world, seed, start_batch=start_iter,
                                     rank=comm.get_rank(), world_size=world)
    return build_detection_train_loader(dataset=stream, mapper=SeededMapper(mapper, seed), sampler=None,
                                        total_batch_size=total_batch_size, aspect_ratio_grouping=False,
                                        num_workers=num_workers, seed=seed)
