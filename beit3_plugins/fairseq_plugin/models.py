"""fairseq model ``beit3_pretrain``: a registered Multiway backbone plus the pretraining heads.

Architectures (``--arch``) are the backbone registry names: the arch only picks the backbone; sizes come
from the backbone's own config dataclass (``beit3_plugins.backbones.beit3``), so fairseq never holds a
second copy of them.
"""

import logging
from dataclasses import dataclass, field
from typing import Dict, Optional

from fairseq.dataclass import FairseqDataclass
from fairseq.models import BaseFairseqModel, register_model, register_model_architecture
from omegaconf import II

from beit3_plugins.backbones import build_backbone
from beit3_plugins.pretraining.objectives import MaskedDataModel, apply_stage
from beit3_plugins.pretraining.vqkd import build_vqkd

logger = logging.getLogger(__name__)

__all__ = ["Beit3PretrainConfig", "Beit3PretrainModel", "ARCHS"]

ARCHS = ("beit3_tiny", "beit3_base", "beit3_large", "beit3_giant", "vlmo_tiny", "vlmo_base", "vlmo_large")


@dataclass
class Beit3PretrainConfig(FairseqDataclass):
    backbone: str = field(default="", metadata={"help": "backbone registry name (set by --arch)"})
    drop_path_rate: float = field(default=0.1, metadata={"help": "stochastic depth (paper: 0.1)"})
    checkpoint_activations: bool = field(default=False, metadata={"help": "activation checkpointing per layer"})
    vocab_size: int = field(default=0, metadata={"help": "text embedding rows; 0 = the backbone's default"})
    mim_target: str = field(default="vqkd", metadata={"help": "vqkd (BEiT v2 codes) or pixel (normalised pixels)"})
    tokenizer_arch: str = field(default="vqkd_base", metadata={"help": "vqkd_base (released) or vqkd_tiny"})
    tokenizer_checkpoint: str = field(default="", metadata={"help": "released VQ-KD weights; empty = random "
                                                                     "encoder + k-means codebook"})
    tokenizer_num_codes: int = field(default=0, metadata={"help": "override the codebook size (0 = arch default)"})
    init_from: str = field(default="", metadata={"help": "released BEiT-3 / exported checkpoint to continue from"})
    image_size: int = II("task.image_size")
    max_text_len: int = II("task.max_text_len")
    objective: str = II("task.objective")
    stage: str = II("task.stage")


@register_model("beit3_pretrain", dataclass=Beit3PretrainConfig)
class Beit3PretrainModel(BaseFairseqModel):
    def __init__(self, core: MaskedDataModel) -> None:
        super().__init__()
        self.core = core

    @classmethod
    def build_model(cls, cfg: Beit3PretrainConfig, task):
        name = cfg.backbone or getattr(cfg, "_name", "") or getattr(cfg, "arch", "")
        if name not in ARCHS:
            from beit3_plugins.registry import BACKBONES

            BACKBONES.get(name)  # raises with the list of registered backbones
        overrides = {"drop_path_rate": cfg.drop_path_rate, "checkpoint_activations": cfg.checkpoint_activations,
                     "img_size": cfg.image_size}
        if cfg.vocab_size:
            overrides["vocab_size"] = cfg.vocab_size
        from beit3_plugins.registry import BACKBONES

        defaults = BACKBONES.default_config(name)
        overrides["max_text_positions"] = max(defaults.max_text_positions, cfg.max_text_len + 2)
        patch = getattr(task.cfg, "patch_size", defaults.patch_size)
        if patch != defaults.patch_size:
            raise ValueError(f"task patch_size {patch} differs from {name}'s patch size {defaults.patch_size}")
        backbone = build_backbone(name, checkpoint=cfg.init_from or None, **overrides)
        tokenizer = None
        if cfg.mim_target == "vqkd":
            tok_over = {"img_size": _tok_img(cfg, defaults)}
            if cfg.tokenizer_num_codes:
                tok_over["num_codes"] = cfg.tokenizer_num_codes
            tokenizer = build_vqkd(cfg.tokenizer_arch, checkpoint=cfg.tokenizer_checkpoint, **tok_over)
        core = MaskedDataModel(backbone, mim_target=cfg.mim_target, tokenizer=tokenizer,
                               vlmo_heads=cfg.objective == "vlmo")
        if cfg.init_from:
            loaded = core.load_heads(backbone.load_report.heads)
            logger.info(f"continued from {cfg.init_from}: backbone + heads {loaded}")
        counts = apply_stage(core, cfg.stage)
        logger.info(f"stage {cfg.stage!r}: {counts['trainable']} trainable / {counts['frozen']} frozen tensors")
        return cls(core)

    def forward(self, text: Optional[Dict] = None, image: Optional[Dict] = None, pair: Optional[Dict] = None,
                objective: str = "mdm"):
        """All objectives of one mixed batch; returns (summed loss, per-objective counters)."""
        logs: Dict[str, float] = {}
        loss = 0.0
        core = self.core
        if text is not None:
            loss = loss + core.text_mlm(text["ids"], text["padding_mask"], text["targets"], logs)
        if image is not None:
            loss = loss + core.image_mim(image["image"], image["mask"], logs)
        if pair is not None:
            if core.vlmo_heads:
                loss = loss + core.vlmo(pair["image"], pair["clean_ids"], pair["padding_mask"], pair["ids"],
                                        pair["targets"], logs)
            else:
                loss = loss + core.pair_mvlm(pair["image"], pair["mask"], pair["ids"], pair["padding_mask"],
                                             pair["targets"], logs)
        return loss, logs


def _tok_img(cfg, defaults) -> int:
    """Tokenizer input size giving the backbone's patch grid (codes align one-to-one with patches)."""
    from beit3_plugins.registry import TOKENIZERS

    tok_patch = TOKENIZERS.default_config(cfg.tokenizer_arch).patch_size
    return cfg.image_size // defaults.patch_size * tok_patch


def _make_arch(name: str):
    def arch(cfg):
        if not getattr(cfg, "backbone", ""):
            cfg.backbone = name
    arch.__name__ = f"{name}_arch"
    return arch


for _name in ARCHS:
    register_model_architecture("beit3_pretrain", _name)(_make_arch(_name))
