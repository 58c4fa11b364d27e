"""fairseq tasks ``beit3_mdm`` (BEiT-3 / VL-BEiT masked data modeling) and ``vlmo_pretrain`` (VLMo).

Data (paths relative to the data directory given to ``fairseq-train``), per kind either small data read
into compact arrays (a text file, image folders, a COCO captions or Karpathy json) or shards read with
O(1) work per sample (``beit3_plugins.pretraining.shards``): WebDataset tars as img2dataset writes them
and plain-text shards, named with brace patterns (``pairs-{00000..01023}.tar``), local or fsspec URLs.
Held-out parts for validation. One config dataclass per task, as fairseq's registry expects.
"""

import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II

from beit3_plugins.data.readers import SkipCounter, read_text_lines
from beit3_plugins.pretraining.data import (EmptyCorpusError, ImageSource, PairSource, ShardedImageSource,
                                            ShardedPairSource, ShardedTextSource, TextSource, list_images, read_pairs)
from beit3_plugins.input_checks import exit_on_missing_data, require_paths
from beit3_plugins.pretraining.shards import (SKIP_REASONS, MissingShardError, ShardLimits, ShardSet, expand_shards,
                                             is_shard_spec)
from beit3_plugins.pretraining.masking import BlockMaskingConfig, TokenMaskingConfig

from .datasets import BinarizedTextSource, MixedModalityDataset

logger = logging.getLogger(__name__)

__all__ = ["Beit3MdmTaskConfig", "Beit3MdmTask", "VlmoPretrainTaskConfig", "VlmoPretrainTask"]


