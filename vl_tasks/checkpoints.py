"""Loading weights into task models: released BEiT-3 task checkpoints, released / our pretraining exports,
and this trainer's own checkpoints.

Released task files (``beit3_base_patch16_480_vqa.pth``, ``..._nlvr2.pth``, ``..._coco_retrieval.pth``,
``beit3_base_itc_patch16_224.pth``, ``..._coco_captioning.pth``, ``..._in1k.pth``) hold ``beit3.*`` backbone
keys plus the head keys of ``heads.py``; the backbone part goes through the backbone's one loader
``load_pretrained`` (q/k/v fusion, position resampling, heads kept aside), the head part through the task model's
``released_head_map``. Head weights the task does not use (``mim_head`` of a pretraining file, say) are
reported, never silently dropped; heads of the wrong shape raise.

Intermediate fine-tuning (ImageNet-21k -> 1k) changes a head's shape on purpose: ``replace_heads`` names the
module prefixes (e.g. ``classifier``) whose checkpoint tensors are not loaded, so those modules keep their
fresh init; the report lists them. Every other shape mismatch still raises.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from beit3_plugins.backbones import convert_checkpoint, load_pretrained, size_hint
from beit3_plugins.checkpoint import CheckpointMismatchError, LoadReport, load_state_dict_file, shape_list

from .base import BACKBONE_PREFIX

__all__ = ["load_task_checkpoint", "map_released_heads", "split_replaced", "describe_task_model"]


def split_replaced(model, state: Dict[str, Tensor], replace_heads: Sequence[str], path: str
                   ) -> Tuple[Dict[str, Tensor], List[str]]:
    """``state`` without the tensors under the ``replace_heads`` module prefixes, and the model keys those
    prefixes cover (kept at their fresh init). A prefix that names no module of the model raises: a typo
    must not silently load a head the user meant to replace."""
    prefixes = [p.rstrip(".") for p in replace_heads]
    if not prefixes:
        return state, []
    own = model.state_dict()

    def covered(key: str) -> bool:
        return any(key == p or key.startswith(p + ".") for p in prefixes)

    unknown = [p for p in prefixes if not any(k == p or k.startswith(p + ".") for k in own)]
    if unknown:
        heads = sorted({k.split(".")[0] for k in own if not k.startswith(BACKBONE_PREFIX)})
        raise ValueError(f"{path}: model.replace_heads names {unknown}, which are not modules of this task "
                         f"model (its heads: {heads})")
    if any(p == BACKBONE_PREFIX[:-1] or p.startswith(BACKBONE_PREFIX) for p in prefixes):
        raise ValueError(f"{path}: model.replace_heads={prefixes} would discard backbone weights; it is for task "
                         "heads only")
    return {k: v for k, v in state.items() if not covered(k)}, sorted(k for k in own if covered(k))


_REPLACE_HINT = ("\n(a head that should start fresh, e.g. a 21k classifier going to 1k classes: "
                 "model.replace_heads=[<head module>])")


def _note_replaced(report: LoadReport, replaced: List[str]) -> None:
    if replaced:
        report.notes.append(f"replaced heads (fresh init, checkpoint tensors not loaded, model.replace_heads): "
                            f"{replaced}")


def map_released_heads(model, heads: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Released head keys -> this model's keys (via ``released_head_map``; identical names pass through)."""
    own = model.state_dict()
    out = {}
    for key, value in heads.items():
        new = key
        for src, dst in model.released_head_map.items():
            if key == src or key.startswith(src):
                new = dst + key[len(src):]
                break
        out[new] = value
    return {k: v for k, v in out.items() if k in own} | {f"__unused__{k}": v for k, v in out.items() if k not in own}


def _head_modules(keys) -> List[str]:
    return sorted({k.split(".")[0] for k in keys if not k.startswith(BACKBONE_PREFIX) and k != "criterion"})


def _check_heads(model, path: str, loaded: Sequence[str], file_heads: Sequence[str]) -> None:
    """``strict_heads``: every head tensor of ``model`` must come from the file. Checked before the backbone's
    keys, so a file of another task names the heads it lacks, not the backbone norms that task drops."""
    own = [k for k in model.state_dict() if not k.startswith(BACKBONE_PREFIX) and k != "criterion"]
    missing = sorted(set(own) - set(loaded))
    if missing:
        held = _head_modules(file_heads)
        raise CheckpointMismatchError(
            f"{path}: the {type(model).__name__} heads are not in this file (missing {missing[:6]}); the file's "
            f"heads are {held or 'none'}. Is it a checkpoint of another task? A pretrained file has no task heads; "
            "fine-tune it first")


def _check_backbone(path: str, missing: Sequence[str], unexpected: Sequence[str]) -> None:
    if missing or unexpected:
        raise CheckpointMismatchError(f"{path}: missing backbone keys {list(missing)[:10]}, unexpected backbone keys "
                                      f"{list(unexpected)[:10]}")


