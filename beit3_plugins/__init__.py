"""beit3-plugins: the BEiT-3 family (BEiT-3, VLMo, VL-BEiT) for fairseq, detectron2, mmsegmentation and
vision-language tasks, around one registered Multiway Transformer backbone.

Public API (imported lazily, so ``import beit3_plugins`` pulls in neither torch nor any framework)::

    from beit3_plugins import build_backbone, list_backbones, BACKBONES, TASKS
    model = build_backbone("beit3_base", checkpoint="beit3_base_patch16_224.pth")
    out = model.forward_fused(images, token_ids, padding_mask)   # or forward_vision / forward_text

    from beit3_plugins import list_pretrained, pipeline, create_model_and_transforms, get_tokenizer
    model = build_backbone("beit3_base", pretrained="beit3_base_patch16_224")   # zoo name: downloaded, cached
    captioner = pipeline("captioning", model="beit3_base_patch16_480_coco_captioning")
"""
# Nothing imported at import time (not even __future__): every interpreter start imports this package (the
# autoload .pth, autoload.py), so it must cost next to nothing there.
__version__ = "0.1.0"

_LAZY = {
    "build_backbone": "beit3_plugins.backbones",
    "MultiwayTransformer": "beit3_plugins.backbones",
    "MultiwayConfig": "beit3_plugins.backbones",
    "Routing": "beit3_plugins.backbones",
    "BACKBONES": "beit3_plugins.registry",
    "TASKS": "beit3_plugins.registry",
    "HEADS": "beit3_plugins.registry",
    "TOKENIZERS": "beit3_plugins.registry",
    "DATASETS": "beit3_plugins.registry",
    "METRICS": "beit3_plugins.registry",
    "list_pretrained": "beit3_plugins.zoo",
    "download_pretrained": "beit3_plugins.zoo",
    "pipeline": "beit3_plugins.pipelines",
    "create_model_and_transforms": "beit3_plugins.pipelines",
    "get_tokenizer": "beit3_plugins.pipelines",
    "save_pretrained": "beit3_plugins.pipelines",
    "push_to_hub": "beit3_plugins.pipelines",
}

__all__ = sorted(_LAZY) + ["list_backbones", "__version__"]


def list_backbones() -> list[str]:
    """Names of every registered backbone (built-in and from installed plugins)."""
    from beit3_plugins.registry import BACKBONES

    return BACKBONES.names()


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'beit3_plugins' has no attribute {name!r}")