@dataclass
class Beit3MdmTaskConfig(FairseqDataclass):
    data: str = field(default="", metadata={"help": "data directory; the paths below are relative to it"})
    spm_model: str = field(default="", metadata={"help": "sentencepiece model (beit3.spm or train-spm output)"})
    text_data: str = field(default="text/corpus.txt", metadata={
        "help": "text files, one sentence per line (comma-separated), text shards (brace/glob pattern), or the "
                "prefix of fairseq-preprocess output (PREFIX.bin/.idx, dict.txt from make-shards --fairseq-dict)"})
    image_data: str = field(default="imagenet/train", metadata={
        "help": "image folders (comma-separated, recursive) or WebDataset tar shards (*.tar, brace pattern)"})
    pair_data: str = field(default="coco/dataset_coco.json", metadata={
        "help": "COCO captions or Karpathy json, or WebDataset tar shards (KEY.jpg + KEY.txt / KEY.json)"})
    valid_pair_data: str = field(default="", metadata={
        "help": "held-out pairs (json or shards); empty: pair_data with valid_pair_splits (json only)"})
    valid_pair_image_root: str = field(default="", metadata={"help": "image root of valid_pair_data; empty: pair_image_root"})
    samples_per_shard: int = field(default=0, metadata={
        "help": "nominal samples per shard (index = shard * this + position); 0: the first shard's count"})
    missing_shards: str = field(default="error", metadata={"help": "error (default) or skip (counted)"})
    max_member_bytes: int = field(default=64 << 20, metadata={"help": "larger tar members / text lines are refused (counted)"})
    epoch_units: int = field(default=0, metadata={
        "help": "batch units per epoch (infinite or huge streams); 0: the largest kind's size / per-unit count"})
    resample_shards: bool = field(default=False, metadata={
        "help": "draw shards (blocks) with replacement each epoch instead of a shuffled pass"})
    pair_image_root: str = field(default="coco", metadata={"help": "image root of the caption file"})
    pair_splits: str = field(default="train,restval", metadata={"help": "Karpathy splits used for training"})
    valid_text_data: str = field(default="", metadata={"help": "held-out text; empty: hold out the last valid_text_lines lines"})
    valid_text_lines: int = 40
    valid_image_data: str = "imagenet/val"
    valid_pair_splits: str = "val"
    texts_per_unit: int = field(default=1, metadata={"help": "texts per batch unit (--batch-size units per batch)"})
    images_per_unit: int = 1
    pairs_per_unit: int = 1
    max_text_len: int = field(default=64, metadata={"help": "tokens incl. <s> and </s>; longer text is truncated and counted"})
    image_size: int = 224
    patch_size: int = field(default=16, metadata={"help": "must equal the backbone's patch size"})
    text_mask_prob: float = 0.15
    pair_text_mask_prob: float = 0.5
    whole_word_masking: bool = field(default=False, metadata={
        "help": "mask whole words (every sentencepiece piece of a chosen word; VLMo) instead of single pieces"})
    image_mask_ratio: float = 0.4
    min_mask_block: int = 16
    mvlm_masking: str = field(default="separate", metadata={
        "help": "separate (one modality per pair), joint (both), text (text only) or image (patches only); the "
                "last two are BEiT-3's Table 8e/8f ablations of MVLM's text / image reconstruction"})
    train_crop_scale: float = field(default=0.5, metadata={"help": "random resized crop minimum area"})
    color_jitter: float = field(default=0.0, metadata={
        "help": "BEiT's ColorJitter(x, x, x) in training (BEiT-3 / VL-BEiT: 0.4); 0 = off"})
    rand_augment_ops: int = field(default=0, metadata={"help": "VLMo's RandAugment: ops per image (VLMo: 2); 0 = off"})
    rand_augment_magnitude: int = field(default=7, metadata={"help": "RandAugment magnitude of 10 (VLMo: 7)"})
    # ablation switches (BEiT-3 Table 8c/e/f, VL-BEiT Table 4, VLMo Table 5): an objective switched off builds no
    # data source / computes no loss
    mlm: bool = field(default=True, metadata={"help": "MLM: on text-only data (mdm) / on pairs (vlmo)"})
    mim: bool = field(default=True, metadata={"help": "MIM on image-only data (mdm)"})
    mvlm: bool = field(default=True, metadata={"help": "MVLM on image-text pairs (mdm)"})
    itc: bool = field(default=True, metadata={"help": "image-text contrast (vlmo)"})
    itm: bool = field(default=True, metadata={"help": "image-text matching with hard negatives (vlmo)"})
    objective: str = field(default="mdm", metadata={"help": "mdm (BEiT-3 MLM+MIM+MVLM) or vlmo (ITC+ITM+MLM)"})
    stage: str = field(default="all", metadata={"help": "stagewise pretraining: all | vision | language"})
    debug_nan_loss_at_update: int = field(default=-1, metadata={
        "help": "test hook: the loss of this update is NaN (fairseq must stop with FloatingPointError); -1 = off"})
    seed: int = II("common.seed")


class _NanLoss:
    """The criterion with its loss multiplied by NaN (``--debug-nan-loss-at-update``): a real non-finite loss
    that flows through backward into fairseq's own gradient-norm check."""

    def __init__(self, criterion) -> None:
        self.criterion = criterion

    def __call__(self, model, sample):
        loss, sample_size, logging_output = self.criterion(model, sample)
        return loss * float("nan"), sample_size, logging_output