def load_task_checkpoint(model, path: str, strict_backbone: bool = True,
                         replace_heads: Sequence[str] = (), strict_heads: bool = False) -> LoadReport:
    """Load ``path`` into a :class:`TaskModel` and return a report (also stored as ``model.load_report``).

    Our own task checkpoints (keys ``backbone.*`` + heads) load as they are, except that the backbone's
    resolution-dependent tensors are fitted to this model as for released files (an ITC stage at 224 px
    starts retrieval at 384 px); released / pretraining files are converted. Backbone keys must all be present
    when ``strict_backbone``; task heads may be missing (fine-tuning from a pretrained backbone starts them from
    scratch) unless ``strict_heads`` (inference). ``replace_heads``: head module prefixes not loaded from the
    file (see the module docstring).
    """
    state = load_state_dict_file(path)
    if any(k.startswith(BACKBONE_PREFIX) for k in state):
        state, replaced = split_replaced(model, state, replace_heads, path)
        fitted = convert_checkpoint({k: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)},
                                    model.backbone, prefixes=(BACKBONE_PREFIX,))
        state = {k: v for k, v in state.items() if not k.startswith(BACKBONE_PREFIX)} | {
            BACKBONE_PREFIX + k: v for k, v in fitted.state_dict.items()}
        own = model.state_dict()
        wrong = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
                 if k in own and own[k].shape != v.shape]
        if wrong:
            raise CheckpointMismatchError(f"{path}: tensors of the wrong shape for this task model{shape_list(wrong)}"
                                          + (size_hint(fitted.state_dict, model.backbone) or _REPLACE_HINT))
        if strict_heads:
            _check_heads(model, path, [k for k in state if k in own], list(state))
        missing_backbone = [k for k in own if k.startswith(BACKBONE_PREFIX) and k not in state]
        unexpected_backbone = [k for k in state if k.startswith(BACKBONE_PREFIX) and k not in own]
        if strict_backbone:
            _check_backbone(path, missing_backbone, unexpected_backbone)
        result = model.load_state_dict(state, strict=False)
        report = LoadReport(source=path, loaded=sorted(k for k in state if k in own),
                            missing=sorted(result.missing_keys), unexpected=sorted(result.unexpected_keys),
                            notes=list(fitted.notes))
        _note_replaced(report, replaced)
        model.load_report = report
        return report
    report = load_pretrained(model.backbone, state, strict=False, source=path)
    heads = report.heads
    mapped = map_released_heads(model, model.adapt_released_heads(heads))
    usable = {k: v for k, v in mapped.items() if not k.startswith("__unused__")}
    usable, replaced = split_replaced(model, usable, replace_heads, path)
    unused = sorted(k[len("__unused__"):] for k in mapped if k.startswith("__unused__"))
    own = model.state_dict()
    wrong = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in usable.items()
             if own[k].shape != v.shape]
    if wrong:
        raise CheckpointMismatchError(
            f"{path}: task-head tensors of the wrong shape (different number of answers/classes, or the heads of "
            f"another task: the file's heads are {_head_modules(heads)}){shape_list(wrong)}" + _REPLACE_HINT)
    if strict_heads:
        _check_heads(model, path, list(usable), list(heads))
    if strict_backbone:
        _check_backbone(path, report.missing, report.unexpected)
    if usable:
        model.load_state_dict(usable, strict=False)
    head_names = {k for k in own if not k.startswith(BACKBONE_PREFIX)}
    report.loaded = sorted([BACKBONE_PREFIX + k for k in report.loaded] + list(usable))
    report.missing = sorted([BACKBONE_PREFIX + k for k in report.missing] + sorted(head_names - set(usable)))
    if unused:
        report.notes.append(f"head weights in the file that this task does not use: {unused}")
    _note_replaced(report, replaced)
    report.heads = heads
    model.load_report = report
    return report


def describe_task_model(task, task_name: str, model, *, name: str, tokenizer_kind: Optional[str] = "sentencepiece",
                        tokenizer_file: Optional[str] = None, base: Optional[str] = None,
                        benchmark: Optional[Dict[str, float]] = None, trained_by: str = "vl_tasks.train"):
    """The :class:`~beit3_plugins.zoo.ModelConfig` of a task model the trainer built: the backbone's
    (``backbone_model_config``), the task's head shapes, labels and transform (``VlTask.describe``), the
    tokenizer the run read (absolute path) and the run's metrics. Written into ``best.pt`` / ``last.pt``."""
    import os

    from beit3_plugins.backbones import backbone_model_config
    from beit3_plugins.zoo import ImageTransformConfig, TokenizerConfig

    spec = task.describe(model)
    labels = spec.get("labels")
    tokenizer = None
    if tokenizer_kind and tokenizer_file:  # no tokenizer file: the task reads no text (image classification)
        tokenizer = TokenizerConfig(kind=tokenizer_kind, file=os.path.abspath(str(tokenizer_file)),
                                    max_length=int(getattr(task.cfg, "max_text_len", 64)))
    return backbone_model_config(
        model, task=task_name, trained_by=trained_by, name=name, head=dict(spec.get("head") or {}),
        image_transform=ImageTransformConfig.of(spec.get("transform", "vl"), model.backbone.cfg.img_size),
        tokenizer=tokenizer, labels=tuple(labels) if labels is not None else None, base=base,
        benchmark={k: float(v) for k, v in (benchmark or {}).items() if isinstance(v, (int, float))})
