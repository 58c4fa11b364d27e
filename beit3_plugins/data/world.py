"""A deterministic synthetic "shape world" written in the on-disk formats of the real datasets.

No dataset can be downloaded here, yet every loader, tokenizer and training path must be exercised on
real files and must show that it learns. This module renders small scenes (1-3 coloured circles,
squares and triangles on a plain or lightly textured background) and writes, from the same scene
model, the files the real pipelines read: COCO captions + Karpathy splits, VQA v2, NLVR2, Flickr30k
(Karpathy), COCO instances, ADE20K and an ImageNet-style folder, plus a text corpus. Captions, answers,
labels and masks all follow from the scene, so a model can learn them.

Only numpy and Pillow are used (pycocotools only for the optional RLE segmentations). The same
``WorldConfig`` gives byte-identical output; every format draws from its own seeded stream, so changing
the size of one format leaves the others unchanged.

Layout written under ``out_dir`` (keys of :attr:`WorldManifest.files` in brackets)::

    world.json                                           manifest
    text/corpus.txt                                      [text_corpus]
    coco/train2014/COCO_train2014_<id:012d>.jpg          [coco_images_train]   captions + VQA images
    coco/val2014/COCO_val2014_<id:012d>.jpg              [coco_images_val]
    coco/annotations/captions_{train,val}2014.json       [coco_captions_train / _val]
    coco/                                                [coco_root]  BEiT-3 data_path for COCO tasks
    coco/dataset_coco.json                               [karpathy_coco]  train2014 -> train,
                                                                           val2014 -> val / test
    coco/vqa/v2_OpenEnded_mscoco_{train,val}2014_questions.json   [vqa_questions_train / _val]
    coco/vqa/v2_mscoco_{train,val}2014_annotations.json           [vqa_annotations_train / _val]
    coco/{train,val}2017/<id:012d>.jpg                   [det_images_train / _val]  detection size
    coco/annotations/instances_{train,val}2017.json      [instances_train / _val]
    flickr30k/flickr30k-images/<id>.jpg                  [flickr_images]
    flickr30k/dataset_flickr30k.json                     [karpathy_flickr]  5 captions per image
    nlvr2/data/{train,dev,test1}.json                    [nlvr2_train / _dev / _test1]  jsonl
    nlvr2/images/train/<directory>/<split>-<set>-<pair>-img{0,1}.png   [nlvr2_images_train]
    nlvr2/{dev,test1}/<split>-<set>-<pair>-img{0,1}.png                [nlvr2_images_dev / _test1]
    ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_<n:08d>.jpg   [ade_root]
    ADEChallengeData2016/annotations/{training,validation}/ADE_{train,val}_<n:08d>.png
    ADEChallengeData2016/classes.json                    [ade_classes]
    imagenet/{train,val}/<class>/<class>_<n:05d>.JPEG    [imagenet_train / _val]
    imagenet/classes.json                                [imagenet_classes]

Segmentation labels (ADE20K convention): 0 = unlabeled (shape outlines), 1 = background, 2 = circle,
3 = square, 4 = triangle. With mmseg's ``reduce_zero_label=True`` they become 255 (ignored), 0..3 with
classes ``("background", "circle", "square", "triangle")``.
COCO instance categories: 1 = circle, 2 = square, 3 = triangle (supercategory "shape").
ImageNet classes: the shape kind (``circle``, ``square``, ``triangle``) by default, or
``<colour>_<kind>`` (12 classes) with ``imagenet_classes="kind_color"``; one shape per image.
Captions never mention left/right positions inside an image, so horizontal flips keep them true.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "KINDS", "COLORS", "SIZES", "COCO_CATEGORIES", "ADE_CLASSES", "ADE_RAW_LABELS", "Shape", "Scene",
    "WorldConfig", "WorldManifest", "generate_world", "sample_scene", "render_scene", "scene_captions",
    "FORMATS", "cli_main",
]

KINDS: Tuple[str, ...] = ("circle", "square", "triangle")
COLORS: Dict[str, Tuple[int, int, int]] = {
    "red": (215, 35, 35), "green": (35, 160, 55), "blue": (40, 75, 215), "yellow": (235, 200, 30),
}
SIZES: Tuple[str, ...] = ("small", "large")
_HALF_EXTENT = {"small": 0.08, "large": 0.135}  # half side length in units of the image size
_CELL_MARGIN = 0.025  # min distance of a shape to its grid cell border: shapes never touch
_ROWS = ("at the top", "in the middle", "at the bottom")
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

COCO_CATEGORIES: List[Dict[str, Any]] = [
    {"id": i + 1, "name": kind, "supercategory": "shape"} for i, kind in enumerate(KINDS)
]
ADE_CLASSES: Tuple[str, ...] = ("background",) + KINDS  # after reduce_zero_label
ADE_RAW_LABELS: Dict[str, int] = {"unlabeled": 0, "background": 1, **{k: i + 2 for i, k in enumerate(KINDS)}}

FORMATS: Tuple[str, ...] = ("text", "coco", "vqa", "flickr30k", "nlvr2", "detection", "ade20k", "imagenet")


# ---------------------------------------------------------------------------------------------- scenes
@dataclasses.dataclass(frozen=True)
class Shape:
    """One shape; centre and half extent in units of the image side (resolution independent)."""

    kind: str
    color: str
    size: str
    cx: float
    cy: float
    row: int  # grid row 0..2, named by _ROWS

    @property
    def half(self) -> float:
        return _HALF_EXTENT[self.size]

    def polygon(self, image_size: int) -> List[Tuple[float, float]]:
        """Vertices in pixel coordinates; the circle is a 24-gon so mask and polygon agree."""
        s = float(image_size)
        cx, cy, h = self.cx * s, self.cy * s, self.half * s
        if self.kind == "square":
            return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
        if self.kind == "triangle":
            return [(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
        angles = [2 * math.pi * (i + 0.5) / 24 for i in range(24)]  # no vertex on an axis: no 1-px spikes
        return [(cx + h * math.cos(a), cy + h * math.sin(a)) for a in angles]

    def phrase(self, with_size: bool = True) -> str:
        return f"a {self.size} {self.color} {self.kind}" if with_size else f"a {self.color} {self.kind}"


@dataclasses.dataclass(frozen=True)
class Scene:
    shapes: Tuple[Shape, ...]
    background: Tuple[int, int, int]
    textured: bool
    texture_seed: int

    @property
    def count(self) -> int:
        return len(self.shapes)

    def count_where(self, kind: Optional[str] = None, color: Optional[str] = None) -> int:
        return sum(1 for s in self.shapes
                   if (kind is None or s.kind == kind) and (color is None or s.color == color))


def sample_scene(rng: np.random.Generator, min_shapes: int = 1, max_shapes: int = 3,
                 textured_fraction: float = 0.5, kind: Optional[str] = None,
                 color: Optional[str] = None) -> Scene:
    """Random scene: shapes in distinct cells of a 3x3 grid (no overlaps), jittered inside the cell."""
    if not 1 <= min_shapes <= max_shapes <= 9:
        raise ValueError(f"need 1 <= min_shapes <= max_shapes <= 9, got {min_shapes}, {max_shapes}")
    n = int(rng.integers(min_shapes, max_shapes + 1))
    cells = rng.choice(9, size=n, replace=False)
    shapes = []
    for cell in cells:
        size = SIZES[int(rng.integers(len(SIZES)))]
        half = _HALF_EXTENT[size]
        room = 1 / 6 - half - _CELL_MARGIN
        row, col = divmod(int(cell), 3)
        cx = (col + 0.5) / 3 + float(rng.uniform(-room, room))
        cy = (row + 0.5) / 3 + float(rng.uniform(-room, room))
        shapes.append(Shape(kind=kind or KINDS[int(rng.integers(len(KINDS)))],
                            color=color or list(COLORS)[int(rng.integers(len(COLORS)))],
                            size=size, cx=cx, cy=cy, row=row))
    grey = int(rng.integers(200, 246))
    tint = rng.integers(-8, 9, size=3)
    background = tuple(int(np.clip(grey + t, 0, 255)) for t in tint)
    textured = bool(rng.random() < textured_fraction)
    return Scene(shapes=tuple(shapes), background=background, textured=textured,
                 texture_seed=int(rng.integers(2 ** 31)))


def render_scene(scene: Scene, image_size: int) -> Tuple[Image.Image, np.ndarray]:
    """RGB image and an instance map (uint8, 0 = background, i + 1 = ``scene.shapes[i]``)."""
    canvas = np.empty((image_size, image_size, 3), dtype=np.int16)
    canvas[:] = scene.background
    if scene.textured:  # light texture: low-amplitude noise plus faint diagonal stripes
        trng = np.random.default_rng(scene.texture_seed)
        noise = trng.integers(-10, 11, size=(image_size, image_size, 1))
        yy, xx = np.mgrid[0:image_size, 0:image_size]
        stripes = (((xx + yy) // max(2, image_size // 16)) % 2 * 8)[..., None]
        canvas += (noise + stripes).astype(np.int16)
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")
    instances = Image.new("L", (image_size, image_size), 0)
    draw, draw_inst = ImageDraw.Draw(image), ImageDraw.Draw(instances)
    for i, shape in enumerate(scene.shapes):
        poly = shape.polygon(image_size)
        draw.polygon(poly, fill=COLORS[shape.color])
        draw_inst.polygon(poly, fill=i + 1)
    return image, np.asarray(instances, dtype=np.uint8)


# ---------------------------------------------------------------------------------------------- language
def _join(phrases: Sequence[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _count_phrase(n: int, noun: str = "shape") -> str:
    return f"{_NUMBER_WORDS[n]} {noun}" + ("" if n == 1 else "s")


def scene_captions(scene: Scene, rng: np.random.Generator, n: int = 5) -> List[str]:
    """``n`` distinct true captions of ``scene`` drawn from a small grammar."""
    full = [s.phrase() for s in scene.shapes]
    short = [s.phrase(with_size=False) for s in scene.shapes]
    first = scene.shapes[0]
    background = "a textured background" if scene.textured else "a plain background"
    templates = [
        _join(full),
        f"a picture of {_join(short)}",
        f"there {'is' if scene.count == 1 else 'are'} {_count_phrase(scene.count)} in the image",
        f"{_join(full)} on {background}",
        f"an image with {_count_phrase(scene.count)}: {_join(short)}",
        f"{first.phrase()} {_ROWS[first.row]}",
        f"{_join(short)} drawn on {background}",
        f"{_count_phrase(scene.count)}, one of them is {first.phrase(with_size=False)}",
    ]
    order = rng.permutation(len(templates))
    out: List[str] = []
    for idx in order:
        if templates[idx] not in out:
            out.append(templates[idx])
        if len(out) == n:
            break
    return out


def _karpathy_tokens(sentence: str) -> List[str]:
    return "".join(c if c.isalnum() or c.isspace() else " " for c in sentence.lower()).split()


# ---------------------------------------------------------------------------------------------- config
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
    vqa_questions_per_image: int = 4
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
    imagenet_classes: str = "kind"    # "kind" (3 classes) or "kind_color" (12 classes)
    imagenet_train_per_class: int = 16
    imagenet_val_per_class: int = 4
    segmentation_format: str = "polygon"  # COCO instances: "polygon" or "rle" (needs pycocotools)
    jpeg_quality: int = 95
    num_corrupt_images: int = 0       # overwrite this many COCO train2014 images with truncated bytes

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
        if self.nlvr2_pairs_per_set % 2:
            raise ValueError("nlvr2_pairs_per_set must be even so labels are balanced")
        for name in ("image_size", "det_image_size", "seg_image_size"):
            if getattr(self, name) < 16:
                raise ValueError(f"{name} must be >= 16 pixels, got {getattr(self, name)}")
        if self.vqa_questions_per_image < 1 or self.captions_per_image < 1:
            raise ValueError("vqa_questions_per_image and captions_per_image must be >= 1")
        if self.captions_per_image > 8:
            raise ValueError("captions_per_image must be <= 8 (size of the caption grammar)")


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


# ---------------------------------------------------------------------------------------------- writer
class _Writer:
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


def _scene(w: _Writer, rng: np.random.Generator, max_shapes: Optional[int] = None, **kw: Any) -> Scene:
    return sample_scene(rng, 1, max_shapes or w.cfg.max_shapes, w.cfg.textured_fraction, **kw)


def _write_text(w: _Writer) -> None:
    rng = w.rng("text")
    lines = []
    while len(lines) < w.cfg.text_corpus_lines:
        lines.extend(scene_captions(_scene(w, rng), rng, n=2))
    lines = lines[: w.cfg.text_corpus_lines]
    w.mark("text_corpus", "text/corpus.txt").write_text("\n".join(lines) + "\n")
    w.counts["text_lines"] = len(lines)


def _coco_scenes(w: _Writer) -> Dict[str, List[Tuple[int, Scene, List[str]]]]:
    """(image_id, scene, captions) of COCO train2014/val2014; shared by captions, Karpathy and VQA."""
    rng = w.rng("coco")
    out: Dict[str, List[Tuple[int, Scene, List[str]]]] = {}
    for split, n, base in (("train2014", w.cfg.coco_train_images, 1),
                           ("val2014", w.cfg.coco_val_images, 500001)):
        items = []
        for i in range(n):
            scene = _scene(w, rng)
            items.append((base + i, scene, scene_captions(scene, rng, w.cfg.captions_per_image)))
        out[split] = items
    return out


def _coco_file(split: str, image_id: int) -> str:
    return f"COCO_{split}_{image_id:012d}.jpg"


def _write_coco(w: _Writer, scenes: Dict[str, List[Tuple[int, Scene, List[str]]]]) -> None:
    karpathy_images = []
    sent_id = 0
    w.files["coco_root"] = "coco"  # Karpathy image root: dataset_coco.json paths are <filepath>/<filename>
    for split, items in scenes.items():
        key = split[:-4]  # train / val
        w.files[f"coco_images_{key}"] = f"coco/{split}"
        images, annotations = [], []
        for idx, (image_id, scene, captions) in enumerate(items):
            file_name = _coco_file(split, image_id)
            image, _ = render_scene(scene, w.cfg.image_size)
            w.image(f"coco/{split}/{file_name}", image)
            images.append({"id": image_id, "file_name": file_name, "width": w.cfg.image_size,
                           "height": w.cfg.image_size, "license": 1, "coco_url": "", "flickr_url": "",
                           "date_captured": "2024-01-01 00:00:00"})
            sentences, sentids = [], []
            for caption in captions:
                annotations.append({"id": sent_id + 1, "image_id": image_id, "caption": caption})
                sentences.append({"tokens": _karpathy_tokens(caption), "raw": caption,
                                  "imgid": len(karpathy_images), "sentid": sent_id})
                sentids.append(sent_id)
                sent_id += 1
            if split == "train2014":
                kp_split = "train"
            else:
                kp_split = "val" if idx < (len(items) + 1) // 2 else "test"
            karpathy_images.append({"filepath": split, "filename": file_name, "imgid": len(karpathy_images),
                                    "split": kp_split, "sentences": sentences, "sentids": sentids,
                                    "cocoid": image_id})
        w.json(f"coco_captions_{key}", f"coco/annotations/captions_{split}.json", {
            "info": {"description": "beit3-plugins synthetic shape world", "version": "1.0", "year": 2024},
            "licenses": [{"id": 1, "name": "CC0", "url": ""}],
            "images": images, "annotations": annotations,
        })
        w.counts[f"coco_{key}_images"] = len(items)
    w.json("karpathy_coco", "coco/dataset_coco.json", {"images": karpathy_images, "dataset": "coco"})
    for kp_split in ("train", "val", "test"):
        w.counts[f"karpathy_coco_{kp_split}"] = sum(1 for im in karpathy_images if im["split"] == kp_split)
    for rel in [f"coco/train2014/{_coco_file('train2014', i)}"
                for i, _, _ in scenes["train2014"][: w.cfg.num_corrupt_images]]:
        path = w.root / rel
        path.write_bytes(path.read_bytes()[:40])  # a truncated JPEG: header only
        w.corrupt.append(rel)


def _vqa_candidates(scene: Scene, rng: np.random.Generator) -> List[Tuple[str, str, str, str]]:
    """(question, answer, question_type, answer_type) that are true of ``scene``."""
    out = [("how many shapes are there?", str(scene.count), "how many", "number")]
    color = list(COLORS)[int(rng.integers(len(COLORS)))]
    out.append((f"how many {color} shapes are there?", str(scene.count_where(color=color)), "how many",
                "number"))
    if rng.random() < 0.5:  # balanced yes/no: ask about a present or a random combination
        shape = scene.shapes[int(rng.integers(scene.count))]
        kind, color = shape.kind, shape.color
    else:
        kind = KINDS[int(rng.integers(len(KINDS)))]
        color = list(COLORS)[int(rng.integers(len(COLORS)))]
    out.append((f"is there a {color} {kind}?", "yes" if scene.count_where(kind, color) else "no",
                "is there a", "yes/no"))
    for kind in KINDS:
        if scene.count_where(kind=kind) == 1:
            shape = next(s for s in scene.shapes if s.kind == kind)
            out.append((f"what color is the {kind}?", shape.color, "what color is the", "other"))
            out.append((f"is the {kind} large?", "yes" if shape.size == "large" else "no", "is the",
                        "yes/no"))
    for color in COLORS:
        if scene.count_where(color=color) == 1:
            shape = next(s for s in scene.shapes if s.color == color)
            out.append((f"what shape is {color}?", shape.kind, "what", "other"))
    return out


def _wrong_answers(answer: str, answer_type: str) -> List[str]:
    if answer_type == "yes/no":
        return ["no" if answer == "yes" else "yes"]
    if answer_type == "number":
        return [str(i) for i in range(0, 5) if str(i) != answer]
    pool = list(COLORS) if answer in COLORS else list(KINDS)
    return [a for a in pool if a != answer]


def _write_vqa(w: _Writer, scenes: Dict[str, List[Tuple[int, Scene, List[str]]]]) -> None:
    rng = w.rng("vqa")
    w.files["vqa_root"] = "coco/vqa"
    for split, items in scenes.items():
        key = split[:-4]
        questions, annotations = [], []
        for image_id, scene, _ in items:
            candidates = _vqa_candidates(scene, rng)
            k = min(w.cfg.vqa_questions_per_image, len(candidates))
            for q_index, c in enumerate(sorted(rng.choice(len(candidates), size=k, replace=False))):
                question, answer, question_type, answer_type = candidates[int(c)]
                question_id = image_id * 1000 + q_index
                n_right = int(rng.integers(6, 11))  # noisy annotators -> soft scores below 1
                wrong = _wrong_answers(answer, answer_type)
                given = [answer] * n_right + [wrong[int(rng.integers(len(wrong)))] for _ in range(10 - n_right)]
                given = [given[int(i)] for i in rng.permutation(10)]
                answers = [{"answer": a, "answer_confidence": "yes" if a == answer else "maybe",
                            "answer_id": j + 1} for j, a in enumerate(given)]
                questions.append({"image_id": image_id, "question": question, "question_id": question_id})
                annotations.append({"question_type": question_type, "multiple_choice_answer": answer,
                                    "answers": answers, "image_id": image_id, "answer_type": answer_type,
                                    "question_id": question_id})
        info = {"description": "beit3-plugins synthetic shape world VQA", "version": "2.0", "year": 2024}
        license_ = {"name": "CC0", "url": ""}
        w.json(f"vqa_questions_{key}", f"coco/vqa/v2_OpenEnded_mscoco_{split}_questions.json", {
            "info": info, "task_type": "Open-Ended", "data_type": "mscoco", "license": license_,
            "data_subtype": split, "questions": questions})
        w.json(f"vqa_annotations_{key}", f"coco/vqa/v2_mscoco_{split}_annotations.json", {
            "info": info, "license": license_, "data_subtype": split, "annotations": annotations})
        w.counts[f"vqa_{key}_questions"] = len(questions)


def _write_flickr(w: _Writer) -> None:
    rng = w.rng("flickr30k")
    w.files["flickr_images"] = "flickr30k/flickr30k-images"
    images, sent_id = [], 0
    splits = (["train"] * w.cfg.flickr_train_images + ["val"] * w.cfg.flickr_val_images
              + ["test"] * w.cfg.flickr_test_images)
    for imgid, split in enumerate(splits):
        scene = _scene(w, rng)
        filename = f"{1000000000 + imgid * 7919}.jpg"
        w.image(f"flickr30k/flickr30k-images/{filename}", render_scene(scene, w.cfg.image_size)[0])
        sentences = []
        for caption in scene_captions(scene, rng, w.cfg.captions_per_image):
            sentences.append({"tokens": _karpathy_tokens(caption), "raw": caption, "imgid": imgid,
                              "sentid": sent_id})
            sent_id += 1
        images.append({"filename": filename, "imgid": imgid, "split": split, "sentences": sentences,
                       "sentids": [s["sentid"] for s in sentences]})
    w.json("karpathy_flickr", "flickr30k/dataset_flickr30k.json", {"images": images, "dataset": "flickr30k"})
    for split in ("train", "val", "test"):
        w.counts[f"flickr_{split}"] = splits.count(split)


_NLVR2_STATEMENTS: List[Tuple[str, Callable[[Scene, Scene, Dict[str, Any]], bool]]] = [
    ("the left image has more shapes than the right image", lambda l, r, a: l.count > r.count),
    ("the right image has more shapes than the left image", lambda l, r, a: r.count > l.count),
    ("both images contain the same number of shapes", lambda l, r, a: l.count == r.count),
    ("both images contain a {color} shape",
     lambda l, r, a: l.count_where(color=a["color"]) > 0 and r.count_where(color=a["color"]) > 0),
    ("at least one image contains a {color} {kind}",
     lambda l, r, a: l.count_where(a["kind"], a["color"]) + r.count_where(a["kind"], a["color"]) > 0),
    ("the left image contains exactly {n_shapes}", lambda l, r, a: l.count == a["n"]),
    ("there {be} {n_kinds} in total",
     lambda l, r, a: l.count_where(kind=a["kind"]) + r.count_where(kind=a["kind"]) == a["n"]),
    ("the left image contains a {kind} and the right image does not",
     lambda l, r, a: l.count_where(kind=a["kind"]) > 0 and r.count_where(kind=a["kind"]) == 0),
    ("every shape in the right image is {color}",
     lambda l, r, a: r.count_where(color=a["color"]) == r.count),
]

# Where one colour (nlvr2_presence_color) is present: left / right / both / either image. The mixed
# templates need counting, shape identity and binding a colour word to image colours, which a tiny model
# trained from scratch on a CPU does not get off the ground; these four only need one visual feature
# per image combined as the sentence says, so the NLVR2 pipeline can show that it learns.
_NLVR2_PRESENCE_STATEMENTS: List[Tuple[str, Callable[[Scene, Scene, Dict[str, Any]], bool]]] = [
    ("the left image contains a {color} shape", lambda l, r, a: l.count_where(color=a["color"]) > 0),
    ("the right image contains a {color} shape", lambda l, r, a: r.count_where(color=a["color"]) > 0),
    ("both images contain a {color} shape",
     lambda l, r, a: l.count_where(color=a["color"]) > 0 and r.count_where(color=a["color"]) > 0),
    ("at least one image contains a {color} shape",
     lambda l, r, a: l.count_where(color=a["color"]) + r.count_where(color=a["color"]) > 0),
]


def _write_nlvr2(w: _Writer) -> None:
    rng = w.rng("nlvr2")
    w.files["nlvr2_root"] = "nlvr2"
    for split, n_sets in (("train", w.cfg.nlvr2_train_sets), ("dev", w.cfg.nlvr2_eval_sets),
                          ("test1", w.cfg.nlvr2_eval_sets)):
        image_dir = "nlvr2/images/train" if split == "train" else f"nlvr2/{split}"
        w.files[f"nlvr2_images_{split}"] = image_dir
        if split != "train" and w.cfg.nlvr2_eval_contrast:
            records = _nlvr2_contrast_records(w, rng, split, image_dir, n_sets)
        else:
            records = _nlvr2_statement_records(w, rng, split, image_dir, n_sets)
        lines = [json.dumps(record, sort_keys=True) for record in records]
        w.mark(f"nlvr2_{split}", f"nlvr2/data/{split}.json").write_text("\n".join(lines) + "\n")
        w.counts[f"nlvr2_{split}"] = len(lines)
        w.counts[f"nlvr2_{split}_true"] = sum(record["label"] == "True" for record in records)


def _nlvr2_record(identifier: str, sentence: str, label: bool, urls: Dict[str, str]) -> Dict[str, Any]:
    return {"identifier": identifier, "sentence": sentence, "label": str(label), "synset": "shape",
            "query": "shapes", "writer": "world", "validation": {}, "extra_validations": {}, **urls}


def _nlvr2_pair_images(w: _Writer, folder: str, prefix: str, left: Scene, right: Scene) -> Dict[str, str]:
    """Render an image pair as NLVR2 names it (``<prefix>-img0/1.png``); returns the records' url fields."""
    urls = {}
    for side, scene in (("left", left), ("right", right)):
        url = f"{folder}/{prefix}-img{0 if side == 'left' else 1}.png"
        w.image(url, render_scene(scene, w.cfg.image_size)[0])
        urls[f"{side}_url"] = url
    return urls


