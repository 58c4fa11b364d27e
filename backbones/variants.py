"""Registered variants of the Multiway Transformer: BEiT-3 (tiny/base/large/giant) and VLMo (tiny/base/large,
base-plus and its toy-size twin tiny-plus).

Each registered name has its own config dataclass (fairseq / timm style): ``BACKBONES.build("beit3_base",
drop_path_rate=0.1)`` or ``build_backbone("vlmo_base", checkpoint=...)``. The architecture switches are fields
of :class:`~.multiway.MultiwayConfig`; a variant is only a set of defaults. Sources: the released BEiT-3 code
(microsoft/unilm ``beit3/``: base/large, decoupled layout), the BEiT-3 paper (giant: shared attention, VL
experts in the top layers; its base ablation layout and the standard-Transformer ablation), the VL-BEiT paper
and the released VLMo code (microsoft/unilm ``vlmo/``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from beit3_plugins.backbones.registry import BACKBONES

from .multiway import POSITION_OFFSET, Layout, MultiwayConfig, MultiwayTransformer

__all__ = [
    "Beit3TinyConfig", "Beit3BaseConfig", "Beit3LargeConfig", "Beit3GiantConfig", "Beit3BaseSharedConfig",
    "Beit3BaseStandardConfig", "VlBeitBaseConfig", "Beit3TinySharedConfig", "Beit3TinyStandardConfig",
    "VlmoTinyConfig", "VlmoBaseConfig", "VlmoLargeConfig", "VlmoBasePlusConfig", "VlmoTinyPlusConfig",
    "is_vlmo", "build_backbone", "describe_backbone", "backbone_model_config",
]


# ---------------------------------------------------------------------------------------------- BEiT-3
@dataclass
class Beit3TinyConfig(MultiwayConfig):
    """Released (decoupled) layout at toy size, for tests and the CPU demo."""

    embed_dim: int = 64
    depth: int = 4
    num_heads: int = 4
    ffn_dim: int = 256
    img_size: int = 64
    patch_size: int = 8
    vocab_size: int = 1024
    max_text_positions: int = 66


@dataclass
class Beit3BaseConfig(MultiwayConfig):
    pass  # MultiwayConfig's defaults are BEiT-3 base (768 wide, 12 layers, 12 heads, FFN 3072)


@dataclass
class Beit3LargeConfig(MultiwayConfig):
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    ffn_dim: int = 4096


@dataclass
class Beit3GiantConfig(MultiwayConfig):
    """The paper's giant model: shared attention, V/L experts everywhere, VL experts in the top 3 layers."""

    embed_dim: int = 1408
    depth: int = 40
    num_heads: int = 16
    ffn_dim: int = 6144
    patch_size: int = 14
    layout: str = Layout.SHARED.value
    vl_expert_start: Optional[int] = 37


@dataclass
class Beit3BaseSharedConfig(MultiwayConfig):
    """The paper's base ablation layout (BEiT-3 Sec. 2.1 / 3.3): shared self-attention, V/L experts in every
    layer, vision-language experts in the top three layers (as the giant model)."""

    layout: str = Layout.SHARED.value
    vl_expert_start: Optional[int] = 9


@dataclass
class Beit3BaseStandardConfig(MultiwayConfig):
    """The "standard Transformer" ablation (BEiT-3 Table 8a): attention, FFN and norms shared by every modality."""

    layout: str = Layout.SHARED.value
    multiway: bool = False


@dataclass
class VlBeitBaseConfig(MultiwayConfig):
    """VL-BEiT base (Bao et al., 2022, Sec. 2.2): a MoME Transformer as in VLMo (shared attention, V/L experts,
    VL experts in the top two layers as VLMo-Base) with BEiT-3's 64k sentencepiece vocabulary and absolute
    positions. The paper gives no VL-expert depth of its own; VLMo-Base's is used."""

    layout: str = Layout.SHARED.value
    vl_expert_start: Optional[int] = 10


@dataclass
class Beit3TinySharedConfig(Beit3TinyConfig):
    """Tiny version of the shared ablation layout (VL experts in the top layer), for tests."""

    layout: str = Layout.SHARED.value
    vl_expert_start: Optional[int] = 3


@dataclass
class Beit3TinyStandardConfig(Beit3TinyConfig):
    """Tiny standard (non-Multiway) Transformer, for tests."""

    layout: str = Layout.SHARED.value
    multiway: bool = False


# ---------------------------------------------------------------------------------------------- VLMo
@dataclass
class _VlmoArchitecture:
    """What makes a Multiway Transformer VLMo, whatever its size (mixed into the sized configs below)."""

    layout: str = Layout.SHARED.value
    sub_ln: bool = False
    layer_scale_init: Optional[float] = 0.1
    layer_norm_eps: float = 1e-6
    shared_final_norm: bool = True
    absolute_positions: bool = False
    relative_position_bias: bool = True
    relative_text_span: int = 196
    text_embed_norm: bool = True


@dataclass
class VlmoBaseConfig(_VlmoArchitecture, MultiwayConfig):
    """VLMo-Base: 12 layers, VL expert from layer 10, BERT's uncased vocabulary."""

    vl_expert_start: Optional[int] = 10
    vocab_size: int = 30522
    max_text_positions: int = 196 + POSITION_OFFSET


@dataclass
class VlmoLargeConfig(VlmoBaseConfig):
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    ffn_dim: int = 4096
    vl_expert_start: Optional[int] = 21


@dataclass
class VlmoTinyConfig(_VlmoArchitecture, Beit3TinyConfig):
    """VLMo's architecture at the size of ``beit3_tiny``, for tests and the CPU demo."""

    vl_expert_start: Optional[int] = 3
    relative_text_span: int = 64


