"""VQ-KD visual tokenizer (BEiT v2): the encoder half that turns images into discrete MIM targets.

Paper: "BEiT v2: Masked Image Modeling with Vector-Quantized Visual Tokenizers" (Peng et al., 2022);
BEiT-3 uses its CLIP-distilled tokenizer (VQ-KD_CLIP, 8192 codes of 32 dims) for MIM targets.
Only what tokenization needs is built: a ViT encoder (timm's ``Beit`` with absolute positions, no
relative bias, mean-pool ``fc_norm`` applied to patch tokens), the ``encode_task_layer`` MLP
(Linear -> Tanh -> Linear to the code dimension) and the l2-normalised codebook. The decoder and the
CLIP teacher are training-only and dropped by :func:`checkpoint_filter_fn` with a note.

Released file keys (``vqkd_encoder_base_decoder_*``): ``encoder.*`` (timm Beit names), ``encode_task_layer.{0,2}``,
``quantize.embedding.{weight,cluster_size,embed_avg,initted}``, ``quantize.cluster_size`` plus
``decoder.*``, ``decode_task_layer.*`` (ignored). Inputs are images scaled to [-1, 1] — exactly the
mean = std = 0.5 normalisation the BEiT-3 VL transforms produce.

A tokenizer without a file (tests, the CPU demo) starts from random encoder weights and, as the released
quantizer does when ``initted`` is 0, initialises its codebook by k-means on the first features it sees.
"""
from __future__ import annotations

import dataclasses
import logging
from functools import partial
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from beit3_plugins.checkpoint import load_state_dict_file, load_with_report
from beit3_plugins.pretraining.registry import TOKENIZERS

logger = logging.getLogger(__name__)

__all__ = ["VQKDConfig", "VQKDBaseConfig", "VQKDTinyConfig", "VQKDTokenizer", "checkpoint_filter_fn",
           "build_vqkd", "spherical_kmeans"]


@dataclasses.dataclass
class VQKDConfig:
    """Encoder + codebook sizes. Defaults: the released VQ-KD (ViT-B/16 encoder, 8192 x 32 codebook)."""

    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    num_codes: int = 8192
    code_dim: int = 32
    checkpoint: str = ""          # a released vqkd_*.pth (or our own export); empty: random + k-means init
    kmeans_iters: int = 10


@dataclasses.dataclass
class VQKDBaseConfig(VQKDConfig):
    pass


@dataclasses.dataclass
class VQKDTinyConfig(VQKDConfig):
    """Toy tokenizer for tests and the CPU demo (random encoder, k-means codebook)."""

    img_size: int = 64
    patch_size: int = 8
    embed_dim: int = 64
    depth: int = 2
    num_heads: int = 4
    num_codes: int = 64
    code_dim: int = 16


def spherical_kmeans(samples: Tensor, num_clusters: int, iters: int, generator: torch.Generator) -> Tuple[Tensor, Tensor]:
    """K-means with cosine similarity on l2-normalised ``samples`` (N, d); empty clusters keep their centre."""
    n = samples.shape[0]
    pick = (torch.randperm(n, generator=generator)[:num_clusters] if n >= num_clusters
            else torch.randint(0, n, (num_clusters,), generator=generator))
    means = samples[pick].clone()
    bins = torch.zeros(num_clusters, dtype=torch.long)
    for _ in range(iters):
        buckets = (samples @ means.t()).argmax(dim=-1)
        bins = torch.bincount(buckets, minlength=num_clusters)
        sums = torch.zeros_like(means).index_add_(0, buckets, samples)
        new = F.normalize(sums / bins.clamp(min=1)[:, None].to(sums.dtype), dim=-1)
        means = torch.where((bins == 0)[:, None], means, new)
    return means, bins


class _Codebook(nn.Module):
    """The released ``EmbeddingEMA`` state (weights as non-trainable parameters, same key names)."""

    def __init__(self, num_codes: int, code_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_codes, code_dim), requires_grad=False)
        self.cluster_size = nn.Parameter(torch.zeros(num_codes), requires_grad=False)
        self.embed_avg = nn.Parameter(torch.zeros(num_codes, code_dim), requires_grad=False)
        self.register_buffer("initted", torch.zeros(1))


class _Quantizer(nn.Module):
    def __init__(self, num_codes: int, code_dim: int) -> None:
        super().__init__()
        self.embedding = _Codebook(num_codes, code_dim)
        self.register_buffer("cluster_size", torch.zeros(num_codes))


