"""NLVR2 as the BEiT-3 recipe: each (image, sentence) pair through the fused encoder; the vision and text
[CLS] of both pairs are concatenated (4D) and classified True/False by a two-layer MLP.

VLMo backbones follow VLMo's recipe (:class:`VlmoNlvr2Model`): the LayerNorm-free pooler on each pair's text
[CLS], the two pooled vectors (2D) through ``nlvr2_classifier``; the second image carries its own modality-type
vector (row 2 of VLMo's ``token_type_embeddings``)."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from beit3_plugins.data import Nlvr2Config, Nlvr2Dataset
from beit3_plugins.backbones import Routing, is_vlmo
from beit3_plugins.vl_tasks.registry import TASKS

from .base import ImageTextMixin, TaskConfigBase, TaskModel, VlTask, encode_texts, stack_images
from .heads import MlpClassifier, Pooler, TwoLayerMLP
from .metrics import accuracy

__all__ = ["Nlvr2TaskConfig", "Nlvr2Model", "VlmoNlvr2Model", "Nlvr2Task"]


@dataclasses.dataclass
class Nlvr2TaskConfig(TaskConfigBase):
    image_size: int = 224
    max_text_len: int = 64
    train_jsonl: str = "nlvr2/nlvr/nlvr2/data/train.json"
    train_images: str = "nlvr2/images/train"
    val_jsonl: str = "nlvr2/nlvr/nlvr2/data/dev.json"
    val_images: str = "nlvr2/dev"
    test_jsonl: str = "nlvr2/nlvr/nlvr2/data/test1.json"
    test_images: str = "nlvr2/test1"
    # the released head starts its linears at 0.001 x trunc-normal(0.02), which suits a pretrained backbone;
    # from scratch that near-zero head leaves the fused encoder without a learning signal (accuracy stays
    # at 50%), so tiny CPU runs use 1.0
    head_init_scale: float = 0.001


class Nlvr2Model(TaskModel):
    def __init__(self, backbone: nn.Module, head_init_scale: float = 0.001) -> None:
        super().__init__(backbone)
        self.head = TwoLayerMLP(4 * self.dim, 2 * self.dim, 2, init_scale=head_init_scale)

    def logits(self, left, right, ids, padding_mask):
        out = self.backbone.forward_fused(torch.cat([left, right]), torch.cat([ids, ids]),
                                          torch.cat([padding_mask, padding_mask]))
        pooled = torch.cat([out.vision_cls, out.text_cls], dim=-1)  # (2B, 2D)
        a, b = pooled.chunk(2)  # (left, right) halves; chunk keeps the batch dynamic in an ONNX trace
        return self.head(torch.cat([a, b], dim=-1))

    def forward(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        logits = self.logits(batch["left"], batch["right"], batch["ids"], batch["padding_mask"])
        return {"loss": F.cross_entropy(logits.float(), batch["label"])}


class VlmoNlvr2Model(TaskModel):
    """VLMo's NLVR2 head. The backbone folds the image modality-type vector (row 1) into its patch embedding,
    so the second image adds ``second_image_type`` = row 2 - row 1 (VLMo starts row 2 as a copy of row 1:
    zero here)."""

    released_head_map = {"nlvr2_classifier.": "nlvr2_classifier.", "pooler.": "pooler."}

    def __init__(self, backbone: nn.Module, head_init_scale: float = 1.0) -> None:
        super().__init__(backbone)
        self.pooler = Pooler(self.dim, norm=False)
        self.nlvr2_classifier = MlpClassifier(2 * self.dim, 2 * self.dim, 2)
        if head_init_scale != 1.0:
            with torch.no_grad():
                for p in self.nlvr2_classifier.parameters():
                    if p.dim() == 2:
                        p.mul_(head_init_scale)
        self.second_image_type = nn.Parameter(torch.zeros(self.dim))

    def adapt_released_heads(self, heads: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """A released NLVR2 file's 3-row ``token_type_embeddings`` -> ``second_image_type``."""
        heads = dict(heads)
        table = heads.pop("token_type_embeddings.weight", None)
        if table is not None and table.shape[0] > 2:
            heads["second_image_type"] = table[2] - table[1]
        return heads

    def _pooled(self, image, ids, padding_mask, type_offset=None):
        backbone = self.backbone
        vision, grid = backbone.embed_image(image)
        if type_offset is not None:
            vision = vision + type_offset.to(vision.dtype)
        text = backbone.embed_text(ids, padding_mask)
        padding = torch.cat([padding_mask.new_zeros(vision.shape[:2]), padding_mask.bool()], dim=1)
        out = backbone.encode(torch.cat([vision, text], dim=1), Routing.fused(vision.shape[1]), padding_mask=padding,
                              patch_grid=grid)
        return self.pooler(out.text_tokens)

    def logits(self, left, right, ids, padding_mask):
        first = self._pooled(left, ids, padding_mask)
        second = self._pooled(right, ids, padding_mask, self.second_image_type)
        return self.nlvr2_classifier(torch.cat([first, second], dim=-1))

    def forward(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        logits = self.logits(batch["left"], batch["right"], batch["ids"], batch["padding_mask"])
        return {"loss": F.cross_entropy(logits.float(), batch["label"])}


@TASKS.register("nlvr2", config=Nlvr2TaskConfig)
class Nlvr2Task(ImageTextMixin, VlTask):
    primary_metric = "accuracy"

    def build_dataset(self, split: str, train: Optional[bool] = None):
        train = split == "train" if train is None else train
        if split not in ("train", "val", "test"):
            raise ValueError(f"NLVR2 splits are train / val (dev) / test (test1), got {split!r}")
        jsonl = self.path(getattr(self.cfg, f"{split}_jsonl"))
        ds = Nlvr2Dataset(Nlvr2Config(jsonl=str(jsonl), image_dir=str(self.path(getattr(self.cfg, f"{split}_images"))),
                                      image=self.image_options(train)))
        self.check_nonempty(ds, split, jsonl)
        return ds

    def collate(self, items: List[Dict[str, Any]], train: bool) -> Dict[str, Any]:
        ids, pad = encode_texts(self.tokenizer, [it["sentence"] for it in items], self.cfg.max_text_len, self.skips)
        return {"left": stack_images([it["left_image"] for it in items]),
                "right": stack_images([it["right_image"] for it in items]), "ids": ids, "padding_mask": pad,
                "label": torch.tensor([it["label"] for it in items]),
                "identifier": [it["identifier"] for it in items]}

    def head_spec(self) -> Dict[str, Any]:
        return {"head_init_scale": self.cfg.head_init_scale}

    def model_for(self, backbone: nn.Module, head: Mapping[str, Any]) -> Nlvr2Model:
        model_type = VlmoNlvr2Model if is_vlmo(backbone.cfg) else Nlvr2Model
        return model_type(backbone, **({"head_init_scale": head["head_init_scale"]} if "head_init_scale" in head else {}))

    @torch.no_grad()
    def predict(self, model: Nlvr2Model, dataset, device) -> List[Dict[str, Any]]:
        from .batches import iterate_eval

        out = []
        for batch in iterate_eval(self, dataset, device):
            p = model.logits(batch["left"], batch["right"], batch["ids"], batch["padding_mask"]).argmax(-1)
            out += [{"identifier": i, "prediction": bool(v), "label": int(y)}
                    for i, v, y in zip(batch["identifier"], p.tolist(), batch["label"].tolist())]
        return out

    def score(self, raw: List[Dict[str, Any]], dataset) -> Tuple[Dict[str, float], Any]:
        metrics = accuracy([int(r["prediction"]) for r in raw], [r["label"] for r in raw])
        return metrics, [{"identifier": r["identifier"], "prediction": r["prediction"]} for r in raw]
