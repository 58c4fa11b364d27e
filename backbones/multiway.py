"""Multiway Transformer: the one backbone behind BEiT-3, VLMo and VL-BEiT.

Papers: "Image as a Foreign Language: BEiT Pretraining for All Vision and Vision-Language Tasks"
(Wang et al., 2022), "VLMo: Unified Vision-Language Pre-Training with Mixture-of-Modality-Experts"
(Bao et al., 2021), "VL-BEiT: Generative Vision-Language Pretraining" (Bao et al., 2022).

Two layouts share this implementation:

* ``decoupled`` — the released BEiT-3 checkpoints: every projection and layer norm has a vision and a
  language copy; a fused sequence (vision tokens first) is split at the vision/text boundary and each
  part goes through its own copy. Only the attention softmax sees the whole sequence.
* ``shared`` — the paper's giant model and VLMo: attention (and its input norm) is shared; each layer has
  vision and language FFN experts, and the top layers add a vision-language expert that fused input uses.

VLMo's released models also differ outside the layers, each a config switch here: a relative position bias
shared by all layers instead of absolute positions (``relative_position_bias``, see
``relative_position.py``), a BERT-style LayerNorm on the text embeddings, and one final LayerNorm.

Routing is explicit: every forward receives a :class:`Routing` that says which expert sees which tokens.
No module stores per-call state; the key/value cache for incremental decoding is passed in and returned.
"""
from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.utils._pytree as pytree
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from timm.layers import DropPath, resample_abs_pos_embed, trunc_normal_

from .attention import AttentionKernel, attend
from .relative_position import RelativePositionBias, TokenSpan

__all__ = [
    "Layout", "Modality", "Routing", "MultiwayConfig", "MultiwayOutput", "MultiwayTransformer",
    "MultiwayBlock", "MultiwayAttention", "FeedForward", "PerModality", "KVCache", "POSITION_OFFSET", "TokenParts",
    "expert_of",
    "build_attention_mask", "unilm_attention_mask",
]

# fairseq convention kept by the released checkpoints: position rows 0 and 1 are never used.
POSITION_OFFSET = 2
# the model's attributes that embed text only
_LANGUAGE_EMBEDDINGS = ("text_embed", "text_embed_norm", "text_pos_embed")


class Layout(str, enum.Enum):
    DECOUPLED = "decoupled"
    SHARED = "shared"


class Modality(str, enum.Enum):
    VISION = "vision"
    TEXT = "text"
    FUSED = "fused"


@dataclass(frozen=True)
class Routing:
    """Which expert sees which tokens. ``split`` = number of leading vision tokens in a fused sequence.

    A fused sequence is always vision first. In layers that own a vision-language expert, fused input
    goes through that expert as a whole (VLMo / BEiT-3 giant); elsewhere it is split at ``split``.
    Incremental decoding steps of a fused model use ``Routing.fused(0)`` (only new text tokens).
    """

    modality: Modality
    split: int = 0

    @staticmethod
    def vision() -> "Routing":
        return Routing(Modality.VISION)

    @staticmethod
    def text() -> "Routing":
        return Routing(Modality.TEXT)

    @staticmethod
    def fused(split: int) -> "Routing":
        if split < 0:
            raise ValueError(f"split must be >= 0, got {split}")
        return Routing(Modality.FUSED, split)