@TOKENIZERS.register("vqkd_base", config=VQKDBaseConfig)
@TOKENIZERS.register("vqkd_tiny", config=VQKDTinyConfig)
class VQKDTokenizer(nn.Module):
    """Image (B, 3, H, W) in [-1, 1] -> code indices (B, h*w). Frozen: no gradients, no EMA updates."""

    def __init__(self, cfg: VQKDConfig) -> None:
        super().__init__()
        from timm.models.beit import Beit

        self.cfg = cfg
        self.encoder = Beit(img_size=cfg.img_size, patch_size=cfg.patch_size, num_classes=0,
                            embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads,
                            mlp_ratio=cfg.mlp_ratio, qkv_bias=True, use_abs_pos_emb=True, use_rel_pos_bias=False,
                            init_values=None, use_fc_norm=True, norm_layer=partial(nn.LayerNorm, eps=1e-6))
        self.encode_task_layer = nn.Sequential(nn.Linear(cfg.embed_dim, cfg.embed_dim), nn.Tanh(),
                                               nn.Linear(cfg.embed_dim, cfg.code_dim))
        self.quantize = _Quantizer(cfg.num_codes, cfg.code_dim)
        for p in self.parameters():
            p.requires_grad_(False)
        self.load_report = None
        if cfg.checkpoint:
            self.load_checkpoint(cfg.checkpoint)

    @property
    def num_codes(self) -> int:
        return self.cfg.num_codes

    @property
    def initialized(self) -> bool:
        return bool(self.quantize.embedding.initted.item())

    def train(self, mode: bool = True) -> "VQKDTokenizer":  # always evaluation mode (frozen teacher)
        return super().train(False)

    def load_checkpoint(self, path: str, strict: bool = True):
        state = load_state_dict_file(path)
        sd, notes = checkpoint_filter_fn(state, self)
        self.load_report = load_with_report(self, sd, strict=strict, source=path, notes=notes)
        if not self.initialized:
            raise ValueError(f"{path}: codebook is not initialised (quantize.embedding.initted is 0)")
        return self.load_report

    def features(self, image: Tensor) -> Tensor:
        """l2-normalised code-space features of every patch: (B, h*w, code_dim)."""
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got {tuple(image.shape)}")
        # the frozen tokenizer runs in its own dtype (a sharded bf16 model hands it bf16 images)
        image = image.to(self.encoder.patch_embed.proj.weight.dtype)
        tokens = self.encoder.forward_features(image)[:, self.encoder.num_prefix_tokens:]
        tokens = self.encoder.fc_norm(tokens)
        return F.normalize(self.encode_task_layer(tokens.float()), dim=-1)

    @torch.no_grad()
    def init_codebook(self, image: Tensor, seed: int = 0) -> Tensor:
        """K-means (cosine) codebook from the patch features of ``image``; returns cluster sizes."""
        samples = self.features(image).reshape(-1, self.cfg.code_dim)
        generator = torch.Generator().manual_seed(seed)
        means, bins = spherical_kmeans(samples.cpu(), self.cfg.num_codes, self.cfg.kmeans_iters, generator)
        book = self.quantize.embedding
        book.weight.copy_(means.to(book.weight))
        book.embed_avg.copy_(means.to(book.weight))
        book.cluster_size.copy_(bins.to(book.cluster_size))
        book.initted.fill_(1.0)
        return bins

    @torch.no_grad()
    def get_codebook_indices(self, image: Tensor, grid: Optional[Tuple[int, int]] = None) -> Tensor:
        """Code of every patch, (B, h*w) long. ``grid`` resizes the input so the tokenizer's patch grid
        matches the backbone's (e.g. a patch-14 backbone with a patch-16 tokenizer)."""
        if not self.initialized:
            raise RuntimeError("VQ-KD codebook not initialised: load released weights or call init_codebook()")
        if grid is not None:
            size = (grid[0] * self.cfg.patch_size, grid[1] * self.cfg.patch_size)
            if tuple(image.shape[-2:]) != size:
                image = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        feats = self.features(image)
        codebook = self.quantize.embedding.weight.to(feats.dtype)
        return (feats @ codebook.t()).argmax(dim=-1)  # = argmin of distance for unit vectors


def checkpoint_filter_fn(state_dict: Dict[str, Tensor], model: VQKDTokenizer) -> Tuple[Dict[str, Tensor], List[str]]:
    """Released VQ-KD file -> this tokenizer's keys: keep encoder / encode_task_layer / quantizer, drop the
    decoder, teacher and loss, resample the encoder's position table to the model's grid."""
    from timm.layers import resample_abs_pos_embed

    if "model" in state_dict and isinstance(state_dict["model"], dict):
        state_dict = state_dict["model"]
    keep = ("encoder.", "encode_task_layer.", "quantize.")
    out = {k: v for k, v in state_dict.items() if k.startswith(keep)}
    dropped = sorted({k.split(".")[0] for k in state_dict if not k.startswith(keep)})
    notes = [f"dropped training-only parts: {dropped}"] if dropped else []
    # attention biases: timm keeps k_bias as a non-persistent zero buffer, like the released model
    out = {k: v for k, v in out.items() if not k.endswith("attn.k_bias")}
    table = out.get("encoder.pos_embed")
    own = model.encoder.pos_embed
    if table is not None and own is not None and table.shape != own.shape:
        old = int(round((table.shape[1] - 1) ** 0.5))
        new = model.cfg.img_size // model.cfg.patch_size
        out["encoder.pos_embed"] = resample_abs_pos_embed(table.float(), new_size=[new, new], old_size=[old, old],
                                                          num_prefix_tokens=1).to(table.dtype)
        notes.append(f"tokenizer positions resampled from {old}x{old} to {new}x{new}")
    return out, notes


def build_vqkd(name: str = "vqkd_tiny", **overrides) -> VQKDTokenizer:
    """``build_vqkd("vqkd_base", checkpoint="vqkd_encoder_base_decoder_3x768x12_clip-d5036aa7.pth")``."""
    return TOKENIZERS.build(name, **overrides)