def _nlvr2_statement_records(w: _Writer, rng: np.random.Generator, split: str, image_dir: str,
                             n_sets: int) -> List[Dict[str, Any]]:
    """One statement per set, judged on pairs_per_set image pairs, half of them true."""
    statements = _NLVR2_PRESENCE_STATEMENTS if w.cfg.nlvr2_statements == "presence" else _NLVR2_STATEMENTS
    records = []
    for set_id in range(n_sets):
        template, predicate = statements[int(rng.integers(len(statements)))]
        kind = KINDS[int(rng.integers(len(KINDS)))]
        n = int(rng.integers(1, 4))
        args = {"color": list(COLORS)[int(rng.integers(len(COLORS)))], "kind": kind, "n": n,
                "n_shapes": _count_phrase(n), "n_kinds": _count_phrase(n, kind),
                "be": "is" if n == 1 else "are"}
        if w.cfg.nlvr2_statements == "presence":
            args["color"] = w.cfg.nlvr2_presence_color
        sentence = template.format(**args)
        labels = [p % 2 == 0 for p in range(w.cfg.nlvr2_pairs_per_set)]
        for pair, label in enumerate(labels):
            for _attempt in range(1000):
                left, right = _scene(w, rng), _scene(w, rng)
                if predicate(left, right, args) == label:
                    break
            else:  # pragma: no cover - every statement is satisfiable both ways
                raise RuntimeError(f"could not sample a {label} pair for {sentence!r}")
            prefix = f"{split}-{set_id}-{pair}"
            folder, extra = image_dir, {}
            if split == "train":
                extra["directory"] = set_id % max(1, w.cfg.nlvr2_train_directories)
                folder = f"{image_dir}/{extra['directory']}"
            urls = _nlvr2_pair_images(w, folder, prefix, left, right)
            records.append({**_nlvr2_record(f"{prefix}-0", sentence, label, urls), **extra})
    return records


