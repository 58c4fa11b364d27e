"""Pretraining objectives of BEiT-3 / VL-BEiT (masked data modeling) and VLMo (ITC, ITM, MLM).

Papers: BEiT-3 (Wang et al., 2022) - MLM on text, MIM on images, MVLM on image-text pairs, one shared
Multiway backbone; VL-BEiT (Bao et al., 2022) - the same three masked objectives; VLMo (Bao et al.,
2021) - image-text contrast gathered across ranks, image-text matching with hard negatives sampled from
the contrastive similarities ("global hard negative mining"), masked language modeling, stagewise
pretraining. Framework-free: the fairseq adapter only feeds batches and sums the returned losses.

Heads carry the names of the released checkpoints (``mlm_head``, ``mim_head``, ``vision_head``,
``language_head``, ``logit_scale``) so :func:`export_state_dict` writes the released layout.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, Optional, Sequence, Set, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from beit3_plugins.backbones import MultiwayTransformer, export_state_dict as backbone_export_state_dict
from beit3_plugins.backbones import no_weight_decay_names

from .masking import IGNORE_INDEX
from .vqkd import VQKDTokenizer

__all__ = ["ObjectiveOutput", "VlmoObjectives", "MaskedDataModel", "patch_pixel_targets", "masked_token_loss", "gather_with_grad",
           "sample_hard_negatives", "export_state_dict", "STAGES", "stage_trainable", "apply_stage", "MIM_TARGETS"]

MIM_TARGETS = ("vqkd", "pixel")
STAGES = ("all", "vision", "language")


@dataclasses.dataclass(frozen=True)
class VlmoObjectives:
    """Which VLMo objectives a batch trains (all on: the published recipe; VLMo Table 5 turns them off)."""

    itc: bool = True
    itm: bool = True
    mlm: bool = True


@dataclasses.dataclass
class ObjectiveOutput:
    """Summed loss terms (each a mean over its predicted items) and counts for accuracies."""

    loss: Tensor
    logs: Dict[str, float] = dataclasses.field(default_factory=dict)


def masked_token_loss(logits: Tensor, targets: Tensor) -> Tuple[Tensor, int, int]:
    """Mean cross-entropy over ``targets`` (N,) of ``logits`` (N, V); returns (loss, #correct, #items)."""
    if targets.numel() == 0:
        return logits.sum() * 0.0, 0, 0
    loss = F.cross_entropy(logits.float(), targets)
    correct = int((logits.argmax(-1) == targets).sum())
    return loss, correct, int(targets.numel())


def patch_pixel_targets(image: Tensor, patch_size: int, normalize: bool = True) -> Tensor:
    """(B, 3, H, W) -> (B, h*w, p*p*3) pixels per patch; with ``normalize`` each patch has zero mean and
    unit variance (the per-patch-normalised pixel target of the BEiT-3 ablation / MAE)."""
    b, c, h, w = image.shape
    p = patch_size
    x = image.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)
    if normalize:
        mean = x.mean(-1, keepdim=True)
        var = x.var(-1, keepdim=True, unbiased=False)
        x = (x - mean) / (var + 1e-6).sqrt()
    return x


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and \
        torch.distributed.get_world_size() > 1


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every rank (rank order); gradients flow back to each rank's own part."""
    if not _distributed():
        return x
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(x), dim=0)


@torch.no_grad()
def gather_no_grad(x: Tensor) -> Tensor:
    if not _distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, x.contiguous())
    return torch.cat(parts, 0)


def _pad_to_common_length(ids: Tensor, padding_mask: Tensor, pad_id: int = 1) -> Tuple[Tensor, Tensor]:
    """Pad text to the longest length on any rank so it can be gathered (batches pad to their own longest)."""
    if not _distributed():
        return ids, padding_mask
    length = torch.tensor([ids.shape[1]], device=ids.device)
    torch.distributed.all_reduce(length, op=torch.distributed.ReduceOp.MAX)
    extra = int(length) - ids.shape[1]
    if extra:
        ids = F.pad(ids, (0, extra), value=pad_id)
        padding_mask = F.pad(padding_mask, (0, extra), value=True)
    return ids, padding_mask


def _rank() -> int:
    return torch.distributed.get_rank() if _distributed() else 0


