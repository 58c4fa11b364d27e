"""Image captioning as the released BEiT-3 code fine-tunes and decodes it (microsoft/unilm ``beit3/``).

Training: of each caption's ``n`` tokens (``<s>`` .. ``</s>``) ``max(1, min(round(n * mask_prob), n - 1))``
positions after ``<s>`` are picked (``</s>`` can be, so the model learns to stop); a picked token becomes
``<mask>`` (80%), stays (10%) or becomes a random id (10%), and ``mlm_head`` predicts it under the UniLM mask.
The loss is the official one (:func:`official_caption_loss`): KL to a target with ``eps / (V - 1)`` on each
wrong class, and after ``drop_worst_after`` steps the worst ``drop_worst_ratio`` of the masked tokens dropped
(0.2 after 12000 steps in the released recipe). Decoding: the official beam search (``generation``), 3 beams,
length penalty 0.6, ``max_text_len`` as its length budget.
Evaluation: COCOEvalCap's metrics through pycocoevalcap. Predictions are ``[{"image_id", "caption"}]``, the
format of the COCO and NoCaps evaluation servers; ``eval_dataset=nocaps`` reads NoCaps
(``nocaps_val_4500_captions.json`` / ``nocaps_test_image_info.json``, images under ``nocaps/{val,test}``; the
model trains on COCO, as the official recipe).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

import torch.nn.functional as F

from beit3_plugins.data import KarpathyCaptionDataset, KarpathyCaptionsConfig
from beit3_plugins.data.datasets import RecordDataset
from beit3_plugins.data.readers import read_coco_captions
from beit3_plugins.backbones.multiway import unilm_attention_mask
from beit3_plugins.vl_tasks.registry import TASKS

from .base import ImageTextMixin, TaskConfigBase, TaskModel, VlTask, encode_texts, stack_images
from .generation import generate
from .heads import MlmHead
from .metrics import caption_metrics
from .retrieval import KARPATHY

__all__ = ["CaptioningTaskConfig", "CaptioningModel", "CaptioningTask", "official_caption_loss", "mask_caption_tokens"]

NOCAPS = {"val": "nocaps/nocaps_val_4500_captions.json", "test": "nocaps/nocaps_test_image_info.json"}


@dataclasses.dataclass
class CaptioningTaskConfig(TaskConfigBase):
    image_size: int = 480
    max_text_len: int = 32          # --num_max_bpe_tokens 32
    dataset: str = "coco"
    karpathy_json: Optional[str] = None
    image_root: Optional[str] = None
    train_splits: Optional[Tuple[str, ...]] = None
    mask_prob: float = 0.7          # --captioning_mask_prob
    label_smoothing: float = 0.1
    drop_worst_ratio: float = 0.2   # --drop_worst_ratio
    drop_worst_after: int = 12000   # --drop_worst_after (training steps)
    beam_size: int = 3              # --num_beams
    max_gen_len: Optional[int] = None   # decoding length budget (official counting); None = max_text_len
    length_penalty: float = 0.6     # --length_penalty
    eval_dataset: Optional[str] = None  # "nocaps": evaluate / predict on NoCaps (train stays COCO)
    nocaps_root: str = "nocaps"


def official_caption_loss(logits: torch.Tensor, target: torch.Tensor, smoothing: float, drop_worst_ratio: float = 0.0,
                          drop_worst_after: int = 0, step: int = 0) -> torch.Tensor:
    """The released captioning loss: per masked token KL(target || softmax) with ``1 - eps`` on the answer and
    ``eps / (V - 1)`` elsewhere; once ``step > drop_worst_after`` only the ``1 - drop_worst_ratio`` lowest
    token losses are averaged (noisy captions stop dominating)."""
    if target.numel() == 0:
        return logits.sum() * 0.0
    logp = F.log_softmax(logits.float(), dim=-1)
    n_class = logits.shape[-1]
    smooth = torch.full_like(logp, smoothing / (n_class - 1)).scatter_(1, target[:, None], 1.0 - smoothing)
    per_token = F.kl_div(logp, smooth, reduction="none").sum(1)
    if drop_worst_ratio > 0 and step > drop_worst_after:
        keep = int(per_token.shape[0] * (1 - drop_worst_ratio))
        per_token = per_token.topk(keep, largest=False).values
    return per_token.mean()


def mask_caption_tokens(ids: torch.Tensor, padding_mask: torch.Tensor, mask_prob: float, mask_id: int,
                        vocab_size: int, generator: Optional[torch.Generator] = None
                        ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(masked_ids, masked) as the released captioning dataset picks them (see the module docstring)."""
    masked = torch.zeros_like(ids, dtype=torch.bool)
    out = ids.clone()
    for row in range(ids.shape[0]):
        n = int((~padding_mask[row]).sum())
        if n < 2:
            continue
        count = max(1, min(int(n * mask_prob + 0.5), n - 1))
        picks = torch.randperm(n - 1, generator=generator)[:count] + 1
        masked[row, picks] = True
        roll = torch.rand(count, generator=generator)
        random_ids = torch.randint(3, vocab_size, (count,), generator=generator)
        new = torch.where(roll < 0.8, torch.full_like(random_ids, mask_id),
                          torch.where(roll < 0.9, ids[row, picks], random_ids))
        out[row, picks] = new
    return out, masked


