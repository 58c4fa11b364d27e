"""Write a whole world: each requested format in a fixed order, then the manifest ``world.json``."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Optional

from .captions import coco_scenes, write_coco, write_flickr, write_nocaps, write_text
from .config import WorldConfig, WorldManifest
from .nlvr2 import write_nlvr2
from .vision import write_ade, write_detection, write_imagenet
from .vqa import write_vqa
from .writer import FormatWriter

__all__ = ["generate_world"]


def generate_world(out_dir: os.PathLike, cfg: Optional[WorldConfig] = None) -> WorldManifest:
    """Write the formats listed in ``cfg.formats`` under ``out_dir`` and return the manifest."""
    cfg = cfg or WorldConfig()
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    w = FormatWriter(root, cfg)
    if "text" in cfg.formats:
        write_text(w)
    if "coco" in cfg.formats or "vqa" in cfg.formats:  # VQA asks about the COCO images
        scenes = coco_scenes(w)
        write_coco(w, scenes)
        if "vqa" in cfg.formats:
            write_vqa(w, scenes)
    if "flickr30k" in cfg.formats:
        write_flickr(w)
    if "nlvr2" in cfg.formats:
        write_nlvr2(w)
    if "detection" in cfg.formats:
        write_detection(w)
    if "ade20k" in cfg.formats:
        write_ade(w)
    if "imagenet" in cfg.formats:
        write_imagenet(w)
    if "nocaps" in cfg.formats:
        write_nocaps(w)
    config = dataclasses.asdict(cfg)
    config["formats"] = list(cfg.formats)
    manifest = WorldManifest(root=str(root), seed=cfg.seed, config=config, files=dict(sorted(w.files.items())),
                             counts=dict(sorted(w.counts.items())), classes=w.classes,
                             corrupt_files=w.corrupt)
    (root / "world.json").write_text(json.dumps(manifest.to_json(), indent=1, sort_keys=True) + "\n")
    return manifest
