"""What to generate (:class:`WorldConfig`), what was written (:class:`WorldManifest`) and the label sets the
formats share (COCO categories, ADE20K classes).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Tuple

from .language import CAPTION_GRAMMARS
from .scene import KINDS, COLORS


__all__ = ['FORMATS', 'COCO_CATEGORIES', 'ADE_CLASSES', 'ADE_RAW_LABELS', 'WorldConfig', 'WorldManifest']

COCO_CATEGORIES: List[Dict[str, Any]] = [
    {"id": i + 1, "name": kind, "supercategory": "shape"} for i, kind in enumerate(KINDS)
]
ADE_CLASSES: Tuple[str, ...] = ("background",) + KINDS  # after reduce_zero_label
ADE_RAW_LABELS: Dict[str, int] = {"unlabeled": 0, "background": 1, **{k: i + 2 for i, k in enumerate(KINDS)}}


FORMATS: Tuple[str, ...] = ("text", "coco", "vqa", "flickr30k", "nlvr2", "detection", "ade20k", "imagenet",
                             "nocaps")




@dataclasses.dataclass
class WorldConfig:
    """Sizes of every format. Defaults generate everything in a few seconds."""

    seed: int = 0
    formats: Tuple[str, ...] = FORMATS
    image_size: int = 64              # captions, VQA, NLVR2, Flickr30k, ImageNet
    det_image_size: int = 128         # COCO instances (boxes must be meaningful)
    seg_image_size: int = 64          # ADE20K
    max_shapes: int = 3
    det_max_shapes: int = 4
    textured_fraction: float = 0.5
    text_corpus_lines: int = 400
    coco_train_images: int = 48
    coco_val_images: int = 16         # Karpathy: first half val, second half test
    captions_per_image: int = 5
    # every caption writer's grammar (language.scene_captions): "mixed" (8 templates, some a blind writer can
    # reuse) or "visible" (each caption names every shape's colour and kind, so one caption fits few images)
    caption_grammar: str = "mixed"
    vqa_questions_per_image: int = 4
    vqa_test_images: int = 8          # test2015 images; test-dev2015 asks about the first half of them
    # VQA v2's balancing: images in pairs, each question asked of both with different answers (see vqa.py), so the
    # question-only prior is near the constant baseline; needs even coco_train_images / coco_val_images
    vqa_complementary: bool = False
    vqa_questions: str = "mixed"      # "mixed" (all templates) or "simple" (see vqa.py; complementary only)
    flickr_train_images: int = 24
    flickr_val_images: int = 8
    flickr_test_images: int = 8
    nlvr2_train_sets: int = 12
    nlvr2_eval_sets: int = 4          # dev and test1 each
    nlvr2_pairs_per_set: int = 4      # even: half True, half False
    nlvr2_train_directories: int = 4
    nlvr2_statements: str = "mixed"   # "mixed" (9 templates) or "presence" (see _NLVR2_PRESENCE_STATEMENTS)
    nlvr2_presence_color: str = "red"
    # dev/test1 as contrast pairs (presence statements only): image pairs with the colour in exactly one image,
    # each judged twice, by the left-image and the right-image statement (one true, one false); a model that
    # ignores the sentence scores exactly 50% there, so accuracy above it shows the sentence is read
    nlvr2_eval_contrast: bool = False
    det_train_images: int = 24
    det_val_images: int = 8
    ade_train_images: int = 24
    ade_val_images: int = 8
    nocaps_val_images: int = 8
    nocaps_test_images: int = 8
    imagenet_classes: str = "kind"    # "kind" (3 classes) or "kind_color" (12 classes)
    imagenet_train_per_class: int = 16
    imagenet_val_per_class: int = 4
    segmentation_format: str = "polygon"  # COCO instances: "polygon" or "rle" (needs pycocotools)
    jpeg_quality: int = 95
    num_corrupt_images: int = 0       # overwrite this many COCO train2014 images with truncated bytes

    @classmethod
    def needs_the_image(cls, for_vqa: bool = False, for_captioning: bool = False,
                        **overrides: Any) -> "WorldConfig":
        """The COCO part the learning checks (tests and ``make demo``) train on, where answers and captions need
        the image: 128 training and 64 val images (Karpathy val / test 32 each, so retrieval's blind level is
        low) for retrieval; ``for_vqa``: 384 / 128 images with the "simple" VQA questions in complementary pairs
        (about 640 training and 256 val questions), so a blind model stays near the prior; ``for_captioning``:
        the "visible" caption grammar (every caption names each shape's colour and kind) on one-shape scenes
        (the tiny model from scratch does not resolve two shapes' kinds at 64 px in minutes), 128 training and
        256 val images (Karpathy val 128, so CIDEr's standard error, hence the margin, shrinks)."""
        if for_vqa and for_captioning:
            raise ValueError("needs_the_image: choose one of for_vqa and for_captioning")
        settings: Dict[str, Any] = dict(formats=("coco", "vqa"), coco_train_images=128, coco_val_images=64,
                                        vqa_complementary=True, vqa_questions="simple")
        if for_vqa:
            settings.update(coco_train_images=384, coco_val_images=128)
        if for_captioning:
            settings.update(formats=("coco",), caption_grammar="visible", max_shapes=1, coco_val_images=256)
        return cls(**{**settings, **overrides})

    def __post_init__(self) -> None:
        self.formats = tuple(self.formats)
        unknown = sorted(set(self.formats) - set(FORMATS))
        if unknown:
            raise ValueError(f"unknown world format(s) {unknown}; known: {list(FORMATS)}")
        if self.imagenet_classes not in ("kind", "kind_color"):
            raise ValueError(f"imagenet_classes must be 'kind' or 'kind_color', got {self.imagenet_classes!r}")
        if self.segmentation_format not in ("polygon", "rle"):
            raise ValueError(f"segmentation_format must be 'polygon' or 'rle', got {self.segmentation_format!r}")
        if self.nlvr2_statements not in ("mixed", "presence"):
            raise ValueError(f"nlvr2_statements must be 'mixed' or 'presence', got {self.nlvr2_statements!r}")
        if self.nlvr2_presence_color not in COLORS:
            raise ValueError(f"nlvr2_presence_color must be one of {list(COLORS)}, got {self.nlvr2_presence_color!r}")
        if self.nlvr2_eval_contrast and self.nlvr2_statements != "presence":
            raise ValueError("nlvr2_eval_contrast needs nlvr2_statements='presence' (its left/right statements)")
        if self.vqa_questions not in ("mixed", "simple"):
            raise ValueError(f"vqa_questions must be 'mixed' or 'simple', got {self.vqa_questions!r}")
        if self.vqa_questions != "mixed" and not self.vqa_complementary:
            raise ValueError("vqa_questions='simple' needs vqa_complementary=True")
        if self.vqa_complementary and (self.coco_train_images % 2 or self.coco_val_images % 2):
            raise ValueError("vqa_complementary pairs the COCO images: coco_train_images and coco_val_images "
                             "must be even")
        if self.nlvr2_pairs_per_set % 2:
            raise ValueError("nlvr2_pairs_per_set must be even so labels are balanced")
        for name in ("image_size", "det_image_size", "seg_image_size"):
            if getattr(self, name) < 16:
                raise ValueError(f"{name} must be >= 16 pixels, got {getattr(self, name)}")
        if self.vqa_questions_per_image < 1 or self.captions_per_image < 1:
            raise ValueError("vqa_questions_per_image and captions_per_image must be >= 1")
        if self.caption_grammar not in CAPTION_GRAMMARS:
            raise ValueError(f"caption_grammar must be {' or '.join(map(repr, CAPTION_GRAMMARS))}, "
                             f"got {self.caption_grammar!r}")
        templates = CAPTION_GRAMMARS[self.caption_grammar]
        if self.captions_per_image > templates:
            raise ValueError(f"captions_per_image must be <= {templates} (size of the {self.caption_grammar!r} "
                             "caption grammar)")


@dataclasses.dataclass
class WorldManifest:
    """What :func:`generate_world` wrote: relative paths by key, counts and class lists."""

    root: str
    seed: int
    config: Dict[str, Any]
    files: Dict[str, str]
    counts: Dict[str, int]
    classes: Dict[str, List[str]]
    corrupt_files: List[str] = dataclasses.field(default_factory=list)

    def path(self, key: str) -> Path:
        if key not in self.files:
            raise KeyError(f"world has no file {key!r}; keys: {sorted(self.files)}")
        return Path(self.root) / self.files[key]

    def to_json(self) -> Dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("root")  # keep world.json byte-identical wherever it is written
        return data

    @classmethod
    def load(cls, root: os.PathLike) -> "WorldManifest":
        path = Path(root) / "world.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: world manifest not found (run `beit3-plugins make-world`)")
        data = json.loads(path.read_text())
        return cls(root=str(Path(root)), **data)
