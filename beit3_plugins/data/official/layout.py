"""The official download layout of every BEiT-3 fine-tuning benchmark, as data.

One folder per benchmark family under a data root (``ROOT/coco`` is the official ``data_path`` of VQA v2, COCO
captioning and COCO retrieval; ``ROOT/nlvr2``, ``ROOT/flickr30k``, ``ROOT/nocaps``, ``ROOT/imagenet`` of the
others), each laid out as microsoft/unilm ``beit3/get_started/get_started_for_*.md`` documents it. A
:class:`Benchmark` names its raw files (with the official download link and the splits that need them), the
images its annotation files refer to, and the derived files ``make_dataset_index`` builds from them.
``docs/data.md`` is written from the same facts.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

__all__ = ["RawFile", "Benchmark", "BENCHMARKS", "benchmark", "OFFICIAL_SETUP"]

OFFICIAL_SETUP = "https://github.com/microsoft/unilm/tree/master/beit3/get_started"

_COCO_ZIP = "http://images.cocodataset.org/zips/{}.zip"
_VQA_ZIP = "https://s3.amazonaws.com/cvmlp/vqa/mscoco/vqa/v2_{}_mscoco.zip"
_KARPATHY = "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip (dataset_coco.json)"
_NLVR2_REPO = "https://github.com/lil-lab/nlvr (clone into nlvr/)"
_NLVR2_IMAGES = "https://goo.gl/forms/yS29stWnFWzrDBFH3 (request form of the NLVR2 images)"


@dataclasses.dataclass(frozen=True)
class RawFile:
    """One raw download: a JSON file, a JSON-lines file or a folder of images, relative to the benchmark
    folder. ``splits`` are the benchmark splits that need it."""

    path: str
    kind: str                      # "json" | "jsonl" | "images" | "class_folders"
    what: str
    link: str
    splits: Tuple[str, ...]
    keys: Tuple[str, ...] = ()     # top-level keys a json file must have


@dataclasses.dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    folder: str                    # under the data root; the official ``data_path``
    splits: Tuple[str, ...]
    raw: Tuple[RawFile, ...]
    derived: Tuple[str, ...]       # files ``data prepare`` writes into the folder (official index names)
    setup: str                     # the official get_started page

    def raw_for(self, splits: Tuple[str, ...]) -> Tuple[RawFile, ...]:
        return tuple(f for f in self.raw if set(f.splits) & set(splits))


def _coco_images(split: str, splits: Tuple[str, ...]) -> RawFile:
    return RawFile(split, "images", f"COCO {split} images", _COCO_ZIP.format(split), splits)


_VQA_Q = "vqa/v2_OpenEnded_mscoco_{}_questions.json"
_VQA_A = "vqa/v2_mscoco_{}_annotations.json"
_ALL_VQA = ("train", "val", "test-dev", "test")  # the answer list needs train + val annotations for every split

_KARPATHY_SPLITS = ("train", "val", "test")
_KARPATHY_COCO = (  # captioning and retrieval read the same COCO files
    _coco_images("train2014", ("train",)),
    _coco_images("val2014", _KARPATHY_SPLITS),
    RawFile("dataset_coco.json", "json", "Karpathy split of COCO", _KARPATHY, _KARPATHY_SPLITS, ("images",)),
)

BENCHMARKS: Dict[str, Benchmark] = {b.name: b for b in (
    Benchmark(
        "vqav2", "VQA v2", "coco", _ALL_VQA,
        raw=(
            _coco_images("train2014", ("train",)),
            _coco_images("val2014", ("train", "val")),
            _coco_images("test2015", ("test-dev", "test")),
            RawFile(_VQA_Q.format("train2014"), "json", "VQA v2 train questions", _VQA_ZIP.format("Questions_Train"),
                    ("train",), ("questions",)),
            RawFile(_VQA_Q.format("val2014"), "json", "VQA v2 val questions", _VQA_ZIP.format("Questions_Val"),
                    ("train", "val"), ("questions",)),
            RawFile(_VQA_Q.format("test2015"), "json", "VQA v2 test questions", _VQA_ZIP.format("Questions_Test"),
                    ("test",), ("questions",)),
            RawFile(_VQA_Q.format("test-dev2015"), "json", "VQA v2 test-dev questions",
                    _VQA_ZIP.format("Questions_Test"), ("test-dev",), ("questions",)),
            RawFile(_VQA_A.format("train2014"), "json", "VQA v2 train annotations",
                    _VQA_ZIP.format("Annotations_Train"), _ALL_VQA, ("annotations",)),
            RawFile(_VQA_A.format("val2014"), "json", "VQA v2 val annotations", _VQA_ZIP.format("Annotations_Val"),
                    _ALL_VQA, ("annotations",)),
        ),
        derived=("answer2label.txt", "vqa.train.jsonl", "vqa.val.jsonl", "vqa.test.jsonl", "vqa.test-dev.jsonl",
                 "vqa.trainable_val.jsonl", "vqa.rest_val.jsonl"),
        setup=f"{OFFICIAL_SETUP}/get_started_for_vqav2.md"),
    Benchmark(
        "nlvr2", "NLVR2", "nlvr2", ("train", "dev", "test-P"),
        raw=(
            RawFile("images/train", "images", "NLVR2 train image pairs (in numbered sub-folders)", _NLVR2_IMAGES,
                    ("train",)),
            RawFile("dev", "images", "NLVR2 dev image pairs", _NLVR2_IMAGES, ("dev",)),
            RawFile("test1", "images", "NLVR2 test-P image pairs", _NLVR2_IMAGES, ("test-P",)),
            RawFile("nlvr/nlvr2/data/train.json", "jsonl", "NLVR2 train statements", _NLVR2_REPO, ("train",)),
            RawFile("nlvr/nlvr2/data/dev.json", "jsonl", "NLVR2 dev statements", _NLVR2_REPO, ("dev",)),
            RawFile("nlvr/nlvr2/data/test1.json", "jsonl", "NLVR2 test-P statements", _NLVR2_REPO, ("test-P",)),
        ),
        derived=("nlvr2.train.index.jsonl", "nlvr2.dev.index.jsonl", "nlvr2.test-P.index.jsonl"),
        setup=f"{OFFICIAL_SETUP}/get_started_for_nlvr2.md"),
    Benchmark(
        "coco_captioning", "COCO captioning (Karpathy split)", "coco", _KARPATHY_SPLITS,
        raw=_KARPATHY_COCO,
        derived=("coco_captioning.train.jsonl", "coco_captioning.val.jsonl", "coco_captioning.test.jsonl"),
        setup=f"{OFFICIAL_SETUP}/get_started_for_captioning.md"),
    Benchmark(
        "nocaps", "NoCaps", "nocaps", ("val", "test"),
        raw=(
            RawFile("val", "images", "NoCaps val images (urls in nocaps_val_4500_captions.json)",
                    "https://nocaps.s3.amazonaws.com/nocaps_val_4500_captions.json (image urls inside)", ("val",)),
            RawFile("test", "images", "NoCaps test images (urls in nocaps_test_image_info.json)",
                    "https://s3.amazonaws.com/nocaps/nocaps_test_image_info.json (image urls inside)", ("test",)),
            RawFile("nocaps_val_4500_captions.json", "json", "NoCaps val captions",
                    "https://nocaps.s3.amazonaws.com/nocaps_val_4500_captions.json", ("val",), ("images",)),
            RawFile("nocaps_test_image_info.json", "json", "NoCaps test image info",
                    "https://s3.amazonaws.com/nocaps/nocaps_test_image_info.json", ("test",), ("images",)),
        ),
        derived=("nocaps.val.jsonl", "nocaps.test.jsonl"),
        setup=f"{OFFICIAL_SETUP}/get_started_for_captioning.md"),
    Benchmark(
        "coco_retrieval", "COCO retrieval (Karpathy split)", "coco", _KARPATHY_SPLITS,
        raw=_KARPATHY_COCO,
        derived=("coco_retrieval.train.jsonl", "coco_retrieval.val.jsonl", "coco_retrieval.test.jsonl"),
        setup=f"{OFFICIAL_SETUP}/get_started_for_retrieval.md"),
    Benchmark(
        "flickr30k", "Flickr30k retrieval (Karpathy split)", "flickr30k", _KARPATHY_SPLITS,
        raw=(
            RawFile("flickr30k-images", "images", "Flickr30k images",
                    "https://forms.illinois.edu/sec/229675 (request form of the Flickr30k images)", _KARPATHY_SPLITS),
            RawFile("dataset_flickr30k.json", "json", "Karpathy split of Flickr30k",
                    _KARPATHY.replace("dataset_coco", "dataset_flickr30k"), _KARPATHY_SPLITS, ("images",)),
        ),
        derived=("flickr30k.train.jsonl", "flickr30k.val.jsonl", "flickr30k.test.jsonl"),
        setup=f"{OFFICIAL_SETUP}/get_started_for_retrieval.md"),
    Benchmark(
        "imagenet", "ImageNet-1k", "imagenet", ("train", "val"),
        raw=(
            RawFile("train", "class_folders", "ImageNet-1k train images, one folder per class (wnid)",
                    "http://image-net.org/ (ILSVRC2012_img_train.tar)", ("train",)),
            RawFile("val", "class_folders", "ImageNet-1k val images, one folder per class (`data prepare` sorts "
                    "the flat download with the devkit)", "http://image-net.org/ (ILSVRC2012_img_val.tar, "
                    "ILSVRC2012_devkit_t12.tar.gz)", ("val",)),
        ),
        derived=("imagenet.train.index.jsonl", "imagenet.val.index.jsonl"),
        setup=f"{OFFICIAL_SETUP}/get_started_for_image_classification.md"),
)}


def benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]
