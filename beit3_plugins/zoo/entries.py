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

__all__ = ["ZooFile", "TokenizerSpec", "ZooEntry", "register_pretrained", "get_pretrained", "list_pretrained",
           "ZOO", "TASK_KINDS", "UnknownPretrainedError"]

# What the weights of an entry fit (the pipelines layer maps each to a task model of vl_tasks/):
#   pretrain            backbone + mlm/mim heads (MDM pretraining file)
#   itc                 backbone + contrastive heads (vision_head / language_head / logit_scale)
#   retrieval           as itc, fine-tuned on COCO / Flickr30k
#   vqa                 backbone + pooler + 3129-way classifier
#   nlvr2               backbone + two-layer MLP over 4D pooled pairs
#   captioning          backbone + mlm_head, generation by masked-token decoding
#   image_classification backbone + fc_norm + head (ImageNet-1k)
#   tokenizer           a text tokenizer file (beit3.spm, a WordPiece vocab)
#   visual_tokenizer    a BEiT v2 VQ-KD tokenizer (MIM targets for pretraining)
TASK_KINDS = ("pretrain", "itc", "retrieval", "vqa", "nlvr2", "captioning", "image_classification", "tokenizer",
              "visual_tokenizer")


class UnknownPretrainedError(KeyError):
    """A name that is neither a zoo entry nor an existing file."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


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
    task: str                        # one of TASK_KINDS
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
        if self.task not in TASK_KINDS:
            raise ValueError(f"zoo entry {self.name!r}: unknown task {self.task!r}; one of {TASK_KINDS}")
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


ZOO: Dict[str, ZooEntry] = {}


def register_pretrained(entry: ZooEntry, *, force: bool = False) -> ZooEntry:
    """Add ``entry`` to the zoo (VLMo's entries, a lab's own files, test twins)."""
    if entry.name in ZOO and ZOO[entry.name] != entry and not force:
        raise ValueError(f"zoo entry {entry.name!r} already exists; pass force=True to replace it")
    ZOO[entry.name] = entry
    return entry


def get_pretrained(name: str) -> ZooEntry:
    _load_builtin()
    try:
        return ZOO[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, list(ZOO), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise UnknownPretrainedError(f"unknown pretrained name {name!r}.{hint} See beit3_plugins.list_pretrained()"
                                     ) from None


def list_pretrained(task: Optional[str] = None, family: Optional[str] = None, as_tuples: bool = False):
    """Names of the zoo entries (optionally of one task / family); ``as_tuples`` gives (name, task) pairs
    as open_clip's ``list_pretrained`` gives (architecture, tag)."""
    _load_builtin()
    entries = [e for e in ZOO.values() if (task is None or e.task == task) and (family is None or e.family == family)]
    if as_tuples:
        return [(e.name, e.task) for e in entries]
    return [e.name for e in entries]


_BUILTIN_LOADED: List[bool] = []


def _load_builtin() -> None:
    """Import the published lists once (BEiT-3 / BEiT v2 here; VLMo's module when it exists)."""
    if _BUILTIN_LOADED:
        return
    _BUILTIN_LOADED.append(True)
    import importlib

    from . import beit3_release  # noqa: F401 - registers the BEiT-3 and BEiT v2 files
    try:
        importlib.import_module("beit3_plugins.zoo.vlmo_release")
    except ModuleNotFoundError as exc:
        if exc.name != "beit3_plugins.zoo.vlmo_release":
            raise


def entry_summary(entry: ZooEntry) -> Tuple[str, ...]:
    return (entry.name, entry.family, entry.task, entry.backbone or "-", str(entry.image_size), entry.weights.url)
