"""The names and types the trainer reads from ``data.*``, ``model.*`` and ``train.*``, as dataclasses.

Hydra refuses a misspelt key of the YAML tree (``train.epoch=1``), but an override with ``+`` adds any key
(``+train.epoch=1``) and the run would ignore it, training 10 epochs while the user asked for one. The trainer
checks the composed config against these dataclasses before anything is built (``check_config``); task
fields are the task's own config dataclass (``TASKS.build`` refuses unknown ones). The defaults stay in
``configs/vl_tasks/*.yaml``; a test keeps the two key sets equal.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Dict, List, Mapping, Optional

__all__ = ["DataConfig", "ModelConfig", "TrainConfig", "SECTIONS", "check_config", "UnknownConfigKeyError"]


class UnknownConfigKeyError(ValueError):
    """The config holds a key the trainer does not read (a typo, or a ``+key=`` override)."""


@dataclasses.dataclass
class DataConfig:
    root: Optional[str]           # dataset root
    tokenizer: Optional[str]      # the model's tokenizer file (beit3.spm / vocab.txt)
    num_workers: int


@dataclasses.dataclass
class ModelConfig:
    name: str
    checkpoint: Optional[str]
    strict: bool
    replace_heads: List[str]
    overrides: Dict[str, Any]     # MultiwayConfig fields (build_backbone checks them)
    tokenizer: str                # tokenizer kind: sentencepiece | wordpiece


@dataclasses.dataclass
class TrainConfig:
    output_dir: str
    seed: int
    device: str
    num_threads: Optional[int]
    epochs: int
    max_steps: Optional[int]
    batch_size: int
    lr: float
    min_lr: float
    warmup_epochs: float
    warmup_steps: Optional[int]
    weight_decay: float
    layer_decay: float
    head_lr_mult: float
    betas: List[float]
    eps: float
    grad_clip: Optional[float]
    drop_path: float
    randaug: bool
    mixup: float
    cutmix: float
    amp: str
    activation_checkpointing: bool
    eval_every_epochs: int
    eval_split: Optional[str]
    save_every_steps: int
    log_every: int
    eval_only: bool
    predict: bool
    controls: bool
    resume: bool
    progress: bool
    tensorboard: bool
    nonfinite_loss: str
    max_nonfinite_skips: int
    debug_kill_after_step: int
    debug_kill_during_save: int
    debug_nonfinite_loss_steps: List[int]


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
_OTHER_TOP_LEVEL = ("task", "hydra")


def _unknown(section: str, keys, known) -> List[str]:
    out = []
    for key in sorted(set(keys) - set(known)):
        close = difflib.get_close_matches(key, list(known), n=1)
        out.append(f"{section}{key}" + (f" (did you mean {section}{close[0]}?)" if close else ""))
    return out


def check_config(cfg: Mapping[str, Any]) -> None:
    """Refuse keys the trainer does not read, naming each with its closest known key."""
    problems = _unknown("", cfg.keys(), list(SECTIONS) + list(_OTHER_TOP_LEVEL))
    for section, schema in SECTIONS.items():
        node = cfg.get(section)
        if node is not None:
            problems += _unknown(section + ".", node.keys(), [f.name for f in dataclasses.fields(schema)])
    if problems:
        raise UnknownConfigKeyError(
            f"unknown config key(s): {', '.join(problems)}. The trainer would ignore them; fix the name (a "
            "'+key=value' override adds a key the trainer never reads)")
