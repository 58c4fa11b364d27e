"""Loading weights into task models: released BEiT-3 task checkpoints, released / our pretraining exports,
and this trainer's own checkpoints.

Released task files (``beit3_base_patch16_480_vqa.pth``, ``..._nlvr2.pth``, ``..._coco_retrieval.pth``,
``beit3_base_itc_patch16_224.pth``, ``..._coco_captioning.pth``, ``..._in1k.pth``) hold ``beit3.*`` backbone
keys plus the head keys of ``heads.py``; the backbone part goes through the backbone's one loader
``load_pretrained`` (q/k/v fusion, position resampling, heads kept aside), the head part through the task model's
``released_head_map``. Head weights the task does not use (``mim_head`` of a pretraining file, say) are
reported, never silently dropped; heads of the wrong shape raise.
"""
from __future__ import annotations

from typing import Dict, List

import torch
from torch import Tensor

from beit3_plugins.backbones import load_pretrained
from beit3_plugins.checkpoint import CheckpointMismatchError, LoadReport, load_state_dict_file

__all__ = ["load_task_checkpoint", "map_released_heads"]


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


def load_task_checkpoint(model, path: str, strict_backbone: bool = True) -> LoadReport:
    """Load ``path`` into a :class:`TaskModel` and return a report (also stored as ``model.load_report``).

    Our own task checkpoints (keys ``backbone.*`` + heads) load as they are; released / pretraining files
    are converted. Backbone keys must all be present when ``strict_backbone``; task heads may be missing
    (fine-tuning from a pretrained backbone starts them from scratch).
    """
    state = load_state_dict_file(path)
    if any(k.startswith("backbone.") for k in state):
        own = model.state_dict()
        wrong = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
                 if k in own and own[k].shape != v.shape]
        if wrong:
            raise CheckpointMismatchError(f"{path}: tensors of the wrong shape for this task model:\n  " + "\n  ".join(wrong))
        missing_backbone = [k for k in own if k.startswith("backbone.") and k not in state]
        unexpected_backbone = [k for k in state if k.startswith("backbone.") and k not in own]
        if strict_backbone and (missing_backbone or unexpected_backbone):
            raise CheckpointMismatchError(f"{path}: missing backbone keys {missing_backbone[:10]}, unexpected "
                                          f"backbone keys {unexpected_backbone[:10]}")
        result = model.load_state_dict(state, strict=False)
        report = LoadReport(source=path, loaded=sorted(k for k in state if k in own),
                            missing=sorted(result.missing_keys), unexpected=sorted(result.unexpected_keys))
        model.load_report = report
        return report
    report = load_pretrained(model.backbone, state, strict=strict_backbone, source=path)
    heads = report.heads
    mapped = map_released_heads(model, model.adapt_released_heads(heads))
    usable = {k: v for k, v in mapped.items() if not k.startswith("__unused__")}
    unused = sorted(k[len("__unused__"):] for k in mapped if k.startswith("__unused__"))
    own = model.state_dict()
    wrong = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in usable.items()
             if own[k].shape != v.shape]
    if wrong:
        raise CheckpointMismatchError(
            f"{path}: task-head tensors of the wrong shape (different number of answers/classes?):\n  "
            + "\n  ".join(wrong))
    if usable:
        model.load_state_dict(usable, strict=False)
    head_names = {k for k in own if not k.startswith("backbone.")}
    report.loaded = sorted(["backbone." + k for k in report.loaded] + list(usable))
    report.missing = sorted(["backbone." + k for k in report.missing] + sorted(head_names - set(usable)))
    if unused:
        report.notes.append(f"head weights in the file that this task does not use: {unused}")
    report.heads = heads
    model.load_report = report
    return report