# (key, value) per layer, each (batch, heads, tokens, head_dim)
KVCache = List[Tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class TokenParts:
    """A token sequence as the layers carry it: consecutive parts, each with the expert that serves it.

    Vision-only or text-only input is one part. A fused sequence stays (vision part, text part) through
    the layers without a vision-language expert, so per-modality projections and norms run on each part
    with no split / concatenate around every one of them (fewer copies, forward and backward); a layer that
    owns a vision-language expert joins the parts and serves the whole with it (VLMo, BEiT-3 giant).
    """

    parts: Tuple[Tensor, ...]
    experts: Tuple[str, ...]
    fused: bool

    @staticmethod
    def split(x: Tensor, routing: "Routing") -> "TokenParts":
        if routing.modality == Modality.VISION:
            return TokenParts((x,), ("vision",), False)
        if routing.modality == Modality.TEXT:
            return TokenParts((x,), ("text",), False)
        split = routing.split
        if split == 0:
            return TokenParts((x,), ("text",), True)
        if split >= x.shape[1]:
            return TokenParts((x,), ("vision",), True)
        return TokenParts((x[:, :split], x[:, split:]), ("vision", "text"), True)

    def joined(self) -> Tensor:
        return self.parts[0] if len(self.parts) == 1 else torch.cat(self.parts, dim=1)

    def served_by(self, module: nn.Module) -> "TokenParts":
        """These tokens as ``module`` (a PerModality / Shared wrapper) serves them: joined into one part for
        its vision-language expert when the sequence is fused and the module has one, else unchanged."""
        if self.fused and getattr(module, "vl", None) is not None and self.experts != ("vl",):
            return TokenParts((self.joined(),), ("vl",), True)
        return self

    def apply(self, module: nn.Module) -> "TokenParts":
        """Each part through its expert of ``module`` (after :meth:`served_by`)."""
        tokens = self.served_by(module)
        return tokens.with_parts(expert_of(module, e)(p) for p, e in zip(tokens.parts, tokens.experts))

    def with_parts(self, parts) -> "TokenParts":
        return TokenParts(tuple(parts), self.experts, self.fused)


# A pytree node (its parts are the children): FSDP2 finds the tensors a layer returns to hook the backward's
# re-gathering of parameters on them, and torch.compile / export flatten it like a tuple.
pytree.register_pytree_node(
    TokenParts, lambda t: (list(t.parts), (t.experts, t.fused)),
    lambda parts, context: TokenParts(tuple(parts), *context),
    serialized_type_name="beit3_plugins.backbones.multiway.TokenParts")


def expert_of(wrapper: nn.Module, expert: str) -> nn.Module:
    """The module of a :class:`PerModality` / :class:`Shared` wrapper that serves ``expert`` tokens."""
    if isinstance(wrapper, Shared):
        return wrapper.shared
    module = getattr(wrapper, expert)
    if module is None:
        raise ValueError(f"this model has no {expert} expert here (pruned, or not part of its layout)")
    return module


@dataclass
class MultiwayConfig:
    """Architecture of a Multiway Transformer. Registered variants subclass this with their defaults."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    ffn_dim: int = 3072
    layout: str = Layout.DECOUPLED.value
    # shared layout only: layers with index >= this own a vision-language FFN expert (None: no VL expert)
    vl_expert_start: Optional[int] = None
    # False: a standard (non-Multiway) Transformer, one FFN and one set of norms for every modality (the
    # "Std TRM" ablation of BEiT-3 Table 8a / VL-BEiT Table 5 / VLMo Table 5); needs the shared layout
    multiway: bool = True
    sub_ln: bool = True                 # Magneto sub-LN: LN before out_proj and inside the FFN
    layer_scale_init: Optional[float] = None   # VLMo-style per-channel residual scaling
    normalize_output: bool = True       # final LayerNorm (per modality unless shared_final_norm)
    shared_final_norm: bool = False     # VLMo: one final LayerNorm for every modality
    absolute_positions: bool = True     # learned absolute position tables (BEiT-3); VLMo has none
    relative_position_bias: bool = False   # VLMo: one relative position table shared by all layers
    relative_text_span: int = 196       # longest text the relative table covers (VLMo: 196)
    text_embed_norm: bool = False       # VLMo (BERT embeddings): LayerNorm after the word embeddings
    text_embed_norm_eps: float = 1e-12
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    vocab_size: int = 64010
    max_text_positions: int = 1024
    layer_norm_eps: float = 1e-5
    drop_path_rate: float = 0.0
    checkpoint_activations: bool = False   # initial value of the module's ``grad_checkpointing`` flag
    init_std: float = 0.02
    # "auto": bmm + softmax for bf16 on CPU with short sequences (2x faster there), fused SDPA otherwise; attention.py
    attention_kernel: str = AttentionKernel.AUTO.value

    def __post_init__(self) -> None:
        self.layout = Layout(self.layout).value
        self.attention_kernel = AttentionKernel(self.attention_kernel).value
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.layout == Layout.DECOUPLED.value and self.vl_expert_start is not None:
            raise ValueError("the decoupled layout has no vision-language expert (vl_expert_start must be None)")
        if not self.multiway and (self.layout != Layout.SHARED.value or self.vl_expert_start is not None):
            raise ValueError("multiway=False (standard Transformer) needs layout='shared' and no VL expert")
        if self.vl_expert_start is not None and not 0 <= self.vl_expert_start <= self.depth:
            raise ValueError(f"vl_expert_start {self.vl_expert_start} outside [0, {self.depth}]")
        if not self.absolute_positions and not self.relative_position_bias:
            raise ValueError("a model needs absolute positions, a relative position bias, or both")

    @property
    def max_text_len(self) -> int:
        """Longest text (in tokens) the position tables cover."""
        limits = []
        if self.absolute_positions:
            limits.append(self.max_text_positions - POSITION_OFFSET)
        if self.relative_position_bias:
            limits.append(self.relative_text_span)
        return min(limits)

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_vision_positions(self) -> int:
        return self.grid_size ** 2 + 1 + POSITION_OFFSET


@dataclass
class MultiwayOutput:
    """Encoder output. ``hidden`` is (B, N, D); for fused input the first ``split`` tokens are vision."""

    hidden: Tensor
    routing: Routing
    padding_mask: Optional[Tensor] = None
    intermediates: List[Tensor] = dataclasses.field(default_factory=list)
    past_kv: Optional[KVCache] = None
    patch_grid: Optional[Tuple[int, int]] = None

    @property
    def vision_tokens(self) -> Tensor:
        if self.routing.modality == Modality.TEXT:
            raise ValueError("text-only output has no vision tokens")
        return self.hidden if self.routing.modality == Modality.VISION else self.hidden[:, : self.routing.split]

    @property
    def text_tokens(self) -> Tensor:
        if self.routing.modality == Modality.VISION:
            raise ValueError("vision-only output has no text tokens")
        return self.hidden if self.routing.modality == Modality.TEXT else self.hidden[:, self.routing.split:]

    @property
    def vision_cls(self) -> Tensor:
        return self.vision_tokens[:, 0]

    @property
    def text_cls(self) -> Tensor:
        return self.text_tokens[:, 0]


class PerModality(nn.Module):
    """One copy of a module per modality expert; applies the right copy to the right tokens."""

    def __init__(self, make: "callable", with_vl: bool = False) -> None:
        super().__init__()
        self.vision = make()
        self.text = make()
        self.vl = make() if with_vl else None

    def forward(self, x: Tensor, routing: Routing) -> Tensor:
        return TokenParts.split(x, routing).apply(self).joined()


class Shared(nn.Module):
    """A single module used by every modality (same call signature as :class:`PerModality`)."""

    def __init__(self, make: "callable") -> None:
        super().__init__()
        self.shared = make()

    def forward(self, x: Tensor, routing: Routing) -> Tensor:  # noqa: ARG002 - same signature as PerModality
        return self.shared(x)


class FeedForward(nn.Module):
    """fc1 -> GELU -> (sub-LN) -> fc2."""

    def __init__(self, dim: int, hidden: int, sub_ln: bool, eps: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(hidden, eps=eps) if sub_ln else nn.Identity()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.norm(self.act(self.fc1(x))))


class MultiwayAttention(nn.Module):
    """Multi-head self-attention whose projections are per modality (decoupled) or shared.

    q/k/v are one fused projection per expert (one matmul instead of three); the released checkpoints'
    separate ``q_proj``/``k_proj``/``v_proj`` are concatenated on load (see ``beit3.checkpoint_filter_fn``).
    """

    def __init__(self, cfg: MultiwayConfig) -> None:
        super().__init__()
        dim, eps = cfg.embed_dim, cfg.layer_norm_eps
        self.num_heads = cfg.num_heads
        self.head_dim = dim // cfg.num_heads
        self.kernel = AttentionKernel(cfg.attention_kernel)
        wrap = PerModality if cfg.layout == Layout.DECOUPLED.value else Shared
        self.qkv = wrap(lambda: nn.Linear(dim, 3 * dim))
        self.inner_norm = wrap(lambda: nn.LayerNorm(dim, eps=eps)) if cfg.sub_ln else None
        self.proj = wrap(lambda: nn.Linear(dim, dim))

    def forward(self, tokens: TokenParts, mask: Optional[Tensor] = None,
                past_kv: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[TokenParts, Tuple[Tensor, Tensor]]:
        """Each part's queries attend to the keys and values of every part (and of ``past_kv``). ``mask``
        rows are split between the parts when it has one row per query."""
        queries, keys, values = [], [], []
        for x, expert in zip(tokens.parts, tokens.experts):
            batch, length, _ = x.shape
            qkv = expert_of(self.qkv, expert)(x).view(batch, length, 3, self.num_heads, self.head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            queries.append(q)
            keys.append(k)
            values.append(v)
        k = keys[0] if len(keys) == 1 else torch.cat(keys, dim=2)
        v = values[0] if len(values) == 1 else torch.cat(values, dim=2)
        if past_kv is not None:
            k = torch.cat([past_kv[0], k], dim=2)
            v = torch.cat([past_kv[1], v], dim=2)
        per_query_rows = mask is not None and mask.shape[-2] != 1 and len(queries) > 1
        outputs, start = [], 0
        for q, expert in zip(queries, tokens.experts):
            batch, _, length, _ = q.shape
            part_mask = mask[..., start:start + length, :] if per_query_rows else mask
            out = attend(q, k, v, part_mask, self.kernel).transpose(1, 2).reshape(batch, length, -1)
            if self.inner_norm is not None:
                out = expert_of(self.inner_norm, expert)(out)
            outputs.append(expert_of(self.proj, expert)(out))
            start += length
        return tokens.with_parts(outputs), (k, v)


class MultiwayBlock(nn.Module):
    """Pre-LN block: x += drop_path(attn(norm1(x))); x += drop_path(ffn(norm2(x)))."""

    def __init__(self, cfg: MultiwayConfig, drop_path: float, with_vl: bool) -> None:
        super().__init__()
        dim, eps = cfg.embed_dim, cfg.layer_norm_eps
        decoupled = cfg.layout == Layout.DECOUPLED.value
        make_norm = lambda: nn.LayerNorm(dim, eps=eps)  # noqa: E731
        self.norm1 = PerModality(make_norm) if decoupled else Shared(make_norm)
        self.attn = MultiwayAttention(cfg)
        make_ffn = lambda: FeedForward(dim, cfg.ffn_dim, cfg.sub_ln, eps)  # noqa: E731
        if cfg.multiway:
            self.norm2 = PerModality(make_norm, with_vl=with_vl)
            self.ffn = PerModality(make_ffn, with_vl=with_vl)
        else:
            self.norm2, self.ffn = Shared(make_norm), Shared(make_ffn)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if cfg.layer_scale_init is not None:
            self.gamma_attn = nn.Parameter(torch.full((dim,), cfg.layer_scale_init))
            self.gamma_ffn = nn.Parameter(torch.full((dim,), cfg.layer_scale_init))
        else:
            self.gamma_attn = self.gamma_ffn = None

    @property
    def has_vl_expert(self) -> bool:
        return getattr(self.ffn, "vl", None) is not None

    def forward(self, tokens: TokenParts, mask: Optional[Tensor] = None,
                past_kv: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[TokenParts, Tuple[Tensor, Tensor]]:
        """x += drop_path(attn(norm1(x))); x += drop_path(ffn(norm2(x))) on every part; a fused sequence
        is joined for the FFN when this layer has a vision-language expert."""
        attn_out, present = self.attn(tokens.apply(self.norm1), mask, past_kv)
        tokens = self._add_residual(tokens, attn_out, self.gamma_attn)
        tokens = tokens.served_by(self.ffn)
        ffn_out = tokens.apply(self.norm2).apply(self.ffn)
        return self._add_residual(tokens, ffn_out, self.gamma_ffn), present

    def _add_residual(self, tokens: TokenParts, update: TokenParts, gamma: Optional[Tensor]) -> TokenParts:
        """Residual with layer scale and stochastic depth: one keep/drop draw per sample for all parts, as
        timm's DropPath draws it for a whole sequence."""
        scale = None
        if isinstance(self.drop_path, DropPath) and self.training and self.drop_path.drop_prob > 0:
            keep = 1 - self.drop_path.drop_prob
            scale = tokens.parts[0].new_empty((tokens.parts[0].shape[0], 1, 1)).bernoulli_(keep)
            if self.drop_path.scale_by_keep:
                scale.div_(keep)
        parts = []
        for x, dx in zip(tokens.parts, update.parts):
            if gamma is not None:
                dx = dx * gamma
            parts.append(x + (dx if scale is None else dx * scale))
        return tokens.with_parts(parts)


def unilm_attention_mask(num_vision: int, num_text: int, device=None) -> Tensor:
    """UniLM's sequence-to-sequence mask for a fused (vision first) sequence, (N, N) bool, True = blocked:
    image<->image full, text->image full, text->text causal, image->text blocked (BEiT-3 captioning)."""
    n = num_vision + num_text
    blocked = torch.zeros(n, n, dtype=torch.bool, device=device)
    blocked[:num_vision, num_vision:] = True
    causal = torch.ones(num_text, num_text, dtype=torch.bool, device=device).tril()
    blocked[num_vision:, num_vision:] = ~causal
    return blocked


def build_attention_mask(padding_mask: Optional[Tensor], blocked: Optional[Tensor]) -> Optional[Tensor]:
    """Combine a key padding mask (B, Nk; True = pad) and a blocked-pair mask ((Nq, Nk) or (B, Nq, Nk);
    True / 1 = may not attend) into the boolean ``allowed`` mask SDPA takes, or None when nothing is masked.
    """
    if padding_mask is None and blocked is None:
        return None
    allowed = None
    if blocked is not None:
        if blocked.dtype != torch.bool:
            blocked = blocked != 0
        allowed = ~blocked
        allowed = allowed.unsqueeze(0) if allowed.dim() == 2 else allowed
        allowed = allowed.unsqueeze(1)  # (B|1, 1, Nq, Nk)
    if padding_mask is not None:
        keep = ~padding_mask.bool()[:, None, None, :]
        allowed = keep if allowed is None else allowed & keep
    return allowed


class MultiwayTransformer(nn.Module):
    """Multiway Transformer encoder with vision, text, fused and dual-encoder modes.

    ``forward_vision``, ``forward_text`` and ``forward_fused`` are the entry points; ``forward_dual``
    encodes images and texts separately (retrieval). ``forward_features`` dispatches on which inputs
    are given, timm-style.
    """

    def __init__(self, cfg: MultiwayConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim = cfg.embed_dim
        # timm style: a flag on the module (set_grad_checkpointing), never written back into the shared cfg
        self.grad_checkpointing = bool(cfg.checkpoint_activations)
        # names of sub-modules / parameters removed by prune_to_vision / prune_intermediate_layers
        self.pruned: Tuple[str, ...] = ()
        # vision embedding: conv patchify, learnable [CLS] and [MASK] (MIM) tokens
        self.patch_embed = nn.Conv2d(cfg.in_chans, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.text_embed = nn.Embedding(cfg.vocab_size, dim)
        self.text_embed_norm = nn.LayerNorm(dim, eps=cfg.text_embed_norm_eps) if cfg.text_embed_norm else None
        if cfg.absolute_positions:
            self.vision_pos_embed = nn.Parameter(torch.zeros(1, cfg.num_vision_positions, dim))
            self.text_pos_embed = nn.Parameter(torch.zeros(1, cfg.max_text_positions, dim))
        else:
            self.vision_pos_embed = self.text_pos_embed = None
        self.rel_pos = (RelativePositionBias(cfg.grid_size, cfg.num_heads, cfg.depth, cfg.relative_text_span)
                        if cfg.relative_position_bias else None)
        rates = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]  # stochastic depth rule
        vl_start = cfg.depth if cfg.vl_expert_start is None else cfg.vl_expert_start
        self.layers = nn.ModuleList(
            MultiwayBlock(cfg, drop_path=rates[i], with_vl=i >= vl_start) for i in range(cfg.depth)
        )
        make_norm = lambda: nn.LayerNorm(dim, eps=cfg.layer_norm_eps)  # noqa: E731
        if not cfg.normalize_output:
            # as in the released task models (e.g. VQA): a pretrained file's final norm is deliberately unused
            self.norm = None
            self.pruned = self.pruned + ("norm",)
        elif cfg.shared_final_norm or not cfg.multiway:
            self.norm = Shared(make_norm)
        else:
            self.norm = PerModality(make_norm, with_vl=cfg.vl_expert_start is not None)
        self.init_weights()

    # ------------------------------------------------------------------ init
    def init_weights(self) -> None:
        std = self.cfg.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=std)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for p in (self.cls_token, self.mask_token, self.vision_pos_embed, self.text_pos_embed):
            if p is not None:
                trunc_normal_(p, std=std)
        if self.rel_pos is not None:
            nn.init.zeros_(self.rel_pos.table)
        trunc_normal_(self.text_embed.weight, std=std)
        trunc_normal_(self.patch_embed.weight, std=std)
        nn.init.zeros_(self.patch_embed.bias)
        if self.cfg.sub_ln:
            # Magneto: scale the value/output projections and FFN weights by sqrt(log(2L))
            scale = math.sqrt(math.log(2 * self.cfg.depth))
            dim = self.cfg.embed_dim
            with torch.no_grad():
                for name, p in self.named_parameters():
                    if not name.endswith("weight"):
                        continue
                    if ".ffn." in name and (".fc1." in name or ".fc2." in name):
                        p.mul_(scale)
                    elif ".attn.proj." in name:
                        p.mul_(scale)
                    elif ".attn.qkv." in name:
                        p[2 * dim:].mul_(scale)

    def no_weight_decay(self) -> set:
        names = {"cls_token", "mask_token", "vision_pos_embed", "text_pos_embed", "rel_pos.table"}
        return {n for n, _ in self.named_parameters() if n in names}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each layer's activations in backward (training only); a flag on this module."""
        self.grad_checkpointing = enable

    def _checkpointed(self) -> bool:
        return self.grad_checkpointing and self.training and torch.is_grad_enabled()

    # ------------------------------------------------------------------ embeddings
    def vision_position_embedding(self, grid: Tuple[int, int]) -> Optional[Tensor]:
        """Position table for a (rows, cols) patch grid, resampled bicubically when it differs (None
        without absolute positions)."""
        if self.vision_pos_embed is None:
            return None
        base = self.cfg.grid_size
        prefix = 1 + POSITION_OFFSET
        if tuple(grid) == (base, base):
            return self.vision_pos_embed[:, POSITION_OFFSET:]
        table = resample_abs_pos_embed(self.vision_pos_embed, new_size=list(grid), old_size=[base, base],
                                       num_prefix_tokens=prefix, antialias=False)
        return table[:, POSITION_OFFSET:]

    def embed_image(self, image: Tensor, masked_positions: Optional[Tensor] = None
                    ) -> Tuple[Tensor, Tuple[int, int]]:
        """Patch tokens with [CLS] first and positions added: (B, 1 + h*w, D), (h, w).

        ``masked_positions`` (B, h*w; 1/True = masked) replaces those patches with the [MASK] token (MIM).
        """
        if image.dim() != 4 or image.shape[1] != self.cfg.in_chans:
            raise ValueError(f"expected images of shape (B, {self.cfg.in_chans}, H, W), got {tuple(image.shape)}")
        p = self.cfg.patch_size
        if image.shape[-2] % p or image.shape[-1] % p:
            raise ValueError(f"image size {tuple(image.shape[-2:])} is not a multiple of the patch size {p}")
        x = self.patch_embed(image)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        if masked_positions is not None and self.mask_token is None:
            raise ValueError("this model's [MASK] token was pruned (prune_to_vision): no masked image input")
        if masked_positions is not None:
            if masked_positions.shape != x.shape[:2]:
                raise ValueError(f"masked_positions must be {tuple(x.shape[:2])}, got {tuple(masked_positions.shape)}")
            w = masked_positions.unsqueeze(-1).type_as(x)
            x = x * (1 - w) + self.mask_token.to(x.dtype) * w
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        positions = self.vision_position_embedding(grid)
        return (x if positions is None else x + positions), grid

    def embed_text(self, token_ids: Tensor, padding_mask: Optional[Tensor] = None, position_start: int = 0
                   ) -> Tensor:
        """Token (+ absolute position) embeddings, then the embedding norm if the config has one; padded
        positions are zeroed (as the released BEiT-3 does)."""
        if token_ids.dim() != 2:
            raise ValueError(f"expected token ids of shape (B, T), got {tuple(token_ids.shape)}")
        length = token_ids.shape[1]
        if position_start + length > self.cfg.max_text_len:
            raise ValueError(
                f"text of {position_start + length} tokens exceeds the {self.cfg.max_text_len}"
                " text positions of this model; truncate it in the tokenizer (max_len)")
        if self.text_embed is None:
            raise ValueError("this model was pruned to its vision path (prune_to_vision): it takes no text")
        if token_ids.device.type == "cpu" and not torch.compiler.is_compiling():
            self.check_token_ids(token_ids)  # free on the host; on a GPU it would sync every forward
        x = self.text_embed(token_ids)
        if self.text_pos_embed is not None:
            start = POSITION_OFFSET + position_start
            x = x + self.text_pos_embed[:, start:start + length]
        if self.text_embed_norm is not None:
            x = self.text_embed_norm(x)
        if padding_mask is not None:
            x = x * (~padding_mask.bool()).unsqueeze(-1).type_as(x)
        return x

    def check_token_ids(self, token_ids: Tensor) -> None:
        """Refuse ids outside the vocabulary (a tokenizer that does not match the model). The forward checks
        host tensors itself; for device tensors it does not (reading the range back would stop the GPU's
        queue every forward, and break a compiled graph), so loaders and pipelines call this where ids enter,
        and an out-of-range id on the GPU is the embedding's device-side assert."""
        if token_ids.numel() and (int(token_ids.max()) >= self.cfg.vocab_size or int(token_ids.min()) < 0):
            raise ValueError(f"token id out of range [0, {self.cfg.vocab_size}): tokenizer and model vocabularies differ")

    # ------------------------------------------------------------------ encoder
    def encode(self, x: Tensor, routing: Routing, padding_mask: Optional[Tensor] = None,
               attn_mask: Optional[Tensor] = None, past_kv: Optional[KVCache] = None, use_cache: bool = False,
               return_intermediates: Sequence[int] = (), patch_grid: Optional[Tuple[int, int]] = None,
               text_start: int = 0) -> MultiwayOutput:
        """Run the layers on already-embedded tokens.

        ``padding_mask`` covers the keys (past + new tokens when a cache is given); ``attn_mask`` is
        (Nq, Nk) or (B, Nq, Nk) with True/1 = blocked. ``patch_grid`` and ``text_start`` (position of the
        first new text token) place the tokens for a relative position bias.
        """
        if past_kv is not None and len(past_kv) != len(self.layers):
            raise ValueError(f"past_kv has {len(past_kv)} layers, the model {len(self.layers)}")
        mask = build_attention_mask(padding_mask, attn_mask)
        layer_masks = self._layer_masks(mask, x, routing, past_kv, patch_grid, text_start)
        wanted = {i if i >= 0 else len(self.layers) + i for i in return_intermediates}
        intermediates: List[Tensor] = []
        presents: KVCache = []
        tokens = TokenParts.split(x, routing)
        for i in range(len(self.layers)):
            layer_past = past_kv[i] if past_kv is not None else None
            layer_mask = layer_masks[i] if layer_masks is not None else mask
            tokens, present = self._run_layer_tokens(i, tokens, layer_mask, layer_past)
            if use_cache:
                presents.append(present)
            if i in wanted:
                intermediates.append(tokens.joined())
        if self.norm is not None:
            tokens = tokens.apply(self.norm)
        x = tokens.joined()
        return MultiwayOutput(hidden=x, routing=routing, padding_mask=padding_mask, intermediates=intermediates,
                              past_kv=presents if use_cache else None, patch_grid=patch_grid)

    def _layer_masks(self, allowed: Optional[Tensor], x: Tensor, routing: Routing, past_kv: Optional[KVCache],
                     grid: Optional[Tuple[int, int]], text_start: int) -> Optional[List[Tensor]]:
        """Per-layer float masks (relative position bias, -inf where not allowed), or None without a bias."""
        if self.rel_pos is None:
            return None
        n = x.shape[1]
        past = past_kv[0][0].shape[2] if past_kv is not None else 0
        if routing.modality == Modality.TEXT:
            query = TokenSpan(text_start=text_start, text_len=n)
            key = TokenSpan(text_start=text_start - past, text_len=past + n)
        else:
            num_vision = n if routing.modality == Modality.VISION else routing.split
            if num_vision and past:
                raise ValueError("image tokens cannot be appended to a key/value cache")
            if num_vision and grid is None:
                side = int(round((num_vision - 1) ** 0.5))
                if side * side != num_vision - 1:
                    raise ValueError(f"{num_vision} image tokens are not [CLS] + a square grid; pass patch_grid")
                grid = (side, side)
            query = TokenSpan(num_vision, grid, text_start, n - num_vision)
            key = query if not past else TokenSpan(past - text_start, None, 0, text_start + n)
        bias = self.rel_pos(query, key).to(x.dtype)
        if allowed is None:
            return list(bias.unsqueeze(1))
        blocked = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill(~allowed, float("-inf"))
        return [layer_bias.unsqueeze(0) + blocked for layer_bias in bias]

    def forward_vision(self, image: Tensor, masked_positions: Optional[Tensor] = None,
                       return_intermediates: Sequence[int] = ()) -> MultiwayOutput:
        x, grid = self.embed_image(image, masked_positions)
        return self.encode(x, Routing.vision(), return_intermediates=return_intermediates, patch_grid=grid)

    def forward_text(self, token_ids: Tensor, padding_mask: Optional[Tensor] = None,
                     attn_mask: Optional[Tensor] = None, return_intermediates: Sequence[int] = ()
                     ) -> MultiwayOutput:
        x = self.embed_text(token_ids, padding_mask)
        return self.encode(x, Routing.text(), padding_mask=padding_mask, attn_mask=attn_mask,
                           return_intermediates=return_intermediates)

    def forward_fused(self, image: Tensor, token_ids: Tensor, padding_mask: Optional[Tensor] = None,
                      attn_mask: Optional[Tensor] = None, masked_positions: Optional[Tensor] = None,
                      use_cache: bool = False, return_intermediates: Sequence[int] = ()) -> MultiwayOutput:
        """Image and text in one sequence (vision first); ``padding_mask`` covers the text only."""
        if image.shape[0] != token_ids.shape[0]:
            raise ValueError(f"batch sizes differ: {image.shape[0]} images, {token_ids.shape[0]} texts")
        vision, grid = self.embed_image(image, masked_positions)
        text = self.embed_text(token_ids, padding_mask)
        split = vision.shape[1]
        full_padding = None
        if padding_mask is not None:
            full_padding = torch.cat([padding_mask.new_zeros(vision.shape[:2]), padding_mask.bool()], dim=1)
        return self.encode(torch.cat([vision, text], dim=1), Routing.fused(split), padding_mask=full_padding,
                           attn_mask=attn_mask, use_cache=use_cache, return_intermediates=return_intermediates,
                           patch_grid=grid)

    def forward_text_step(self, token_ids: Tensor, past_kv: KVCache, position_start: int,
                          past_padding_mask: Optional[Tensor] = None, fused: bool = True,
                          attn_mask: Optional[Tensor] = None) -> MultiwayOutput:
        """Incremental decoding: encode new text tokens against cached keys/values.

        ``position_start`` is how many text tokens came before; ``past_padding_mask`` (B, N_past) marks
        padded cached keys. Returns the new tokens' states and the extended cache.
        """
        x = self.embed_text(token_ids, position_start=position_start)
        routing = Routing.fused(0) if fused else Routing.text()
        padding = None
        if past_padding_mask is not None:
            padding = torch.cat([past_padding_mask.bool(), past_padding_mask.new_zeros(token_ids.shape).bool()], 1)
        return self.encode(x, routing, padding_mask=padding, attn_mask=attn_mask, past_kv=past_kv, use_cache=True,
                           text_start=position_start)

    def forward_dual(self, image: Tensor, token_ids: Tensor, padding_mask: Optional[Tensor] = None
                     ) -> Tuple[MultiwayOutput, MultiwayOutput]:
        """Dual encoder (retrieval): image and text encoded separately."""
        return self.forward_vision(image), self.forward_text(token_ids, padding_mask)

    def forward_features(self, image: Optional[Tensor] = None, token_ids: Optional[Tensor] = None,
                         padding_mask: Optional[Tensor] = None, **kwargs) -> MultiwayOutput:
        if image is not None and token_ids is not None:
            return self.forward_fused(image, token_ids, padding_mask, **kwargs)
        if image is not None:
            return self.forward_vision(image, **kwargs)
        if token_ids is not None:
            return self.forward_text(token_ids, padding_mask, **kwargs)
        raise ValueError("give an image, token ids, or both")

    forward = forward_features

    # ------------------------------------------------------------------ running layers (adapters)
    def run_layer(self, index: int, x: Tensor, routing: Routing, mask: Optional[Tensor] = None,
                  past_kv: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        """Layer ``index`` on ``x``, with activation checkpointing when ``grad_checkpointing`` is on (training).
        ``mask``: SDPA's bool ``allowed`` mask or an additive float mask, as built by :meth:`encode`."""
        tokens, present = self._run_layer_tokens(index, TokenParts.split(x, routing), mask, past_kv)
        return tokens.joined(), present

    def _run_layer_tokens(self, index: int, tokens: TokenParts, mask: Optional[Tensor],
                          past_kv: Optional[Tuple[Tensor, Tensor]]) -> Tuple[TokenParts, Tuple[Tensor, Tensor]]:
        layer = self.layers[index]
        if self._checkpointed():
            return checkpoint(layer, tokens, mask, past_kv, use_reentrant=False)
        return layer(tokens, mask, past_kv)

    def vision_attention_bias(self, index: int, grid: Tuple[int, int], cls_token: bool = True
                              ) -> Optional[Tensor]:
        """Layer ``index``'s relative position bias (heads, N, N) for image tokens on a ``grid`` of patches
        ([CLS] first when ``cls_token``), or None for models without one (BEiT-3: absolute positions)."""
        if self.rel_pos is None:
            return None
        return self.rel_pos.vision_bias(grid, cls_token=cls_token, layer=index)

    def run_vision_layer(self, index: int, x: Tensor, grid: Tuple[int, int], cls_token: bool = True,
                         key_mask: Optional[Tensor] = None) -> Tensor:
        """Layer ``index`` on image tokens laid out on ``grid`` (h, w): a whole image (global attention) or a
        batch of windows (ViTDet), [CLS] first when ``cls_token``. ``key_mask`` (B, N), True = a real key (the
        padding of windows). The relative position bias for that grid (VLMo) is added here, so adapters that
        run the layers themselves need not know whether the model has one."""
        allowed = None if key_mask is None else key_mask.bool().reshape(x.shape[0], 1, 1, x.shape[1])
        mask = allowed
        bias = self.vision_attention_bias(index, grid, cls_token)
        if bias is not None:
            bias = bias.to(x.dtype).unsqueeze(0)
            mask = bias if allowed is None else bias.masked_fill(~allowed, float("-inf"))
        return self.run_layer(index, x, Routing.vision(), mask)[0]

    # ------------------------------------------------------------------ timm feature API
    def forward_intermediates(self, image: Tensor, indices: Union[int, Sequence[int], None] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False, return_prefix_tokens: bool = False):
        """timm's feature-extraction API on the vision path (``timm.models.beit.Beit.forward_intermediates``).

        ``indices``: an int n takes the last n layers, a sequence takes those layers (negative from the end).
        Intermediates are (B, D, h, w) (``NCHW``) or (B, h*w, D) (``NLC``) with [CLS] dropped (returned beside
        them as (B, 1, D) with ``return_prefix_tokens``); ``norm`` applies the final vision norm to each.
        Returns the intermediates, or (final hidden states, intermediates).
        """
        from timm.models._features import feature_take_indices

        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be NCHW or NLC, got {output_fmt!r}")
        take, last = feature_take_indices(len(self.layers), indices)
        x, (h, w) = self.embed_image(image)
        routing = Routing.vision()
        intermediates = []
        for i in range(last + 1 if (stop_early or intermediates_only) else len(self.layers)):
            x = self.run_vision_layer(i, x, (h, w))
            if i in take:
                out = self.norm(x, routing) if (norm and self.norm is not None) else x
                prefix, patches = out[:, :1], out[:, 1:]
                if output_fmt == "NCHW":
                    patches = patches.transpose(1, 2).reshape(x.shape[0], -1, h, w)
                intermediates.append((patches, prefix) if return_prefix_tokens else patches)
        if intermediates_only:
            return intermediates
        return (self.norm(x, routing) if self.norm is not None else x), intermediates

    # ------------------------------------------------------------------ pruning
    def prune_to_vision(self, keep_final_norm: bool = True) -> List[str]:
        """Remove what vision-only routing never runs, for dense-prediction adapters (unused parameters would
        trouble DDP and waste optimizer memory): text / VL experts, the text embeddings with their norm and
        positions, the [MASK] token (masked image modelling only), and the final norm unless
        ``keep_final_norm``. ``Routing.vision()`` forwards are unchanged. Returns the removed parameter names;
        :meth:`is_pruned_key` then tells a loader which checkpoint tensors belonged to removed parts."""
        before = set(dict(self.named_parameters()))
        removed: List[str] = []
        for name, module in list(self.named_modules()):
            if isinstance(module, PerModality):
                for attr in ("text", "vl"):
                    if getattr(module, attr) is not None:
                        setattr(module, attr, None)
                        removed.append(f"{name}.{attr}")
        for attr in _LANGUAGE_EMBEDDINGS + ("mask_token",) + (() if keep_final_norm else ("norm",)):
            if getattr(self, attr, None) is not None:
                setattr(self, attr, None)
                removed.append(attr)
        self.pruned = self.pruned + tuple(removed)
        return sorted(before - set(dict(self.named_parameters())))

    def prune_intermediate_layers(self, indices: Union[int, Sequence[int]] = 1, prune_norm: bool = False
                                  ) -> List[int]:
        """timm's API: drop the layers above the last one ``indices`` takes (and the final norm with
        ``prune_norm``); returns the taken layer indices."""
        from timm.models._features import feature_take_indices

        take, last = feature_take_indices(len(self.layers), indices)
        removed = [f"layers.{i}" for i in range(last + 1, len(self.layers))]
        self.layers = self.layers[: last + 1]
        if prune_norm and self.norm is not None:
            self.norm = None
            removed.append("norm")
        self.pruned = self.pruned + tuple(removed)
        return take

    def is_language_parameter(self, name: str) -> bool:
        """Whether a parameter serves text only: a text expert, or the text embeddings with their norm and
        positions (what VLMo's language stage trains and what ``prune_to_vision`` removes besides VL experts)."""
        parts = name.split(".")
        return "text" in parts or parts[0] in _LANGUAGE_EMBEDDINGS

    def is_pruned_key(self, key: str) -> bool:
        """Whether a state-dict key belongs to a part pruned from this model (so a checkpoint's tensor for it
        is deliberately unused, not unexpected)."""
        return any(key == p or key.startswith(p + ".") for p in self.pruned)

    # ------------------------------------------------------------------ parameter groups
    def layer_id(self, param_name: str) -> int:
        """Depth of a parameter for layer-wise lr decay: embeddings 0, layer i -> i + 1, the rest (final norm,
        relative position table) depth + 1. Read by :func:`.param_groups.param_groups_layer_decay`."""
        if param_name.startswith("layers."):
            return int(param_name.split(".")[1]) + 1
        if any(k in param_name for k in ("embed", "cls_token", "mask_token")):  # incl. text_embed_norm
            return 0
        return self.cfg.depth + 1

    def parameter_groups(self) -> Dict[str, int]:
        """Parameter count per component (vision / text / VL experts, shared attention, embeddings)."""
        counts: Dict[str, int] = {}
        for name, p in self.named_parameters():
            counts[_component_of(name)] = counts.get(_component_of(name), 0) + p.numel()
        return counts


def _component_of(name: str) -> str:
    parts = name.split(".")
    if name.startswith("text_embed"):
        return "word_embedding"
    if name.startswith(("patch_embed", "cls_token", "mask_token", "vision_pos_embed")):
        return "vision_embedding"
    if name.startswith("text_pos_embed"):
        return "text_embedding"
    for expert in ("vision", "text", "vl"):
        if expert in parts:
            return f"{expert}_expert"
    if ".attn." in name or ".norm1." in name:
        return "shared_attention"
    return "other"