@register_task("beit3_mdm", dataclass=Beit3MdmTaskConfig)
class Beit3MdmTask(FairseqTask):
    """Masked data modeling over text, images and image-text pairs mixed in every batch."""

    def __init__(self, cfg: Beit3MdmTaskConfig, tokenizer) -> None:
        super().__init__(cfg)
        self.tokenizer = tokenizer
        self.skips = SkipCounter()
        if cfg.objective not in ("mdm", "vlmo"):
            raise ValueError(f"unknown objective {cfg.objective!r}; choose mdm or vlmo")
        if cfg.mvlm_masking not in ("separate", "joint", "text", "image"):
            raise ValueError(f"mvlm_masking must be separate, joint, text or image, got {cfg.mvlm_masking!r}")
        switches = ("mlm", "mim", "mvlm") if cfg.objective == "mdm" else ("itc", "itm", "mlm")
        if cfg.stage == "all" and not any(getattr(cfg, name) for name in switches):
            raise ValueError(f"every {cfg.objective} objective is switched off ({', '.join(switches)})")

    @classmethod
    def setup_task(cls, cfg: Beit3MdmTaskConfig, **kwargs):
        from beit3_plugins.tokenizer import Beit3Tokenizer

        if not cfg.spm_model:
            raise ValueError("--spm-model is required (a sentencepiece model with the XLM-R id layout)")
        inputs = [(cfg.data, "dir", "data directory: the first argument / task.data")]
        if cfg.data and os.path.isdir(cfg.data):
            inputs.append((cls._path(cfg, cfg.spm_model), "file", "tokenizer: --spm-model"))
            inputs += cls.data_inputs(cfg, "train")
        cls.require_inputs(inputs)
        tokenizer = Beit3Tokenizer(cls._path(cfg, cfg.spm_model))
        logger.info(f"text tokenizer: {tokenizer}")
        return cls(cfg, tokenizer)

    @staticmethod
    def _path(cfg, rel: str) -> str:
        return rel if os.path.isabs(rel) else os.path.join(cfg.data, rel)

    @staticmethod
    def source_specs(cfg, split: str) -> Dict[str, str]:
        """The data sources a split reads and where (``{"text" | "image" | "pair": spec}``), from the stage
        and the objective switches: what :meth:`build_sources` builds and :meth:`data_inputs` checks."""
        train = split == "train"
        text = cfg.text_data if train or not cfg.valid_text_data else cfg.valid_text_data
        image = cfg.image_data if train else cfg.valid_image_data
        pair = cfg.pair_data if train or not cfg.valid_pair_data else cfg.valid_pair_data
        if cfg.stage == "language":      # VLMo stage 2: text only
            return {"text": text}
        if cfg.stage == "vision":        # VLMo stage 1: images only
            return {"image": image}
        if cfg.stage != "all":
            raise ValueError(f"unknown stage {cfg.stage!r}; stages are all, vision, language")
        specs = {}
        if cfg.objective == "vlmo" or cfg.mvlm:
            specs["pair"] = pair
        if cfg.objective == "mdm" and cfg.mlm:
            specs["text"] = text
        if cfg.objective == "mdm" and cfg.mim:
            specs["image"] = image
        return specs

    @classmethod
    def data_inputs(cls, cfg, split: str) -> List[Tuple[str, str, str]]:
        """``(path, "file" | "dir", role)`` of every local file and folder a split reads: shards (a pattern
        that matches nothing is listed as the pattern), corpora, image folders, caption files and their image
        root. URLs are left to the shard reader."""
        inputs: List[Tuple[str, str, str]] = []
        for kind, spec in cls.source_specs(cfg, split).items():
            option = {"text": "--text-data", "image": "--image-data", "pair": "--pair-data"}[kind]
            option = option if split == "train" else option.replace("--", "--valid-")
            if is_shard_spec(spec):
                try:
                    names = expand_shards(spec, cfg.data)
                except MissingShardError:
                    inputs.append((cls._path(cfg, spec), "file", f"{kind} shards ({option}): no match"))
                    continue
                if cfg.missing_shards == "error":
                    inputs += [(n, "file", f"{kind} shard ({option})") for n in names if "://" not in n]
            elif kind == "text":
                if not os.path.isfile(cls._path(cfg, spec) + ".idx"):   # else fairseq-preprocess output
                    inputs += [(cls._path(cfg, p.strip()), "file", f"text corpus ({option})")
                               for p in spec.split(",") if p.strip()]
            elif kind == "image":
                inputs += [(cls._path(cfg, p.strip()), "dir", f"image folder ({option})")
                           for p in spec.split(",") if p.strip()]
            else:
                train = split == "train"
                root = cfg.pair_image_root if train or not cfg.valid_pair_image_root else cfg.valid_pair_image_root
                inputs += [(cls._path(cfg, spec), "file", f"caption file ({option})"),
                           (cls._path(cfg, root), "dir", "image root of the captions (--pair-image-root)")]
        return inputs

    @staticmethod
    def require_inputs(inputs) -> None:
        """One message naming every missing input and exit status 2, no traceback (``BEIT3_DEBUG=1``)."""
        with exit_on_missing_data():
            require_paths("fairseq pretraining data", inputs,
                          "the data directory (the first argument of fairseq-train, task.data of "
                          "fairseq-hydra-train); --spm-model and the --*-data paths are relative to it")

    def _paths(self, spec: str) -> List[str]:
        return [self._path(self.cfg, p.strip()) for p in spec.split(",") if p.strip()]

    @property
    def grid(self):
        g = self.cfg.image_size // self.cfg.patch_size
        return (g, g)

    def model_vocab_size(self) -> int:
        return getattr(self, "_model_vocab_size", self.tokenizer.vocab_size)

    def transform(self, train: bool):
        """Training: random resized crop + flip drawn from the per-sample generator (thread-safe, exact
        resume); evaluation: the deterministic VL resize + normalisation."""
        from beit3_plugins.pretraining.augment import RandAugment
        from beit3_plugins.pretraining.data import CropFlipAugment
        from beit3_plugins.transforms import build_image_transform

        cfg = self.cfg
        if train:
            rand_augment = (RandAugment(cfg.rand_augment_ops, cfg.rand_augment_magnitude)
                            if cfg.rand_augment_ops > 0 else None)
            return CropFlipAugment(cfg.image_size, scale=(cfg.train_crop_scale, 1.0), color_jitter=cfg.color_jitter,
                                   rand_augment=rand_augment)
        return build_image_transform("vl", train=False, image_size=self.cfg.image_size)

    def build_sources(self, split: str):
        cfg, train = self.cfg, split == "train"
        if self.cfg.image_size % self.cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
        block = BlockMaskingConfig(mask_ratio=cfg.image_mask_ratio, min_block=cfg.min_mask_block)
        vocab = self.model_vocab_size()
        transform = self.transform(train)
        specs = self.source_specs(cfg, split)
        sources = {}
        if "pair" in specs:
            pair_mask = TokenMaskingConfig(mask_prob=cfg.pair_text_mask_prob if cfg.objective == "mdm"
                                           else cfg.text_mask_prob, whole_word=cfg.whole_word_masking)
            sources["pair"] = (self._pair_source(specs["pair"], train, vocab, transform, pair_mask, block),
                               cfg.pairs_per_unit)
        if "text" in specs:
            sources["text"] = (self._text_source(specs["text"], train, vocab), cfg.texts_per_unit)
        if "image" in specs:
            image_spec = specs["image"]
            if is_shard_spec(image_spec):
                image_source = ShardedImageSource(self.shard_set(image_spec, "tar"), transform, self.grid, block)
            else:
                folders = self._paths(image_spec)
                image_source = ImageSource(list_images(folders), transform, self.grid, block, self.skips,
                                           name=",".join(folders))
            sources["image"] = (image_source, cfg.images_per_unit)
        return sources

    def _text_source(self, text_spec: str, train: bool, vocab: int):
        cfg = self.cfg
        text_mask = TokenMaskingConfig(mask_prob=cfg.text_mask_prob, whole_word=cfg.whole_word_masking)
        binarized = os.path.isfile(self._path(cfg, text_spec) + ".idx")   # fairseq-preprocess output prefix
        if binarized and not train and not cfg.valid_text_data:
            raise ValueError(f"binarized text {cfg.text_data}: set --valid-text-data (held-out text) for validation")
        if binarized:
            return BinarizedTextSource(self._path(cfg, text_spec), self.tokenizer, cfg.max_text_len, vocab,
                                       text_mask, self.skips)
        if is_shard_spec(text_spec):
            if not train and not cfg.valid_text_data:
                raise ValueError(f"text shards {cfg.text_data}: set --valid-text-data (held-out text) for validation")
            return ShardedTextSource(self.shard_set(text_spec, "text"), self.tokenizer, cfg.max_text_len, vocab,
                                     text_mask)
        text_lines: List[str] = []
        for path in self._paths(text_spec):
            text_lines.extend(read_text_lines(path))
        if not text_lines:
            raise EmptyCorpusError(f"text corpus {text_spec} in {cfg.data} has no non-empty lines")
        if not cfg.valid_text_data:
            held = cfg.valid_text_lines
            if len(text_lines) <= held:
                raise ValueError(f"text corpus {cfg.text_data} has {len(text_lines)} lines: too few to hold out "
                                 f"{held} for validation (set --valid-text-data or --valid-text-lines)")
            text_lines = text_lines[:-held] if train else text_lines[-held:]
        return TextSource(text_lines, self.tokenizer, cfg.max_text_len, vocab, text_mask, self.skips, name=text_spec)

    def _pair_source(self, pair_spec: str, train: bool, vocab: int, transform, pair_mask, block):
        cfg = self.cfg
        pair_mode = "joint" if cfg.objective == "vlmo" else cfg.mvlm_masking
        if is_shard_spec(pair_spec):
            if not train and not cfg.valid_pair_data:
                raise ValueError(f"pair shards {cfg.pair_data}: set --valid-pair-data (held-out pairs) for validation")
            return ShardedPairSource(self.shard_set(pair_spec, "tar"), self.tokenizer, cfg.max_text_len, vocab,
                                     transform, self.grid, pair_mask, block, mode=pair_mode)
        splits = cfg.pair_splits if train else cfg.valid_pair_splits
        root = cfg.pair_image_root if train or not cfg.valid_pair_image_root else cfg.valid_pair_image_root
        pairs = read_pairs(self._path(cfg, pair_spec), self._path(cfg, root),
                           splits=[s.strip() for s in splits.split(",") if s.strip()])
        return PairSource(pairs, self.tokenizer, cfg.max_text_len, vocab, transform, self.grid, pair_mask, block,
                          mode=pair_mode, skips=self.skips, name=f"{pair_spec} ({splits})")

    def shard_set(self, spec: str, kind: str) -> ShardSet:
        names = expand_shards(spec, self.cfg.data)
        logger.info(f"{spec}: {len(names)} {kind} shard(s)")
        return ShardSet(names, kind, self.skips, samples_per_shard=self.cfg.samples_per_shard,
                        missing=self.cfg.missing_shards, limits=ShardLimits(max_member_bytes=self.cfg.max_member_bytes))

    def load_dataset(self, split: str, combine: bool = False, epoch: int = 1, **kwargs):
        if split not in ("train", "valid"):
            raise ValueError(f"unknown split {split!r}: this task has 'train' and 'valid'")
        if split == "valid":   # the training inputs were checked in setup_task
            self.require_inputs(self.data_inputs(self.cfg, split))
        sources = self.build_sources(split)
        sizes = {k: len(s) for k, (s, _) in sources.items()}
        logger.info(f"{split}: {sizes} examples; per unit {{k: n}} = { {k: n for k, (_, n) in sources.items()} }")
        train = split == "train"
        self.datasets[split] = MixedModalityDataset(
            sources, seed=self.cfg.seed + (0 if train else 1000), pad_id=self.tokenizer.pad_id, shuffle=train,
            epoch_units=self.cfg.epoch_units if train else 0, resample=self.cfg.resample_shards and train,
            skips=self.skips)

    def get_batch_iterator(self, dataset, max_tokens=None, max_sentences=None, num_shards=1, **kwargs):
        if isinstance(dataset, MixedModalityDataset) and max_sentences:
            dataset.set_round_to(max_sentences * num_shards)
        return super().get_batch_iterator(dataset, max_tokens=max_tokens, max_sentences=max_sentences,
                                          num_shards=num_shards, **kwargs)

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        self._model_vocab_size = model.core.backbone.cfg.vocab_size
        if self.tokenizer.vocab_size > self._model_vocab_size:
            raise ValueError(f"tokenizer has {self.tokenizer.vocab_size} ids but the model's text embedding only "
                             f"{self._model_vocab_size} rows (set --vocab-size >= {self.tokenizer.vocab_size})")
        tok = model.core.tokenizer
        if tok is not None and not tok.initialized:
            self._init_codebook(tok)
        return model

    def _init_codebook(self, tok) -> None:
        """A tokenizer without weights: k-means codebook on the first training images (deterministic, so
        every rank computes the same one; a checkpoint restores it on resume)."""
        import torch

        if is_shard_spec(self.cfg.image_data):
            source = ShardedImageSource(self.shard_set(self.cfg.image_data, "tar"), self.transform(False), self.grid)
        else:
            folders = self._paths(self.cfg.image_data)
            paths = list_images(folders)
            if not paths:
                raise ValueError(f"no images in {folders} to initialise the VQ-KD codebook")
            source = ImageSource(paths[:64], self.transform(False), self.grid, skips=self.skips)
        rng = np.random.default_rng(self.cfg.seed)
        images = torch.stack([source.load(i, rng)[0] for i in range(min(64, len(source)))])
        bins = tok.init_codebook(images, seed=self.cfg.seed)
        logger.info(f"VQ-KD codebook initialised by k-means on {len(images)} images: "
                    f"{int((bins > 0).sum())}/{len(bins)} codes used")

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False, **kwargs):
        """fairseq's step. A non-finite loss is logged with its update number and objectives; fairseq's trainer
        then stops on the non-finite gradient norm (``FloatingPointError``, ``crash.pt``, NanDetector)."""
        from .optimizers import Beit3AdamW

        if update_num == self.cfg.debug_nan_loss_at_update:
            criterion = _NanLoss(criterion)

        if getattr(model, "sharded_state", None) is not None and not isinstance(optimizer, Beit3AdamW):
            raise ValueError(f"a model sharded by --shard-parameters needs --optimizer beit3_adamw (it reduces, "
                             f"clips and checkpoints sharded gradients); got {type(optimizer).__name__}")
        loss, sample_size, logging_output = super().train_step(sample, model, criterion, optimizer, update_num,
                                                               ignore_grad, **kwargs)
        if not torch.isfinite(loss).all():
            parts = {k: float(v) for k, v in logging_output.items() if k.endswith("_loss")}
            logger.error(f"non-finite loss {float(loss)} at update {update_num} (objectives: {parts}); fairseq "
                         "stops this run with FloatingPointError: lower --lr, add --clip-norm, or check the batch")
        skips = sample.get("skips", {}) if not ignore_grad else {}
        for reason in SKIP_REASONS:          # every rank logs the same keys (fairseq sums them across ranks)
            logging_output[f"skip_{reason}"] = int(skips.get(reason, 0))
        return loss, sample_size, logging_output

    def reduce_metrics(self, logging_outputs, criterion):
        """Skipped items per kind: summed per log interval and over the epoch (``| train |`` line)."""
        from fairseq import metrics

        super().reduce_metrics(logging_outputs, criterion)
        for reason in SKIP_REASONS:
            total = sum(int(log.get(f"skip_{reason}", 0)) for log in logging_outputs)
            if total:
                metrics.log_scalar_sum(f"skip_{reason}", total)

    def max_positions(self):
        return None

    @property
    def source_dictionary(self):
        return None

    @property
    def target_dictionary(self):
        return None


@dataclass
class VlmoPretrainTaskConfig(Beit3MdmTaskConfig):
    objective: str = "vlmo"
    max_text_len: int = 40


@register_task("vlmo_pretrain", dataclass=VlmoPretrainTaskConfig)
class VlmoPretrainTask(Beit3MdmTask):
    """VLMo: ITC + ITM (global hard negatives) + MLM on pairs; ``--stage language`` = text-only MLM with
    attention and vision expert frozen (stagewise pretraining)."""
