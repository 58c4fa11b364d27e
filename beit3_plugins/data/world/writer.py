"""The file writer every format uses: one seeded stream per format (so resizing one format leaves the
others byte-identical), manifest bookkeeping, and deterministic JPEG/PNG/JSON output.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
from PIL import Image

from .scene import Scene, sample_scene
from .config import FORMATS, WorldConfig


__all__ = ['FormatWriter', 'new_scene']

class FormatWriter:
    def __init__(self, root: Path, cfg: WorldConfig) -> None:
        self.root, self.cfg = root, cfg
        self.files: Dict[str, str] = {}
        self.counts: Dict[str, int] = {}
        self.classes: Dict[str, List[str]] = {}
        self.corrupt: List[str] = []

    def rng(self, fmt: str) -> np.random.Generator:
        return np.random.default_rng([self.cfg.seed, FORMATS.index(fmt)])

    def mark(self, key: str, rel: str) -> Path:
        self.files[key] = rel
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def json(self, key: str, rel: str, data: Any) -> None:
        self.mark(key, rel).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")

    def image(self, rel: str, image: Image.Image) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        suffix = path.suffix.lower()
        if suffix in (".jpg", ".jpeg"):
            image.save(path, format="JPEG", quality=self.cfg.jpeg_quality, subsampling=0)
        else:
            image.save(path, format="PNG")


def new_scene(w: FormatWriter, rng: np.random.Generator, max_shapes: Optional[int] = None, **kw: Any) -> Scene:
    return sample_scene(rng, 1, max_shapes or w.cfg.max_shapes, w.cfg.textured_fraction, **kw)
