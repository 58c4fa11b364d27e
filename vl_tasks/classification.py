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
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from beit3_plugins.data import ImageFolderConfig, ImageFolderDataset, ImageOptions
from beit3_plugins.data.datasets import RecordDataset
from beit3_plugins.vl_tasks.registry import TASKS

from .base import TaskConfigBase, TaskModel, VlTask, encode_texts, stack_images
from .heads import ImageClassifier, Pooler, init_head_weights
from .metrics import accuracy, top_k_accuracy
from .retrieval import RetrievalModel

__all__ = ["ImageClassificationConfig", "ImageClassificationTask", "ImageClassifierModel",
           "ImageTextClassificationConfig", "ImageTextClassificationTask", "TextClassificationConfig",
           "TextClassificationTask", "TextClassifierModel", "read_glue_tsv", "prompt_ensemble"]


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
    needs_tokenizer = False

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
    def predict(self, model, dataset, device):
        from .batches import iterate_eval

        return [ranked for batch in iterate_eval(self, dataset, device)
                for ranked in _ranked(model.logits(batch["image"]), batch["label"])]

    def score(self, raw, dataset):
        names = getattr(self, "class_names", None) or [str(i) for i in range(len(dataset.classes))]
        return _scored(raw, [str(n) for n in names])


def _ranked(logits, labels, k: int = 5) -> List[Dict[str, Any]]:
    """Per image: the top-k class indices (best first) and the label."""
    top = logits.topk(min(k, logits.shape[-1]), dim=-1).indices.tolist()
    return [{"top": t, "label": int(y)} for t, y in zip(top, labels.tolist())]


def _scored(raw: List[Dict[str, Any]], names: List[str]):
    metrics = accuracy([r["top"][0] for r in raw], [r["label"] for r in raw])
    metrics.update(top_k_accuracy([r["top"] for r in raw], [r["label"] for r in raw], k=5))
    return metrics, [{"index": i, "prediction": names[r["top"][0]]} for i, r in enumerate(raw)]


def prompt_ensemble(embed_texts, classes: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """Class text embeddings as CLIP's prompt ensembling: each class's prompts (one per template) embedded,
    averaged and renormalised. ``embed_texts(list of str) -> (N, D)`` normalised embeddings."""
    if not classes or not templates:
        raise ValueError("zero-shot classification needs at least one class name and one template")
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise ValueError(f"prompt templates need a '{{}}' for the class name: {bad}")
    prompts = [t.format(c) for c in classes for t in templates]
    emb = embed_texts(prompts).view(len(classes), len(templates), -1).mean(1)
    return F.normalize(emb, dim=-1)


# ---------------------------------------------------------------------------------------------- as retrieval
@dataclasses.dataclass
class ImageTextClassificationConfig(ImageClassificationConfig):
    prompt: str = "a picture of a {}"
    transform: str = "vl"
    label_smoothing: float = 0.0
    # zero-shot protocol: prompt templates ({"templates": [...]} JSON, e.g. CLIP's 80) replace ``prompt``;
    # class display names ({"classnames": [...]} JSON, in class index order) replace the folder names
    templates_json: Optional[str] = None
    classnames_json: Optional[str] = None


@TASKS.register("image_text_classification", config=ImageTextClassificationConfig)
class ImageTextClassificationTask(_ImageFolderTask):
    primary_metric = "accuracy"

    def _json_list(self, rel: Optional[str], key: str) -> Optional[List[str]]:
        path = self.path(rel)
        if path is None:
            return None
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the {key} file of the zero-shot protocol is missing")
        data = json.loads(path.read_text())
        values = data.get(key) if isinstance(data, dict) else data
        if not isinstance(values, list) or not values:
            raise ValueError(f"{path}: expected a JSON list (or an object with a {key!r} list)")
        return [str(v) for v in values]

    def class_texts(self) -> List[str]:
        folders = self.classes() or self.build_dataset("train").classes
        names = self._json_list(self.cfg.classnames_json, "classnames")
        if names is not None and len(names) != len(folders):
            raise ValueError(f"{self.cfg.classnames_json}: {len(names)} class names for {len(folders)} classes")
        return names if names is not None else [n.replace("_", " ") for n in folders]

    def templates(self) -> List[str]:
        return self._json_list(self.cfg.templates_json, "templates") or [self.cfg.prompt]

    def prompts(self) -> List[str]:
        """One prompt per class with the first template (what a prediction is shown as)."""
        first = self.templates()[0]
        return [first.format(n) for n in self.class_texts()]

    def model_for(self, backbone, head: Mapping[str, Any]):
        return _ClassTextModel(backbone, self)

    def class_embeddings(self, model: RetrievalModel, device) -> torch.Tensor:
        def embed(texts):
            out = []
            for start in range(0, len(texts), self.cfg.eval_batch_size):
                ids, pad = encode_texts(self.tokenizer, texts[start:start + self.cfg.eval_batch_size],
                                        self.cfg.max_text_len, self.skips)
                out.append(model.embed_texts(ids.to(device), pad.to(device)))
            return torch.cat(out)

        return prompt_ensemble(embed, self.class_texts(), self.templates())

    def class_logits(self, model: RetrievalModel, image, text=None):
        text = self.class_embeddings(model, image.device) if text is None else text
        img = model.embed_images(image)
        return model.contrastive.logit_scale.exp().clamp(max=100.0) * img @ text.to(img.dtype).t()

    @torch.no_grad()
    def predict(self, model, dataset, device):
        from .batches import iterate_eval

        text = self.class_embeddings(model, device)
        return [ranked for batch in iterate_eval(self, dataset, device)
                for ranked in _ranked(self.class_logits(model, batch["image"], text), batch["label"])]

    def score(self, raw, dataset):
        return _scored(raw, self.prompts())


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
