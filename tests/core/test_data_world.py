"""The shape world: deterministic, in the real formats, and its text/labels are true of its pixels.

The semantic checks perceive each image independently of the generator (colour blobs -> count, colour,
kind from the fill ratio of the bounding box, size from the width) and re-derive answers and labels.
"""
import collections
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from beit3_plugins.cli import main as cli_main
from beit3_plugins.data import (ADE_CLASSES, COLORS, KINDS, WorldConfig, WorldManifest, generate_world,
                                render_scene, sample_scene)

NUMBERS = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4}


def perceive(path):
    """[(kind, colour, size)] of the saturated blobs in an image."""
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    mask = (rgb.max(-1) - rgb.min(-1)) > 80
    seen = np.zeros_like(mask)
    height, width = mask.shape
    shapes = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        stack, pixels = [(y0, x0)], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            pixels.append((y, x))
            for v, u in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= v < height and 0 <= u < width and mask[v, u] and not seen[v, u]:
                    seen[v, u] = True
                    stack.append((v, u))
        if len(pixels) < 6:
            continue
        ys, xs = np.array(pixels).T
        box_h, box_w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        fill = len(pixels) / (box_h * box_w)
        mean = rgb[ys, xs].mean(0)
        color = min(COLORS, key=lambda c: ((np.array(COLORS[c]) - mean) ** 2).sum())
        kind = "triangle" if fill < 0.66 else "circle" if fill < 0.9 else "square"
        shapes.append((kind, color, "large" if box_w / width > 0.21 else "small"))
    return shapes


def count(shapes, kind=None, color=None):
    return sum(1 for k, c, _ in shapes if (kind is None or k == kind) and (color is None or c == color))


def answer(question, shapes):
    """Answer a world VQA question from perceived shapes."""
    if question == "how many shapes are there?":
        return str(len(shapes))
    if m := re.fullmatch(r"how many (\w+) shapes are there\?", question):
        return str(count(shapes, color=m[1]))
    if m := re.fullmatch(r"is there a (\w+) (\w+)\?", question):
        return "yes" if count(shapes, m[2], m[1]) else "no"
    if m := re.fullmatch(r"what color is the (\w+)\?", question):
        return next(c for k, c, _ in shapes if k == m[1])
    if m := re.fullmatch(r"is the (\w+) large\?", question):
        return "yes" if next(s for k, _, s in shapes if k == m[1]) == "large" else "no"
    if m := re.fullmatch(r"what shape is (\w+)\?", question):
        return next(k for k, c, _ in shapes if c == m[1])
    raise AssertionError(f"unexpected question {question!r}")


def statement_holds(sentence, left, right):
    """Truth of a world NLVR2 statement about perceived left/right shapes."""
    if sentence == "the left image has more shapes than the right image":
        return len(left) > len(right)
    if sentence == "the right image has more shapes than the left image":
        return len(right) > len(left)
    if sentence == "both images contain the same number of shapes":
        return len(left) == len(right)
    if m := re.fullmatch(r"both images contain a (\w+) shape", sentence):
        return count(left, color=m[1]) > 0 and count(right, color=m[1]) > 0
    if m := re.fullmatch(r"at least one image contains a (\w+) (\w+)", sentence):
        return count(left, m[2], m[1]) + count(right, m[2], m[1]) > 0
    if m := re.fullmatch(r"the (left|right) image contains a (\w+) shape", sentence):
        return count(left if m[1] == "left" else right, color=m[2]) > 0
    if m := re.fullmatch(r"the left image contains exactly (\w+) shapes?", sentence):
        return len(left) == NUMBERS[m[1]]
    if m := re.fullmatch(r"there (?:is|are) (\w+) (\w+?)s? in total", sentence):
        return count(left, m[2]) + count(right, m[2]) == NUMBERS[m[1]]
    if m := re.fullmatch(r"the left image contains a (\w+) and the right image does not", sentence):
        return count(left, m[1]) > 0 and count(right, m[1]) == 0
    if m := re.fullmatch(r"every shape in the right image is (\w+)", sentence):
        return count(right, color=m[1]) == len(right)
    raise AssertionError(f"unexpected statement {sentence!r}")


