"""Text corpus, COCO captions + Karpathy splits (the images VQA asks about) and Flickr30k (Karpathy).
"""
from __future__ import annotations

from typing import Dict, List, Tuple

from .scene import Scene, render_scene
from .language import karpathy_tokens, scene_captions
from .writer import FormatWriter, new_scene


def write_text(w: FormatWriter) -> None:
    rng = w.rng("text")
    lines = []
    while len(lines) < w.cfg.text_corpus_lines:
        lines.extend(scene_captions(new_scene(w, rng), rng, 2, w.cfg.caption_grammar))
    lines = lines[: w.cfg.text_corpus_lines]
    w.mark("text_corpus", "text/corpus.txt").write_text("\n".join(lines) + "\n")
    w.counts["text_lines"] = len(lines)


def coco_scenes(w: FormatWriter) -> Dict[str, List[Tuple[int, Scene, List[str]]]]:
    """(image_id, scene, captions) of COCO train2014/val2014; shared by captions, Karpathy and VQA."""
    rng = w.rng("coco")
    out: Dict[str, List[Tuple[int, Scene, List[str]]]] = {}
    for split, n, base in (("train2014", w.cfg.coco_train_images, 1),
                           ("val2014", w.cfg.coco_val_images, 500001)):
        items = []
        for i in range(n):
            scene = new_scene(w, rng)
            captions = scene_captions(scene, rng, w.cfg.captions_per_image, w.cfg.caption_grammar)
            items.append((base + i, scene, captions))
        out[split] = items
    return out


def _coco_file(split: str, image_id: int) -> str:
    return f"COCO_{split}_{image_id:012d}.jpg"


def write_coco(w: FormatWriter, scenes: Dict[str, List[Tuple[int, Scene, List[str]]]]) -> None:
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
                sentences.append({"tokens": karpathy_tokens(caption), "raw": caption,
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




def write_flickr(w: FormatWriter) -> None:
    rng = w.rng("flickr30k")
    w.files["flickr_images"] = "flickr30k/flickr30k-images"
    images, sent_id = [], 0
    splits = (["train"] * w.cfg.flickr_train_images + ["val"] * w.cfg.flickr_val_images
              + ["test"] * w.cfg.flickr_test_images)
    for imgid, split in enumerate(splits):
        scene = new_scene(w, rng)
        filename = f"{1000000000 + imgid * 7919}.jpg"
        w.image(f"flickr30k/flickr30k-images/{filename}", render_scene(scene, w.cfg.image_size)[0])
        sentences = []
        for caption in scene_captions(scene, rng, w.cfg.captions_per_image, w.cfg.caption_grammar):
            sentences.append({"tokens": karpathy_tokens(caption), "raw": caption, "imgid": imgid,
                              "sentid": sent_id})
            sent_id += 1
        images.append({"filename": filename, "imgid": imgid, "split": split, "sentences": sentences,
                       "sentids": [s["sentid"] for s in sentences]})
    w.json("karpathy_flickr", "flickr30k/dataset_flickr30k.json", {"images": images, "dataset": "flickr30k"})
    for split in ("train", "val", "test"):
        w.counts[f"flickr_{split}"] = splits.count(split)


def write_nocaps(w: FormatWriter) -> None:
    """NoCaps as downloaded: ``nocaps/{val,test}/<hex id>.jpg``, the val captions (COCO format, 10 per image in
    the real set, ``captions_per_image`` here) and the test image info (images only: the server scores test)."""
    rng = w.rng("nocaps")
    w.files["nocaps_root"] = "nocaps"
    info = {"description": "beit3-plugins synthetic shape world NoCaps", "version": "0.1", "year": 2024}
    next_caption_id = 0
    for split, n, json_name in (("val", w.cfg.nocaps_val_images, "nocaps_val_4500_captions.json"),
                                ("test", w.cfg.nocaps_test_images, "nocaps_test_image_info.json")):
        w.files[f"nocaps_images_{split}"] = f"nocaps/{split}"
        images, annotations = [], []
        for i in range(n):
            scene = new_scene(w, rng)
            open_images_id = f"{int(rng.integers(1 << 62)):016x}"
            file_name = f"{open_images_id}.jpg"
            w.image(f"nocaps/{split}/{file_name}", render_scene(scene, w.cfg.image_size)[0])
            images.append({"id": i, "open_images_id": open_images_id, "file_name": file_name,
                           "height": w.cfg.image_size, "width": w.cfg.image_size, "coco_url": "",
                           "domain": ("in-domain", "near-domain", "out-domain")[i % 3]})
            captions = scene_captions(scene, rng, w.cfg.captions_per_image, w.cfg.caption_grammar)
            if split == "val":
                for caption in captions:
                    annotations.append({"image_id": i, "id": next_caption_id, "caption": caption})
                    next_caption_id += 1
        data = {"info": info, "licenses": [], "images": images}
        if split == "val":
            data["annotations"] = annotations
        w.json(f"nocaps_{split}", f"nocaps/{json_name}", data)
        w.counts[f"nocaps_{split}_images"] = n
