"""Sharing a model: ``save_pretrained`` writes a self-describing folder, ``push_to_hub`` uploads it.

The folder (format in ``docs/zoo.md``): ``config.json`` (:class:`beit3_plugins.zoo.ModelConfig`, the same
description every trainer checkpoint carries, VQA answers / class names included in label order as timm
keeps ``label_names`` in its config), ``model.safetensors`` (the task model's state dict; no pickle), the
tokenizer file and a model card ``README.md``. It loads back with ``create_model_and_transforms(folder)``,
``pipeline(task, model=folder)`` or ``build_backbone(name, pretrained=folder)``, and as ``hf-hub:org/name``
once pushed. Uploads go through ``huggingface_hub`` (``create_repo`` + ``upload_folder``): the Hub's own
client handles authentication, LFS/Xet uploads and retries, and ``$HF_ENDPOINT`` points it at a mirror.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

from torch import nn

from beit3_plugins.checkpoint import save_safetensors
from beit3_plugins.zoo import CONFIG_NAME, WEIGHTS_NAME, ModelConfig, TokenizerConfig
from beit3_plugins.zoo.hub import hf_endpoint

__all__ = ["save_pretrained", "push_to_hub", "model_config_of", "model_card", "save_cli", "push_cli"]

# zoo task kind -> the Hub's pipeline tag (what the Hub's task filter lists the model under)
_PIPELINE_TAGS = {"vqa": "visual-question-answering", "captioning": "image-to-text",
                  "image_classification": "image-classification", "retrieval": "zero-shot-image-classification",
                  "nlvr2": "image-text-to-text", "pretrain": "feature-extraction"}


def model_config_of(model: nn.Module, *, task: Optional[str] = None, labels: Optional[Sequence[str]] = None,
                    tokenizer: Optional[str] = None, head: Optional[Mapping[str, Any]] = None) -> ModelConfig:
    """The description of ``model``: the one it was loaded with (``model.zoo_entry``), or for a bare backbone
    or a task model built by hand, the backbone's (``backbone_model_config``) with ``task`` (``labels``,
    ``tokenizer`` and ``head``, the shapes its ``model_for`` reads, e.g. ``{"num_answers": 3}``, completing it)."""
    from beit3_plugins.backbones import MultiwayTransformer, backbone_model_config, describe_backbone

    entry = getattr(model, "zoo_entry", None)
    if entry is not None:
        _, fields = describe_backbone(model.backbone.cfg if entry.task != "pretrain" else model.cfg)
        config = ModelConfig.from_entry(entry, backbone_config=fields)
        if labels is None and config.labels is None and entry.answer_vocab is not None:
            from beit3_plugins.data import AnswerVocab

            from .factory import _local_or_download

            labels = AnswerVocab.load(_local_or_download(entry.answer_vocab)).answers  # the folder keeps them
    else:
        kind = task or ("pretrain" if isinstance(model, MultiwayTransformer) else None)
        if kind is None:
            raise ValueError(f"{type(model).__name__} was not loaded from a described model; pass task=<zoo task "
                             "kind: vqa, nlvr2, retrieval, captioning, image_classification>")
        config = backbone_model_config(model, task=kind, trained_by="save_pretrained", name=kind)
        if kind not in ("pretrain", "image_classification"):  # text tasks: the family's tokenizer kind
            config = dataclasses.replace(config, tokenizer=TokenizerConfig(
                "wordpiece" if config.family == "vlmo" else "sentencepiece"))
    changes: Dict[str, Any] = {}
    if task is not None and task != config.task:
        changes["task"] = task
    if labels is not None:
        changes["labels"] = tuple(str(x) for x in labels)
    if head is not None:
        changes["head"] = dict(head)
    if tokenizer is not None and config.tokenizer is not None:
        changes["tokenizer"] = dataclasses.replace(config.tokenizer, file=str(tokenizer))
    return dataclasses.replace(config, **changes) if changes else config


def _tokenizer_source(model: nn.Module, config: ModelConfig) -> Optional[str]:
    if config.tokenizer is None:
        return None
    if config.tokenizer.file and os.path.isfile(config.tokenizer.file):
        return config.tokenizer.file
    entry = getattr(model, "zoo_entry", None)
    spec = getattr(entry, "tokenizer", None)
    if spec is None or spec.file is None:
        return None
    from .factory import _local_or_download

    return _local_or_download(spec.file)  # a zoo file: from the download cache


def save_pretrained(model: nn.Module, folder: Union[str, os.PathLike], *, config: Optional[ModelConfig] = None,
                    task: Optional[str] = None, labels: Optional[Sequence[str]] = None,
                    head: Optional[Mapping[str, Any]] = None, tokenizer: Union[str, os.PathLike, None] = None,
                    benchmark: Optional[Mapping[str, float]] = None, card: bool = True) -> Path:
    """Write ``model`` as a self-describing folder (see the module docstring); returns the folder.

    ``config``: the description to write (default :func:`model_config_of`); ``tokenizer``: the tokenizer file
    to copy in (default: the one the description or the zoo entry names); ``benchmark``: metric -> value for
    the model card's table. A model that reads text without a reachable tokenizer file is an error.
    """
    config = config or model_config_of(model, task=task, labels=labels, head=head)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    changes: Dict[str, Any] = {}
    if benchmark:
        changes["benchmark"] = {**config.benchmark, **{k: float(v) for k, v in benchmark.items()}}
    if config.tokenizer is not None:
        source = str(tokenizer) if tokenizer is not None else _tokenizer_source(model, config)
        if source is None or not os.path.isfile(source):
            raise ValueError(f"{config.name}: a {config.task} model reads text; pass tokenizer=<its "
                             f"{config.tokenizer.kind} file> (the stored one, {config.tokenizer.file}, is not "
                             "reachable)")
        name = Path(source).name
        if Path(source).resolve() != (folder / name).resolve():
            shutil.copyfile(source, folder / name)
        changes["tokenizer"] = dataclasses.replace(config.tokenizer, file=name)
    config = dataclasses.replace(config, **changes) if changes else config
    state = model.state_dict()
    save_safetensors(state, folder / WEIGHTS_NAME, metadata={"format": "pt", "task": config.task})
    config.write(folder / CONFIG_NAME)
    if card:
        (folder / "README.md").write_text(model_card(config), encoding="utf-8")
    return folder


def model_card(config: ModelConfig) -> str:
    """The ``README.md`` of a model folder: Hub metadata (``library_name``, tags, pipeline tag) and the facts."""
    tags = ["beit3-plugins", config.family, config.task.replace("_", "-"), config.backbone]
    lines = ["---", "library_name: beit3-plugins", "tags:"] + [f"- {t}" for t in dict.fromkeys(tags)]
    if config.task in _PIPELINE_TAGS:
        lines.append(f"pipeline_tag: {_PIPELINE_TAGS[config.task]}")
    lines += ["---", "", f"# {config.name}", "",
              f"A {config.family} `{config.backbone}` model for **{config.task}**, saved with beit3-plugins "
              f"(`{config.trained_by or 'save_pretrained'}`).", "",
              f"- input: {config.image_size} px images, `{config.image_transform.kind}` transform "
              f"(mean {list(config.image_transform.mean)}, std {list(config.image_transform.std)}, "
              f"{config.image_transform.interpolation})"]
    if config.tokenizer is not None:
        lines.append(f"- text: `{config.tokenizer.kind}` tokenizer (`{config.tokenizer.file}`), up to "
                     f"{config.tokenizer.max_length} tokens")
    if config.labels:
        lines.append(f"- {len(config.labels)} {'answers' if config.task == 'vqa' else 'classes'} (in config.json)")
    lines.append(f"- base checkpoint: {config.base or 'none (trained from scratch)'}")
    if config.dataset:
        lines.append(f"- data: {config.dataset}")
    if config.benchmark:
        lines += ["", "## Results", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4g} |" for k, v in config.benchmark.items()]
    pipe = {"vqa": "vqa", "captioning": "captioning", "nlvr2": "nlvr2", "image_classification": "image-classification",
            "retrieval": "retrieval"}.get(config.task)
    if pipe:
        lines += ["", "## Use", "", "```python", "from beit3_plugins import pipeline",
                  f'pipe = pipeline("{pipe}", model="hf-hub:<org>/<name>")  # or the local folder', "```"]
    return "\n".join(lines) + "\n"


def push_to_hub(model: nn.Module, repo_id: str, *, private: Optional[bool] = None, token: Optional[str] = None,
                commit_message: str = "Upload model (beit3-plugins)", **save_kwargs: Any) -> str:
    """``save_pretrained`` into a temporary folder, then ``create_repo(exist_ok=True)`` + ``upload_folder``.
    Returns the name that loads it back: ``hf-hub:<repo_id>``."""
    try:
        from huggingface_hub import HfApi
    except ImportError as exc:
        raise ImportError("push_to_hub needs huggingface_hub: pip install 'beit3-plugins[hub]'") from exc
    api = HfApi(endpoint=hf_endpoint(), token=token)
    with tempfile.TemporaryDirectory(prefix="beit3-push-") as tmp:
        save_pretrained(model, tmp, **save_kwargs)
        api.create_repo(repo_id, exist_ok=True, private=private)
        api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message)
    return "hf-hub:" + repo_id


# ---------------------------------------------------------------------------------------------- CLI
def _load_for_save(source: str, tokenizer: Optional[str]):
    """(model, its description) from any model source; a trainer checkpoint's own description is kept whole
    (benchmark, base, the trainer that wrote it)."""
    from beit3_plugins.zoo import describe

    from .factory import create_model_and_transforms

    described = describe(source)
    model = create_model_and_transforms(source)[0]
    config = described.config if described is not None else model_config_of(model)
    if tokenizer and config.tokenizer is not None:
        config = dataclasses.replace(config, tokenizer=dataclasses.replace(config.tokenizer, file=str(tokenizer)))
    return model, config


def _parser(prog: str, target: str, help_target: str):
    import argparse

    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("model", help="trainer checkpoint (best.pt, a fairseq/detectron2/mmseg export), model folder, "
                                 "hf-hub:org/name or zoo name")
    p.add_argument(target, help=help_target)
    p.add_argument("--tokenizer", help="tokenizer file to include (default: the one the checkpoint names)")
    p.add_argument("--benchmark", nargs="*", default=[], metavar="METRIC=VALUE",
                   help="results for the model card (default: the metrics stored in the checkpoint)")
    return p


def _benchmark(pairs: Sequence[str]) -> Dict[str, float]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--benchmark takes METRIC=VALUE, got {pair!r}")
        out[key] = float(value)
    return out


def save_cli(argv: Optional[Sequence[str]] = None) -> int:
    """``beit3-plugins save MODEL FOLDER``: a self-describing folder from any trainer's checkpoint."""
    args = _parser("beit3-plugins save", "folder", "output folder").parse_args(argv)
    model, config = _load_for_save(args.model, args.tokenizer)
    out = save_pretrained(model, args.folder, config=config, tokenizer=args.tokenizer,
                          benchmark=_benchmark(args.benchmark))
    print(out)
    return 0


def push_cli(argv: Optional[Sequence[str]] = None) -> int:
    """``beit3-plugins push MODEL ORG/NAME``: save and upload to the Hub ($HF_ENDPOINT, $HF_TOKEN)."""
    p = _parser("beit3-plugins push", "repo_id", "Hub repository (org/name)")
    p.add_argument("--private", action="store_true")
    args = p.parse_args(argv)
    model, config = _load_for_save(args.model, args.tokenizer)
    print(push_to_hub(model, args.repo_id, private=args.private or None, config=config, tokenizer=args.tokenizer,
                      benchmark=_benchmark(args.benchmark)))
    return 0