def tree_bytes(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_output(tmp_path, data_world):
    root, _ = data_world
    generate_world(tmp_path / "again", WorldConfig(seed=0))
    first, second = tree_bytes(root), tree_bytes(tmp_path / "again")
    assert sorted(first) == sorted(second) and len(first) > 400
    assert first == second
    generate_world(tmp_path / "other", WorldConfig(seed=1, formats=("coco",)))
    other = tree_bytes(tmp_path / "other")
    assert other["coco/annotations/captions_train2014.json"] != first["coco/annotations/captions_train2014.json"]


def test_formats_draw_from_independent_streams(tmp_path, data_world):
    root, _ = data_world
    generate_world(tmp_path / "nlvr2", WorldConfig(seed=0, formats=("nlvr2",), coco_train_images=3))
    alone, full = tree_bytes(tmp_path / "nlvr2"), tree_bytes(root)
    nlvr2 = [k for k in alone if k.startswith("nlvr2/")]
    assert nlvr2 and all(alone[k] == full[k] for k in nlvr2)
    assert not any(k.startswith(("coco/", "imagenet/")) for k in alone)


def test_manifest_lists_every_output(data_world):
    root, manifest = data_world
    loaded = WorldManifest.load(root)
    assert loaded.files == manifest.files and loaded.counts == manifest.counts
    for key in manifest.files:
        assert manifest.path(key).exists(), key
    assert manifest.classes["ade20k"] == list(ADE_CLASSES) == ["background", "circle", "square", "triangle"]
    assert manifest.classes["imagenet"] == list(KINDS)
    assert manifest.classes["coco_categories"] == list(KINDS)
    assert len(list(manifest.path("coco_images_train").glob("*.jpg"))) == manifest.counts["coco_train_images"] == 48
    with pytest.raises(KeyError, match="text_corpus"):
        manifest.path("nope")
    with pytest.raises(FileNotFoundError, match="make-world"):
        WorldManifest.load(root / "coco")


def test_coco_captions_and_karpathy_format(data_world):
    _, manifest = data_world
    train = json.loads(manifest.path("coco_captions_train").read_text())
    assert {"images", "annotations", "info", "licenses"} <= set(train)
    per_image = collections.Counter(a["image_id"] for a in train["annotations"])
    assert set(per_image.values()) == {5} and len(per_image) == len(train["images"])
    karpathy = json.loads(manifest.path("karpathy_coco").read_text())
    splits = collections.Counter(im["split"] for im in karpathy["images"])
    assert splits == {"train": 48, "val": 8, "test": 8}
    for image in karpathy["images"]:
        assert (manifest.path("coco_root") / image["filepath"] / image["filename"]).is_file()
        assert image["sentids"] == [s["sentid"] for s in image["sentences"]]
        for sentence in image["sentences"]:
            assert sentence["tokens"] == re.sub(r"[^\w\s]", " ", sentence["raw"]).split()
            if m := re.fullmatch(r"there (?:is|are) (\w+) shapes? in the image", sentence["raw"]):
                path = manifest.path("coco_root") / image["filepath"] / image["filename"]
                assert len(perceive(path)) == NUMBERS[m[1]]
    flickr = json.loads(manifest.path("karpathy_flickr").read_text())
    assert collections.Counter(im["split"] for im in flickr["images"]) == {"train": 24, "val": 8, "test": 8}
    assert all(len(im["sentences"]) == 5 and (manifest.path("flickr_images") / im["filename"]).is_file()
               for im in flickr["images"])


def test_visible_captions_name_every_shape_the_image_shows(tmp_path):
    """The captioning world of the learning checks: every caption names each perceived shape's colour and kind
    (sizes where it says them), in one of five templates, all five per image (two shapes here: the learning
    checks use one)."""
    manifest = generate_world(tmp_path, WorldConfig.needs_the_image(for_captioning=True, seed=0,
                                                                    coco_train_images=24, coco_val_images=8,
                                                                    max_shapes=2))
    karpathy = json.loads(manifest.path("karpathy_coco").read_text())
    assert collections.Counter(im["split"] for im in karpathy["images"]) == {"train": 24, "val": 4, "test": 4}
    frames = collections.Counter()
    for image in karpathy["images"]:
        seen = perceive(manifest.path("coco_root") / image["filepath"] / image["filename"])
        assert 1 <= len(seen) <= 2
        raws = [s["raw"] for s in image["sentences"]]
        assert len(set(raws)) == 5
        for raw in raws:
            frame = re.match(r"(a picture of |an image of |a drawing of )?", raw)[0]
            frames[frame] += 1
            named = re.findall(r"a (?:(small|large) )?(\w+) (circle|square|triangle)", raw[len(frame):])
            assert " and ".join(m[0] for m in re.finditer(r"a (?:(?:small|large) )?\w+ \w+", raw[len(frame):])) \
                == raw[len(frame):]
            assert sorted((kind, colour) for _, colour, kind in named) == sorted((k, c) for k, c, _ in seen)
            sizes = sorted((kind, colour, size) for size, colour, kind in named if size)
            assert sizes in ([], sorted(seen))
    assert set(frames) == {"", "a picture of ", "an image of ", "a drawing of "}
    with pytest.raises(ValueError, match="caption_grammar must be 'mixed' or 'visible'"):
        WorldConfig(caption_grammar="short")
    with pytest.raises(ValueError, match="captions_per_image must be <= 5"):
        WorldConfig(caption_grammar="visible", captions_per_image=6)
    with pytest.raises(ValueError, match="choose one"):
        WorldConfig.needs_the_image(for_vqa=True, for_captioning=True)


def test_vqa_files_are_official_format_and_true(data_world):
    _, manifest = data_world
    for split in ("train", "val"):
        questions = json.loads(manifest.path(f"vqa_questions_{split}").read_text())
        annotations = json.loads(manifest.path(f"vqa_annotations_{split}").read_text())
        assert questions["task_type"] == "Open-Ended" and questions["data_subtype"] == f"{split}2014"
        by_id = {a["question_id"]: a for a in annotations["annotations"]}
        assert len(by_id) == len(questions["questions"]) == manifest.counts[f"vqa_{split}_questions"]
        answer_types = collections.Counter()
        for q in questions["questions"]:
            ann = by_id[q["question_id"]]
            assert len(ann["answers"]) == 10 and ann["image_id"] == q["image_id"]
            assert {"answer", "answer_confidence", "answer_id"} <= set(ann["answers"][0])
            given = collections.Counter(a["answer"] for a in ann["answers"])
            assert given.most_common(1)[0][0] == ann["multiple_choice_answer"]
            image = manifest.path(f"coco_images_{split}") / f"COCO_{split}2014_{q['image_id']:012d}.jpg"
            assert answer(q["question"], perceive(image)) == ann["multiple_choice_answer"], q
            answer_types[ann["answer_type"]] += 1
        assert set(answer_types) == {"yes/no", "number", "other"}
    yes_no = [a["multiple_choice_answer"] for a in json.loads(manifest.path("vqa_annotations_train").read_text())
              ["annotations"] if a["answer_type"] == "yes/no"]
    assert 0.25 < yes_no.count("yes") / len(yes_no) < 0.75


def test_nlvr2_is_balanced_and_true(data_world):
    _, manifest = data_world
    for split in ("train", "dev", "test1"):
        lines = manifest.path(f"nlvr2_{split}").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        labels = collections.Counter(r["label"] for r in records)
        assert labels["True"] == labels["False"] == len(records) // 2 > 0
        for r in records:
            assert re.fullmatch(rf"{split}-\d+-\d+-\d+", r["identifier"])
            folder = manifest.path(f"nlvr2_images_{split}")
            if split == "train":
                folder = folder / str(r["directory"])
            prefix = r["identifier"].rsplit("-", 1)[0]
            left, right = perceive(folder / f"{prefix}-img0.png"), perceive(folder / f"{prefix}-img1.png")
            assert statement_holds(r["sentence"], left, right) == (r["label"] == "True"), r


def test_nlvr2_contrast_eval_judges_each_image_pair_by_both_side_statements(tmp_path):
    manifest = generate_world(tmp_path, WorldConfig(seed=1, formats=("nlvr2",), nlvr2_statements="presence",
                                                    nlvr2_eval_contrast=True, nlvr2_train_sets=2,
                                                    nlvr2_eval_sets=3))
    sides = {"the left image contains a red shape", "the right image contains a red shape"}
    for split in ("dev", "test1"):
        records = [json.loads(line) for line in manifest.path(f"nlvr2_{split}").read_text().splitlines()]
        pairs = collections.defaultdict(list)
        for r in records:
            pairs[r["identifier"].rsplit("-", 1)[0]].append(r)
        assert len(records) == 3 * 4 and len(pairs) == 3 * 2 and manifest.counts[f"nlvr2_{split}_true"] == 6
        folder = manifest.path(f"nlvr2_images_{split}")
        for prefix, (a, b) in pairs.items():
            # same images, the two side statements, opposite labels: reading the images alone gives 50%
            assert {a["sentence"], b["sentence"]} == sides and a["label"] != b["label"]
            assert a["left_url"] == b["left_url"] and a["right_url"] == b["right_url"]
            left, right = perceive(folder / f"{prefix}-img0.png"), perceive(folder / f"{prefix}-img1.png")
            for r in (a, b):
                assert statement_holds(r["sentence"], left, right) == (r["label"] == "True"), r
    with pytest.raises(ValueError, match="presence"):
        WorldConfig(nlvr2_eval_contrast=True)


def test_coco_instances_match_pixels_and_pycocotools(data_world):
    from pycocotools.coco import COCO

    _, manifest = data_world
    for split in ("train", "val"):
        coco = COCO(str(manifest.path(f"instances_{split}")))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(KINDS)
        for image_id in coco.getImgIds():
            info = coco.loadImgs(image_id)[0]
            assert info["width"] == info["height"] == 128
            anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
            kinds = sorted(KINDS[a["category_id"] - 1] for a in anns)
            shapes = perceive(manifest.path(f"det_images_{split}") / info["file_name"])
            assert kinds == sorted(k for k, _, _ in shapes)
            for ann in anns:
                mask = coco.annToMask(ann)
                x, y, w, h = ann["bbox"]
                assert abs(mask.sum() - ann["area"]) <= w + h  # rasterisation differs along the border only
                ys, xs = np.nonzero(mask)
                assert x - 1 <= xs.min() and xs.max() <= x + w + 1 and y - 1 <= ys.min() and ys.max() <= y + h + 1
                assert ann["iscrowd"] == 0


def test_rle_segmentations(tmp_path):
    from pycocotools import mask as mask_utils

    manifest = generate_world(tmp_path, WorldConfig(formats=("detection",), det_train_images=4, det_val_images=1,
                                                    segmentation_format="rle"))
    data = json.loads(manifest.path("instances_train").read_text())
    for ann in data["annotations"]:
        rle = dict(ann["segmentation"], counts=ann["segmentation"]["counts"].encode())
        assert mask_utils.decode(rle).sum() == ann["area"] > 0


def test_ade20k_label_maps(data_world):
    _, manifest = data_world
    root = manifest.path("ade_root")
    classes = json.loads(manifest.path("ade_classes").read_text())
    assert classes["reduce_zero_label"] is True and classes["classes"] == list(ADE_CLASSES)
    images = sorted((root / "images" / "training").glob("ADE_train_*.jpg"))
    assert len(images) == 24 and len(list((root / "images" / "validation").glob("ADE_val_*.jpg"))) == 8
    for image in images:
        labels = np.asarray(Image.open(root / "annotations" / "training" / f"{image.stem}.png"))
        assert labels.dtype == np.uint8 and labels.shape == (64, 64)
        values = set(np.unique(labels).tolist())
        assert {0, 1} <= values <= {0, 1, 2, 3, 4}
        assert (labels == 1).mean() > 0.5
        kinds = {k for k, _, _ in perceive(image)}
        assert {KINDS[v - 2] for v in values if v >= 2} == kinds
        rgb = np.asarray(Image.open(image).convert("RGB")).astype(int)
        saturation = rgb.max(-1) - rgb.min(-1)
        assert saturation[labels >= 2].mean() > 100 > 40 > saturation[labels == 1].mean()


def test_imagenet_folders(data_world):
    _, manifest = data_world
    for split, per_class in (("train", 16), ("val", 4)):
        root = manifest.path(f"imagenet_{split}")
        assert sorted(p.name for p in root.iterdir()) == list(KINDS)
        for kind in KINDS:
            files = sorted((root / kind).glob("*.JPEG"))
            assert len(files) == per_class
            for path in files[:4]:
                assert [k for k, _, _ in perceive(path)] == [kind]


def test_kind_color_imagenet_and_config_errors(tmp_path):
    manifest = generate_world(tmp_path, WorldConfig(formats=("imagenet",), imagenet_classes="kind_color",
                                                    imagenet_train_per_class=1, imagenet_val_per_class=1))
    assert len(manifest.classes["imagenet"]) == 12 and "red_circle" in manifest.classes["imagenet"]
    path = next((manifest.path("imagenet_train") / "blue_triangle").glob("*.JPEG"))
    assert [(k, c) for k, c, _ in perceive(path)] == [("triangle", "blue")]
    with pytest.raises(ValueError, match="unknown world format"):
        WorldConfig(formats=("coco", "kitti"))
    with pytest.raises(ValueError, match="imagenet_classes"):
        WorldConfig(imagenet_classes="colour")
    with pytest.raises(ValueError, match="even"):
        WorldConfig(nlvr2_pairs_per_set=3)


def test_render_is_resolution_independent():
    scene = sample_scene(np.random.default_rng(3), 3, 3)
    for size in (32, 64, 128):
        image, instances = render_scene(scene, size)
        assert image.size == (size, size) and set(np.unique(instances)) == {0, 1, 2, 3}


def test_make_world_cli(tmp_path, capsys):
    out = tmp_path / "world"
    assert cli_main(["make-world", str(out), "--seed", "5", "--formats", "text,nlvr2",
                     "--set", "nlvr2_train_sets=2", "--set", "text_corpus_lines=10"]) == 0
    manifest = WorldManifest.load(out)
    assert manifest.seed == 5 and manifest.counts["nlvr2_train"] == 8 and manifest.counts["text_lines"] == 10
    assert len(manifest.path("text_corpus").read_text().splitlines()) == 10
    assert "nlvr2_train: 8" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli_main(["make-world", str(out), "--set", "no_such_field=1"])
    with pytest.raises(SystemExit):
        cli_main(["make-wrld", str(out)])
    assert "did you mean 'make-world'" in capsys.readouterr().err.lower()
