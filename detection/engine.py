"""detectron2 trainer for BEiT-3 ViTDet: AdamW + layer decay, resumable data stream, per-iteration seeding,
weights-only checkpoints, COCO box/mask evaluation (pycocotools; detectron2's fast C++ eval needs _C)."""
from __future__ import annotations

import logging
import os
import weakref
from typing import Optional, Sequence

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import get_detection_dataset_dicts
from detectron2.engine import DefaultTrainer, HookBase
from detectron2.utils import comm

from beit3_plugins.checkpoint import CheckpointMismatchError, atomic_write, safe_load
from beit3_plugins.io_checks import prepare_output_dir

from .data import build_resumable_train_loader, build_train_mapper, mix_seed
from .evaluation import CheckedCOCOEvaluator
from .optimizer import build_beit3_optimizer

logger = logging.getLogger(__name__)

__all__ = ["SafeDetectionCheckpointer", "SeedPerIteration", "Beit3DetectionTrainer"]


class SafeDetectionCheckpointer(DetectionCheckpointer):
    """Loads checkpoints with ``torch.load(weights_only=True)``: a checkpoint file can never run code.

    Pickled model-zoo files (``.pkl``, ``.pyth``) are refused; re-save their tensors as a ``.pth`` state dict.
    Saves are atomic (:func:`beit3_plugins.checkpoint.atomic_write`); fvcore writes the file in place.

    ``replace_heads`` (``MODEL.REPLACE_HEADS``): module prefixes whose tensors in the *initial* weights are not
    loaded, so those modules keep their fresh initialisation - a new classifier for another label set (the
    Objects365 -> COCO stage). Any other tensor whose shape differs from the model's is an error naming the
    file (fvcore would skip it with a warning and train a silently re-initialised layer). A resumed run
    (``--resume``) loads its own checkpoint whole.
    """

    def __init__(self, model, save_dir: str = "", *, replace_heads: Sequence[str] = (), **checkpointables) -> None:
        super().__init__(model, save_dir, **checkpointables)
        self.replace_heads = tuple(replace_heads)
        self._initial_load = True

    def resume_or_load(self, path: str, *, resume: bool = True):
        self._initial_load = not (resume and self.has_checkpoint())
        try:
            return super().resume_or_load(path, resume=resume)
        finally:
            self._initial_load = True

    def load(self, path: str, *args, **kwargs):
        self._source = path
        return super().load(path, *args, **kwargs)

    def _load_model(self, checkpoint):
        weights = checkpoint["model"]
        for key in [k for k in weights if k.startswith("module.")]:
            weights[key[len("module."):]] = weights.pop(key)
        if self.replace_heads and self._initial_load:
            replaced = sorted(k for k in weights if k.startswith(self.replace_heads))
            for key in replaced:
                del weights[key]
            logger.info("MODEL.REPLACE_HEADS: %d tensors not loaded, freshly initialised: %s", len(replaced), replaced)
        own = self.model.state_dict()
        wrong = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in weights.items()
                 if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)]
        if wrong:
            raise CheckpointMismatchError(
                f"{getattr(self, '_source', 'checkpoint')}: tensors of the wrong shape:\n  " + "\n  ".join(wrong) +
                "\n(a head for another label set: list its module in MODEL.REPLACE_HEADS to initialise it afresh)")
        return super()._load_model(checkpoint)

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
        data.setdefault("model_config", _describe(self.model))
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_write(save_file, lambda handle: torch.save(data, handle))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write(os.path.join(self.save_dir, "last_checkpoint"),
                     lambda handle: handle.write(last_filename_basename.encode()))


def _describe(model) -> Optional[dict]:
    """The detector's backbone description (``beit3_plugins.zoo.ModelConfig``): ``build_backbone(...,
    pretrained="model_final.pth")`` and ``beit3-plugins save`` read the file with no other argument."""
    from beit3_plugins.backbones import backbone_model_config

    try:
        return backbone_model_config(model, task="detection", trained_by="detectron2").to_dict()
    except TypeError:  # a detector without a Multiway Transformer: nothing of ours to describe
        return None


class SeedPerIteration(HookBase):
    """Seeds torch from (seed, iteration, rank) before every step: drop path and the RPN / ROI sampling
    draw the same numbers whether a run went straight through or was resumed."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def before_step(self) -> None:
        torch.manual_seed(mix_seed(self.seed, 2, self.trainer.iter, comm.get_rank()))


class Beit3DetectionTrainer(DefaultTrainer):
    """``DefaultTrainer`` with the BEiT-3 optimizer, the resumable stream and safe checkpoints.

    ``OUTPUT_DIR`` is probed (created, 1 MiB written and deleted) before the model is built, so an unwritable
    or full directory is an ``OutputDirError`` naming it, not a failure at the first checkpoint."""

    def __init__(self, cfg) -> None:
        if comm.is_main_process():
            prepare_output_dir(cfg.OUTPUT_DIR, setting="OUTPUT_DIR")
        super().__init__(cfg)

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
        return CheckedCOCOEvaluator(dataset_name, tasks=tasks, distributed=True, output_dir=output_folder,
                                    use_fast_impl=False)

    @classmethod
    def test_with_TTA(cls, cfg, model):  # noqa: N802 - detectron2's name for it (tools/train_net.py)
        """COCO evaluation with multi-scale + flip TTA (``TEST.AUG.*``, see ``tta.py``)."""
        from .tta import test_with_tta

        return test_with_tta(cfg, model, cls.build_evaluator, cls.build_test_loader)

    def build_hooks(self):
        self.checkpointer = SafeDetectionCheckpointer(self._trainer.model, self.cfg.OUTPUT_DIR,
                                                      replace_heads=self.cfg.MODEL.REPLACE_HEADS,
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

