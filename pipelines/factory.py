"""From a zoo name or a local file to a ready task model, its image transforms and its tokenizer.

``create_model_and_transforms`` and ``get_tokenizer`` are open_clip's calls of the same names and contracts
for this family: the zoo entry says which backbone, resolution, final-norm setting, task (a ``TASKS`` name),
tokenizer and image transform the weights need. The task model is one lookup: the entry's ``TASKS`` task
builds it from (backbone, the entry's head spec) with :meth:`VlTask.model_for`, so a third-party task plugin's
entries build here too. The weights go through the task checkpoint loader of ``vl_tasks`` (released layout, our
own task checkpoints, ``.pth`` or ``.safetensors``, always the safe loader). A task head the file does not
hold is an error here, not a randomly initialised head that answers nonsense.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional, Tuple, Union

import torch
from torch import nn

from beit3_plugins.zoo import FILE_KINDS, ZooEntry, ZooFile, describe, download_file, get_pretrained

__all__ = ["create_model_and_transforms", "get_tokenizer", "resolve_entry", "build_tokenizer", "build_task_model",
           "resolve_dtype"]


def resolve_entry(name_or_path: Union[str, os.PathLike], like: Optional[str] = None, **fields: Any
                  ) -> Tuple[ZooEntry, ZooFile]:
    """(entry with the settings, the weights file) for a zoo name, a self-described model (a model folder,
    ``hf-hub:org/name``, a trainer checkpoint carrying its ``model_config``), or a local file described by the
    zoo entry ``like`` and/or explicit entry ``fields`` (``task``, ``backbone``, ``image_size``, ...)."""
    path = str(name_or_path)
    described = describe(path) if like is None else None
    if described is not None:
        entry = described.entry()
        return (dataclasses.replace(entry, **fields) if fields else entry), entry.weights
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
        why = f" ({entry.notes})" if entry.notes else ""
        raise ValueError(f"{entry.name}: pass tokenizer=<path to the {spec.kind} model file>{why}")
    return TOKENIZERS.build(spec.kind, model_path=model_path, max_length=spec.max_length)


def build_task_model(entry: ZooEntry, backbone: nn.Module) -> nn.Module:
    """The task model whose heads the entry's weights fill: ``TASKS[entry.task].model_for(backbone, entry.head)``
    (the bare backbone for pretraining files)."""
    from beit3_plugins.registry import TASKS

    if entry.task == "pretrain":
        return backbone
    if entry.task in FILE_KINDS:
        raise ValueError(f"{entry.name} is a {entry.task} file; it has no task model")
    return TASKS.build(entry.task).model_for(backbone, entry.head)


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
                                device: Union[str, torch.device, None] = None, strict: bool = True,
                                download: Optional[dict] = None, **entry_fields: Any
                                ) -> Tuple[nn.Module, Callable, Callable]:
    """(task model in eval mode, training image transform, evaluation image transform), as open_clip's call of
    the same name returns; the text side comes from :func:`get_tokenizer`.

    Args:
        name_or_path: a ``list_pretrained()`` name, or a checkpoint file (``.pth`` / ``.safetensors``, released
            layout or this project's task checkpoints) described by ``like`` and/or ``entry_fields``.
        like: zoo entry whose settings a local file shares (``like="beit3_base_patch16_480_vqa"``).
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
    if entry.task == "pretrain":
        model = build_backbone(entry.backbone, checkpoint=path, strict=strict, **entry.backbone_overrides())
    else:
        model = build_task_model(entry, build_backbone(entry.backbone, **entry.backbone_overrides()))
        load_task_checkpoint(model, path, strict_backbone=strict, strict_heads=strict)
    model.zoo_entry = entry
    model.eval()
    if device is not None:
        model.to(device)
    transforms = [build_image_transform(entry.image_transform, train=train, image_size=entry.image_size)
                  for train in (True, False)]
    return model, transforms[0], transforms[1]


def get_tokenizer(name: Union[str, ZooEntry], tokenizer: Any = None, **download: Any):
    """The text tokenizer of zoo entry ``name`` (or of a ``ZooEntry``, e.g. ``model.zoo_entry``), downloaded
    and cached; ``tokenizer`` (an object, or a file replacing the entry's) wins. None for image-only entries."""
    entry = name if isinstance(name, ZooEntry) else get_pretrained(str(name))
    if entry.tokenizer is None and tokenizer is None:
        return None
    return build_tokenizer(entry, tokenizer, **download)