@dataclass
class VlmoBasePlusConfig(VlmoBaseConfig):
    """VLMo-Base-plus (``vlmo_base_plus_patch16``): 544 wide, 24 layers, absolute positions (BERT's learned
    text positions and ViT's image positions), no relative bias and no layer scale."""

    embed_dim: int = 544
    depth: int = 24
    num_heads: int = 16
    ffn_dim: int = 2176
    vl_expert_start: Optional[int] = 21
    layer_scale_init: Optional[float] = None
    absolute_positions: bool = True
    relative_position_bias: bool = False
    max_text_positions: int = 40 + POSITION_OFFSET   # the released base-plus task files: 40 text positions


@dataclass
class VlmoTinyPlusConfig(VlmoTinyConfig):
    """Base-plus's architecture (absolute positions, no layer scale) at the size of ``vlmo_tiny``."""

    layer_scale_init: Optional[float] = None
    absolute_positions: bool = True
    relative_position_bias: bool = False


def describe_backbone(cfg: MultiwayConfig) -> "tuple[str, dict]":
    """(registered variant name, the config fields that differ from that variant's defaults): what a model
    description (``ModelConfig.backbone`` / ``backbone_config``) records to rebuild exactly this backbone."""
    from dataclasses import fields

    name = BACKBONES.name_for_config(cfg)
    default = BACKBONES.default_config(name)
    return name, {f.name: getattr(cfg, f.name) for f in fields(cfg) if getattr(cfg, f.name) != getattr(default, f.name)}


def backbone_model_config(module, *, task: str, trained_by: str, name: Optional[str] = None,
                          tokenizer_file: Optional[str] = None, **fields):
    """The :class:`beit3_plugins.zoo.ModelConfig` of the Multiway Transformer inside ``module`` (the backbone
    itself, a task model, a detector or a segmentor): variant, every non-default config field, its resolution
    and the family's tokenizer kind (``tokenizer_file``: the file the run read). Every trainer's checkpoint
    writes it; ``fields`` set the rest (head, labels, transform, tokenizer, benchmark)."""
    import os

    from beit3_plugins.zoo import ImageTransformConfig, ModelConfig, TokenizerConfig

    backbone = module if isinstance(module, MultiwayTransformer) else next(
        (m for m in module.modules() if isinstance(m, MultiwayTransformer)), None)
    if backbone is None:
        raise TypeError(f"{type(module).__name__} holds no MultiwayTransformer to describe")
    cfg = backbone.cfg
    variant, changed = describe_backbone(cfg)
    vlmo = is_vlmo(cfg)
    defaults = dict(family="vlmo" if vlmo else "beit3",
                    image_transform=ImageTransformConfig.of("vl", cfg.img_size),
                    tokenizer=TokenizerConfig("wordpiece" if vlmo else "sentencepiece", os.path.abspath(tokenizer_file))
                    if tokenizer_file else None)
    return ModelConfig(name=name or f"{variant}_{task}", task=task, backbone=variant, trained_by=trained_by,
                       backbone_config={"img_size": cfg.img_size, "normalize_output": cfg.normalize_output, **changed},
                       **{**defaults, **fields})


def is_vlmo(cfg) -> bool:
    """Whether a backbone config (instance or class) is one of the VLMo variants (task plugins pick VLMo's
    heads with it)."""
    return issubclass(cfg if isinstance(cfg, type) else type(cfg), _VlmoArchitecture)


for _name, _cfg in {
    "beit3_tiny": Beit3TinyConfig, "beit3_base": Beit3BaseConfig, "beit3_large": Beit3LargeConfig,
    "beit3_giant": Beit3GiantConfig, "beit3_base_shared": Beit3BaseSharedConfig,
    "beit3_base_standard": Beit3BaseStandardConfig, "vlbeit_base": VlBeitBaseConfig,
    "beit3_tiny_shared": Beit3TinySharedConfig, "beit3_tiny_standard": Beit3TinyStandardConfig,
    "vlmo_tiny": VlmoTinyConfig, "vlmo_base": VlmoBaseConfig, "vlmo_large": VlmoLargeConfig,
    "vlmo_base_plus": VlmoBasePlusConfig, "vlmo_tiny_plus": VlmoTinyPlusConfig,
}.items():
    BACKBONES.register(_name, config=_cfg)(MultiwayTransformer)


def build_backbone(name: str, checkpoint: Optional[str] = None, strict: bool = True,
                   pretrained: Optional[str] = None, **overrides) -> MultiwayTransformer:
    """Build a registered backbone, optionally loading a released BEiT-3 / VLMo file or our own export.

    ``pretrained``: a zoo name (``list_pretrained()``; downloaded and cached, its resolution and final-norm
    setting applied unless overridden) or a local file, as timm's ``pretrained=True``.

    The load report (:class:`beit3_plugins.checkpoint.LoadReport`: loaded, missing, unexpected keys, task
    heads kept aside, resampling notes) is attached as ``model.load_report`` and logged; with ``strict`` a
    missing or unexpected backbone key raises (see :func:`.conversion.load_pretrained`).
    """
    from .conversion import load_pretrained

    if pretrained is not None:
        from beit3_plugins.zoo import pretrained_weights

        checkpoint, zoo_overrides = pretrained_weights(pretrained, backbone=name)
        overrides = {**zoo_overrides, **overrides}
    model = BACKBONES.build(name, **overrides)
    if checkpoint is not None:
        model.load_report = load_pretrained(model, checkpoint, strict=strict)
    return model
