"""Image captioning as BEiT-3 / UniLM: masked-token fine-tuning under the UniLM attention mask with
label smoothing, generation by greedy or beam search with the key/value cache (see ``generation``).

Training masks ``mask_prob`` of the caption tokens after ``<s>`` (at least one; ``</s>`` included so the
model learns to stop) and predicts them with ``mlm_head``; each text token sees the image and the text
before it. Evaluation: BLEU-4 and CIDEr (METEOR when installed) against all references; predictions
are COCO results ``[{"image_id": int, "caption": str}, ...]``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from beit3_plugins.data import KarpathyCaptionDataset, KarpathyCaptionsConfig
from beit3_plugins.vl_tasks.registry import TASKS

from .base import ImageTextMixin, TaskConfigBase, TaskModel, VlTask, encode_texts, stack_images
from .generation import generate, unilm_mask
from .heads import MlmHead
from .losses import label_smoothed_ce
from .metrics import caption_metrics
from .retrieval import KARPATHY

__all__ = ["CaptioningTaskConfig", "CaptioningModel", "CaptioningTask"]


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
    beam_size: int = 3
    max_gen_len: int = 30
    length_penalty: float = 0.0


class CaptioningModel(TaskModel):
    def __init__(self, backbone: nn.Module, label_smoothing: float) -> None:
        super().__init__(backbone)
        self.mlm_head = MlmHead(self.dim, backbone.cfg.vocab_size)
        self.label_smoothing = label_smoothing

    def forward(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        image, ids, pad, masked = batch["image"], batch["masked_ids"], batch["padding_mask"], batch["masked"]
        num_vision = self.backbone.embed_image(image[:1])[0].shape[1]
        out = self.backbone.forward_fused(image, ids, pad, attn_mask=unilm_mask(num_vision, ids.shape[1], ids.device))
        logits = self.mlm_head(out.text_tokens[masked])
        return {"loss": label_smoothed_ce(logits, batch["ids"][masked], self.label_smoothing)}


@TASKS.register("captioning", config=CaptioningTaskConfig)
class CaptioningTask(ImageTextMixin, VlTask):
    primary_metric = "cider"
    eval_split = "val"

    def build_dataset(self, split: str, train: Optional[bool] = None):
        train = split == "train" if train is None else train
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

    def collate(self, items: List[Dict[str, Any]], train: bool) -> Dict[str, Any]:
        batch = {"image": stack_images([it["image"] for it in items]), "image_id": [it["image_id"] for it in items]}
        if "captions" in items[0]:
            batch["captions"] = [it["captions"] for it in items]
            return batch
        ids, pad = encode_texts(self.tokenizer, [it["caption"] for it in items], self.cfg.max_text_len, self.skips)
        real = ~pad
        real[:, 0] = False                                   # never mask <s>
        masked = (torch.rand(ids.shape) < self.cfg.mask_prob) & real
        # at least one masked token per caption
        none = ~masked.any(1)
        if none.any():
            lengths = real.sum(1)
            pick = (torch.rand(ids.shape[0]) * lengths.clamp(min=1)).long() + 1
            masked[none, pick[none].clamp(max=ids.shape[1] - 1)] = True
        masked &= real
        batch.update(ids=ids, padding_mask=pad, masked=masked,
                     masked_ids=ids.masked_fill(masked, self.tokenizer.mask_id))
        return batch

    def build_model(self, backbone: nn.Module) -> CaptioningModel:
        if self.tokenizer is not None and self.tokenizer.vocab_size > backbone.cfg.vocab_size:
            raise ValueError(f"tokenizer has {self.tokenizer.vocab_size} ids, the model {backbone.cfg.vocab_size}")
        return CaptioningModel(backbone, self.cfg.label_smoothing)

    def caption(self, model: CaptioningModel, image, beam_size: Optional[int] = None) -> List[str]:
        tok = self.tokenizer
        seqs = generate(model, image, tok.bos_id, tok.eos_id, tok.mask_id, self.cfg.max_gen_len,
                        beam_size=self.cfg.beam_size if beam_size is None else beam_size,
                        length_penalty=self.cfg.length_penalty, banned_ids=(tok.pad_id, tok.bos_id), vocab_limit=tok.vocab_size)
        return [tok.decode(s) for s in seqs]

    @torch.no_grad()
    def evaluate(self, model: CaptioningModel, dataset, device) -> Tuple[Dict[str, float], Any]:
        from .loop import iterate_eval

        preds, refs = [], {}
        for batch in iterate_eval(self, dataset, device):
            for image_id, caption, captions in zip(batch["image_id"], self.caption(model, batch["image"]),
                                                   batch["captions"]):
                preds.append({"image_id": image_id, "caption": caption})
                refs[image_id] = captions
        metrics = caption_metrics({p["image_id"]: p["caption"] for p in preds}, refs) if refs else {}
        return metrics, preds
