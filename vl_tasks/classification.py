"""Image classification (ImageNet-style folders), two ways, and GLUE-style text classification.

* ``image_classification`` - BEiT-3's ImageNet recipe: vision-only encoder (no final LayerNorm), mean of
  the patch tokens -> ``fc_norm`` -> linear ``head``; cross-entropy (label smoothing optional), or with
  ``train.mixup`` / ``train.cutmix`` timm's ``Mixup`` on each training batch and soft-target cross-entropy.
* ``image_text_classification`` - the paper's formulation as image-to-text retrieval: class names in a
  prompt are encoded by the text path, the image by the vision path, and the class whose text embedding
  is closest wins (dual encoder + contrastive heads; zero-shot with retrieval weights, or fine-tuned
  with cross-entropy over all class texts).
* ``text_classification`` - language-only path (GLUE-style TSV: header row, text column(s), label
  column): text [CLS] -> pooler -> linear.
"""
from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from beit3_plugins.data import ImageFolderConfig, ImageFolderDataset, ImageOptions
from beit3_plugins.data.datasets import RecordDataset
from beit3_plugins.vl_tasks.registry import TASKS

from .base import TaskConfigBase, TaskModel, VlTask, encode_texts, stack_images
from .heads import ImageClassifier, Pooler, init_head_weights
from .metrics import accuracy
from .retrieval import RetrievalModel

__all__ = ["ImageClassificationConfig", "ImageClassificationTask", "ImageClassifierModel",
           "ImageTextClassificationConfig", "ImageTextClassificationTask", "TextClassificationConfig",
           "TextClassificationTask", "TextClassifierModel", "read_glue_tsv"]


@dataclasses.dataclass
class ImageClassificationConfig(TaskConfigBase):
    image_size: int = 224
    train_dir: str = "imagenet/train"
    val_dir: str = "imagenet/val"
    classes_json: Optional[str] = "imagenet/classes.json"   # class order; default: sorted folder names
    label_smoothing: float = 0.1
    transform: str = "imagenet"                            # imagenet mean/std (as the recipe) or "vl"


class _ImageFolderTask(VlTask):
    def classes(self) -> Optional[Tuple[str, ...]]:
        path = self.path(self.cfg.classes_json)
        if path is not None and path.is_file():
            names = json.loads(path.read_text())
            return tuple(names)
        return None

    def build_dataset(self, split: str, train: Optional[bool] = None):
        train = split == "train" if train is None else train
        root = self.path(self.cfg.train_dir if split == "train" else self.cfg.val_dir)
        ds = ImageFolderDataset(ImageFolderConfig(root=str(root), classes=self.classes(), image=ImageOptions(
            transform=self.cfg.transform, image_size=self.cfg.image_size, train=train and self.cfg.augment)))
        self.class_names = list(ds.classes)
        self.check_nonempty(ds, split, root)
        return ds

    def collate(self, items: List[Dict[str, Any]], train: bool) -> Dict[str, Any]:
        return {"image": stack_images([it["image"] for it in items]), "label": torch.tensor([it["label"] for it in items])}

    def num_classes(self) -> int:
        names = self.classes()
        if names is None:
            names = self.build_dataset("train").classes
        return len(names)


class ImageClassifierModel(TaskModel):
    def __init__(self, backbone: nn.Module, num_classes: int, label_smoothing: float, mixup=None) -> None:
        super().__init__(backbone)
        self.classifier = ImageClassifier(self.dim, num_classes)
        self.label_smoothing = label_smoothing
        self.mixup = mixup  # timm.data.Mixup (mixes images, returns smoothed soft targets) or None

    released_head_map = {"fc_norm.": "classifier.fc_norm.", "head.": "classifier.head."}

    def logits(self, image):
        return self.classifier(self.backbone.forward_vision(image).hidden)

    def forward(self, batch):
        image, label = batch["image"], batch["label"]
        if self.training and self.mixup is not None:
            if image.shape[0] % 2:
                raise ValueError(f"Mixup / CutMix pair the images of a batch and need an even batch size, got "
                                 f"{image.shape[0]}; change train.batch_size")
            image, soft = self.mixup(image.clone(), label)  # timm mixes in place; keep the caller's batch
            logits = self.logits(image).float()
            return {"loss": torch.sum(-soft * F.log_softmax(logits, dim=-1), dim=-1).mean()}
        return {"loss": F.cross_entropy(self.logits(image).float(), label, label_smoothing=self.label_smoothing)}


