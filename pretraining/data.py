"""Sample builders for masked data modeling: text lines, image folders and image-caption pairs.

Each source turns (index, numpy Generator) into one corrupted training example, so a framework adapter
can seed the generator per (seed, epoch, index) and a resumed run sees the same masks and crops.
Inputs are the formats the shape world writes and real corpora of the same shape: a text file with one
sentence per line, image folders (ImageNet style, searched recursively), and caption files (COCO
``captions_*.json`` or Karpathy ``dataset_*.json``). Bad input: an empty corpus or a wrong vocabulary is
an error at construction; an unreadable image is a counted skip (the next readable one is used); an
over-long text is truncated and counted.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from beit3_plugins.data.readers import (IMAGE_EXTENSIONS, SkipCounter, load_image, read_coco_captions,
                                        read_json, read_karpathy, read_text_lines)

from .augment import ColorJitter, RandAugment
from .masking import (IGNORE_INDEX, BlockMaskingConfig, BlockMaskingGenerator, TokenMaskingConfig, mask_tokens,
                      word_start_table)
from .shards import PackedStrings, ShardSet, caption_of

__all__ = ["EmptyCorpusError", "CropFlipAugment", "TextSource", "ImageSource", "PairSource", "ShardedTextSource",
           "ShardedImageSource", "ShardedPairSource", "collate_text", "collate_images", "collate_pairs", "list_images",
           "read_pairs", "MAX_IMAGE_RETRIES", "PAIR_MASKING"]

MAX_IMAGE_RETRIES = 16
PAIR_MASKING = ("separate", "joint", "text", "image")


class EmptyCorpusError(ValueError):
    """A configured data source has no usable item."""


def list_images(folders: Sequence[str]) -> List[str]:
    """All image files under ``folders`` (recursive, sorted)."""
    paths: List[str] = []
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: image folder not found")
        paths.extend(sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS))
    return paths


def read_pairs(caption_file: str, image_root: str, splits: Sequence[str] = ("train", "restval")
               ) -> List[Tuple[str, str]]:
    """(image path, caption) pairs from a COCO captions json or a Karpathy split json (format sniffed)."""
    data = read_json(caption_file, "caption file (COCO captions_*.json or Karpathy dataset_*.json)")
    if isinstance(data, dict) and "annotations" in data:
        records = read_coco_captions(caption_file, image_root)
    elif isinstance(data, dict) and "images" in data:
        records = read_karpathy(caption_file, image_root, splits=tuple(splits))
    else:
        raise ValueError(f"{caption_file}: neither a COCO captions file nor a Karpathy split file")
    return [(r.image_path, c) for r in records for c in r.captions]


class _TextEncoder:
    """Tokenizer + vocabulary checks shared by the text and pair sources."""

    def __init__(self, tokenizer, max_len: int, model_vocab_size: int, skips: SkipCounter) -> None:
        if tokenizer.vocab_size > model_vocab_size:
            raise ValueError(f"tokenizer has {tokenizer.vocab_size} ids but the model's text embedding only "
                             f"{model_vocab_size} rows: use a model with vocab_size >= {tokenizer.vocab_size}")
        self.tokenizer, self.max_len, self.skips = tokenizer, max_len, skips

    def __call__(self, text: str) -> np.ndarray:
        enc = self.tokenizer.encode(text, max_length=self.max_len, pad=False)
        if enc.truncated:
            self.skips.add("truncated_text", text[:60])
        return np.asarray(enc.input_ids, dtype=np.int64)


class _TextMasker:
    """BERT corruption of encoded text, shared by the text and pair sources (whole words when configured)."""

    def __init__(self, tokenizer, masking: TokenMaskingConfig) -> None:
        self.tokenizer, self.masking = tokenizer, masking
        self.word_starts = word_start_table(tokenizer) if masking.whole_word else None

    def __call__(self, ids: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
        return mask_tokens(ids, rng, self.masking, self.tokenizer.mask_id, num_special=4,
                           vocab_size=self.tokenizer.vocab_size,
                           word_starts=self.word_starts[ids] if self.word_starts is not None else None)


class TextSource:
    """MLM examples from text lines: 15% of tokens chosen (or whole words), 80% <mask> / 10% random / 10% kept.

    The lines live in one packed utf-8 buffer (:class:`~.shards.PackedStrings`), not a Python list."""

    block_size = 4096   # locality unit of the epoch order (see shards.BlockOrder)

    def __init__(self, lines: Sequence[str], tokenizer, max_len: int, model_vocab_size: int,
                 masking: TokenMaskingConfig = TokenMaskingConfig(), skips: Optional[SkipCounter] = None,
                 name: str = "text corpus") -> None:
        self.lines = PackedStrings([line for line in lines if line.strip()])
        if not len(self.lines):
            raise EmptyCorpusError(f"{name}: no non-empty lines")
        self.skips = skips if skips is not None else SkipCounter()
        self.encode = _TextEncoder(tokenizer, max_len, model_vocab_size, self.skips)
        self.mask_text = _TextMasker(tokenizer, masking)

    def __len__(self) -> int:
        return len(self.lines)

    def text(self, index: int) -> str:
        return self.lines[index % len(self.lines)]

    def get(self, index: int, rng: np.random.Generator) -> Dict[str, np.ndarray]:
        ids = self.encode(self.text(index))
        inputs, targets = self.mask_text(ids, rng)
        return {"ids": inputs, "targets": targets}


class ShardedTextSource(TextSource):
    """MLM examples from plain-text shards (one sentence per line), read line by line through an offset
    index built when a loader worker first opens a shard; empty lines are counted, not returned."""

    def __init__(self, shards: ShardSet, tokenizer, max_len: int, model_vocab_size: int,
                 masking: TokenMaskingConfig = TokenMaskingConfig(), skips: Optional[SkipCounter] = None) -> None:
        self.shards = shards
        self.skips = skips if skips is not None else shards.skips
        self.block_size = shards.samples_per_shard
        self.encode = _TextEncoder(tokenizer, max_len, model_vocab_size, self.skips)
        self.mask_text = _TextMasker(tokenizer, masking)

    def __len__(self) -> int:
        return len(self.shards)

    def text(self, index: int) -> str:
        for step in range(MAX_IMAGE_RETRIES):
            shard, row = self.shards.locate(index + step * self.shards.samples_per_shard)
            if row >= 0:
                return shard.read(row).decode("utf-8", errors="replace")
        raise RuntimeError(f"{MAX_IMAGE_RETRIES} consecutive empty or unreadable text shards near "
                           f"{self.shards.names[(index // self.shards.samples_per_shard) % len(self.shards.names)]}"
                           f": {self.skips.report()}")


@dataclasses.dataclass
class CropFlipAugment:
    """BEiT-style training augmentation (random resized crop, horizontal flip, optional colour jitter or
    RandAugment, then the VL normalisation)
    drawing every random number from the caller's numpy Generator.

    fairseq prefetches batches in a background thread, so augmentations that use the process-global torch
    or python RNGs would race with the trainer's per-update reseeding and make resumed runs differ.
    """

    image_size: int
    scale: Tuple[float, float] = (0.5, 1.0)
    ratio: Tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    # colour augmentation after crop and flip: BEiT's ColorJitter(x, x, x) (BEiT-3, VL-BEiT; 0 = off) and
    # VLMo's RandAugment (None = off); see augment.py
    color_jitter: float = 0.0
    rand_augment: Optional[RandAugment] = None

    def __call__(self, image, rng: np.random.Generator) -> Tensor:
        import math

        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        width, height = image.size
        area = width * height
        top, left, h, w = 0, 0, height, width
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
            cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < cw <= width and 0 < ch <= height:
                top, left, h, w = int(rng.integers(0, height - ch + 1)), int(rng.integers(0, width - cw + 1)), ch, cw
                break
        image = TF.resized_crop(image, top, left, h, w, [self.image_size, self.image_size],
                                interpolation=InterpolationMode.BICUBIC)
        if rng.random() < self.hflip:
            image = TF.hflip(image)
        if self.color_jitter > 0:
            image = ColorJitter(self.color_jitter, self.color_jitter, self.color_jitter)(image, rng)
        if self.rand_augment is not None:
            image = self.rand_augment(image, rng)
        return TF.normalize(TF.to_tensor(image), [0.5, 0.5, 0.5], [0.5, 0.5, 0.5])


def _apply_transform(transform: Callable, image, rng: np.random.Generator) -> Tensor:
    """A :class:`CropFlipAugment` takes the generator; any other transform must be deterministic."""
    return transform(image, rng) if isinstance(transform, CropFlipAugment) else transform(image)


class ImageSource:
    """MIM examples: an augmented image and a block-wise mask of its patch grid."""

    block_size = 4096

    def __init__(self, paths: Sequence[str], transform: Callable, grid: Tuple[int, int],
                 masking: BlockMaskingConfig = BlockMaskingConfig(), skips: Optional[SkipCounter] = None,
                 name: str = "image folder") -> None:
        self.paths = paths if isinstance(paths, PackedStrings) else PackedStrings(list(paths))
        if not len(self.paths):
            raise EmptyCorpusError(f"{name}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
        self.transform = transform
        self.masker = BlockMaskingGenerator(grid, masking)
        self.skips = skips if skips is not None else SkipCounter()

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int, rng: np.random.Generator) -> Tuple[Tensor, int]:
        """Transformed image at ``index`` or, if unreadable (counted), the next readable one."""
        for step in range(MAX_IMAGE_RETRIES):
            i = (index + step) % len(self.paths)
            image = load_image(self.paths[i], skips=self.skips)
            if image is not None:
                return _apply_transform(self.transform, image, rng), i
        raise RuntimeError(f"{MAX_IMAGE_RETRIES} consecutive unreadable images from {self.paths[index % len(self.paths)]}"
                           f": {self.skips.report()}")

    def get(self, index: int, rng: np.random.Generator) -> Dict[str, object]:
        image, _ = self.load(index, rng)
        return {"image": image, "mask": self.masker(rng).reshape(-1)}


class PairSource:
    """MVLM examples from (image, caption) pairs.

    ``separate`` masking (BEiT-3 default) corrupts one modality per pair, chosen with probability 1/2:
    either 50% of the text tokens or a block-wise image mask. ``joint`` masking corrupts both (VL-BEiT,
    VLMo's MLM on pairs). ``text`` / ``image`` corrupt only that modality (BEiT-3's ablations without
    MVLM's image / text reconstruction).
    Image paths are stored once per image, captions in one packed buffer.
    """

    block_size = 4096

    def __init__(self, pairs: Sequence[Tuple[str, str]], tokenizer, max_len: int, model_vocab_size: int,
                 transform: Callable, grid: Tuple[int, int], text_masking: TokenMaskingConfig = TokenMaskingConfig(0.5),
                 image_masking: BlockMaskingConfig = BlockMaskingConfig(), mode: str = "separate",
                 skips: Optional[SkipCounter] = None, name: str = "caption file") -> None:
        if mode not in PAIR_MASKING:
            raise ValueError(f"MVLM masking must be one of {list(PAIR_MASKING)}, got {mode!r}")
        if not pairs:
            raise EmptyCorpusError(f"{name}: no image-caption pairs")
        self.skips = skips if skips is not None else SkipCounter()
        unique: Dict[str, int] = {}
        self.image_of = np.asarray([unique.setdefault(p, len(unique)) for p, _ in pairs], dtype=np.int64)
        self.captions = PackedStrings([c for _, c in pairs])
        self.images = ImageSource(PackedStrings(list(unique)), transform, grid, image_masking, self.skips, name)
        self.encode = _TextEncoder(tokenizer, max_len, model_vocab_size, self.skips)
        self.mask_text, self.mode = _TextMasker(tokenizer, text_masking), mode

    def __len__(self) -> int:
        return len(self.captions)

    def load(self, index: int, rng: np.random.Generator) -> Tuple[Tensor, str]:
        """(transformed image, caption) of pair ``index``, or of the next pair with a readable image."""
        for step in range(MAX_IMAGE_RETRIES):
            i = (index + step) % len(self.captions)
            image = load_image(self.images.paths[int(self.image_of[i])], skips=self.skips)
            if image is not None:
                return _apply_transform(self.images.transform, image, rng), self.captions[i]
        raise RuntimeError(f"{MAX_IMAGE_RETRIES} consecutive unreadable pair images from "
                           f"{self.images.paths[int(self.image_of[index % len(self.captions)])]}: {self.skips.report()}")

    def get(self, index: int, rng: np.random.Generator) -> Dict[str, object]:
        image, caption = self.load(index, rng)
        return self.example(image, caption, rng)

    def example(self, image: Tensor, caption: str, rng: np.random.Generator) -> Dict[str, object]:
        ids = self.encode(caption)
        image_mask = self.images.masker(rng).reshape(-1)
        inputs, targets = self.mask_text(ids, rng)
        mask_text_only = self.mode == "text" or (self.mode == "separate" and rng.random() < 0.5)
        if mask_text_only:
            image_mask[:] = False
        elif self.mode in ("separate", "image"):                              # image only
            inputs, targets = ids.copy(), np.full_like(ids, IGNORE_INDEX)
        return {"image": image, "mask": image_mask, "ids": inputs, "targets": targets, "clean_ids": ids}


class ShardedImageSource(ImageSource):
    """MIM examples from WebDataset tar shards (the image member of each sample; captions ignored)."""

    def __init__(self, shards: ShardSet, transform: Callable, grid: Tuple[int, int],
                 masking: BlockMaskingConfig = BlockMaskingConfig()) -> None:
        self.shards, self.skips, self.transform = shards, shards.skips, transform
        self.masker = BlockMaskingGenerator(grid, masking)
        self.block_size = shards.samples_per_shard

    def __len__(self) -> int:
        return len(self.shards)

    def load(self, index: int, rng: np.random.Generator) -> Tuple[Tensor, int]:
        image, _ = _read_shard_sample(self.shards, index, rng, self.transform, need_caption=False)
        return image, index


class ShardedPairSource(PairSource):
    """MVLM examples from WebDataset tar shards as img2dataset writes them (``KEY.jpg`` + ``KEY.txt`` and/or
    ``KEY.json`` with a ``caption`` field). A sample with a corrupt image or a missing or empty caption is
    counted and replaced by the next one of the shard."""

    def __init__(self, shards: ShardSet, tokenizer, max_len: int, model_vocab_size: int, transform: Callable,
                 grid: Tuple[int, int], text_masking: TokenMaskingConfig = TokenMaskingConfig(0.5),
                 image_masking: BlockMaskingConfig = BlockMaskingConfig(), mode: str = "separate") -> None:
        if mode not in PAIR_MASKING:
            raise ValueError(f"MVLM masking must be one of {list(PAIR_MASKING)}, got {mode!r}")
        self.shards, self.skips = shards, shards.skips
        self.block_size = shards.samples_per_shard
        self.images = ImageSource(["unused"], transform, grid, image_masking, self.skips)
        self.encode = _TextEncoder(tokenizer, max_len, model_vocab_size, self.skips)
        self.mask_text, self.mode = _TextMasker(tokenizer, text_masking), mode

    def __len__(self) -> int:
        return len(self.shards)

    def load(self, index: int, rng: np.random.Generator) -> Tuple[Tensor, str]:
        return _read_shard_sample(self.shards, index, rng, self.images.transform, need_caption=True)


def _read_shard_sample(shards: ShardSet, index: int, rng: np.random.Generator, transform: Callable,
                       need_caption: bool) -> Tuple[Tensor, Optional[str]]:
    """The first usable sample at or after ``index`` (next rows of the shard, then the next shards)."""
    skips = shards.skips
    for step in range(MAX_IMAGE_RETRIES):
        shard, row = shards.locate(index + step)
        if row < 0:                                   # empty / unreadable / missing (skip mode) shard: jump over it
            index += shards.samples_per_shard
            continue
        where = f"{shard.name}:{shard.keys[row]}"
        caption = None
        if need_caption:
            caption = caption_of(shard.read(row, 1), shard.read(row, 2), where, skips)
            if caption is None:
                continue
        data = shard.read(row, 0)
        if data is None:
            skips.add("missing_image", where)
            continue
        image = load_image(data, skips, where=where)  # the one decoder: as the readers decode files
        if image is not None:
            return _apply_transform(transform, image, rng), caption
    raise RuntimeError(f"{MAX_IMAGE_RETRIES} consecutive unusable samples near index {index} of "
                       f"{shards.names[0]}...: {skips.report()}")


def _pad(seqs: Sequence[np.ndarray], value: int) -> Tensor:
    length = max(len(s) for s in seqs)
    out = np.full((len(seqs), length), value, dtype=np.int64)
    for row, s in enumerate(seqs):
        out[row, : len(s)] = s
    return torch.from_numpy(out)


def collate_text(items: Sequence[Dict], pad_id: int = 1) -> Dict[str, Tensor]:
    ids = _pad([it["ids"] for it in items], pad_id)
    lengths = torch.tensor([len(it["ids"]) for it in items])
    padding_mask = torch.arange(ids.shape[1])[None, :] >= lengths[:, None]  # True = pad
    return {"ids": ids, "padding_mask": padding_mask, "targets": _pad([it["targets"] for it in items], IGNORE_INDEX)}


def collate_images(items: Sequence[Dict]) -> Dict[str, Tensor]:
    return {"image": torch.stack([it["image"] for it in items]),
            "mask": torch.from_numpy(np.stack([it["mask"] for it in items]))}


def collate_pairs(items: Sequence[Dict], pad_id: int = 1) -> Dict[str, Tensor]:
    out = collate_images(items)
    out.update(collate_text(items, pad_id))
    out["clean_ids"] = _pad([it["clean_ids"] for it in items], pad_id)
    return out
