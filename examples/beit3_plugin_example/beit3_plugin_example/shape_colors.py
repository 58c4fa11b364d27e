"""``shape_colors``: which of the four colours appear in an image? A new task plugin living outside
beit3-plugins (multi-label classification with the vision path).

It reuses the library's pieces - the Karpathy caption reader (colour words of an image's captions give
its labels), the VL image transform, the backbone, the trainer - and adds one head and one metric.
Registered through the ``beit3_plugins`` entry point declared in this package's pyproject.toml; its
pipeline (``pipeline("shape-colors", model=...)``) is in ``pipeline.py`` and its zoo entries in ``zoo.py``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from beit3_plugins.data import read_karpathy
from beit3_plugins.data.datasets import RecordDataset
from beit3_plugins.registry import HEADS, METRICS, TASKS
from beit3_plugins.vl_tasks import TaskConfigBase, TaskModel, VlTask
from beit3_plugins.vl_tasks.base import stack_images
from beit3_plugins.vl_tasks.batches import iterate_eval


@dataclasses.dataclass
class ShapeColorsConfig(TaskConfigBase):
    image_size: int = 224
    colors: Tuple[str, ...] = ("red", "green", "blue", "yellow")
    karpathy_json: str = "coco/dataset_coco.json"
    image_root: str = "coco"


@HEADS.register("multi_label_head")
class MultiLabelHead(nn.Module):
    """Vision [CLS] -> LayerNorm -> Linear(num_labels) (independent sigmoid per label)."""

    def __init__(self, dim: int, num_labels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_labels)

    def forward(self, vision_cls):
        return self.fc(self.norm(vision_cls))


@METRICS.register("label_accuracy")
def label_accuracy(predictions, targets) -> Dict[str, float]:
    """Share of correct (image, label) decisions, in %, plus exact-match accuracy of whole label sets."""
    pred = torch.as_tensor(predictions, dtype=torch.bool)
    gold = torch.as_tensor(targets, dtype=torch.bool)
    return {"label_accuracy": 100.0 * (pred == gold).float().mean().item(),
            "exact_match": 100.0 * (pred == gold).all(1).float().mean().item()}


class _ColorDataset(RecordDataset):
    def __init__(self, records, transform, colors):
        super().__init__(records, transform)
        self.colors = colors

    def _item(self, record):
        image = self._image(record.image_path)
        if image is None:
            return None
        words = {w for caption in record.captions for w in caption.lower().split()}
        return {"image": image, "labels": [float(c in words) for c in self.colors]}


class ShapeColorsModel(TaskModel):
    def __init__(self, backbone, num_labels: int) -> None:
        super().__init__(backbone)
        self.color_head = MultiLabelHead(self.dim, num_labels)

    def logits(self, image):
        return self.color_head(self.backbone.forward_vision(image).vision_cls)

    def forward(self, batch: Dict[str, Any]):
        return {"loss": F.binary_cross_entropy_with_logits(self.logits(batch["image"]), batch["labels"])}


@TASKS.register("shape_colors", config=ShapeColorsConfig)
class ShapeColorsTask(VlTask):
    primary_metric = "label_accuracy"

    def build_dataset(self, split: str, train: Optional[bool] = None):
        from beit3_plugins.transforms import build_image_transform

        json_path = self.path(self.cfg.karpathy_json)
        records = read_karpathy(json_path, self.path(self.cfg.image_root), split)
        transform = build_image_transform("vl", train=False, image_size=self.cfg.image_size)
        dataset = _ColorDataset(records, transform, list(self.cfg.colors))
        self.check_nonempty(dataset, split, json_path)
        return dataset

    def collate(self, items: List[Dict[str, Any]], train: bool):
        return {"image": stack_images([it["image"] for it in items]),
                "labels": torch.tensor([it["labels"] for it in items])}

    def head_spec(self):
        return {"num_labels": len(self.cfg.colors)}

    def model_for(self, backbone, head):
        return ShapeColorsModel(backbone, int(head["num_labels"]))

    @torch.no_grad()
    def evaluate(self, model, dataset, device):
        preds, gold = [], []
        for batch in iterate_eval(self, dataset, device):
            preds += (model.logits(batch["image"]) > 0).tolist()
            gold += batch["labels"].bool().tolist()
        out = [{c: p for c, p in zip(self.cfg.colors, row)} for row in preds]
        return METRICS.get("label_accuracy").obj(preds, gold), out
