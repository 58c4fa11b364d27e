"""Map-style datasets over the reader records, registered in ``DATASETS`` (one config dataclass each).

They need no torch: ``len()`` and ``[i]`` return dicts of Python values and (transformed) images, so
they work as ``torch.utils.data.Dataset`` (duck-typed) and in fairseq wrappers alike. Images are loaded
lazily; a corrupt or missing image is counted in :attr:`RecordDataset.skips` and the next record is used
instead, so one bad file never ends an epoch.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from beit3_plugins.data.readers import (AnswerVocab, SkipCounter, load_image, read_coco_captions, read_image_folder,
                                        read_karpathy, read_nlvr2, read_text_lines, read_vqa)
from beit3_plugins.registry import DATASETS

__all__ = [
    "ImageOptions", "RecordDataset", "VqaV2Dataset", "VqaV2Config", "Nlvr2Dataset", "Nlvr2Config",
    "KarpathyCaptionDataset", "KarpathyCaptionsConfig", "CocoCaptionPairsDataset", "CocoCaptionPairsConfig",
    "TextCorpusDataset", "TextCorpusConfig",
    "ImageFolderDataset", "ImageFolderConfig",
]


@dataclasses.dataclass
class ImageOptions:
    """Which :func:`beit3_plugins.transforms.build_image_transform` to apply (None: return PIL images)."""

    transform: Optional[str] = None  # "vl" or "imagenet"
    image_size: int = 224
    train: bool = False
    randaug: bool = False            # RandAugment on top of the "vl" training transform (``--randaug``)

    def build(self) -> Optional[Callable]:
        if self.transform is None:
            return None
        from beit3_plugins.transforms import build_image_transform  # pulls in torch/timm only when asked

        return build_image_transform(self.transform, train=self.train, image_size=self.image_size,
                                     randaug=self.randaug)


class RecordDataset:
    """Records plus lazy image loading with counted skips.

    Args:
        records: the reader's records.
        transform: callable applied to each PIL image (None keeps PIL images).
        max_consecutive_skips: after this many bad records in a row, fail with the skip report.

    ``decode_policy``: the image decoder's policy (``beit3_plugins.data.images``), "viewer" unless a task
    reproduces the reference protocol ("official").
    """

    decode_policy: str = "viewer"

    def __init__(self, records: Sequence[Any], transform: Optional[Callable] = None,
                 max_consecutive_skips: int = 32) -> None:
        self.records = list(records)
        self.transform = transform
        self.skips = SkipCounter()
        self.max_consecutive_skips = max_consecutive_skips
        self._unreadable: set = set()  # record positions that failed once (per process)

    def __len__(self) -> int:
        return len(self.records)

    def _image(self, path: str) -> Any:
        image = load_image(path, self.skips, policy=self.decode_policy)
        if image is None or self.transform is None:
            return image
        return self.transform(image)

    def _item(self, record: Any) -> Optional[Dict[str, Any]]:  # None = skip this record
        raise NotImplementedError

    def __getitem__(self, index: int) -> Dict[str, Any]:
        if not self.records:
            raise IndexError(f"{type(self).__name__} is empty")
        if index < 0:
            index += len(self.records)
        if not 0 <= index < len(self.records):
            raise IndexError(f"index {index} out of range for {len(self.records)} records")
        tried = 0
        for step in range(len(self.records)):
            position = (index + step) % len(self.records)
            if position in self._unreadable:  # known bad: skip without counting it again
                continue
            item = self._item(self.records[position])
            if item is not None:
                return item
            self._unreadable.add(position)
            tried += 1
            if tried >= self.max_consecutive_skips:
                break
        raise RuntimeError(f"{type(self).__name__}: no readable record from index {index} on (gave up after "
                           f"{tried} new failures; {len(self._unreadable)} of {len(self.records)} records "
                           f"unreadable); is the image root right?\n{self.skips.report()}")


# ---------------------------------------------------------------------------------------------- VQA v2
@dataclasses.dataclass
class VqaV2Config:
    questions: str = ""
    annotations: Optional[str] = None
    image_dir: Optional[str] = None
    answer_vocab: Optional[str] = None      # answer2label.txt (``beit3-plugins data prepare`` writes it)
    answer_list_from: Tuple[str, ...] = ()  # else the official list from these annotations (train, val); () = annotations
    min_answer_count: int = 9               # the official threshold; lower only for tiny data
    drop_out_of_vocab: bool = False         # True for training, as the reference does
    image: ImageOptions = dataclasses.field(default_factory=ImageOptions)


@DATASETS.register("vqa_v2", config=VqaV2Config)
class VqaV2Dataset(RecordDataset):
    """Items: image, question, labels, scores (soft targets), question_id."""

    def __init__(self, cfg: VqaV2Config) -> None:
        if cfg.answer_vocab:
            self.vocab = AnswerVocab.load(cfg.answer_vocab)
        elif cfg.answer_list_from or cfg.annotations:
            self.vocab = AnswerVocab.from_annotations(list(cfg.answer_list_from) or cfg.annotations,
                                                      min_count=cfg.min_answer_count)
        else:
            self.vocab = AnswerVocab([])
        read_skips = SkipCounter()
        records = read_vqa(cfg.questions, cfg.annotations, cfg.image_dir, self.vocab if cfg.annotations else None,
                           drop_out_of_vocab=cfg.drop_out_of_vocab, skips=read_skips)
        super().__init__(records, cfg.image.build())
        self.skips.merge(read_skips)

    def _item(self, record: Any) -> Optional[Dict[str, Any]]:
        image = self._image(record.image_path) if record.image_path else None
        if record.image_path and image is None:
            return None
        return {"image": image, "question": record.question, "labels": record.labels,
                "scores": record.scores, "question_id": record.question_id}


# ---------------------------------------------------------------------------------------------- NLVR2
@dataclasses.dataclass
class Nlvr2Config:
    jsonl: str = ""
    image_dir: str = ""
    image: ImageOptions = dataclasses.field(default_factory=ImageOptions)


@DATASETS.register("nlvr2", config=Nlvr2Config)
class Nlvr2Dataset(RecordDataset):
    """Items: left_image, right_image, sentence, label (1 = True), identifier."""

    def __init__(self, cfg: Nlvr2Config) -> None:
        super().__init__(read_nlvr2(cfg.jsonl, cfg.image_dir), cfg.image.build())

    def _item(self, record: Any) -> Optional[Dict[str, Any]]:
        left = self._image(record.left_path)
        right = self._image(record.right_path) if left is not None else None
        if left is None or right is None:
            return None
        return {"left_image": left, "right_image": right, "sentence": record.sentence,
                "label": record.label, "identifier": record.identifier}


# ---------------------------------------------------------------------------------------------- captions
@dataclasses.dataclass
class KarpathyCaptionsConfig:
    json: str = ""
    image_root: str = ""
    splits: Tuple[str, ...] = ("train",)
    per_caption: bool = True   # one item per caption (training) or per image with all captions (eval)
    image: ImageOptions = dataclasses.field(default_factory=ImageOptions)


class _CaptionedImagesDataset(RecordDataset):
    """Images that each carry captions (Karpathy splits, COCO-captions files): one item per caption, or one
    per image with all its captions. Items: image, caption (or captions), image_index (the image's position
    in the file), image_id."""

    def __init__(self, images: List[Any], per_caption: bool, image_options: ImageOptions) -> None:
        self.images = images
        self.per_caption = per_caption
        if per_caption:
            records = [(index, caption) for index, record in enumerate(images) for caption in record.captions]
        else:
            records = [(index, record.captions) for index, record in enumerate(images)]
        super().__init__(records, image_options.build())

    def _item(self, record: Any) -> Optional[Dict[str, Any]]:
        index, text = record
        image = self._image(self.images[index].image_path)
        if image is None:
            return None
        key = "caption" if self.per_caption else "captions"
        return {"image": image, key: text, "image_index": index, "image_id": self.images[index].image_id}


@DATASETS.register("karpathy_captions", config=KarpathyCaptionsConfig)
class KarpathyCaptionDataset(_CaptionedImagesDataset):
    """The Karpathy-split captions json (COCO, Flickr30k) of the captioning and retrieval tasks."""

    def __init__(self, cfg: KarpathyCaptionsConfig) -> None:
        super().__init__(read_karpathy(cfg.json, cfg.image_root, cfg.splits), cfg.per_caption, cfg.image)


@dataclasses.dataclass
class CocoCaptionPairsConfig:
    json: str = ""          # COCO captions file (images + annotations), e.g. pretraining image-text pairs
    image_dir: str = ""
    image: ImageOptions = dataclasses.field(default_factory=ImageOptions)


@DATASETS.register("coco_caption_pairs", config=CocoCaptionPairsConfig)
class CocoCaptionPairsDataset(_CaptionedImagesDataset):
    """One item per (image, caption) pair of a COCO-captions-style file: the image-text pairs of BEiT-3's
    contrastive intermediate stage."""

    def __init__(self, cfg: CocoCaptionPairsConfig) -> None:
        super().__init__(read_coco_captions(cfg.json, cfg.image_dir), True, cfg.image)


# ---------------------------------------------------------------------------------------------- text
@dataclasses.dataclass
class TextCorpusConfig:
    path: str = ""


@DATASETS.register("text_corpus", config=TextCorpusConfig)
class TextCorpusDataset(RecordDataset):
    """Items: text (one corpus line)."""

    def __init__(self, cfg: TextCorpusConfig) -> None:
        super().__init__(read_text_lines(cfg.path))

    def _item(self, record: Any) -> Optional[Dict[str, Any]]:
        return {"text": record}


# ---------------------------------------------------------------------------------------------- ImageNet
@dataclasses.dataclass
class ImageFolderConfig:
    root: str = ""
    classes: Optional[Tuple[str, ...]] = None
    image: ImageOptions = dataclasses.field(default_factory=lambda: ImageOptions(transform=None))


@DATASETS.register("imagenet_folder", config=ImageFolderConfig)
class ImageFolderDataset(RecordDataset):
    """Items: image, label; ``classes`` lists the class names by label."""

    def __init__(self, cfg: ImageFolderConfig) -> None:
        records, self.classes = read_image_folder(cfg.root, cfg.classes)
        super().__init__(records, cfg.image.build())

    def _item(self, record: Any) -> Optional[Dict[str, Any]]:
        image = self._image(record.path)
        return None if image is None else {"image": image, "label": record.label}
