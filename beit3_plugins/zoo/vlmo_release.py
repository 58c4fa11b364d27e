"""The 18 published VLMo files (3 pretrained, 3 stage-2, and VQA / NLVR2 / COCO / Flickr30k fine-tuned,
each for base, base-plus and large) with their settings.

Source: the file tables of microsoft/unilm ``vlmo/README.md`` (read at the repository's head, December 2026);
settings per file from ``vlmo/config.py`` (``task_finetune_*``: 480 px VQA with 3129 answers, 384 px NLVR2 and
retrieval, ``max_text_len`` 40; pretraining at 224 px) and ``vlmo_module.py`` (the final norm is on for every
task). The text is BERT-uncased WordPiece (``bert-base-uncased``'s ``vocab.txt``, 30522 pieces), published on the
Hugging Face Hub. The release publishes no checksums: sha256 and size are recorded on first download and
checked afterwards (``download.py``).
"""
from __future__ import annotations

from .entries import TokenizerSpec, ZooEntry, ZooFile

__all__ = ["ENTRIES", "VLMO_URL", "BERT_UNCASED_VOCAB"]

VLMO_URL = "https://github.com/wenhui0924/vlmo_ckpts/releases/download/vlmo/"
BERT_UNCASED_VOCAB = ZooFile("hf-hub:google-bert/bert-base-uncased/vocab.txt",
                             filename="bert-base-uncased-vocab.txt")
_WORDPIECE = TokenizerSpec("wordpiece", BERT_UNCASED_VOCAB, max_length=40)

_entries = [ZooEntry("bert_base_uncased_vocab", "vlmo", "tokenizer", BERT_UNCASED_VOCAB,
                     tokenizer=_WORDPIECE, notes="BERT-uncased WordPiece vocabulary (VLMo's text)")]

_SIZES = {"base": "vlmo_base", "base_plus": "vlmo_base_plus", "large": "vlmo_large"}


def _add(name: str, task: str, size: str, *, image_size: int, head=None, dataset: str = "", base=None) -> None:
    _entries.append(ZooEntry(name=name, family="vlmo", task=task, weights=ZooFile(VLMO_URL + name + ".pt"),
                             backbone=_SIZES[size], image_size=image_size, normalize_output=True,
                             tokenizer=_WORDPIECE, image_transform="vl", head=dict(head or {}),
                             dataset=dataset, base=base))


for _size in _SIZES:
    # stage 3 of VLMo's pretraining (image-text pairs; itc + itm + mlm heads) and the stage-2 text-only files
    _add(f"vlmo_{_size}_patch16_224", "pretrain", _size, image_size=224)
    _add(f"vlmo_{_size}_patch16_224_stage2", "pretrain", _size, image_size=224)
    _add(f"vlmo_{_size}_patch16_480_vqa", "vqa", _size, image_size=480, head={"num_answers": 3129},
         dataset="vqav2", base=f"vlmo_{_size}_patch16_224")
    _add(f"vlmo_{_size}_patch16_384_nlvr2", "nlvr2", _size, image_size=384, head={"num_classes": 2},
         dataset="nlvr2", base=f"vlmo_{_size}_patch16_224")
    _add(f"vlmo_{_size}_patch16_384_coco", "retrieval", _size, image_size=384, dataset="coco",
         base=f"vlmo_{_size}_patch16_224")
    # Flickr30k: base and large were fine-tuned from their COCO files, base-plus from the pretrained one
    _add(f"vlmo_{_size}_patch16_384_f30k", "retrieval", _size, image_size=384, dataset="flickr30k",
         base=f"vlmo_{_size}_patch16_224" if _size == "base_plus" else f"vlmo_{_size}_patch16_384_coco")

ENTRIES = tuple(_entries)
