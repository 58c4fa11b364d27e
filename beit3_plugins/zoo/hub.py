"""Finding a self-described model: a model folder (local or ``hf-hub:org/name``) or a trainer checkpoint.

A model folder holds ``config.json`` (a :class:`~.model_config.ModelConfig`), ``model.safetensors``, the
tokenizer file named by the config and a ``README.md`` model card (written by
``beit3_plugins.pipelines.save_pretrained``). ``hf-hub:org/name`` folders are fetched with
``huggingface_hub.snapshot_download``: the Hub's own client (cache, resume, etags, revisions, ``$HF_ENDPOINT``
for mirrors and the tests' loopback server) rather than a second implementation of its routes. Weights are
only ever read by the safe loader (safetensors, or ``torch.load(weights_only=True)``).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional, Union

from .entries import ZooEntry, ZooFile
from .model_config import CONFIG_NAME, MODEL_CONFIG_KEY, WEIGHTS_NAME, ModelConfig, ModelConfigError

__all__ = ["HF_HUB_PREFIX", "Described", "is_hub_name", "model_folder", "read_model_folder", "checkpoint_config",
           "describe", "hf_endpoint"]

HF_HUB_PREFIX = "hf-hub:"


def hf_endpoint() -> Optional[str]:
    """``$HF_ENDPOINT`` read at each call (huggingface_hub reads it once at import)."""
    return os.environ.get("HF_ENDPOINT") or None


@dataclasses.dataclass
class Described:
    """A model found with its description: the config, the local weights and tokenizer files."""

    config: ModelConfig
    weights: Path
    tokenizer: Optional[Path]
    source: str                      # what the user named (folder, hf-hub name, checkpoint path)

    def entry(self) -> ZooEntry:
        tok = ZooFile("file://" + str(self.tokenizer), filename=self.tokenizer.name) if self.tokenizer else None
        entry = self.config.to_entry(ZooFile("file://" + str(self.weights), filename=self.weights.name), tok,
                                     name=self.source)
        stored = self.config.tokenizer.file if self.config.tokenizer is not None else None
        if stored and self.tokenizer is None:
            entry = dataclasses.replace(entry, notes=f"the tokenizer file stored at training, {stored}, is gone")
        return entry


def is_hub_name(name: Union[str, os.PathLike]) -> bool:
    """``hf-hub:org/name`` (a whole model folder; ``hf-hub:org/name/file`` is one zoo file)."""
    text = str(name)
    return text.startswith(HF_HUB_PREFIX) and len(text[len(HF_HUB_PREFIX):].strip("/").split("/")) == 2


def model_folder(name: Union[str, os.PathLike], cache: Union[str, os.PathLike, None] = None) -> Path:
    """The local folder of ``hf-hub:org/name`` (downloaded into huggingface_hub's cache) or of a local path."""
    if not is_hub_name(name):
        path = Path(name)
        if not path.is_dir():
            raise FileNotFoundError(f"{name}: not a model folder")
        return path
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise ImportError(f"{name} needs huggingface_hub: pip install 'beit3-plugins[hub]'") from exc
    repo_id = str(name)[len(HF_HUB_PREFIX):].strip("/")
    return Path(snapshot_download(repo_id=repo_id, cache_dir=None if cache is None else str(cache),
                                  endpoint=hf_endpoint()))


def read_model_folder(folder: Union[str, os.PathLike], source: Optional[str] = None) -> Described:
    """The description of a model folder; a missing ``config.json`` / weights file is an error naming it."""
    folder = Path(folder)
    source = source or str(folder)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise ModelConfigError(f"{source}: no {CONFIG_NAME} in the folder; it is not a model folder written by "
                               "save_pretrained / beit3-plugins save")
    config = ModelConfig.read(config_path)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise ModelConfigError(f"{source}: {WEIGHTS_NAME} is missing from the folder")
    tokenizer = None
    if config.tokenizer is not None and config.tokenizer.file:
        tokenizer = folder / config.tokenizer.file
        if Path(config.tokenizer.file).is_absolute() or ".." in Path(config.tokenizer.file).parts \
                or not tokenizer.is_file():
            raise ModelConfigError(f"{source}: field 'tokenizer.file' names {config.tokenizer.file!r}, which is not "
                                   "a file inside the folder")
    return Described(config, weights, tokenizer, source)


def checkpoint_config(path: Union[str, os.PathLike]) -> Optional[ModelConfig]:
    """The :class:`ModelConfig` a trainer checkpoint carries (``None`` for files without one: released
    checkpoints, plain state dicts, safetensors files)."""
    path = str(path)
    if path.endswith(".safetensors"):
        return None
    from beit3_plugins.checkpoint import safe_load

    try:
        saved = safe_load(path, mmap=True)  # tensors mapped, not read: only the description is wanted
    except Exception:  # noqa: BLE001 - a legacy (non-zip) file cannot be mapped; the plain load explains failures
        saved = safe_load(path)
    if isinstance(saved, dict) and isinstance(saved.get(MODEL_CONFIG_KEY), dict):
        return ModelConfig.from_dict(saved[MODEL_CONFIG_KEY], source=f"{path} ({MODEL_CONFIG_KEY})")
    return None


def describe(name_or_path: Union[str, os.PathLike], cache: Union[str, os.PathLike, None] = None
             ) -> Optional[Described]:
    """A self-described model behind ``name_or_path``: a folder, ``hf-hub:org/name`` or a trainer checkpoint
    carrying a ``model_config``; ``None`` for anything else (zoo names, released files)."""
    text = str(name_or_path)
    if is_hub_name(text) or os.path.isdir(text):
        return read_model_folder(model_folder(text, cache), source=text)
    if not os.path.isfile(text):
        return None
    config = checkpoint_config(text)
    if config is None:
        return None
    tokenizer = None
    if config.tokenizer is not None and config.tokenizer.file:
        stored = Path(config.tokenizer.file)
        tokenizer = stored if stored.is_file() else None   # moved: the factory asks for tokenizer=
    return Described(config, Path(text), tokenizer, text)
