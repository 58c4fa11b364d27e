"""Random-weight twins of every kind of zoo entry: ``beit3_tiny`` task models written in the released BEiT-3
key layout (``to_released_state_dict`` + the released head names), served from a loopback server and
registered as zoo entries whose settings mirror the published ones (final norm off for VQA / ImageNet,
answer list, sentencepiece tokenizer file)."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Dict

import torch

from beit3_plugins.backbones import to_released_state_dict
from beit3_plugins.checkpoint import save_safetensors
from beit3_plugins.registry import BACKBONES
from beit3_plugins.zoo import TokenizerSpec, ZooEntry, ZooFile, register_pretrained

TWIN_SIZE = 64
ANSWERS = ["yes", "no", "red", "blue", "circle", "square", "two", "three"]
KINDS = {  # twin name -> (task, head, normalize_output, image transform, file suffix)
    "twin_vqa": ("vqa", {"num_answers": len(ANSWERS)}, False, "vl", ".pth"),
    "twin_nlvr2": ("nlvr2", {"num_classes": 2}, True, "vl", ".pth"),
    "twin_itc": ("retrieval", {}, True, "vl", ".pth"),
    "twin_retrieval": ("retrieval", {}, True, "vl", ".safetensors"),
    "twin_captioning": ("captioning", {"mlm_vocab": 1024}, True, "vl", ".pth"),
    "twin_in1k": ("image_classification", {"num_classes": 5}, False, "imagenet", ".pth"),
    "twin_pretrain": ("pretrain", {}, True, "vl", ".pth"),
}


def _released_heads(model) -> Dict[str, torch.Tensor]:
    inverse = {dst: src for src, dst in model.released_head_map.items()}
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("backbone.") or key == "criterion" or not torch.is_tensor(value):
            continue
        for dst, src in inverse.items():
            if key.startswith(dst):
                key = src + key[len(dst):]
                break
        out[key] = value.detach().clone()
    return out


def make_twins(served: Path, base_url: str, spm_path: Path, kinds=None):
    """Write every twin (``kinds``: KINDS or a variant) into ``served`` and register it; returns {name: reference
    model in memory}."""
    from beit3_plugins.pipelines.factory import build_task_model

    served.mkdir(parents=True, exist_ok=True)
    shutil.copy(spm_path, served / "twin.spm")
    (served / "twin_answers.json").write_text(__import__("json").dumps(ANSWERS))
    tokenizer = TokenizerSpec("sentencepiece", ZooFile(base_url + "/twin.spm"), max_length=16)
    models = {}
    for seed, (name, (task, head, norm, transform, suffix)) in enumerate((kinds or KINDS).items()):
        torch.manual_seed(seed)
        entry = ZooEntry(name=name, family="twin", task=task, weights=ZooFile(base_url + "/" + name + suffix),
                         backbone="beit3_tiny", image_size=TWIN_SIZE, normalize_output=norm, tokenizer=tokenizer,
                         image_transform=transform, head=head,
                         answer_vocab=ZooFile(base_url + "/twin_answers.json") if task == "vqa" else None)
        backbone = BACKBONES.build("beit3_tiny", **entry.backbone_overrides())
        model = build_task_model(entry, backbone)
        if task == "pretrain":
            heads = {"mlm_head.weight": torch.randn(1024, 64) * 0.02, "mlm_head.bias": torch.zeros(1024)}
            state = to_released_state_dict(backbone, heads)
        else:
            for p in model.parameters():  # visible heads: the released init of some is ~0
                if p.dim() == 2 and not any(p is q for q in backbone.parameters()):
                    torch.nn.init.normal_(p, std=0.2)
            state = to_released_state_dict(model.backbone, _released_heads(model))
        if suffix == ".safetensors":
            save_safetensors(state, served / (name + suffix))
        else:
            torch.save({"model": state}, served / (name + suffix))
        register_pretrained(entry, force=True)
        model.eval().zoo_entry = entry
        models[name] = model
    return models


def twin_entry(name: str, **changes) -> ZooEntry:
    from beit3_plugins.zoo import get_pretrained

    return dataclasses.replace(get_pretrained(name), **changes)
