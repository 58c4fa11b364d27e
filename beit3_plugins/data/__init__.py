"""Data formats of the BEiT-3 recipes: the synthetic shape world, readers of the real formats, and
registered map-style datasets. Importing this package pulls in numpy and Pillow only (no torch)."""
from beit3_plugins.data.datasets import (ImageFolderConfig, ImageFolderDataset, ImageOptions,
                                         KarpathyCaptionDataset, KarpathyCaptionsConfig, Nlvr2Config,
                                         Nlvr2Dataset, RecordDataset, TextCorpusConfig, TextCorpusDataset,
                                         VqaV2Config, VqaV2Dataset)
from beit3_plugins.data.readers import (IMAGE_EXTENSIONS, AnswerVocab, CaptionRecord, CocoImageRecord,
                                        CorruptImageError, ImageFolderRecord, Nlvr2Record, SegmentationRecord,
                                        SkipCounter, VqaRecord, load_image, normalize_answer, read_ade20k,
                                        read_coco_captions, read_coco_instances, read_image_folder, read_json,
                                        read_jsonl, read_karpathy, read_nlvr2, read_text_lines, read_vqa,
                                        vqa_score)
from beit3_plugins.data.world import (ADE_CLASSES, ADE_RAW_LABELS, COCO_CATEGORIES, COLORS, FORMATS, KINDS,
                                      SIZES, Scene, Shape, WorldConfig, WorldManifest, generate_world,
                                      render_scene, sample_scene, scene_captions)

__all__ = [
    # world
    "generate_world", "WorldConfig", "WorldManifest", "Scene", "Shape", "sample_scene", "render_scene",
    "scene_captions", "KINDS", "COLORS", "SIZES", "FORMATS", "COCO_CATEGORIES", "ADE_CLASSES", "ADE_RAW_LABELS",
    # readers
    "SkipCounter", "CorruptImageError", "load_image", "read_json", "read_jsonl", "IMAGE_EXTENSIONS",
    "CaptionRecord", "read_coco_captions", "read_karpathy", "read_text_lines",
    "VqaRecord", "AnswerVocab", "normalize_answer", "vqa_score", "read_vqa",
    "Nlvr2Record", "read_nlvr2", "ImageFolderRecord", "read_image_folder",
    "CocoImageRecord", "read_coco_instances", "SegmentationRecord", "read_ade20k",
    # datasets (registered in beit3_plugins.registry.DATASETS)
    "RecordDataset", "ImageOptions", "VqaV2Dataset", "VqaV2Config", "Nlvr2Dataset", "Nlvr2Config",
    "KarpathyCaptionDataset", "KarpathyCaptionsConfig", "TextCorpusDataset", "TextCorpusConfig",
    "ImageFolderDataset", "ImageFolderConfig",
]
