"""What a zoo entry is: one published file plus everything needed to use it.

An entry names the backbone variant (a ``BACKBONES`` name), the task whose model the weights fit and its head
shapes, the input resolution, whether the backbone's final LayerNorm is on, the tokenizer (kind + file) and
the image transform. The entry type is framework-free and family-neutral: BEiT-3 entries use the
``sentencepiece`` tokenizer over ``beit3.spm``; VLMo entries use a BERT WordPiece vocabulary
(``TokenizerSpec(kind="wordpiece", ...)``) and are added with :func:`register_pretrained` like any other.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Dict, List, Mapping, Optional, Tuple

from beit3_plugins.registry import Registry, UnknownComponentError

__all__ = ["ZooFile", "TokenizerSpec", "ZooEntry", "register_pretrained", "get_pretrained", "list_pretrained",
           "ZOO", "FILE_KINDS", "UnknownPretrainedError"]

# File kinds that are no task model's weights; every other ``ZooEntry.task`` is a ``TASKS`` name (the task
# plugin that builds the model the weights fit, e.g. "vqa", "retrieval", a third party's "shape_colors").
#   pretrain            backbone (+ pretraining heads, not loaded): the MDM / VLMo pretraining file
#   tokenizer           a text tokenizer file (beit3.spm, a WordPiece vocab)
#   visual_tokenizer    a BEiT v2 VQ-KD tokenizer (MIM targets for pretraining)
FILE_KINDS = ("pretrain", "tokenizer", "visual_tokenizer")


UnknownPretrainedError = UnknownComponentError  # a name the zoo does not hold (the registry's did-you-mean error)


@dataclasses.dataclass(frozen=True)
class ZooFile:
    """One downloadable file: where it is published and what it must be.

    ``sha256`` / ``size`` are checked when known; ``sha256_prefix`` is the torch.hub convention of a file
    name carrying the first hex digits of its sha256 (BEiT v2's ``...-d5036aa7.pth``). ``url`` may be
    ``hf-hub:<org>/<repo>/<path>`` for a file on the Hugging Face Hub.
    """

    url: str
    filename: str = ""
    sha256: Optional[str] = None
    size: Optional[int] = None
    sha256_prefix: Optional[str] = None

    def __post_init__(self) -> None:
        if not self.filename:
            object.__setattr__(self, "filename", self.url.rstrip("/").rsplit("/", 1)[-1])
        if self.sha256_prefix is None:
            match = re.search(r"-([0-9a-f]{8,64})\.\w+$", self.filename)
            if match:
                object.__setattr__(self, "sha256_prefix", match.group(1))


@dataclasses.dataclass(frozen=True)
class TokenizerSpec:
    """Which text tokenizer an entry needs: a ``TOKENIZERS`` kind and the file it reads (``model_path``)."""

    kind: str                       # "sentencepiece" (BEiT-3, beit3.spm) | "wordpiece" (VLMo, BERT uncased)
    file: Optional[ZooFile] = None  # None: the user passes a tokenizer or a path
    max_length: int = 64            # default sequence length including the special tokens


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """A published checkpoint (or tokenizer file) with the settings to build and run it."""

    name: str
    family: str                      # "beit3" | "vlmo" | "beit2"
    task: str                        # a TASKS name (the model the weights fit) or one of FILE_KINDS
    weights: ZooFile
    backbone: Optional[str] = None   # BACKBONES name; None for tokenizer files
    image_size: int = 224
    normalize_output: bool = True    # the backbone's final LayerNorm (off for VQA / ImageNet as released)
    tokenizer: Optional[TokenizerSpec] = None
    image_transform: str = "vl"      # "vl" (mean = std = 0.5) | "imagenet"
    head: Mapping[str, int] = dataclasses.field(default_factory=dict)  # {"num_answers": 3129}, {"num_classes": 1000}
    answer_vocab: Optional[ZooFile] = None  # VQA answer list (one per line, label order); not published for BEiT-3
    dataset: str = ""                # what it was fine-tuned on (coco, flickr30k, vqav2, ...)
    base: Optional[str] = None       # entry it was fine-tuned from
    notes: str = ""
    backbone_config: Mapping[str, object] = dataclasses.field(default_factory=dict)  # other config fields set
    labels: Tuple[str, ...] = ()     # VQA answers / class names in label order (self-described models)

    def __post_init__(self) -> None:
        if not isinstance(self.task, str) or not self.task:
            raise ValueError(f"zoo entry {self.name!r}: task must be a TASKS name or one of {FILE_KINDS}")
        if self.task not in ("tokenizer", "visual_tokenizer") and self.backbone is None:
            raise ValueError(f"zoo entry {self.name!r}: a {self.task} checkpoint needs a backbone name")

    def backbone_overrides(self) -> Dict[str, object]:
        """Backbone config fields this entry sets (resolution, final norm and any other field it names)."""
        return {**self.backbone_config, "img_size": self.image_size, "normalize_output": self.normalize_output}

    def files(self) -> List[ZooFile]:
        """Every file the entry needs: weights, tokenizer, answer list."""
        out = [self.weights]
        if self.tokenizer is not None and self.tokenizer.file is not None:
            out.append(self.tokenizer.file)
        if self.answer_vocab is not None:
            out.append(self.answer_vocab)
        return out


# The zoo: a registry of data. Its locations name the release lists (``ENTRIES`` of each module) without
# importing them here; installed packages add theirs under the ``beit3_plugins.zoo`` entry-point group
# (``my_zoo = "my_package.zoo:ENTRIES"``).
ZOO = Registry("pretrained model", entry_type=ZooEntry, entry_point_group="beit3_plugins.zoo", code_plugins=False,
               locations=["beit3_plugins.zoo.beit3_release:ENTRIES", "beit3_plugins.zoo.vlmo_release:ENTRIES"])


def register_pretrained(entry: ZooEntry, *, force: bool = False) -> ZooEntry:
    """Add ``entry`` to the zoo at run time (a lab's own files, test twins)."""
    return ZOO.add(entry, force=force, source="register_pretrained")


def get_pretrained(name: str) -> ZooEntry:
    return ZOO[name]


def list_pretrained(task: Optional[str] = None, family: Optional[str] = None, as_tuples: bool = False):
    """Names of the zoo entries (optionally of one task / family); ``as_tuples`` gives (name, task) pairs
    as open_clip's ``list_pretrained`` gives (architecture, tag)."""
    entries = [e for _, e in ZOO.items() if (task is None or e.task == task) and (family is None or e.family == family)]
    if as_tuples:
        return [(e.name, e.task) for e in entries]
    return [e.name for e in entries]


def entry_summary(entry: ZooEntry) -> Tuple[str, ...]:
    return (entry.name, entry.family, entry.task, entry.backbone or "-", str(entry.image_size), entry.weights.url)