@torch.no_grad()
def sample_hard_negatives(sim: Tensor, positive: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """For each row of ``sim`` (N, M) sample a column with probability softmax(sim) excluding ``positive``
    (N,) - ALBEF/VLMo hard negative mining. Returns (N,) column indices."""
    is_positive = F.one_hot(positive, sim.shape[1]).bool()
    weights = (F.softmax(sim.float(), dim=1) + 1e-8).masked_fill(is_positive, 0.0)
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


def stage_trainable(name: str, stage: str, language: bool) -> bool:
    """Whether parameter ``name`` (of :class:`MaskedDataModel`) trains in a stagewise-pretraining stage;
    ``language``: it serves text only (the backbone says which of its own: ``is_language_parameter``).

    "language" (VLMo stage 2): only the language expert, text embeddings and the MLM head learn;
    attention and the vision expert stay frozen. "vision" (stage 1): everything but the language-only
    parts. "all": everything (stage 3 / BEiT-3 one-stage pretraining). The tokenizer never trains.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are {list(STAGES)}")
    if name.startswith("tokenizer."):
        return False
    if stage == "language":
        return language
    if stage == "vision":
        return not language and not name.startswith(("language_head", "itm_head"))
    return True


def apply_stage(model: nn.Module, stage: str) -> Dict[str, int]:
    """Set ``requires_grad`` per :func:`stage_trainable`; returns counts of trainable / frozen tensors."""
    counts = {"trainable": 0, "frozen": 0}
    backbone = model.backbone
    for name, p in model.named_parameters():
        language = name.startswith("mlm_head") or (
            name.startswith("backbone.") and backbone.is_language_parameter(name[len("backbone."):]))
        flag = stage_trainable(name, stage, language)
        p.requires_grad_(flag)
        counts["trainable" if flag else "frozen"] += 1
    return counts


class MaskedDataModel(nn.Module):
    """Backbone + pretraining heads + (frozen) visual tokenizer.

    Args:
        backbone: a :class:`MultiwayTransformer` (built through the BACKBONES registry).
        mim_target: "vqkd" (discrete codes of ``tokenizer``) or "pixel" (per-patch normalised pixels).
        tokenizer: the VQ-KD tokenizer for "vqkd" targets.
        vlmo_heads: add ITC (``vision_head``, ``language_head``, ``logit_scale``) and ITM (``itm_head``).
    """

    def __init__(self, backbone: MultiwayTransformer, mim_target: str = "vqkd",
                 tokenizer: Optional[VQKDTokenizer] = None, vlmo_heads: bool = False,
                 text_vocab_size: Optional[int] = None) -> None:
        super().__init__()
        if mim_target not in MIM_TARGETS:
            raise ValueError(f"unknown mim_target {mim_target!r}; choose from {list(MIM_TARGETS)}")
        if mim_target == "vqkd" and tokenizer is None:
            raise ValueError("mim_target='vqkd' needs a VQ-KD tokenizer")
        cfg = backbone.cfg
        self.backbone = backbone
        self.mim_target = mim_target
        dim = cfg.embed_dim
        self.mlm_head = nn.Linear(dim, text_vocab_size or cfg.vocab_size)
        if mim_target == "vqkd":
            self.mim_head = nn.Linear(dim, tokenizer.num_codes)
        else:
            self.mim_head = nn.Linear(dim, cfg.patch_size ** 2 * cfg.in_chans)
        self.tokenizer = tokenizer
        self.vlmo_heads = vlmo_heads
        if vlmo_heads:
            self.vision_head = nn.Linear(dim, dim, bias=False)
            self.language_head = nn.Linear(dim, dim, bias=False)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
            self.itm_head = nn.Linear(dim, 2)
        for m in (self.mlm_head, self.mim_head):
            nn.init.trunc_normal_(m.weight, std=cfg.init_std)
            nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> Set[str]:
        """Parameter names excluded from weight decay (BEiT / BEiT-3 / VLMo): 1-D and scalar tensors (biases,
        norm weights, ``logit_scale``) and the backbone's own list (CLS / mask tokens, position tables)."""
        return no_weight_decay_names(self)

    # ------------------------------------------------------------------ helpers
    def mim_targets(self, image: Tensor, grid: Tuple[int, int]) -> Tensor:
        """(B, h*w) codes or (B, h*w, p*p*3) pixels of every patch (no gradient)."""
        if self.mim_target == "vqkd":
            return self.tokenizer.get_codebook_indices(image, grid=grid)
        return patch_pixel_targets(image, self.backbone.cfg.patch_size)

    def _mim(self, patch_states: Tensor, targets: Tensor, mask: Tensor, prefix: str, logs: Dict[str, float]
             ) -> Tensor:
        states = patch_states[mask]
        if self.mim_target == "vqkd":
            loss, correct, n = masked_token_loss(self.mim_head(states), targets[mask])
            logs[f"{prefix}_correct"] = correct
        else:
            pred = self.mim_head(states)
            n = int(mask.sum())
            loss = F.mse_loss(pred.float(), targets[mask].float()) if n else pred.sum() * 0.0
        logs[f"{prefix}_count"] = n
        logs[f"{prefix}_loss"] = float(loss.detach()) * n
        return loss

    def _mlm(self, text_states: Tensor, targets: Tensor, prefix: str, logs: Dict[str, float]) -> Tensor:
        keep = targets != IGNORE_INDEX
        loss, correct, n = masked_token_loss(self.mlm_head(text_states[keep]), targets[keep])
        logs[f"{prefix}_correct"], logs[f"{prefix}_count"] = correct, n
        logs[f"{prefix}_loss"] = float(loss.detach()) * n
        return loss

    # ------------------------------------------------------------------ BEiT-3 masked data modeling
    def text_mlm(self, ids: Tensor, padding_mask: Tensor, targets: Tensor, logs: Dict[str, float]) -> Tensor:
        """MLM on monomodal text: predict the corrupted tokens from the text alone."""
        out = self.backbone.forward_text(ids, padding_mask=padding_mask)
        return self._mlm(out.hidden, targets, "mlm", logs)

    def image_mim(self, image: Tensor, mask: Tensor, logs: Dict[str, float]) -> Tensor:
        """MIM on monomodal images: [MASK] replaces the masked patches; predict their targets."""
        grid = self._grid(image)
        targets = self.mim_targets(image, grid)
        out = self.backbone.forward_vision(image, masked_positions=mask)
        return self._mim(out.hidden[:, 1:], targets, mask, "mim", logs)

    def pair_mvlm(self, image: Tensor, image_mask: Tensor, ids: Tensor, padding_mask: Tensor, targets: Tensor,
                  logs: Dict[str, float]) -> Tensor:
        """MVLM on image-text pairs: recover masked text tokens and masked patches from the fused pair."""
        grid = self._grid(image)
        out = self.backbone.forward_fused(image, ids, padding_mask=padding_mask, masked_positions=image_mask)
        loss = self._mlm(out.text_tokens, targets, "mvlm_text", logs)
        # also when no patch is masked (zero loss, zero count): every rank must log the same keys and
        # touch the same parameters, or fairseq's summed stats and the gradient reduction fall out of step
        return loss + self._mim(out.vision_tokens[:, 1:], self.mim_targets(image, grid), image_mask,
                                "mvlm_image", logs)

    def _grid(self, image: Tensor) -> Tuple[int, int]:
        p = self.backbone.cfg.patch_size
        return image.shape[-2] // p, image.shape[-1] // p

    # ------------------------------------------------------------------ VLMo
    def vlmo(self, image: Tensor, ids: Tensor, padding_mask: Tensor, mlm_ids: Tensor, mlm_targets: Tensor,
             logs: Dict[str, float], generator: Optional[torch.Generator] = None,
             switches: "VlmoObjectives" = None) -> Tensor:
        """ITC (gathered across ranks) + ITM (hard negatives from the gathered similarities) + MLM on pairs;
        ``switches`` turns each one off (VLMo Table 5 ablations). ITM without ITC still mines its negatives
        from the (then untrained) contrastive similarities."""
        if not self.vlmo_heads:
            raise ValueError("this model was built without VLMo heads (vlmo_heads=False)")
        switches = switches or VlmoObjectives()
        loss = image.new_zeros(())
        if switches.itc or switches.itm:
            with torch.set_grad_enabled(torch.is_grad_enabled() and switches.itc):
                logits_i2t, logits_t2i, labels = self._contrast(image, ids, padding_mask)
            if switches.itc:
                batch = labels.shape[0]
                itc = (F.cross_entropy(logits_i2t.float(), labels) + F.cross_entropy(logits_t2i.float(), labels)) / 2
                logs["itc_loss"] = float(itc.detach()) * 2 * batch
                logs["itc_correct"] = int((logits_i2t.argmax(-1) == labels).sum() +
                                          (logits_t2i.argmax(-1) == labels).sum())
                logs["itc_count"] = 2 * batch
                loss = loss + itc
            if switches.itm:
                loss = loss + self._itm(image, ids, padding_mask, logits_i2t, logits_t2i, labels, logs, generator)
        if switches.mlm:
            out = self.backbone.forward_fused(image, mlm_ids, padding_mask=padding_mask)
            loss = loss + self._mlm(out.text_tokens, mlm_targets, "vlmo_mlm", logs)
        return loss

    def _contrast(self, image: Tensor, ids: Tensor, padding_mask: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Image-to-text and text-to-image logits against every rank's batch, and the positive columns."""
        vision, text = self.backbone.forward_dual(image, ids, padding_mask)
        img = F.normalize(self.vision_head(vision.vision_cls), dim=-1)
        txt = F.normalize(self.language_head(text.text_cls), dim=-1)
        all_img, all_txt = gather_with_grad(img), gather_with_grad(txt)
        scale = self.logit_scale.clamp(max=math.log(100.0)).exp()
        batch = img.shape[0]
        labels = torch.arange(batch, device=img.device) + _rank() * batch
        return scale * img @ all_txt.t(), scale * txt @ all_img.t(), labels

    def _itm(self, image: Tensor, ids: Tensor, padding_mask: Tensor, logits_i2t: Tensor, logits_t2i: Tensor,
             labels: Tensor, logs: Dict[str, float], generator: Optional[torch.Generator]) -> Tensor:
        """ITM with global hard negatives: candidates are the images/texts of every rank."""
        batch = image.shape[0]
        with torch.no_grad():
            pos_ids, pos_pad = _pad_to_common_length(ids, padding_mask)
            cand_images, cand_ids = gather_no_grad(image), gather_no_grad(pos_ids)
            cand_pad = gather_no_grad(pos_pad)
            neg_txt = sample_hard_negatives(logits_i2t.detach(), labels, generator)
            neg_img = sample_hard_negatives(logits_t2i.detach(), labels, generator)
        itm_image = torch.cat([image, image, cand_images[neg_img]], 0)
        itm_ids = torch.cat([pos_ids, cand_ids[neg_txt], pos_ids], 0)
        itm_pad = torch.cat([pos_pad, cand_pad[neg_txt], pos_pad], 0)
        itm_labels = torch.cat([torch.ones(batch), torch.zeros(2 * batch)]).long().to(image.device)
        fused = self.backbone.forward_fused(itm_image, itm_ids, padding_mask=itm_pad)
        itm_logits = self.itm_head(fused.text_cls)
        itm = F.cross_entropy(itm_logits.float(), itm_labels)
        logs["itm_loss"] = float(itm.detach()) * 3 * batch
        logs["itm_correct"] = int((itm_logits.argmax(-1) == itm_labels).sum())
        logs["itm_count"] = 3 * batch
        return itm

    # ------------------------------------------------------------------ export
    def head_state_dict(self) -> Dict[str, Tensor]:
        """Head weights under the released names (``mlm_head.*``, ``mim_head.*``, ITC heads, logit_scale)."""
        out = {f"mlm_head.{k}": v for k, v in self.mlm_head.state_dict().items()}
        if self.mim_target == "vqkd":
            out.update({f"mim_head.{k}": v for k, v in self.mim_head.state_dict().items()})
        if self.vlmo_heads:
            out["vision_head.weight"] = self.vision_head.weight
            out["language_head.weight"] = self.language_head.weight
            out["logit_scale"] = self.logit_scale
        return {k: v.detach().clone() for k, v in out.items()}

    def load_heads(self, heads: Dict[str, Tensor]) -> Sequence[str]:
        """Load released head weights (from ``build_backbone(...).load_report.heads``); returns loaded keys."""
        own = dict(self.named_parameters())
        loaded = []
        for key, value in heads.items():
            if key in own:
                if own[key].shape != value.shape:
                    raise ValueError(f"head {key}: checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)}"
                                     " (text vocabulary or codebook size differs)")
                with torch.no_grad():
                    own[key].copy_(value)
                loaded.append(key)
        return loaded


def export_state_dict(model: MaskedDataModel) -> Dict[str, Tensor]:
    """The backbone checkpoint other plugins load: released key layout (decoupled backbones) or our own
    layout (shared backbones, which have no released layout), plus the heads."""
    return backbone_export_state_dict(model.backbone, model.head_state_dict())[0]
