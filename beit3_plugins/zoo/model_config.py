"""The self-description of a model: one schema for a trainer checkpoint and a shared model folder.

Every trainer of this project writes a :class:`ModelConfig` into its checkpoints (key ``model_config``), and
``save_pretrained`` / ``push_to_hub`` write the same dictionary as the folder's ``config.json``. It holds what
a zoo entry holds (family, task, backbone variant, resolution, final-norm setting, head shapes, tokenizer,
image transform) plus every backbone config field that differs from the variant's default, the VQA answer
list or class names (in label order) and the run's benchmark numbers. With it a file is enough on its own:
``pipeline("vqa", model="runs/x/checkpoints/best.pt")`` needs no zoo entry of the same size.

Reading is strict: an unknown field (a typo, or a file written by a newer version) and another
``format_version`` are errors naming the field, never silently ignored settings. Core module: no framework.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

__all__ = ["ModelConfig", "ImageTransformConfig", "TokenizerConfig", "ModelConfigError", "FORMAT_VERSION",
           "CONFIG_NAME", "WEIGHTS_NAME", "MODEL_CONFIG_KEY", "TRANSFORM_CONSTANTS"]

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"          # a model folder's self-description
WEIGHTS_NAME = "model.safetensors"   # a model folder's weights (the task model's state dict)
MODEL_CONFIG_KEY = "model_config"    # the key of the same dictionary inside a trainer checkpoint
WHOLE_MODEL_TASKS = ("detection", "segmentation")  # detectron2 / mmseg checkpoints: only their backbone loads here

# (mean, std) of each transform kind of beit3_plugins.transforms
TRANSFORM_CONSTANTS: Dict[str, Tuple[Tuple[float, ...], Tuple[float, ...]]] = {
    "vl": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


class ModelConfigError(ValueError):
    """A model description that cannot be used: unknown field, other format version, wrong type."""


@dataclasses.dataclass(frozen=True)
class ImageTransformConfig:
    """The evaluation image transform: resize to ``size`` (``vl``: square resize; ``imagenet``: resize +
    centre crop of ``crop_pct``), then normalise with ``mean`` / ``std``."""

    kind: str = "vl"                 # "vl" | "imagenet" (beit3_plugins.transforms.build_image_transform)
    size: int = 224
    mean: Tuple[float, ...] = (0.5, 0.5, 0.5)
    std: Tuple[float, ...] = (0.5, 0.5, 0.5)
    interpolation: str = "bicubic"
    crop_pct: Optional[float] = None  # imagenet only; None: 0.875 below 384 px, else 1.0

    @classmethod
    def of(cls, kind: str, size: int, **fields: Any) -> "ImageTransformConfig":
        if kind not in TRANSFORM_CONSTANTS:
            raise ModelConfigError(f"image_transform.kind {kind!r}: one of {sorted(TRANSFORM_CONSTANTS)}")
        mean, std = TRANSFORM_CONSTANTS[kind]
        return cls(kind=kind, size=int(size), mean=mean, std=std, **fields)


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    """The text tokenizer: a ``TOKENIZERS`` kind and its file. ``file`` is a name inside the model folder, or
    in a trainer checkpoint the path the run read (``data.tokenizer``); ``None`` when the run had none."""

    kind: str = "sentencepiece"      # "sentencepiece" (beit3.spm) | "wordpiece" (VLMo, BERT vocab.txt)
    file: Optional[str] = None
    max_length: int = 64


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """What a model is and what it needs to run (see the module docstring)."""

    name: str
    family: str                      # "beit3" | "vlmo"
    task: str                        # a TASKS name, "pretrain", or "detection" / "segmentation" (whole detector)
    backbone: str                    # a BACKBONES name
    backbone_config: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # fields set on the variant
    head: Mapping[str, int] = dataclasses.field(default_factory=dict)  # {"num_answers": 3129}, {"num_classes": 3}
    image_transform: ImageTransformConfig = ImageTransformConfig()
    tokenizer: Optional[TokenizerConfig] = None
    labels: Optional[Tuple[str, ...]] = None   # VQA answers / class names, in label order
    base: Optional[str] = None       # what it was fine-tuned from (zoo name or file)
    dataset: str = ""
    benchmark: Mapping[str, float] = dataclasses.field(default_factory=dict)  # metric -> value of the run
    trained_by: str = ""             # which trainer wrote it (vl_tasks, fairseq, detectron2, mmseg, save)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        size = self.backbone_config.get("img_size")
        if size is not None and int(size) != int(self.image_transform.size):
            raise ModelConfigError(f"{self.name}: field 'image_transform.size' is {self.image_transform.size} but the "
                                   f"backbone runs at {size} px (backbone_config.img_size)")

    @property
    def image_size(self) -> int:
        return int(self.backbone_config.get("img_size", self.image_transform.size))

    @property
    def normalize_output(self) -> bool:
        return bool(self.backbone_config.get("normalize_output", True))

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> Dict[str, Any]:
        out = dataclasses.asdict(self)
        out["labels"] = list(self.labels) if self.labels is not None else None
        out["image_transform"]["mean"] = list(self.image_transform.mean)
        out["image_transform"]["std"] = list(self.image_transform.std)
        out["backbone_config"] = dict(self.backbone_config)
        out["head"] = dict(self.head)
        out["benchmark"] = dict(self.benchmark)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "model config") -> "ModelConfig":
        """Strict reading: unknown fields and another format version are errors naming the field."""
        if not isinstance(data, Mapping):
            raise ModelConfigError(f"{source}: a model config is a JSON object, got {type(data).__name__}")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ModelConfigError(
                f"{source}: field 'format_version' is {version!r}; this version of beit3-plugins reads format "
                f"{FORMAT_VERSION}. Re-save the model with a matching beit3-plugins (save_pretrained)")
        fields = dict(data)
        _check_fields(cls, fields, source, "")
        missing = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING and f.name not in fields]
        if missing:
            raise ModelConfigError(f"{source}: missing field(s) {missing}")
        if fields.get("image_transform") is not None:
            transform = dict(fields["image_transform"])
            _check_fields(ImageTransformConfig, transform, source, "image_transform.")
            for key in ("mean", "std"):
                if key in transform:
                    transform[key] = tuple(float(v) for v in transform[key])
            fields["image_transform"] = ImageTransformConfig(**transform)
        else:
            fields.pop("image_transform", None)
        if fields.get("tokenizer") is not None:
            _check_fields(TokenizerConfig, dict(fields["tokenizer"]), source, "tokenizer.")
            fields["tokenizer"] = TokenizerConfig(**fields["tokenizer"])
        if fields.get("labels") is not None:
            fields["labels"] = tuple(str(v) for v in fields["labels"])
        for key in ("backbone_config", "head", "benchmark"):
            if key in fields and not isinstance(fields[key], Mapping):
                raise ModelConfigError(f"{source}: field {key!r} must be an object, got {type(fields[key]).__name__}")
        return cls(**fields)

    @classmethod
    def read(cls, path: Union[str, Path]) -> "ModelConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ModelConfigError(f"{path}: not valid JSON ({exc})") from exc
        return cls.from_dict(data, source=str(path))

    def write(self, path: Union[str, Path]) -> Path:
        path = Path(path)
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    # ------------------------------------------------------------------ zoo entries
    @classmethod
    def from_entry(cls, entry, backbone_config: Optional[Mapping[str, Any]] = None, **changes: Any
                   ) -> "ModelConfig":
        """The description of a zoo entry's model (``backbone_config``: the non-default fields of the built
        backbone; default: the entry's resolution and final-norm setting and extra fields)."""
        config = dict(entry.backbone_overrides())
        config.update(backbone_config or {})
        tok = entry.tokenizer
        return cls(name=entry.name, family=entry.family, task=entry.task, backbone=entry.backbone,
                   backbone_config=config, head=dict(entry.head),
                   image_transform=ImageTransformConfig.of(entry.image_transform, entry.image_size),
                   tokenizer=TokenizerConfig(tok.kind, tok.file.filename if tok.file else None, tok.max_length)
                   if tok is not None else None,
                   labels=tuple(entry.labels) if getattr(entry, "labels", ()) else None,
                   base=entry.base, dataset=entry.dataset, **changes)

    def to_entry(self, weights, tokenizer_file=None, name: Optional[str] = None):
        """A :class:`ZooEntry` for these settings (``weights``/``tokenizer_file``: :class:`ZooFile`)."""
        from .entries import TokenizerSpec, ZooEntry

        if self.task in WHOLE_MODEL_TASKS:
            raise ModelConfigError(f"{name or self.name}: a {self.task} checkpoint ({self.trained_by}); no pipeline runs "
                                   f"it. Load its backbone with build_backbone({self.backbone!r}, pretrained=<this file>)")
        kind = self.image_transform.kind
        if kind not in TRANSFORM_CONSTANTS:
            raise ModelConfigError(f"{name or self.name}: field 'image_transform.kind' is {kind!r}; one of "
                                   f"{sorted(TRANSFORM_CONSTANTS)}")
        expected = TRANSFORM_CONSTANTS[kind]
        if (tuple(self.image_transform.mean), tuple(self.image_transform.std)) != expected or \
                self.image_transform.interpolation != "bicubic" or self.image_transform.crop_pct is not None:
            raise ModelConfigError(f"{name or self.name}: field 'image_transform' {self.image_transform} differs from "
                                   f"the {kind!r} transform (mean/std {expected}, bicubic); not supported")
        extra = {k: v for k, v in self.backbone_config.items() if k not in ("img_size", "normalize_output")}
        tok = self.tokenizer
        return ZooEntry(name=name or self.name, family=self.family, task=self.task, weights=weights,
                        backbone=self.backbone, image_size=self.image_size, normalize_output=self.normalize_output,
                        tokenizer=TokenizerSpec(tok.kind, tokenizer_file, tok.max_length) if tok else None,
                        image_transform=kind, head=dict(self.head), dataset=self.dataset, base=self.base,
                        backbone_config=extra, labels=tuple(self.labels or ()))


def _check_fields(cls, data: Mapping[str, Any], source: str, prefix: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(k for k in data if k not in known)
    if unknown:
        import difflib

        hints = [f"{prefix}{k}" + (f" (did you mean {prefix}{close[0]}?)" if (close := difflib.get_close_matches(
            k, sorted(known), n=1)) else "") for k in unknown]
        raise ModelConfigError(f"{source}: unknown field(s) {', '.join(hints)}; this version of beit3-plugins "
                               f"knows {', '.join(prefix + k for k in sorted(known))}")

