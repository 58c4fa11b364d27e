"""Backbone initialisation from a released BEiT-3 checkpoint or our pretraining export, with a key report.

Files are read with ``weights_only=True`` (``beit3_plugins.checkpoint.load_state_dict_file``); keys are
converted by the backbone's own ``checkpoint_filter_fn`` (released ``beit3.*`` layout or ours; vision
positions resampled to the detector's grid). The detector only runs vision experts, so text / VL experts
in the file are reported as *ignored*, task heads as *heads*, and anything the detector needs but the file
lacks as *missing* (an error when strict).
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Dict, List

from torch import Tensor

from beit3_plugins.backbones import MultiwayTransformer, checkpoint_filter_fn
from beit3_plugins.checkpoint import LoadReport, load_state_dict_file, load_with_report

__all__ = ["BackboneInitReport", "load_backbone_weights"]


@dataclasses.dataclass
class BackboneInitReport:
    """Which checkpoint tensors initialised the detector backbone, and which were not used and why."""

    source: str
    used: List[str]
    missing: List[str]
    ignored: List[str]          # backbone tensors of experts / embeddings a detector never runs
    heads: List[str]            # pretraining / task heads kept out of the backbone
    notes: List[str]

    def summary(self) -> str:
        lines = [f"{self.source}: initialised {len(self.used)} backbone tensors"]
        for title, keys in (("missing (left at random init)", self.missing),
                            ("ignored (text / VL experts, text embeddings: vision-only detector)", self.ignored),
                            ("task heads not used", self.heads)):
            if keys:
                lines.append(f"  {title} ({len(keys)}): {', '.join(keys[:12])}" + (" ..." if len(keys) > 12 else ""))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_json(self) -> Dict:
        return dataclasses.asdict(self)

    def write(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_json(), f, indent=1)


def _resample_patch_embed(sd: Dict[str, Tensor], model: MultiwayTransformer, notes: List[str]) -> None:
    """A checkpoint with another patch size (giant: 14) is fitted FlexiViT-style to the model's patch."""
    weight = sd.get("patch_embed.weight")
    target = model.patch_embed.weight.shape[-2:]
    if weight is None or tuple(weight.shape[-2:]) == tuple(target):
        return
    from timm.layers import resample_patch_embed

    sd["patch_embed.weight"] = resample_patch_embed(weight.float(), list(target)).to(weight.dtype)
    notes.append(f"patch embedding resampled from {tuple(weight.shape[-2:])} to {tuple(target)} pixels")


def load_backbone_weights(model: MultiwayTransformer, path: str, strict: bool = True,
                          removed: List[str] = ()) -> BackboneInitReport:
    """Load ``path`` into the (vision-stripped) ``model``; ``removed`` = parameter names stripped from it."""
    state = load_state_dict_file(path)
    if any(k.startswith("backbone.net.beit3.") for k in state):  # a whole detector checkpoint
        state = {k[len("backbone.net.beit3."):]: v for k, v in state.items() if k.startswith("backbone.net.beit3.")}
    own = model.state_dict()
    # checkpoint_filter_fn resamples the position table to model.cfg (the image size the detector trains at)
    backbone_sd, heads, notes = checkpoint_filter_fn(state, model)
    _resample_patch_embed(backbone_sd, model, notes)
    removed_set = set(removed)
    vision_only = {k: v for k, v in backbone_sd.items() if k in own}
    ignored = sorted(k for k in backbone_sd if k not in own)
    unknown = [k for k in ignored if k not in removed_set and not _is_non_vision(k)]
    if unknown:
        notes.append(f"tensors unknown to the backbone: {unknown[:10]}")
    report: LoadReport = load_with_report(model, vision_only, strict=strict, source=path, notes=notes)
    return BackboneInitReport(source=path, used=report.loaded, missing=report.missing, ignored=ignored,
                              heads=sorted(heads), notes=notes)


_NON_VISION = re.compile(r"(^text_embed\.|^text_pos_embed$|^mask_token$|\.text\.|\.vl\.)")


def _is_non_vision(key: str) -> bool:
    return bool(_NON_VISION.search(key))

