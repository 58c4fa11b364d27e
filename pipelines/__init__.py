"""Inference pipelines (installed as ``beit3_plugins.pipelines``): from a zoo name or a local checkpoint to
answers in one call, Hugging Face style, over the task models of ``vl_tasks``::

    from beit3_plugins import pipeline
    vqa = pipeline("vqa", model="beit3_base_patch16_480_vqa", answers="answer2label.txt")
    vqa("cat.jpg", "what is on the sofa?")     # [{"answer": "cat", "score": 0.97}, ...]

Tasks: ``vqa``, ``captioning``, ``image-embedding``, ``text-embedding``, ``retrieval``,
``zero-shot-classification``, ``nlvr2``, ``image-classification``.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Union

import torch

from .base import PIPELINES, Pipeline
from .factory import create_model_and_transforms, get_tokenizer, resolve_dtype
from .hub import push_to_hub, save_pretrained

__all__ = ["pipeline", "PIPELINES", "Pipeline", "create_model_and_transforms", "get_tokenizer", "list_pipelines",
           "save_pretrained", "push_to_hub"]


def list_pipelines():
    return PIPELINES.names()


def _from_module(model: torch.nn.Module, device: torch.device):
    """(model, evaluation transform) for a model built by :func:`create_model_and_transforms`: its zoo entry
    says which transform (and tokenizer) it needs."""
    from beit3_plugins.transforms import build_image_transform

    entry = getattr(model, "zoo_entry", None)
    if entry is None:
        raise TypeError(f"pipeline(model=<{type(model).__name__}>): a model object must come from "
                        "create_model_and_transforms (it carries .zoo_entry, which says its transform and tokenizer); "
                        "otherwise pass a zoo name or a checkpoint path")
    return model.to(device).eval(), build_image_transform(entry.image_transform, train=False,
                                                          image_size=entry.image_size)


def pipeline(task: str, model: Union[str, Any], *, device: Union[str, torch.device, None] = None,
             dtype: Union[str, torch.dtype, None] = "float32", batch_size: int = 8, like: Optional[str] = None,
             tokenizer: Any = None, download: Optional[dict] = None, **task_kwargs: Any) -> Pipeline:
    """A ready pipeline for ``task`` (a ``PIPELINES`` name) over ``model`` (a zoo name or a checkpoint path; see
    :func:`create_model_and_transforms` for ``like`` / ``download``; ``tokenizer`` replaces the entry's).

    ``device``: default CUDA when present, else CPU. ``dtype``: ``float32`` (default), ``bfloat16``,
    ``float16`` or ``auto`` (bf16 where the hardware has it). ``task_kwargs`` holds the task's options
    (``answers=`` for VQA, ``class_names=`` for image classification) and zoo entry fields describing a
    local file (``backbone=``, ``image_size=``, ``head=``, ...), which go to :func:`create_model_and_transforms`.
    A self-described model (trainer checkpoint, model folder, ``hf-hub:org/name``) needs none of them.
    """
    import dataclasses
    import inspect

    from beit3_plugins.zoo import ZooEntry

    name = task.replace("_", "-").lower()
    pipeline_type = PIPELINES[name]
    entry_names = {f.name for f in dataclasses.fields(ZooEntry)} - {"name", "weights"}
    task_names = {p for cls in pipeline_type.__mro__ if "__init__" in vars(cls)
                  for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")}
    unknown = sorted(set(task_kwargs) - entry_names - task_names)
    if unknown:
        raise ValueError(f"pipeline({task!r}): unknown option(s) {unknown}; the {name} pipeline takes "
                         f"{sorted(task_names - {'model', 'transform', 'tokenizer', 'device', 'dtype', 'batch_size'})}"
                         f" and a local file's zoo entry fields {sorted(entry_names)}")
    entry_fields = {k: task_kwargs.pop(k) for k in list(task_kwargs) if k in entry_names}
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if isinstance(model, torch.nn.Module):
        net, transform = _from_module(model, device)
    elif isinstance(model, (str, os.PathLike)):
        net, _, transform = create_model_and_transforms(model, like=like, device=device, download=download,
                                                        **entry_fields)
    else:
        raise TypeError(f"pipeline(model=...) takes a zoo name, a checkpoint path or a model made by "
                        f"create_model_and_transforms; got a {type(model).__name__}")
    tok = get_tokenizer(net.zoo_entry, tokenizer, **dict(download or {}))
    return pipeline_type(net, transform, tok, device=device, dtype=resolve_dtype(dtype, device),
                         batch_size=batch_size, **task_kwargs)
