"""Which model embeds, stated once: the spec is stored with the embeddings, so ``query`` and ``serve`` load the
same model without being told again."""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Dict, Optional

__all__ = ["ModelSpec", "add_model_args", "load_embedder", "load_task_pipeline"]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A zoo name (an ``itc`` / ``retrieval`` entry, BEiT-3 or VLMo) or a local checkpoint described by ``like``
    (+ ``backbone`` / ``image_size`` overrides for a file of another size) and a ``tokenizer`` file."""

    model: str
    like: Optional[str] = None
    backbone: Optional[str] = None
    image_size: Optional[int] = None
    tokenizer: Optional[str] = None
    head: Optional[Dict[str, int]] = None      # head shapes of a local file, e.g. {"num_answers": 12}

    def entry_fields(self) -> Dict[str, Any]:
        return {k: v for k, v in (("backbone", self.backbone), ("image_size", self.image_size), ("head", self.head))
                if v is not None}

    @classmethod
    def from_args(cls, args: argparse.Namespace, prefix: str = "") -> "ModelSpec":
        get = lambda name: getattr(args, prefix + name, None)  # noqa: E731
        return cls(get("model"), get("like"), get("backbone"), get("image_size"), get("tokenizer"))


def add_model_args(parser: argparse.ArgumentParser, prefix: str = "", required: bool = True, what: str = "") -> None:
    """``--model / --like / --backbone / --image-size / --tokenizer`` (each with ``prefix``, e.g. ``vqa-``)."""
    flag = f"--{prefix}"
    parser.add_argument(flag + "model", required=required,
                        help=f"{what or 'itc / retrieval'} zoo name (beit3-plugins predict --help) or checkpoint file")
    parser.add_argument(flag + "like", help="zoo entry whose settings a local checkpoint shares")
    parser.add_argument(flag + "backbone", help="backbone variant of a local checkpoint (e.g. beit3_tiny)")
    parser.add_argument(flag + "image-size", type=int, help="input resolution of a local checkpoint")
    parser.add_argument(flag + "tokenizer", help="tokenizer file replacing the entry's (beit3.spm, vocab.txt)")


def load_task_pipeline(spec: ModelSpec, task: str, *, device: Optional[str] = None, dtype: str = "float32",
                       batch_size: int = 64, **task_kwargs: Any):
    """The pipelines layer's ``task`` pipeline over the model ``spec`` names."""
    from beit3_plugins.pipelines import pipeline

    return pipeline(task, spec.model, like=spec.like, tokenizer=spec.tokenizer, device=device, dtype=dtype,
                    batch_size=batch_size, **spec.entry_fields(), **task_kwargs)


def load_embedder(spec: ModelSpec, **kwargs: Any):
    """An :class:`ImageEmbeddingPipeline` (``embed_images`` / ``embed_texts``, L2-normalised)."""
    return load_task_pipeline(spec, "image-embedding", **kwargs)
