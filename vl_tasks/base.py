"""What a task plugin is: a registered :class:`VlTask` that knows its data, model, loss and metrics.

The trainer (``beit3_plugins.vl_tasks.train``) only talks to this interface, so a task registered from
another package (entry-point group ``beit3_plugins``) trains exactly like the built-in ones:

    @TASKS.register("my_task", config=MyTaskConfig)
    class MyTask(VlTask): ...

A task builds a :class:`TaskModel` (backbone + heads; ``forward(batch)`` returns ``{"loss": ...}`` so DDP
wraps it) from the backbone and a head spec in one method, :meth:`VlTask.model_for`, which both the trainer
(head spec from the task's config and data) and the zoo / pipelines (head spec from the zoo entry) call, datasets per split, a collate function, ``evaluate`` (metrics + predictions) and
``write_predictions`` (the benchmark's submission format).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from beit3_plugins.data.readers import SkipCounter

__all__ = ["BACKBONE_PREFIX", "VlTask", "TaskModel", "TaskConfigBase", "EmptySplitError", "stack_images",
           "encode_texts", "ImageTextMixin", "Augmentation"]

# Where a task model keeps the Multiway backbone (TaskModel.backbone); read by the optimizer groups and the
# checkpoint loader, checked against a built model in tests.
BACKBONE_PREFIX = "backbone."


class EmptySplitError(ValueError):
    """A split has no usable records (wrong path, wrong split name, or everything skipped)."""


@dataclasses.dataclass
class TaskConfigBase:
    """Fields every task has. Paths are relative to ``data.root`` unless absolute."""

    image_size: int = 224
    max_text_len: int = 64
    augment: bool = True        # random resized crop + flip when training (False: evaluation transform)
    eval_batch_size: int = 32
    # the image decode policy (beit3_plugins.data.images): "viewer" (EXIF orientation applied, 16-bit scaled;
    # as pretraining and the pipelines decode) or "official" (as the reference loader, to reproduce its protocol)
    image_decode: str = "viewer"


@dataclasses.dataclass
class Augmentation:
    """Trainer-level augmentation switches (``train.randaug`` / ``train.mixup`` / ``train.cutmix``), global
    flags in the reference's run_beit3_finetuning.py too: RandAugment on the training images of the
    image-text tasks (``--randaug``), timm's Mixup / CutMix for image classification (``--mixup 0.8
    --cutmix 1.0`` in the ImageNet recipe)."""

    randaug: bool = False
    mixup: float = 0.0      # Beta(alpha, alpha) mixing of image pairs; 0 = off
    cutmix: float = 0.0     # Beta(alpha, alpha) box pasting; 0 = off

    def active(self) -> Tuple[str, ...]:
        return tuple(name for name in ("randaug", "mixup", "cutmix") if getattr(self, name))


class TaskModel(nn.Module):
    """Backbone + task heads. ``forward(batch)`` returns a dict with ``loss`` and float logs.

    ``released_head_map`` maps key prefixes of the released task checkpoints to this model's head keys
    (identity where the names already agree) for :func:`beit3_plugins.vl_tasks.checkpoints.load_task_checkpoint`.
    """

    released_head_map: Mapping[str, str] = {}

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    @property
    def dim(self) -> int:
        return self.backbone.cfg.embed_dim

    def adapt_released_heads(self, heads: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Released head tensors that are not plain renames (e.g. VLMo NLVR2's pair type rows), before
        ``released_head_map`` applies; default: unchanged."""
        return heads


