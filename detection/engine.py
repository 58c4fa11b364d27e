"""detectron2 trainer for BEiT-3 ViTDet: AdamW + layer decay, resumable data stream, per-iteration seeding,
weights-only checkpoints, COCO box/mask evaluation (pycocotools; detectron2's fast C++ eval needs _C)."""
from __future__ import annotations

import logging
import os
import weakref

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import get_detection_dataset_dicts
from detectron2.engine import DefaultTrainer, HookBase
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm

from beit3_plugins.checkpoint import CheckpointMismatchError, atomic_write, safe_load

from .data import build_resumable_train_loader, build_train_mapper, mix_seed
from .optimizer import build_beit3_optimizer

logger = logging.getLogger(__name__)

__all__ = ["SafeDetectionCheckpointer", "SeedPerIteration", "Beit3DetectionTrainer"]


class SafeDetectionCheckpointer(DetectionCheckpointer):
    """Loads checkpoints with ``torch.load(weights_only=True)``: a checkpoint file can never run code.

    Pickled model-zoo files (``.pkl``, ``.pyth``) are refused; re-save their tensors as a ``.pth`` state dict.
    Saves are atomic (:func:`beit3_plugins.checkpoint.atomic_write`); fvcore writes the file in place.
    """

    def _load_file(self, filename):
        if filename.endswith((".pkl", ".pyth")):
            raise CheckpointMismatchError(
                f"{filename}: pickled checkpoints are not loaded (they can run code). Convert the tensors to a "
                "state dict and save it with torch.save({'model': state_dict}, 'file.pth').")
        return super()._load_file(filename)

    def _torch_load(self, f):
        return safe_load(f)

    def save(self, name: str, **kwargs) -> None:
        """fvcore's ``save`` (model + checkpointables + extra data -> ``<name>.pth``, then ``last_checkpoint``),
        with both files written atomically: a run killed while saving resumes from the last whole checkpoint."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict(), **{k: obj.state_dict() for k, obj in self.checkpointables.items()}}
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_write(save_file, lambda handle: torch.save(data, handle))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write(os.path.join(self.save_dir, "last_checkpoint"),
                     lambda handle: handle.write(last_filename_basename.encode()))


class SeedPerIteration(HookBase):
    """Seeds torch from (seed, iteration, rank) before every step: drop path and the RPN / ROI sampling
    draw the same numbers whether a run went straight through or was resumed."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def before_step(self) -> None:
        torch.manual_seed(mix_seed(self.seed, 2, self.trainer.iter, comm.get_rank()))


class Beit3DetectionTrainer(DefaultTrainer):
    """``DefaultTrainer`` with the BEiT-3 optimizer, the resumable stream and safe checkpoints."""

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_beit3_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg, start_iter: int = 0):
        dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
        return build_resumable_train_loader(dicts, build_train_mapper(cfg), cfg.SOLVER.IMS_PER_BATCH, cfg.SEED,
                                            num_workers=cfg.DATALOADER.NUM_WORKERS, start_iter=start_iter)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(dataset_name, tasks=tasks, distributed=True, output_dir=output_folder,
                             use_fast_impl=False)

    def build_hooks(self):
        self.checkpointer = SafeDetectionCheckpointer(self._trainer.model, self.cfg.OUTPUT_DIR,
                                                      trainer=weakref.proxy(self))
        hooks = super().build_hooks()
        if self.cfg.SOLVER.SEED_PER_ITER:
            if self.cfg.SEED < 0:
                logger.warning("SEED < 0: per-iteration seeding is off and --resume will not be exact")
            else:
                hooks.insert(0, SeedPerIteration(self.cfg.SEED))
        return hooks

    def resume_or_load(self, resume: bool = True) -> None:
        super().resume_or_load(resume=resume)
        if self.start_iter > 0:  # continue the data stream where the checkpointed run was
            self._trainer.data_loader = self.build_train_loader(self.cfg, start_iter=self.start_iter)
            self._trainer._data_loader_iter_obj = None
            logger.info("resumed at iteration %d; data stream restarted at batch %d", self.start_iter,
                        self.start_iter)