def _nlvr2_contrast_records(w: _Writer, rng: np.random.Generator, split: str, image_dir: str,
                            n_sets: int) -> List[Dict[str, Any]]:
    """Image pairs with the presence colour in exactly one image, each under the left- and the right-image
    statement: the two records share their images and have opposite labels."""
    args = {"color": w.cfg.nlvr2_presence_color}
    sides = _NLVR2_PRESENCE_STATEMENTS[:2]   # "the left image contains ...", "the right image contains ..."
    records = []
    for set_id in range(n_sets):
        for pair in range(w.cfg.nlvr2_pairs_per_set // 2):
            for _attempt in range(1000):
                left, right = _scene(w, rng), _scene(w, rng)
                if sides[0][1](left, right, args) != sides[1][1](left, right, args):
                    break
            else:  # pragma: no cover - scenes without and with the colour are both common
                raise RuntimeError(f"could not sample a pair with {args['color']} in exactly one image")
            prefix = f"{split}-{set_id}-{pair}"
            urls = _nlvr2_pair_images(w, image_dir, prefix, left, right)
            for sentence_id, (template, holds) in enumerate(sides):
                records.append(_nlvr2_record(f"{prefix}-{sentence_id}", template.format(**args),
                                             holds(left, right, args), urls))
    return records


def _segmentation(mask: np.ndarray, polygon: List[Tuple[float, float]], fmt: str) -> Any:
    if fmt == "polygon":
        return [[round(v, 2) for xy in polygon for v in xy]]
    try:
        from pycocotools import mask as mask_utils
    except ImportError as exc:
        raise ImportError("segmentation_format='rle' needs pycocotools (pip install pycocotools)") from exc
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _write_detection(w: _Writer) -> None:
    rng = w.rng("detection")
    size = w.cfg.det_image_size
    ann_id = 1
    for split, n, base in (("train2017", w.cfg.det_train_images, 1),
                           ("val2017", w.cfg.det_val_images, 900001)):
        key = split[:-4]
        w.files[f"det_images_{key}"] = f"coco/{split}"
        images, annotations = [], []
        for i in range(n):
            image_id = base + i
            scene = _scene(w, rng, max_shapes=w.cfg.det_max_shapes)
            image, instances = render_scene(scene, size)
            file_name = f"{image_id:012d}.jpg"
            w.image(f"coco/{split}/{file_name}", image)
            images.append({"id": image_id, "file_name": file_name, "width": size, "height": size,
                           "license": 1})
            for j, shape in enumerate(scene.shapes):
                mask = instances == j + 1
                polygon = shape.polygon(size)
                xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
                x0, y0 = max(0.0, min(xs)), max(0.0, min(ys))
                x1, y1 = min(float(size), max(xs)), min(float(size), max(ys))
                if w.cfg.segmentation_format == "polygon":  # the polygon's own area, as COCO computes it
                    area = round(0.5 * abs(sum(xs[k] * ys[k - 1] - xs[k - 1] * ys[k] for k in range(len(xs)))), 2)
                else:  # the rendered mask's pixel count, which the RLE encodes
                    area = float(mask.sum())
                annotations.append({
                    "id": ann_id, "image_id": image_id, "category_id": KINDS.index(shape.kind) + 1,
                    "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                    "area": area, "iscrowd": 0,
                    "segmentation": _segmentation(mask, polygon, w.cfg.segmentation_format),
                })
                ann_id += 1
        w.json(f"instances_{key}", f"coco/annotations/instances_{split}.json", {
            "info": {"description": "beit3-plugins synthetic shape world", "version": "1.0", "year": 2024},
            "licenses": [{"id": 1, "name": "CC0", "url": ""}],
            "images": images, "annotations": annotations, "categories": COCO_CATEGORIES,
        })
        w.counts[f"det_{key}_images"] = n
        w.counts[f"det_{key}_instances"] = len(annotations)
    w.classes["coco_categories"] = list(KINDS)


def _write_ade(w: _Writer) -> None:
    rng = w.rng("ade20k")
    size = w.cfg.seg_image_size
    w.files["ade_root"] = "ADEChallengeData2016"
    for split, n, tag in (("training", w.cfg.ade_train_images, "train"),
                          ("validation", w.cfg.ade_val_images, "val")):
        for i in range(n):
            scene = _scene(w, rng)
            image, _ = render_scene(scene, size)
            labels = Image.new("L", (size, size), ADE_RAW_LABELS["background"])
            draw = ImageDraw.Draw(labels)
            for shape in scene.shapes:  # filled with the class, outline left unlabeled like ADE20K
                draw.polygon(shape.polygon(size), fill=ADE_RAW_LABELS[shape.kind], outline=0)
            name = f"ADE_{tag}_{i + 1:08d}"
            w.image(f"ADEChallengeData2016/images/{split}/{name}.jpg", image)
            w.image(f"ADEChallengeData2016/annotations/{split}/{name}.png", labels)
        w.counts[f"ade_{split}"] = n
    w.json("ade_classes", "ADEChallengeData2016/classes.json", {
        "classes": list(ADE_CLASSES), "reduce_zero_label": True, "raw_label_values": ADE_RAW_LABELS,
        "note": "raw 0 = unlabeled (ignored with reduce_zero_label=True); raw k -> class k - 1"})
    w.classes["ade20k"] = list(ADE_CLASSES)


def _write_imagenet(w: _Writer) -> None:
    rng = w.rng("imagenet")
    if w.cfg.imagenet_classes == "kind":
        classes = [(k, None) for k in KINDS]
    else:
        classes = [(k, c) for c in COLORS for k in KINDS]
    names = [k if c is None else f"{c}_{k}" for k, c in classes]
    for split, per_class in (("train", w.cfg.imagenet_train_per_class), ("val", w.cfg.imagenet_val_per_class)):
        w.files[f"imagenet_{split}"] = f"imagenet/{split}"
        for (kind, color), name in zip(classes, names):
            for i in range(per_class):
                scene = sample_scene(rng, 1, 1, w.cfg.textured_fraction, kind=kind, color=color)
                w.image(f"imagenet/{split}/{name}/{name}_{i:05d}.JPEG",
                        render_scene(scene, w.cfg.image_size)[0])
        w.counts[f"imagenet_{split}"] = per_class * len(classes)
    w.json("imagenet_classes", "imagenet/classes.json", names)
    w.classes["imagenet"] = names


def generate_world(out_dir: os.PathLike, cfg: Optional[WorldConfig] = None) -> WorldManifest:
    """Write the formats listed in ``cfg.formats`` under ``out_dir`` and return the manifest."""
    cfg = cfg or WorldConfig()
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    w = _Writer(root, cfg)
    if "text" in cfg.formats:
        _write_text(w)
    if "coco" in cfg.formats or "vqa" in cfg.formats:  # VQA asks about the COCO images
        scenes = _coco_scenes(w)
        _write_coco(w, scenes)
        if "vqa" in cfg.formats:
            _write_vqa(w, scenes)
    if "flickr30k" in cfg.formats:
        _write_flickr(w)
    if "nlvr2" in cfg.formats:
        _write_nlvr2(w)
    if "detection" in cfg.formats:
        _write_detection(w)
    if "ade20k" in cfg.formats:
        _write_ade(w)
    if "imagenet" in cfg.formats:
        _write_imagenet(w)
    config = dataclasses.asdict(cfg)
    config["formats"] = list(cfg.formats)
    manifest = WorldManifest(root=str(root), seed=cfg.seed, config=config, files=dict(sorted(w.files.items())),
                             counts=dict(sorted(w.counts.items())), classes=w.classes,
                             corrupt_files=w.corrupt)
    (root / "world.json").write_text(json.dumps(manifest.to_json(), indent=1, sort_keys=True) + "\n")
    return manifest


# ---------------------------------------------------------------------------------------------- CLI
def cli_main(argv: Optional[Sequence[str]] = None) -> int:
    """``beit3-plugins make-world OUT [--seed N] [--image-size PX] [--set field=value ...]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="beit3-plugins make-world", description=generate_world.__doc__)
    parser.add_argument("out_dir", help="directory to write the world into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=None, help="VL/ImageNet image side in pixels")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every image/record count by this factor (e.g. 10 for a bigger world)")
    parser.add_argument("--formats", default=None, help=f"comma-separated subset of {','.join(FORMATS)}")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override any WorldConfig field, e.g. --set det_image_size=256")
    args = parser.parse_args(argv)
    overrides: Dict[str, Any] = {"seed": args.seed}
    fields = {f.name: f for f in dataclasses.fields(WorldConfig)}
    defaults = WorldConfig()
    if args.scale != 1.0:
        for name in fields:
            if name.endswith(("_images", "_sets", "_per_class", "_lines")):
                overrides[name] = max(1, int(round(getattr(defaults, name) * args.scale)))
    if args.image_size is not None:
        overrides["image_size"] = args.image_size
    if args.formats:
        overrides["formats"] = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or name not in fields:
            parser.error(f"--set expects FIELD=VALUE with FIELD in {sorted(fields)}, got {item!r}")
        current = getattr(defaults, name)
        overrides[name] = type(current)(value) if not isinstance(current, tuple) else tuple(value.split(","))
    try:
        cfg = WorldConfig(**overrides)
    except ValueError as exc:
        parser.error(str(exc))
    start = time.perf_counter()
    manifest = generate_world(args.out_dir, cfg)
    print(f"wrote world (seed {cfg.seed}) to {args.out_dir} in {time.perf_counter() - start:.1f}s")
    for key, value in manifest.counts.items():
        print(f"  {key}: {value}")
    return 0
