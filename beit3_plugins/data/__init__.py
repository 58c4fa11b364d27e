"""Data formats of the BEiT-3 recipes: readers of the real formats and registered map-style datasets, plus
(in the ``world`` subpackage, imported only when one of its names is asked for) the synthetic shape world
that writes those formats for tests and demos. Importing this package pulls in numpy and Pillow only."""
import importlib
from typing import Any

from beit3_plugins.data.datasets import (CocoCaptionPairsConfig, CocoCaptionPairsDataset, ImageFolderConfig, ImageFolderDataset, ImageOptions,
                                         KarpathyCaptionDataset, KarpathyCaptionsConfig, Nlvr2Config,
                                         Nlvr2Dataset, RecordDataset, TextCorpusConfig, TextCorpusDataset,
                                         VqaV2Config, VqaV2Dataset)
from beit3_plugins.data.readers import (IMAGE_EXTENSIONS, AnswerVocab, CaptionRecord, CocoImageRecord,
                                        CorruptImageError, ImageFolderRecord, Nlvr2Record, SegmentationRecord,
                                        SkipCounter, VqaRecord, load_image, read_ade20k,
                                        read_coco_captions, read_coco_instances, read_image_folder, read_json,
                                        read_jsonl, read_karpathy, read_nlvr2, read_text_lines, read_vqa)
from beit3_plugins.data.official.answers import beit3_normalize_word, vqa_eval_normalize, vqa_target_score

_WORLD = ("generate_world", "WorldConfig", "WorldManifest", "Scene", "Shape", "sample_scene", "render_scene",
          "scene_captions", "KINDS", "COLORS", "SIZES", "FORMATS", "COCO_CATEGORIES", "ADE_CLASSES", "ADE_RAW_LABELS")

__all__ = [
    # world (lazy: beit3_plugins.data.world)
    *_WORLD,
    # readers
    "SkipCounter", "CorruptImageError", "load_image", "read_json", "read_jsonl", "IMAGE_EXTENSIONS",
    "CaptionRecord", "read_coco_captions", "read_karpathy", "read_text_lines",
    "VqaRecord", "AnswerVocab", "beit3_normalize_word", "vqa_eval_normalize", "vqa_target_score", "read_vqa",
    "Nlvr2Record", "read_nlvr2", "ImageFolderRecord", "read_image_folder",
    "CocoImageRecord", "read_coco_instances", "SegmentationRecord", "read_ade20k",
    # datasets (registered in beit3_plugins.registry.DATASETS)
    "RecordDataset", "ImageOptions", "VqaV2Dataset", "VqaV2Config", "Nlvr2Dataset", "Nlvr2Config",
    "KarpathyCaptionDataset", "KarpathyCaptionsConfig", "CocoCaptionPairsDataset", "CocoCaptionPairsConfig",
    "TextCorpusDataset", "TextCorpusConfig",
    "ImageFolderDataset", "ImageFolderConfig",
]


def __getattr__(name: str) -> Any:
    if name in _WORLD:
        return getattr(importlib.import_module("beit3_plugins.data.world"), name)
    raise AttributeError(f"module 'beit3_plugins.data' has no attribute {name!r}")