class CaptioningModel(TaskModel):
    def __init__(self, backbone: nn.Module, label_smoothing: float, drop_worst_ratio: float = 0.0,
                 drop_worst_after: int = 0) -> None:
        super().__init__(backbone)
        self.mlm_head = MlmHead(self.dim, backbone.cfg.vocab_size)
        self.label_smoothing = label_smoothing
        self.drop_worst_ratio, self.drop_worst_after = drop_worst_ratio, drop_worst_after

    def forward(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        image, ids, pad, masked = batch["image"], batch["masked_ids"], batch["padding_mask"], batch["masked"]
        num_vision = self.backbone.embed_image(image[:1])[0].shape[1]
        out = self.backbone.forward_fused(image, ids, pad, attn_mask=unilm_attention_mask(num_vision, ids.shape[1], ids.device))
        logits = self.mlm_head(out.text_tokens[masked])
        loss = official_caption_loss(logits, batch["ids"][masked], self.label_smoothing, self.drop_worst_ratio,
                                     self.drop_worst_after, int(batch.get("global_step", 0)))
        return {"loss": loss}


@TASKS.register("captioning", config=CaptioningTaskConfig)
class CaptioningTask(ImageTextMixin, VlTask):
    primary_metric = "cider"
    eval_split = "val"

    def build_dataset(self, split: str, train: Optional[bool] = None):
        train = split == "train" if train is None else train
        if self.cfg.eval_dataset == "nocaps" and split != "train":
            return self._nocaps(split)
        if self.cfg.eval_dataset not in (None, "nocaps"):
            raise ValueError(f"task.eval_dataset must be null or 'nocaps', got {self.cfg.eval_dataset!r}")
        if self.cfg.dataset not in KARPATHY:
            raise ValueError(f"captioning dataset must be one of {sorted(KARPATHY)}, got {self.cfg.dataset!r}")
        json_path, root, train_splits = KARPATHY[self.cfg.dataset]
        json_path = self.path(self.cfg.karpathy_json or json_path)
        splits = tuple(self.cfg.train_splits or train_splits) if split == "train" else (split,)
        ds = KarpathyCaptionDataset(KarpathyCaptionsConfig(
            json=str(json_path), image_root=str(self.path(self.cfg.image_root or root)), splits=splits,
            per_caption=train, image=self.image_options(train)))
        self.check_nonempty(ds, split, f"{json_path} splits {splits}")
        return ds

    def _nocaps(self, split: str):
        if split not in NOCAPS:
            raise ValueError(f"NoCaps has splits {sorted(NOCAPS)}, got {split!r}")
        records = read_coco_captions(self.path(NOCAPS[split]), self.path(f"{self.cfg.nocaps_root}/{split}"),
                                     with_captions=split == "val")  # the test file has images only
        ds = _CaptionImages(records, self.image_options(False).build())
        self.check_nonempty(ds, split, self.path(NOCAPS[split]))
        return ds

    def collate(self, items: List[Dict[str, Any]], train: bool) -> Dict[str, Any]:
        batch = {"image": stack_images([it["image"] for it in items]), "image_id": [it["image_id"] for it in items]}
        if "captions" in items[0]:
            batch["captions"] = [it["captions"] for it in items]
            return batch
        ids, pad = encode_texts(self.tokenizer, [it["caption"] for it in items], self.cfg.max_text_len, self.skips)
        masked_ids, masked = mask_caption_tokens(ids, pad, self.cfg.mask_prob, self.tokenizer.mask_id,
                                                 self.tokenizer.vocab_size)
        batch.update(ids=ids, padding_mask=pad, masked=masked, masked_ids=masked_ids)
        return batch

    def head_spec(self) -> Dict[str, Any]:
        return {"label_smoothing": self.cfg.label_smoothing, "drop_worst_ratio": self.cfg.drop_worst_ratio,
                "drop_worst_after": self.cfg.drop_worst_after}

    def model_for(self, backbone: nn.Module, head: Mapping[str, Any]) -> CaptioningModel:
        if self.tokenizer is not None and self.tokenizer.vocab_size > backbone.cfg.vocab_size:
            raise ValueError(f"tokenizer has {self.tokenizer.vocab_size} ids, the model {backbone.cfg.vocab_size}")
        return CaptioningModel(backbone, float(head.get("label_smoothing", 0.0)), float(head.get("drop_worst_ratio", 0.0)),
                               int(head.get("drop_worst_after", 0)))

    def caption(self, model: CaptioningModel, image, beam_size: Optional[int] = None) -> List[str]:
        tok = self.tokenizer
        seqs = generate(model, image, tok.bos_id, tok.eos_id, tok.mask_id, self.cfg.max_gen_len or self.cfg.max_text_len,
                        beam_size=self.cfg.beam_size if beam_size is None else beam_size,
                        length_penalty=self.cfg.length_penalty, pad_id=tok.pad_id)
        # as the official skip_special_tokens: special ids and rows beyond the tokenizer's ids are not text
        special = {tok.bos_id, tok.eos_id, tok.pad_id, tok.mask_id, getattr(tok, "unk_id", 3)}
        return [tok.decode([t for t in s if t not in special and t < tok.vocab_size]) for s in seqs]

    @torch.no_grad()
    def predict(self, model: CaptioningModel, dataset, device) -> List[Dict[str, Any]]:
        from .batches import iterate_eval

        out = []
        for batch in iterate_eval(self, dataset, device):
            for image_id, caption, captions in zip(batch["image_id"], self.caption(model, batch["image"]),
                                                   batch["captions"]):
                out.append({"image_id": image_id, "caption": caption, "references": list(captions)})
        return out

    def score(self, raw: List[Dict[str, Any]], dataset) -> Tuple[Dict[str, float], Any]:
        refs = {r["image_id"]: r["references"] for r in raw if r["references"]}  # NoCaps test: none
        preds = [{"image_id": r["image_id"], "caption": r["caption"]} for r in raw]
        scored = {p["image_id"]: p["caption"] for p in preds if p["image_id"] in refs}
        metrics = caption_metrics(scored, refs) if refs else {}
        return metrics, preds


class _CaptionImages(RecordDataset):
    """One item per image with all its captions (possibly none: NoCaps test)."""

    def _item(self, record):
        image = self._image(record.image_path)
        if image is None:
            return None
        return {"image": image, "image_id": record.image_id, "captions": list(record.captions)}