@TASKS.register("image_classification", config=ImageClassificationConfig)
class ImageClassificationTask(_ImageFolderTask):
    primary_metric = "accuracy"
    normalize_output = False
    supported_augmentations = ("mixup", "cutmix")

    def head_spec(self) -> Dict[str, Any]:
        num_classes = self.num_classes()
        mixup = None
        if self.augmentation.mixup > 0 or self.augmentation.cutmix > 0:
            from timm.data import Mixup

            # the reference's settings (DeiT's): always mix, mixup or cutmix with equal odds, per batch
            mixup = Mixup(mixup_alpha=self.augmentation.mixup, cutmix_alpha=self.augmentation.cutmix, prob=1.0,
                          switch_prob=0.5, mode="batch", label_smoothing=self.cfg.label_smoothing,
                          num_classes=num_classes)
        return {"num_classes": num_classes, "label_smoothing": self.cfg.label_smoothing, "mixup": mixup}

    def model_for(self, backbone, head: Mapping[str, Any]) -> ImageClassifierModel:
        return ImageClassifierModel(backbone, int(head.get("num_classes", 1000)), float(head.get("label_smoothing", 0.0)),
                                    head.get("mixup"))

    def describe(self, model) -> Dict[str, Any]:
        names = self.classes() or getattr(self, "class_names", None)
        return {"head": {"num_classes": model.classifier.head.out_features},
                "labels": [str(n) for n in names] if names else None, "transform": self.cfg.transform}

    @torch.no_grad()
    def evaluate(self, model, dataset, device):
        from .batches import iterate_eval

        preds, labels = [], []
        for batch in iterate_eval(self, dataset, device):
            preds += model.logits(batch["image"]).argmax(-1).tolist()
            labels += batch["label"].tolist()
        names = getattr(self, "class_names", None) or list(range(max(labels) + 1))
        return accuracy(preds, labels), [{"index": i, "prediction": str(names[p])} for i, p in enumerate(preds)]


# ---------------------------------------------------------------------------------------------- as retrieval
@dataclasses.dataclass
class ImageTextClassificationConfig(ImageClassificationConfig):
    prompt: str = "a picture of a {}"
    transform: str = "vl"
    label_smoothing: float = 0.0


@TASKS.register("image_text_classification", config=ImageTextClassificationConfig)
class ImageTextClassificationTask(_ImageFolderTask):
    primary_metric = "accuracy"

    def prompts(self) -> List[str]:
        names = self.classes() or self.build_dataset("train").classes
        return [self.cfg.prompt.format(n.replace("_", " ")) for n in names]

    def model_for(self, backbone, head: Mapping[str, Any]):
        return _ClassTextModel(backbone, self)

    def class_logits(self, model: RetrievalModel, image):
        ids, pad = encode_texts(self.tokenizer, self.prompts(), self.cfg.max_text_len, self.skips)
        txt = model.embed_texts(ids.to(image.device), pad.to(image.device))
        img = model.embed_images(image)
        return model.contrastive.logit_scale.exp().clamp(max=100.0) * img @ txt.t()

    @torch.no_grad()
    def evaluate(self, model, dataset, device):
        from .batches import iterate_eval

        preds, labels = [], []
        for batch in iterate_eval(self, dataset, device):
            preds += self.class_logits(model, batch["image"]).argmax(-1).tolist()
            labels += batch["label"].tolist()
        prompts = self.prompts()
        return accuracy(preds, labels), [{"index": i, "prediction": prompts[p]} for i, p in enumerate(preds)]


class _ClassTextModel(RetrievalModel):
    """Dual encoder whose loss is cross-entropy of each image over all class-name texts."""

    def __init__(self, backbone, task: ImageTextClassificationTask) -> None:
        super().__init__(backbone)
        self._task = [task]  # not a submodule

    def forward(self, batch):
        logits = self._task[0].class_logits(self, batch["image"])
        return {"loss": F.cross_entropy(logits.float(), batch["label"],
                                        label_smoothing=self._task[0].cfg.label_smoothing)}


