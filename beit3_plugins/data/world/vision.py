"""Vision-only formats: COCO instances (boxes + polygon or RLE masks), ADE20K label maps and an
ImageNet-style class folder tree.
"""
from __future__ import annotations

from typing import Any, List, Tuple

import numpy as np
from PIL import Image, ImageDraw

from .scene import COLORS, KINDS, render_scene, sample_scene
from .config import COCO_CATEGORIES, ADE_CLASSES, ADE_RAW_LABELS
from .writer import FormatWriter, new_scene


def _segmentation(mask: np.ndarray, polygon: List[Tuple[float, float]], fmt: str) -> Any:
    if fmt == "polygon":
        return [[round(v, 2) for xy in polygon for v in xy]]
    try:
        from pycocotools import mask as mask_utils
    except ImportError as exc:
        raise ImportError("segmentation_format='rle' needs pycocotools (pip install pycocotools)") from exc
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def write_detection(w: FormatWriter) -> None:
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
            scene = new_scene(w, rng, max_shapes=w.cfg.det_max_shapes)
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


def write_ade(w: FormatWriter) -> None:
    rng = w.rng("ade20k")
    size = w.cfg.seg_image_size
    w.files["ade_root"] = "ADEChallengeData2016"
    for split, n, tag in (("training", w.cfg.ade_train_images, "train"),
                          ("validation", w.cfg.ade_val_images, "val")):
        for i in range(n):
            scene = new_scene(w, rng)
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


def write_imagenet(w: FormatWriter) -> None:
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
