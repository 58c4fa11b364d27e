"""The published BEiT-3 files (29 checkpoints + ``beit3.spm``) and the BEiT v2 VQ-KD visual tokenizers.

Source: the file tables of microsoft/unilm ``beit3/README.md`` and ``beit2/README.md`` / ``beit2/TOKENIZER.md``
(read at the repository's current head, December 2026); settings per file from the model factories of
``beit3/modeling_finetune.py`` (resolution, ``normalize_output=False`` for VQA and ImageNet, 3129 VQA answers,
1000 classes) and ``run_beit3_finetuning.py`` (64 text tokens; 32 for captioning). The release publishes no
checksums: a file's sha256 and size are recorded in the cache on first download and checked on every later
use (see ``download.py``); the VQ-KD names carry a sha256 prefix that is checked from the first download.
The released VQA answer list (``answer2label.txt``) is not published; ``beit3-plugins data prepare`` rebuilds it
from the VQA v2 annotations by the official procedure (``beit3_plugins.data.official``) and it is passed to the
VQA pipeline.
"""
from __future__ import annotations

from .entries import TokenizerSpec, ZooEntry, ZooFile

__all__ = ["ENTRIES", "BEIT3_URL", "BEIT2_URL", "BEIT3_SPM"]

BEIT3_URL = "https://github.com/addf400/files/releases/download/beit3/"
BEIT2_URL = "https://github.com/addf400/files/releases/download/BEiT-v2/"

BEIT3_SPM = ZooFile(BEIT3_URL + "beit3.spm")
_SPM = TokenizerSpec("sentencepiece", BEIT3_SPM, max_length=64)
_SPM_CAPTION = TokenizerSpec("sentencepiece", BEIT3_SPM, max_length=32)

_entries = [ZooEntry("beit3_spm", "beit3", "tokenizer", BEIT3_SPM, tokenizer=_SPM,
                     notes="XLM-R sentencepiece model, fairseq id layout (64002 ids)")]


def _add(name: str, task: str, size: str, *, image_size: int = 224, normalize_output: bool = True,
         head=None, dataset: str = "", base=None, tokenizer: TokenizerSpec = _SPM, transform: str = "vl",
         notes: str = "") -> None:
    _entries.append(ZooEntry(name=name, family="beit3", task=task, weights=ZooFile(BEIT3_URL + name + ".pth"),
                             backbone=f"beit3_{size}", image_size=image_size, normalize_output=normalize_output,
                             tokenizer=tokenizer, image_transform=transform, head=dict(head or {}),
                             dataset=dataset, base=base, notes=notes))


_SIZES = {"base": "base", "large": "large", "base_indomain": "base", "large_indomain": "large"}

# pretrained (MDM on images, texts and image-text pairs; indomain: COCO + VG only) and the ITC-tuned duals
for _kind, _size in _SIZES.items():
    _add(f"beit3_{_kind}_patch16_224", "pretrain", _size, head={"mlm_vocab": 64010, "mim_vocab": 8192})
for _size in ("base", "large"):
    _add(f"beit3_{_size}_itc_patch16_224", "retrieval", _size, base=f"beit3_{_size}_patch16_224",
         notes="image-text contrastive tuning of the pretrained file (the dual encoder; no retrieval fine-tuning)")

# ImageNet-1k (fine-tuned at 224 px from the pretrained files; imagenet mean/std; no final norm)
for _kind, _size in _SIZES.items():
    _add(f"beit3_{_kind}_patch16_224_in1k", "image_classification", _size, normalize_output=False,
         head={"num_classes": 1000}, dataset="imagenet1k", base=f"beit3_{_kind}_patch16_224", transform="imagenet")

# VQA v2 (480 px; the large in-domain model also at 768 px with Visual Genome QA augmentation)
for _kind, _size in _SIZES.items():
    _add(f"beit3_{_kind}_patch16_480_vqa", "vqa", _size, image_size=480, normalize_output=False,
         head={"num_answers": 3129}, dataset="vqav2", base=f"beit3_{_kind}_patch16_224")
_add("beit3_large_indomain_patch16_768_vgqaaug_vqa", "vqa", "large", image_size=768, normalize_output=False,
     head={"num_answers": 3129}, dataset="vqav2+vgqa", base="beit3_large_indomain_patch16_224")

# NLVR2 (224 px)
for _kind, _size in _SIZES.items():
    _add(f"beit3_{_kind}_patch16_224_nlvr2", "nlvr2", _size, head={"num_classes": 2}, dataset="nlvr2",
         base=f"beit3_{_kind}_patch16_224")

# captioning: COCO (Karpathy) and NoCaps, 480 px, 32 text tokens
for _kind in ("base", "base_indomain", "large"):
    for _data in ("coco_captioning", "nocaps"):
        _add(f"beit3_{_kind}_patch16_480_{_data}", "captioning", _SIZES[_kind], image_size=480,
             head={"mlm_vocab": 64010}, dataset=_data.replace("_captioning", ""),
             base=f"beit3_{_kind}_patch16_224", tokenizer=_SPM_CAPTION)

# retrieval (384 px, fine-tuned from the ITC files)
for _size in ("base", "large"):
    for _data, _label in (("coco", "coco"), ("f30k", "flickr30k")):
        _add(f"beit3_{_size}_patch16_384_{_data}_retrieval", "retrieval", _size, image_size=384, dataset=_label,
             base=f"beit3_{_size}_itc_patch16_224")

# BEiT v2 VQ-KD visual tokenizers (ImageNet-1k; codebook 8192 x 32), the MIM targets for pretraining
for _file in ("vqkd_encoder_base_decoder_1x768x12_clip-d93179da.pth",
              "vqkd_encoder_base_decoder_3x768x12_clip-d5036aa7.pth",
              "vqkd_encoder_base_decoder_1x768x12_dino-663c55d7.pth"):
    _entries.append(ZooEntry(_file.split("-")[0], "beit2", "visual_tokenizer", ZooFile(BEIT2_URL + _file),
                             head={"codebook_size": 8192, "code_dim": 32},
                             notes="teacher: " + ("CLIP ViT-B/16" if "clip" in _file else "DINO ViT-B/16")))

ENTRIES = tuple(_entries)
