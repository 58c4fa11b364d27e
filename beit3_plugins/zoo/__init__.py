"""Model zoo (core, framework-free): the published BEiT-3 family files with their settings, and their
cached, checked download. Building models from entries happens above the core (``beit3_plugins.pipelines``
and ``build_backbone(..., pretrained=name)``)."""
from .download import (CACHE_ENV, MIRROR_ENV, OFFLINE_ENV, ZooDownloadError, cache_dir,  # noqa: F401
                       download_file, resolve_url)
from .entries import (FILE_KINDS, ZOO, TokenizerSpec, UnknownPretrainedError, ZooEntry, ZooFile,  # noqa: F401
                      get_pretrained, list_pretrained, register_pretrained)
from .hub import Described, describe, is_hub_name, model_folder, read_model_folder  # noqa: F401
from .model_config import (CONFIG_NAME, WEIGHTS_NAME, ImageTransformConfig, ModelConfig,  # noqa: F401
                           ModelConfigError, TokenizerConfig)

__all__ = ["ZooEntry", "ZooFile", "TokenizerSpec", "FILE_KINDS", "ZOO", "register_pretrained", "get_pretrained",
           "list_pretrained", "download_file", "download_pretrained", "cache_dir", "resolve_url",
           "ZooDownloadError", "UnknownPretrainedError", "pretrained_weights",
           "ModelConfig", "ModelConfigError", "ImageTransformConfig", "TokenizerConfig", "describe", "Described",
           "model_folder", "read_model_folder", "is_hub_name", "CONFIG_NAME", "WEIGHTS_NAME", "CACHE_ENV", "MIRROR_ENV", "OFFLINE_ENV"]


def download_pretrained(name: str, **kwargs) -> "dict":
    """Download every file of zoo entry ``name``; returns ``{"weights": Path, "tokenizer": Path, ...}``."""
    entry = get_pretrained(name)
    paths = {"weights": download_file(entry.weights, **kwargs)}
    if entry.tokenizer is not None and entry.tokenizer.file is not None:
        paths["tokenizer"] = download_file(entry.tokenizer.file, **kwargs)
    if entry.answer_vocab is not None:
        paths["answer_vocab"] = download_file(entry.answer_vocab, **kwargs)
    return paths


def pretrained_weights(name_or_path: str, backbone: "str | None" = None, **kwargs):
    """(local weights path, backbone config overrides) for a zoo name, a model folder (local or
    ``hf-hub:org/name``), a trainer checkpoint that describes itself, or another existing file.

    A zoo entry is downloaded (cached) and contributes its resolution and final-norm setting, a described
    model every backbone field it records; ``backbone`` (a ``BACKBONES`` name) must be theirs. Another local
    file contributes no overrides.
    """
    import os

    described = describe(name_or_path)
    if described is not None:  # a folder or any trainer's checkpoint (task model, detector, segmentor, export)
        config = described.config
        if backbone is not None and backbone != config.backbone:
            raise ValueError(f"{name_or_path} holds {config.backbone} weights, not {backbone}; build "
                             f"{config.backbone!r}")
        return str(described.weights), dict(config.backbone_config)
    if os.path.isfile(str(name_or_path)):
        return str(name_or_path), {}
    entry = get_pretrained(str(name_or_path))
    if entry.backbone is None:
        raise ValueError(f"zoo entry {entry.name!r} is a {entry.task} file, not backbone weights")
    if backbone is not None and backbone != entry.backbone:
        raise ValueError(f"zoo entry {entry.name!r} holds {entry.backbone} weights, not {backbone}; build "
                         f"{entry.backbone!r} or pick another entry (list_pretrained())")
    return str(download_file(entry.weights, **kwargs)), entry.backbone_overrides()