# ---------------------------------------------------------------------------------------------- text
@dataclasses.dataclass
class TextClassificationConfig(TaskConfigBase):
    max_text_len: int = 128
    train_tsv: str = "glue/SST-2/train.tsv"
    val_tsv: str = "glue/SST-2/dev.tsv"
    text_columns: Tuple[str, ...] = ("sentence",)     # ("sentence1", "sentence2") for pair tasks
    label_column: str = "label"
    labels: Optional[Tuple[str, ...]] = None         # label order; default sorted labels of the train file


def read_glue_tsv(path: Path, text_columns, label_column: str) -> List[Dict[str, str]]:
    """GLUE TSV (header row); clear errors for a missing file or column."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: GLUE-style TSV (header row, columns {list(text_columns)} + {label_column!r}) not found")
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = [c for c in (*text_columns, label_column) if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: column(s) {missing} not in header {reader.fieldnames}")
        rows = []
        for lineno, row in enumerate(reader, 2):
            if any(row.get(c) is None for c in (*text_columns, label_column)):
                raise ValueError(f"{path}: line {lineno} has fewer columns than the header")
            rows.append(row)
    return rows


class _TextDataset(RecordDataset):
    def __init__(self, rows, text_columns, label_column, labels):
        super().__init__(rows)
        self.text_columns, self.label_column, self.labels = text_columns, label_column, labels

    def _item(self, row):
        label = row[self.label_column]
        if label not in self.labels:
            self.skips.add("unknown_label", label)
            return None
        return {"texts": [row[c] for c in self.text_columns], "label": self.labels.index(label)}


class TextClassifierModel(TaskModel):
    def __init__(self, backbone, num_classes: int) -> None:
        super().__init__(backbone)
        self.pooler = Pooler(self.dim)
        self.head = nn.Linear(self.dim, num_classes)
        init_head_weights(self.head)

    def logits(self, ids, pad):
        return self.head(self.pooler(self.backbone.forward_text(ids, pad).hidden))

    def forward(self, batch):
        return {"loss": F.cross_entropy(self.logits(batch["ids"], batch["padding_mask"]).float(), batch["label"])}


@TASKS.register("text_classification", config=TextClassificationConfig)
class TextClassificationTask(VlTask):
    primary_metric = "accuracy"

    def label_names(self) -> List[str]:
        if self.cfg.labels:
            return list(self.cfg.labels)
        rows = read_glue_tsv(self.path(self.cfg.train_tsv), self.cfg.text_columns, self.cfg.label_column)
        return sorted({r[self.cfg.label_column] for r in rows})

    def build_dataset(self, split: str, train: Optional[bool] = None):
        path = self.path(self.cfg.train_tsv if split == "train" else self.cfg.val_tsv)
        ds = _TextDataset(read_glue_tsv(path, self.cfg.text_columns, self.cfg.label_column), self.cfg.text_columns,
                          self.cfg.label_column, self.label_names())
        self.check_nonempty(ds, split, path)
        return ds

    def collate(self, items, train):
        # pairs: "first </s> second" as one sequence (the text path has no segment embeddings)
        texts = [" </s> ".join(it["texts"]) if len(it["texts"]) > 1 else it["texts"][0] for it in items]
        ids, pad = encode_texts(self.tokenizer, texts, self.cfg.max_text_len, self.skips)
        return {"ids": ids, "padding_mask": pad, "label": torch.tensor([it["label"] for it in items])}

    def head_spec(self) -> Dict[str, Any]:
        return {"num_classes": len(self.label_names())}

    def model_for(self, backbone, head: Mapping[str, Any]) -> TextClassifierModel:
        return TextClassifierModel(backbone, int(head["num_classes"]))

    @torch.no_grad()
    def evaluate(self, model, dataset, device):
        from .batches import iterate_eval

        preds, labels = [], []
        for batch in iterate_eval(self, dataset, device):
            preds += model.logits(batch["ids"], batch["padding_mask"]).argmax(-1).tolist()
            labels += batch["label"].tolist()
        names = self.label_names()
        return accuracy(preds, labels), [{"index": i, "prediction": names[p]} for i, p in enumerate(preds)]
