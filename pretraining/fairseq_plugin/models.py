"""fairseq model ``beit3_pretrain``: a registered Multiway backbone plus the pretraining heads.

Architectures (``--arch``) are the backbone registry names: the arch only picks the backbone; sizes come
from the backbone's own config dataclass (``beit3_plugins.backbones.variants``), so fairseq never holds a
second copy of them.
"""

import logging
from dataclasses import dataclass, field
from typing import Dict, Optional

from fairseq.dataclass import FairseqDataclass
from fairseq.models import BaseFairseqModel, register_model, register_model_architecture
from omegaconf import II

from beit3_plugins.backbones import build_backbone
from beit3_plugins.pretraining.objectives import MaskedDataModel, VlmoObjectives, apply_stage
from beit3_plugins.pretraining.vqkd import build_vqkd

from .sharding import is_sharded

logger = logging.getLogger(__name__)

__all__ = ["BACKBONE_PREFIX", "Beit3PretrainConfig", "Beit3PretrainModel", "ARCHS"]

# Where the fairseq model keeps the Multiway backbone: Beit3PretrainModel.core (MaskedDataModel) .backbone;
# read by the export, checked against the built model in tests.
BACKBONE_PREFIX = "core.backbone."

ARCHS = ("beit3_tiny", "beit3_base", "beit3_large", "beit3_giant", "vlmo_tiny", "vlmo_base", "vlmo_large",
         "beit3_base_shared", "beit3_base_standard", "vlbeit_base", "beit3_tiny_shared", "beit3_tiny_standard")


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
    shard_parameters: bool = field(default=False, metadata={
        "help": "sharded data parallelism (torch FSDP2): every backbone layer and the rest of the model are "
                "sharded over the ranks; needs --ddp-backend legacy_ddp --optimizer beit3_adamw (see sharding.py)"})
    shard_param_dtype: str = field(default="float32", metadata={
        "help": "compute dtype of sharded parameters (FSDP2 mixed precision; master weights and gradient "
                "reduction stay float32): float32 | bfloat16 | float16"})
    cpu: bool = II("common.cpu")
    fp16: bool = II("common.fp16")
    bf16: bool = II("common.bf16")
    ddp_backend: str = II("distributed_training.ddp_backend")
    image_size: int = II("task.image_size")
    max_text_len: int = II("task.max_text_len")
    objective: str = II("task.objective")
    stage: str = II("task.stage")
    itc: bool = II("task.itc")
    itm: bool = II("task.itm")
    mlm: bool = II("task.mlm")


@register_model("beit3_pretrain", dataclass=Beit3PretrainConfig)
class Beit3PretrainModel(BaseFairseqModel):
    def __init__(self, core: MaskedDataModel, vlmo_objectives: VlmoObjectives = VlmoObjectives()) -> None:
        super().__init__()
        self.core = core
        self.vlmo_objectives = vlmo_objectives

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
        model = cls(core, VlmoObjectives(itc=cfg.itc, itm=cfg.itm, mlm=cfg.mlm))
        if cfg.shard_parameters:
            model.shard(cfg)
        model.mark_parameters()
        return model

    # ------------------------------------------------------------------ optimisation
    def mark_parameters(self) -> None:
        """Per-parameter marks the optimizer reads: fairseq's optimizer override ``weight_decay: 0`` on
        biases, norms, position tables, CLS / mask tokens and scalars (read by ``--optimizer beit3_adamw``
        and fairseq's ``composite``), and the :class:`~.sharding.ShardedState` on sharded parameters."""
        skip = self.core.no_weight_decay()
        state = getattr(self, "sharded_state", None)
        for name, p in self.core.named_parameters():
            if name in skip:
                p.optim_overrides = {"optimizer": {"weight_decay": 0.0}}
            if state is not None and is_sharded(p):
                p.sharded_state = state

    def _apply(self, fn, *args, **kwargs):
        # .to() / .half() replace sharded parameter objects (DTensors are swapped, not updated in place),
        # dropping their attributes: mark the new ones
        out = super()._apply(fn, *args, **kwargs)
        self.mark_parameters()
        return out

    def shard(self, cfg: Beit3PretrainConfig) -> None:
        """Shard over all ranks with FSDP2 (``sharding.py``); a single process has nothing to shard."""
        import torch
        import torch.distributed as dist

        from .sharding import MIXED_PRECISION, shard_model

        if cfg.shard_param_dtype not in MIXED_PRECISION:
            raise ValueError(f"shard_param_dtype {cfg.shard_param_dtype!r}; choose from {list(MIXED_PRECISION)}")
        if cfg.ddp_backend not in ("legacy_ddp", "no_c10d"):
            raise ValueError(f"--shard-parameters shards with torch FSDP2 inside the model: use --ddp-backend "
                             f"legacy_ddp (got {cfg.ddp_backend!r}; fairscale's fully_sharded is a different, "
                             "CUDA-only implementation)")
        if cfg.fp16 or cfg.bf16:
            raise ValueError("--shard-parameters keeps float32 master weights in the shards: use "
                             "--shard-param-dtype bfloat16|float16 instead of fairseq's --fp16/--bf16")
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            logger.warning("--shard-parameters: a single process, nothing to shard (training is unsharded)")
            return
        device = "cuda" if torch.cuda.is_available() and not cfg.cpu else "cpu"
        if device == "cuda":
            self.to(torch.device("cuda", torch.cuda.current_device()))
        self.sharded_state = shard_model(self, self.core.backbone.layers, device_type=device,
                                         param_dtype=MIXED_PRECISION[cfg.shard_param_dtype])

    # ------------------------------------------------------------------ checkpoints (full tensors)
    def state_dict(self, *args, **kwargs):
        sd = super().state_dict(*args, **kwargs)
        if getattr(self, "sharded_state", None) is None:
            return sd
        full = self.sharded_state.take()
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        return type(sd)((k, full.get(k[len(prefix):], v)) for k, v in sd.items())

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        if getattr(self, "sharded_state", None) is not None:
            from .sharding import distribute_like

            own = dict(self.named_parameters())
            state_dict = {k: (distribute_like(v, own[k]) if k in own else v) for k, v in state_dict.items()}
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)

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
                                        pair["targets"], logs, switches=self.vlmo_objectives)
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
