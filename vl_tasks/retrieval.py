"""Image-text retrieval (COCO / Flickr30k Karpathy splits) with the BEiT-3 dual encoder.

Training: vision [CLS] and text [CLS] through bias-free projections, L2-normalised, symmetric
contrastive loss over the batch gathered from all ranks (learnable temperature, init 0.07).
Optionally (VL-BEiT / VLMo) an image-text matching head on the fused encoder trained on hard negatives
sampled from the contrastive similarities (``itm_weight > 0``); evaluation can then re-rank the top
``rerank_k`` candidates of each query with the ITM score (``rerank_k > 0``).
With ``pairs_json`` the training split is the image-text pairs of a COCO-captions-style file instead of the
Karpathy training split: BEiT-3's contrastive intermediate stage on pretraining pairs (``recipe=
beit3_base_retrieval_itc_stage``), whose checkpoint then starts retrieval fine-tuning (``model.checkpoint=``).
VLMo backbones get VLMo's head names (``itc_image_proj`` / ``itc_text_proj`` / ``logit_scale``, ``itm_score``
on ``pooler``, which has no LayerNorm) through :class:`VlmoRetrievalModel`; the computation is the same.
Evaluation encodes every image and every text once and reports R@1/5/10 in both directions;
predictions are rankings ``{"i2t": {image_id: [caption indices]}, "t2i": {caption index: [image ids]}}``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from beit3_plugins.data import (CocoCaptionPairsConfig, CocoCaptionPairsDataset, KarpathyCaptionDataset,
                                KarpathyCaptionsConfig)
from beit3_plugins.backbones import is_vlmo
from beit3_plugins.vl_tasks.registry import TASKS

from .base import ImageTextMixin, TaskConfigBase, TaskModel, VlTask, encode_texts, stack_images
from .heads import ContrastiveHeads, ItmHead
from .losses import ContrastiveLoss, gather_with_grad
from .metrics import recall_at_k, recall_at_k_chunked

__all__ = ["RetrievalTaskConfig", "RetrievalModel", "VlmoRetrievalModel", "RetrievalTask"]

#: rows of the similarity matrix scored at a time: memory O(SCORE_CHUNK x max(images, texts)) (25k COCO captions:
#: 26 MB of scores per block; torch's topk keeps int64 indices of a whole block besides)
SCORE_CHUNK = 256

KARPATHY = {
    "coco": ("coco/dataset_coco.json", "coco", ("train", "restval")),
    "flickr30k": ("flickr30k/dataset_flickr30k.json", "flickr30k/flickr30k-images", ("train",)),
}


@dataclasses.dataclass
class RetrievalTaskConfig(TaskConfigBase):
    image_size: int = 384
    max_text_len: int = 64
    dataset: str = "coco"                    # coco | flickr30k (selects the defaults below)
    karpathy_json: Optional[str] = None      # default: KARPATHY[dataset]
    image_root: Optional[str] = None
    train_splits: Optional[Tuple[str, ...]] = None
    itm_weight: float = 0.0                  # > 0: add the fused ITM head and loss (VL-BEiT re-ranking)
    rerank_k: int = 0                        # > 0: re-rank the top-k of each query with the ITM head
    topk_predictions: int = 10
    pairs_json: Optional[str] = None         # train on these image-text pairs (COCO captions format) instead
    pairs_image_dir: Optional[str] = None    # image directory of pairs_json's file_name entries


class RetrievalModel(TaskModel):
    released_head_map = {"vision_head.": "contrastive.vision_head.",
                         "language_head.": "contrastive.language_head.",
                         "logit_scale": "contrastive.logit_scale"}

    #: the ITM head's pooler has a LayerNorm (BEiT-3 / VL-BEiT) or not (VLMo)
    itm_pooler_norm: bool = True

    def __init__(self, backbone: nn.Module, with_itm: bool = False, itm_weight: float = 0.0) -> None:
        super().__init__(backbone)
        self.contrastive = ContrastiveHeads(self.dim)
        self.itm = ItmHead(self.dim, pooler_norm=self.itm_pooler_norm) if with_itm else None
        self.itm_weight = itm_weight
        self.criterion = ContrastiveLoss()

    def embed_images(self, image: Tensor) -> Tensor:
        return self.contrastive.embed_image(self.backbone.forward_vision(image).vision_cls)

    def embed_texts(self, ids: Tensor, padding_mask: Tensor) -> Tensor:
        return self.contrastive.embed_text(self.backbone.forward_text(ids, padding_mask).text_cls)

    def itm_logits(self, image: Tensor, ids: Tensor, padding_mask: Tensor) -> Tensor:
        return self.itm(self.backbone.forward_fused(image, ids, padding_mask).text_tokens)

    def forward(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        img = self.embed_images(batch["image"])
        txt = self.embed_texts(batch["ids"], batch["padding_mask"])
        loss, logits = self.criterion(img.float(), txt.float(), self.contrastive.logit_scale)
        out = {"loss": loss, "itc_loss": loss.detach()}
        if self.itm is not None and self.itm_weight > 0:
            itm = self._itm_loss(batch, img.detach(), txt.detach())
            out["itm_loss"] = itm.detach()
            out["loss"] = loss + self.itm_weight * itm
        return out

    def _itm_loss(self, batch: Dict[str, Any], img: Tensor, txt: Tensor) -> Tensor:
        """Hard negatives drawn in proportion to the (local) contrastive similarities, as VLMo."""
        image, ids, pad = batch["image"], batch["ids"], batch["padding_mask"]
        bsz = image.shape[0]
        if bsz < 2:
            return img.sum() * 0.0
        with torch.no_grad():
            sim = img @ txt.t()
            eye = torch.eye(bsz, dtype=torch.bool, device=sim.device)
            w_i2t = F.softmax(sim.float(), dim=1).masked_fill(eye, 0) + 1e-6 * (~eye)
            w_t2i = F.softmax(sim.t().float(), dim=1).masked_fill(eye, 0) + 1e-6 * (~eye)
            neg_txt = torch.multinomial(w_i2t, 1).squeeze(1)
            neg_img = torch.multinomial(w_t2i, 1).squeeze(1)
        images = torch.cat([image, image, image[neg_img]])
        texts = torch.cat([ids, ids[neg_txt], ids])
        pads = torch.cat([pad, pad[neg_txt], pad])
        labels = torch.cat([torch.ones(bsz), torch.zeros(2 * bsz)]).long().to(image.device)
        return F.cross_entropy(self.itm_logits(images, texts, pads).float(), labels)


class VlmoRetrievalModel(RetrievalModel):
    """:class:`RetrievalModel` for VLMo files: image / text [CLS] after the final norm through VLMo's
    ``itc_image_proj`` / ``itc_text_proj``; ITM (``itm_score``) on VLMo's LayerNorm-free ``pooler`` of the
    fused encoder's text [CLS]. ``itc_vl_*`` and ``logit_vl_scale`` (pretraining's VL-expert contrast) are
    reported unused."""

    itm_pooler_norm = False
    released_head_map = {"itc_image_proj.fc.": "contrastive.vision_head.",
                         "itc_text_proj.fc.": "contrastive.language_head.",
                         "logit_scale": "contrastive.logit_scale",
                         "itm_score.fc.": "itm.fc.",
                         "pooler.dense.": "itm.pooler.dense."}


@TASKS.register("retrieval", config=RetrievalTaskConfig)
class RetrievalTask(ImageTextMixin, VlTask):
    primary_metric = "r_mean"

    def _files(self):
        if self.cfg.dataset not in KARPATHY:
            raise ValueError(f"retrieval dataset must be one of {sorted(KARPATHY)}, got {self.cfg.dataset!r}")
        json_path, root, train_splits = KARPATHY[self.cfg.dataset]
        return (self.path(self.cfg.karpathy_json or json_path), self.path(self.cfg.image_root or root),
                tuple(self.cfg.train_splits or train_splits))

    def build_dataset(self, split: str, train: Optional[bool] = None):
        train = split == "train" if train is None else train
        if split == "train" and self.cfg.pairs_json:
            pairs = self.path(self.cfg.pairs_json)
            ds = CocoCaptionPairsDataset(CocoCaptionPairsConfig(
                json=str(pairs), image_dir=str(self.path(self.cfg.pairs_image_dir) or self.root or ""),
                image=self.image_options(train)))
            self.check_nonempty(ds, split, f"{pairs} (task.pairs_json)")
            return ds
        json_path, root, train_splits = self._files()
        splits = train_splits if split == "train" else (split,)
        ds = KarpathyCaptionDataset(KarpathyCaptionsConfig(
            json=str(json_path), image_root=str(root), splits=splits, per_caption=train,
            image=self.image_options(train)))
        self.check_nonempty(ds, split, f"{json_path} splits {splits}")
        return ds

    def collate(self, items: List[Dict[str, Any]], train: bool) -> Dict[str, Any]:
        batch = {"image": stack_images([it["image"] for it in items]),
                 "image_id": [it["image_id"] for it in items]}
        if "caption" in items[0]:
            batch["ids"], batch["padding_mask"] = encode_texts(
                self.tokenizer, [it["caption"] for it in items], self.cfg.max_text_len, self.skips)
        else:
            batch["captions"] = [it["captions"] for it in items]
        return batch

    def head_spec(self) -> Dict[str, Any]:
        return {"with_itm": self.cfg.itm_weight > 0 or self.cfg.rerank_k > 0, "itm_weight": self.cfg.itm_weight}

    def model_for(self, backbone: nn.Module, head: Mapping[str, Any]) -> RetrievalModel:
        model_type = VlmoRetrievalModel if is_vlmo(backbone.cfg) else RetrievalModel
        return model_type(backbone, with_itm=bool(head.get("with_itm", False)),
                          itm_weight=float(head.get("itm_weight", 0.0)))

    @torch.no_grad()
    def encode_split(self, model: RetrievalModel, dataset, device):
        """Every image and every caption encoded exactly once; the captions of each image batch are encoded
        right after it, in chunks of ``eval_batch_size``, so a block of whole batches encodes the same way in a
        sharded evaluation as in one process."""
        from .batches import iterate_eval

        img_emb, txt_emb, image_ids, texts, text_to_image = [], [], [], [], []
        bs = self.cfg.eval_batch_size
        for batch in iterate_eval(self, dataset, device):
            img_emb.append(model.embed_images(batch["image"]))
            batch_texts = []
            for image_id, captions in zip(batch["image_id"], batch["captions"]):
                batch_texts += captions
                text_to_image += [len(image_ids)] * len(captions)
                image_ids.append(image_id)
            for start in range(0, len(batch_texts), bs):
                ids, pad = encode_texts(self.tokenizer, batch_texts[start:start + bs], self.cfg.max_text_len,
                                        self.skips)
                txt_emb.append(model.embed_texts(ids.to(device), pad.to(device)))
            texts += batch_texts
        txt = torch.cat(txt_emb) if txt_emb else img_emb[0].new_zeros(0, img_emb[0].shape[-1])
        return torch.cat(img_emb), txt, image_ids, texts, text_to_image

    @property
    def shardable(self) -> bool:
        return self.cfg.rerank_k <= 0   # re-ranking reads the whole similarity matrix on one process

    @torch.no_grad()
    def predict(self, model: RetrievalModel, dataset, device) -> Dict[str, Any]:
        img, txt, image_ids, texts, t2i = self.encode_split(model, dataset, device)
        return {"image": img.float().cpu(), "text": txt.float().cpu(), "image_ids": image_ids, "texts": texts,
                "text_to_image": t2i}

    def merge_predictions(self, parts) -> Dict[str, Any]:
        merged: Dict[str, Any] = {"image_ids": [], "texts": [], "text_to_image": []}
        for part in parts:
            offset = len(merged["image_ids"])
            merged["image_ids"] += part["image_ids"]
            merged["texts"] += part["texts"]
            merged["text_to_image"] += [i + offset for i in part["text_to_image"]]
        merged["image"] = torch.cat([p["image"] for p in parts])
        merged["text"] = torch.cat([p["text"] for p in parts])
        return merged

    def score(self, raw: Dict[str, Any], dataset) -> Tuple[Dict[str, float], Any]:
        """R@1/5/10 in bounded memory (``recall_at_k_chunked``) and each query's top-k as the predictions."""
        img, txt, image_ids = raw["image"], raw["text"], raw["image_ids"]
        chunk = SCORE_CHUNK
        metrics = recall_at_k_chunked(img, txt, raw["text_to_image"], chunk=chunk)
        k = min(self.cfg.topk_predictions, txt.shape[0])
        i2t, t2i = {}, {}
        for start in range(0, img.shape[0], chunk):
            top = (img[start:start + chunk] @ txt.T).topk(k, dim=1).indices.tolist()
            i2t.update({str(image_ids[start + r]): row for r, row in enumerate(top)})
        for start in range(0, txt.shape[0], chunk):
            top = (txt[start:start + chunk] @ img.T).topk(min(k, img.shape[0]), dim=1).indices.tolist()
            t2i.update({str(start + r): [image_ids[i] for i in row] for r, row in enumerate(top)})
        return metrics, {"i2t": i2t, "t2i": t2i, "captions": raw["texts"]}

    @torch.no_grad()
    def evaluate(self, model: RetrievalModel, dataset, device) -> Tuple[Dict[str, float], Any]:
        if not (self.cfg.rerank_k > 0 and model.itm is not None):
            return self.score(self.predict(model, dataset, device), dataset)
        img, txt, image_ids, texts, t2i = self.encode_split(model, dataset, device)
        sim = (img @ txt.t()).float().cpu()
        metrics = recall_at_k(sim, t2i)
        sim_i2t, sim_t2i = self.rerank(model, dataset, sim, texts, device)
        reranked = recall_at_k(sim_i2t, t2i)
        reranked_t = recall_at_k(sim_t2i, t2i)
        ks = (1, 5, 10)
        fused = {f"i2t_r{k}": reranked[f"i2t_r{k}"] for k in ks}
        fused.update({f"t2i_r{k}": reranked_t[f"t2i_r{k}"] for k in ks})
        fused["r_mean"] = sum(fused.values()) / len(fused)
        metrics = {**{f"dual_{k}": v for k, v in metrics.items()}, **fused}
        k = min(self.cfg.topk_predictions, sim.shape[1])
        preds = {"i2t": {str(image_ids[i]): sim_i2t[i].topk(k).indices.tolist() for i in range(sim.shape[0])},
                 "t2i": {str(j): [image_ids[i] for i in sim_t2i[:, j].topk(min(k, sim.shape[0])).indices.tolist()]
                         for j in range(sim.shape[1])},
                 "captions": texts}
        return metrics, preds

    @torch.no_grad()
    def rerank(self, model: RetrievalModel, dataset, sim: Tensor, texts: List[str], device):
        """Replace the top-k scores of each query by ITM match scores (kept above all other candidates)."""
        k = self.cfg.rerank_k
        images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
        ids, pad = encode_texts(self.tokenizer, texts, self.cfg.max_text_len, self.skips)
        bs = self.cfg.eval_batch_size

        def itm_scores(img_idx: Tensor, txt_idx: Tensor) -> Tensor:
            out = []
            for s in range(0, len(img_idx), bs):
                i, t = img_idx[s:s + bs], txt_idx[s:s + bs]
                logits = model.itm_logits(images[i].to(device), ids[t].to(device), pad[t].to(device))
                out.append((logits[:, 1] - logits[:, 0]).float().cpu())
            return torch.cat(out)

        offset = sim.abs().max() + 1.0
        sim_i2t = sim.clone()
        top_t = sim.topk(min(k, sim.shape[1]), dim=1).indices            # (I, k)
        img_idx = torch.arange(sim.shape[0]).unsqueeze(1).expand_as(top_t).reshape(-1)
        scores = itm_scores(img_idx, top_t.reshape(-1))
        sim_i2t[img_idx, top_t.reshape(-1)] = torch.sigmoid(scores) + offset
        sim_t2i = sim.clone()
        top_i = sim.topk(min(k, sim.shape[0]), dim=0).indices            # (k, T)
        txt_idx = torch.arange(sim.shape[1]).unsqueeze(0).expand_as(top_i).reshape(-1)
        scores = itm_scores(top_i.reshape(-1), txt_idx)
        sim_t2i[top_i.reshape(-1), txt_idx] = torch.sigmoid(scores) + offset
        return sim_i2t, sim_t2i
