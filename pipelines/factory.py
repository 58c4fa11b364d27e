"""From a zoo name or a local file to a ready task model, its image transform and its tokenizer.

``create_model_and_transforms`` is open_clip's call of the same name for this family: the zoo entry says
which backbone, resolution, final-norm setting, task model (heads of ``vl_tasks/``), tokenizer and image
transform the weights need; the weights go through the task checkpoint loader of ``vl_tasks`` (released
layout, our own task checkpoints, ``.pth`` or ``.safetensors``, always the safe loader). A task head the file
does not hold is an error here, not a randomly initialised head that answers nonsense.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional, Tuple, Union

import torch
from torch import nn

from beit3_plugins.zoo import ZooEntry, ZooFile, download_file, get_pretrained

__all__ = ["create_model_and_transforms", "resolve_entry", "build_tokenizer", "build_task_model", "resolve_dtype"]


def resolve_entry(name_or_path: Union[str, os.PathLike], like: Optional[str] = None, **fields: Any
                  ) -> Tuple[ZooEntry, ZooFile]:
    """(entry with the settings, the weights file) for a zoo name, or for a local file described by the zoo
    entry ``like`` and/or explicit entry ``fields`` (``task``, ``backbone``, ``image_size``, ...)."""
    path = str(name_or_path)
    if not os.path.isfile(path):
        entry = get_pretrained(path)
        return (dataclasses.replace(entry, **fields) if fields else entry), entry.weights
    local = ZooFile("file://" + os.path.abspath(path), filename=os.path.basename(path))
    if like is not None:
        entry = dataclasses.replace(get_pretrained(like), name=path, weights=local, **fields)
    else:
        missing = [f for f in ("task", "backbone") if f not in fields]
        if missing:
            raise ValueError(f"{path}: a local file needs the zoo entry it resembles (like='beit3_base_patch16_480_vqa') "
                             f"or the fields {missing}")
        entry = ZooEntry(name=path, family=fields.pop("family", "beit3"), weights=local, **fields)
    return entry, local


def _local_or_download(file: ZooFile, **download: Any) -> str:
    if file.url.startswith("file://"):
        return file.url[len("file://"):]
    return str(download_file(file, **download))


def build_tokenizer(entry: ZooEntry, tokenizer: Any = None, **download: Any):
    """The entry's tokenizer: ``TOKENIZERS.build(kind, model_path=file, max_length=...)``; ``tokenizer`` may be a
    ready object (returned as is) or a path that replaces the entry's file."""
    from beit3_plugins.registry import TOKENIZERS

    if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    spec = entry.tokenizer
    if spec is None:
        raise ValueError(f"{entry.name}: no tokenizer known; pass tokenizer=<path to beit3.spm or vocab file>")
    if tokenizer is not None:
        model_path = str(tokenizer)
    elif spec.file is not None:
        model_path = _local_or_download(spec.file, **download)
    else:
        raise ValueError(f"{entry.name}: pass tokenizer=<path to the {spec.kind} model file>")
    return TOKENIZERS.build(spec.kind, model_path=model_path, max_length=spec.max_length)


def build_task_model(entry: ZooEntry, backbone: nn.Module) -> nn.Module:
    """The ``vl_tasks`` model whose heads the entry's weights fill (the bare backbone for pretraining files)."""
    from beit3_plugins.vl_tasks.captioning import CaptioningModel
    from beit3_plugins.vl_tasks.classification import ImageClassifierModel
    from beit3_plugins.backbones import is_vlmo
    from beit3_plugins.vl_tasks.nlvr2 import Nlvr2Model, VlmoNlvr2Model
    from beit3_plugins.vl_tasks.retrieval import RetrievalModel, VlmoRetrievalModel
    from beit3_plugins.vl_tasks.vqa import VlmoVqaModel, VqaModel

    task = entry.task
    vlmo = is_vlmo(backbone.cfg)     # VLMo's own head names and pooling (docs/vlmo.md)
    if task == "vqa":
        return (VlmoVqaModel if vlmo else VqaModel)(backbone, entry.head.get("num_answers", 3129))
    if task == "nlvr2":
        return (VlmoNlvr2Model if vlmo else Nlvr2Model)(backbone)
    if task in ("itc", "retrieval"):
        return (VlmoRetrievalModel if vlmo else RetrievalModel)(backbone)
    if task == "captioning":
        return CaptioningModel(backbone, label_smoothing=0.0)
    if task == "image_classification":
        return ImageClassifierModel(backbone, entry.head.get("num_classes", 1000), label_smoothing=0.0)
    if task == "pretrain":
        return backbone
    raise ValueError(f"{entry.name} is a {task} file; it has no task model")


def resolve_dtype(dtype: Union[str, torch.dtype, None], device: torch.device) -> torch.dtype:
    """``"auto"``: bf16 where the hardware computes it natively (CUDA with bf16, CPUs with AVX512-BF16 or
    AMX), fp32 elsewhere; names ``float32``/``fp32``, ``bfloat16``/``bf16``, ``float16``/``fp16``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = (dtype or "float32").lower()
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        cpu = getattr(torch, "cpu", None)
        native = any(getattr(cpu, probe, lambda: False)() for probe in
                     ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
        return torch.bfloat16 if native else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise ValueError(f"unknown dtype {dtype!r}; one of auto, {', '.join(table)}")
    return table[name]


def create_model_and_transforms(name_or_path: Union[str, os.PathLike], *, like: Optional[str] = None,
                                tokenizer: Any = None, device: Union[str, torch.device, None] = None,
                                strict: bool = True, download: Optional[dict] = None, **entry_fields: Any
                                ) -> Tuple[nn.Module, Callable, Any]:
    """(task model in eval mode, evaluation image transform, tokenizer) for a zoo name or a local file.

    Args:
        name_or_path: a ``list_pretrained()`` name, or a checkpoint file (``.pth`` / ``.safetensors``, released
            layout or this project's task checkpoints) described by ``like`` and/or ``entry_fields``.
        like: zoo entry whose settings a local file shares (``like="beit3_base_patch16_480_vqa"``).
        tokenizer: a tokenizer object or a tokenizer file replacing the entry's.
        download: keyword arguments for :func:`beit3_plugins.zoo.download_file` (``cache``, ``mirror``, ...).
        strict: raise when a task head or backbone weight is missing from the file.
    The zoo entry is attached as ``model.zoo_entry``; the load report as ``model.load_report``.
    """
    from beit3_plugins.backbones import build_backbone
    from beit3_plugins.transforms import build_image_transform
    from beit3_plugins.vl_tasks.checkpoints import load_task_checkpoint

    download = dict(download or {})
    entry, weights = resolve_entry(name_or_path, like=like, **entry_fields)
    if entry.backbone is None:
        raise ValueError(f"{entry.name} is a {entry.task} file, not a model")
    path = _local_or_download(weights, **download)
    tok = build_tokenizer(entry, tokenizer, **download) if entry.tokenizer is not None or tokenizer else None
    backbone = build_backbone(entry.backbone, **entry.backbone_overrides())
    model = build_task_model(entry, backbone)
    if model is backbone:
        backbone = build_backbone(entry.backbone, checkpoint=path, strict=strict, **entry.backbone_overrides())
        model = backbone
    else:
        load_task_checkpoint(model, path, strict_backbone=strict, strict_heads=strict)
    model.zoo_entry = entry
    model.eval()
    if device is not None:
        model.to(device)
    transform = build_image_transform(entry.image_transform, train=False, image_size=entry.image_size)
    return model, transform, tok