class VlTask:
    """Base class of task plugins (see the module docstring)."""

    #: metric used to pick the best checkpoint (higher is better)
    primary_metric: str = "accuracy"
    #: the backbone's final per-modality LayerNorm (the released VQA / ImageNet recipes turn it off)
    normalize_output: bool = True
    #: split names the trainer asks for
    train_split: str = "train"
    eval_split: str = "val"
    #: the Augmentation switches this task implements (others are refused, not silently ignored)
    supported_augmentations: Tuple[str, ...] = ()
    #: whether the task encodes text (the trainer then refuses a run without ``data.tokenizer``)
    needs_tokenizer: bool = True

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.root: Optional[Path] = None
        self.tokenizer = None
        self.skips = SkipCounter()
        self.augmentation = Augmentation()

    def set_augmentation(self, augmentation: Augmentation) -> None:
        """Called by the trainer before datasets and model are built."""
        unsupported = [a for a in augmentation.active() if a not in self.supported_augmentations]
        if unsupported:
            raise ValueError(f"{type(self).__name__} does not implement train.{'/'.join(unsupported)} "
                             f"(it supports: {list(self.supported_augmentations) or 'none'}); turn it off")
        self.augmentation = augmentation

    # ------------------------------------------------------------------ setup
    def setup(self, root: Any, tokenizer: Any) -> None:
        """Remember the data root and the tokenizer; subclasses read vocabularies here."""
        self.root = Path(root) if root is not None else None
        self.tokenizer = tokenizer

    def path(self, rel: Optional[str]) -> Optional[Path]:
        if rel is None or rel == "":
            return None
        p = Path(rel)
        if p.is_absolute() or self.root is None:
            return p
        return self.root / p

    # ------------------------------------------------------------------ to implement
    def build_dataset(self, split: str, train: Optional[bool] = None):
        """Dataset of ``split``; ``train`` (default: split == train_split) selects training behaviour
        (augmentation, one item per caption, dropping unanswerable questions)."""
        raise NotImplementedError

    def collate(self, items: List[Dict[str, Any]], train: bool) -> Dict[str, Any]:
        raise NotImplementedError

    def dataset(self, split: str, train: Optional[bool] = None):
        """:meth:`build_dataset` with the config's image decode policy applied (what the trainer calls)."""
        dataset = self.build_dataset(split, train=train)
        if hasattr(dataset, "decode_policy"):
            dataset.decode_policy = getattr(self.cfg, "image_decode", "viewer")
        return dataset

    def model_for(self, backbone: nn.Module, head: Mapping[str, Any]) -> TaskModel:
        """The task model over ``backbone`` whose heads fit ``head`` (a zoo entry's ``head`` or
        :meth:`head_spec`): the one place that picks the model class (e.g. VLMo's variant) for a checkpoint."""
        raise NotImplementedError

    def head_spec(self) -> Dict[str, Any]:
        """Head shapes and training settings this task's config and data give (``{"num_answers": 3129}``)."""
        return {}

    def build_model(self, backbone: nn.Module) -> TaskModel:
        """The model the trainer fine-tunes: :meth:`model_for` with this task's :meth:`head_spec`."""
        return self.model_for(backbone, self.head_spec())

    @torch.no_grad()
    def evaluate(self, model: TaskModel, dataset, device: torch.device) -> Tuple[Dict[str, float], Any]:
        """(metrics, predictions) on ``dataset`` with the unwrapped model: :meth:`score` of :meth:`predict`.
        A task may override this instead (then its evaluation runs on one process only)."""
        return self.score(self.predict(model, dataset, device), dataset)

    # Sharded evaluation (torchrun): each rank predicts a block of whole evaluation batches, rank 0 merges the
    # blocks in order and scores them, so the numbers equal one process's.
    def predict(self, model: TaskModel, dataset, device: torch.device) -> Any:
        """Raw per-item outputs of ``dataset`` (in order), mergeable by :meth:`merge_predictions`."""
        raise NotImplementedError

    def score(self, raw: Any, dataset) -> Tuple[Dict[str, float], Any]:
        """(metrics, predictions in the benchmark's format) from :meth:`predict`'s output over all of ``dataset``."""
        raise NotImplementedError

    def merge_predictions(self, parts: Sequence[Any]) -> Any:
        """Outputs of consecutive blocks of the dataset -> the output over all of it (default: lists joined)."""
        return [item for part in parts for item in part]

    @property
    def shardable(self) -> bool:
        """Whether the evaluation can be split over processes (the task implements predict / score)."""
        return type(self).predict is not VlTask.predict and type(self).evaluate is VlTask.evaluate

    def write_predictions(self, predictions: Any, path: Path) -> Path:
        """Write ``predictions`` in the benchmark's format; default JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(predictions, indent=1))
        return path

    # ------------------------------------------------------------------ extra state in checkpoints
    def state_dict(self) -> Dict[str, Any]:
        """Task state saved next to the weights (e.g. the VQA answer list) so eval-only runs need no train data."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass

    def describe(self, model: TaskModel) -> Dict[str, Any]:
        """What a model description (``ModelConfig``) needs from the task: ``head`` shapes (default: the plain
        values of :meth:`head_spec`, which ``model_for`` reads back), ``labels`` (answers / class names in label
        order; default none) and the image ``transform`` kind (default ``vl``)."""
        head = {k: v for k, v in self.head_spec().items() if isinstance(v, (bool, int, float, str))}
        return {"head": head, "labels": None, "transform": "vl"}

    def check_nonempty(self, dataset, split: str, source: Any) -> None:
        if len(dataset) == 0:
            raise EmptySplitError(f"{type(self).__name__}: split {split!r} has no usable records (read from "
                                  f"{source}); check data.root and the split files")


# ---------------------------------------------------------------------------------------------- helpers
def stack_images(images: Sequence[Any]) -> Tensor:
    if not images:
        raise ValueError("empty batch")
    if not isinstance(images[0], Tensor):
        raise TypeError("the dataset returned PIL images; give it an image transform (ImageOptions.transform)")
    return torch.stack(list(images))


def encode_texts(tokenizer, texts: Sequence[str], max_len: int, skips: Optional[SkipCounter] = None
                 ) -> Tuple[Tensor, Tensor]:
    """(ids, padding_mask) padded to the longest text; over-long texts are truncated and counted."""
    enc = tokenizer.encode_batch(list(texts), max_length=max_len, padding="longest")
    if skips is not None and enc.num_truncated:
        for text, cut in zip(texts, enc.truncated):
            if cut:
                skips.add("text_truncated", text[:60])
    return torch.as_tensor(enc.input_ids), torch.as_tensor(enc.padding_mask)


class ImageTextMixin:
    """Image transforms shared by the image-text tasks (crop + flip with ``task.augment``, RandAugment with
    ``train.randaug`` on top, training images only)."""

    supported_augmentations: Tuple[str, ...] = ("randaug",)

    def image_options(self, train: bool, kind: str = "vl"):
        """RandAugment (the reference's op list, 2 ops at magnitude 7) only on augmented training images."""
        from beit3_plugins.data import ImageOptions

        augment = train and self.cfg.augment
        return ImageOptions(transform=kind, image_size=self.cfg.image_size, train=augment,
                            randaug=augment and self.augmentation.randaug)
