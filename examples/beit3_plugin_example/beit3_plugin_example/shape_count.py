"""``shape_count``: how many shapes does an image hold? A new task plugin living outside beit3-plugins.

It reuses the library's pieces - the VQA v2 reader (the "how many shapes are there?" questions give the
labels), the VL image transform, the backbone's vision path, the accuracy metric - and adds one head.
Registered through the ``beit3_plugins`` entry point declared in this package's pyproject.toml.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from beit3_plugins.data import ImageOptions, read_vqa
from beit3_plugins.data.datasets import RecordDataset
from beit3_plugins.registry import HEADS, METRICS, TASKS
from beit3_plugins.vl_tasks import TaskConfigBase, TaskModel, VlTask
from beit3_plugins.vl_tasks.base import stack_images
from beit3_plugins.vl_tasks.loop import iterate_eval

QUESTION = "how many shapes are there?"


@dataclasses.dataclass
class ShapeCountConfig(TaskConfigBase):
    image_size: int = 224
    max_count: int = 9
    train_questions: str = "coco/vqa/v2_OpenEnded_mscoco_train2014_questions.json"
    train_annotations: str = "coco/vqa/v2_mscoco_train2014_annotations.json"
    train_images: str = "coco/train2014"
    val_questions: str = "coco/vqa/v2_OpenEnded_mscoco_val2014_questions.json"
    val_annotations: str = "coco/vqa/v2_mscoco_val2014_annotations.json"
    val_images: str = "coco/val2014"


@HEADS.register("count_head")
class CountHead(nn.Module):
    """Vision [CLS] -> LayerNorm -> Linear(max_count + 1)."""

    def __init__(self, dim: int, max_count: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, max_count + 1)

    def forward(self, vision_cls):
        return self.fc(self.norm(vision_cls))


class _CountDataset(RecordDataset):
    def _item(self, record):
        image = self._image(record.image_path)
        return None if image is None else {"image": image, "count": int(record.multiple_choice_answer)}


class ShapeCountModel(TaskModel):
    def __init__(self, backbone, max_count: int) -> None:
        super().__init__(backbone)
        self.count_head = CountHead(self.dim, max_count)

    def logits(self, image):
        return self.count_head(self.backbone.forward_vision(image).vision_cls)

    def forward(self, batch: Dict[str, Any]):
        return {"loss": F.cross_entropy(self.logits(batch["image"]), batch["count"])}


@TASKS.register("shape_count", config=ShapeCountConfig)
class ShapeCountTask(VlTask):
    primary_metric = "accuracy"

    def build_dataset(self, split: str, train=None):
        prefix = "train" if split == "train" else "val"
        from beit3_plugins.data import AnswerVocab

        annotations = self.path(getattr(self.cfg, f"{prefix}_annotations"))
        records = read_vqa(self.path(getattr(self.cfg, f"{prefix}_questions")), annotations,
                           self.path(getattr(self.cfg, f"{prefix}_images")), AnswerVocab.from_annotations(annotations))
        records = [r for r in records if r.question == QUESTION and r.multiple_choice_answer.isdigit()
                   and int(r.multiple_choice_answer) <= self.cfg.max_count]
        from beit3_plugins.transforms import build_image_transform

        transform = build_image_transform("vl", train=False, image_size=self.cfg.image_size)
        dataset = _CountDataset(records, transform)
        self.check_nonempty(dataset, split, annotations)
        return dataset

    def collate(self, items: List[Dict[str, Any]], train: bool):
        return {"image": stack_images([it["image"] for it in items]),
                "count": torch.tensor([it["count"] for it in items])}

    def build_model(self, backbone):
        return ShapeCountModel(backbone, self.cfg.max_count)

    @torch.no_grad()
    def evaluate(self, model, dataset, device):
        preds, labels = [], []
        for batch in iterate_eval(self, dataset, device):
            preds += model.logits(batch["image"]).argmax(-1).tolist()
            labels += batch["count"].tolist()
        return METRICS.get("accuracy").obj(preds, labels), [{"prediction": p} for p in preds]
