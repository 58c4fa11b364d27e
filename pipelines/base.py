"""What every pipeline shares: input conversion, batching, device and dtype.

Images may be file paths, encoded bytes, PIL images, numpy arrays or torch tensors, all decoded by the core's
one decoder (``beit3_plugins.data.images``: EXIF orientation applied; its array contract: uint8 0..255 or
floats in [0, 1]); a float tensor of shape (3, S, S) or (N, 3, S, S) is taken as already preprocessed model input
(the entry's transform applied), so callers holding batches skip the PIL round trip. Everything else goes
through the entry's evaluation transform. Reduced precision (bf16/fp16) runs under ``torch.autocast`` so
LayerNorms and softmaxes keep fp32 accumulation, as in training.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from beit3_plugins.registry import Registry
from beit3_plugins.zoo import ZooEntry

__all__ = ["Pipeline", "PIPELINES", "ImageInput", "as_list", "chunks", "check_count"]

ImageInput = Union[str, os.PathLike, bytes, "PIL.Image.Image", np.ndarray, Tensor]  # noqa: F821


def as_list(value: Any, what: str = "inputs") -> Tuple[List[Any], bool]:
    """(items, was_single): a lone image / string becomes a one-item list (batched tensors are split); an
    empty list is an error naming ``what``."""
    if isinstance(value, (list, tuple)):
        items, single = list(value), False
    elif isinstance(value, Tensor) and value.dim() == 4:
        items, single = list(value), False
    else:
        items, single = [value], True
    if not items:
        raise ValueError(f"no {what} given (an empty list)")
    return items, single


def check_count(name: str, value: Optional[int], none_means: str = "") -> Optional[int]:
    """``value`` when it is None (if ``none_means`` says what None does) or an int >= 1; else a clear error."""
    if value is None and none_means:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        allowed = f" or None ({none_means})" if none_means else ""
        raise ValueError(f"{name} must be an integer >= 1{allowed}, got {value!r}")
    return value


def _under_inference_mode(call: Callable) -> Callable:
    """Run a pipeline's ``__call__`` under ``torch.inference_mode`` (no autograd graph, no requires_grad
    warnings); a tensor result is returned as an ordinary tensor, so callers may still modify it in place."""
    import functools

    @functools.wraps(call)
    def run(self, *args, **kwargs):
        with torch.inference_mode():
            result = call(self, *args, **kwargs)
        return result.clone() if isinstance(result, Tensor) else result

    run.under_inference_mode = True
    return run


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class Pipeline:
    """A task model with its transform and tokenizer; subclasses define ``__call__``.

    ``task_kinds``: the ``TASKS`` names (zoo entries' ``task``) whose weights this pipeline can run.
    """

    task_kinds: Tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every pipeline's ``__call__``, a third party's too, runs under inference mode."""
        super().__init_subclass__(**kwargs)
        call = cls.__dict__.get("__call__")
        if call is not None and not getattr(call, "under_inference_mode", False):
            cls.__call__ = _under_inference_mode(call)

    def __init__(self, model: nn.Module, transform: Callable, tokenizer: Any, *, device: torch.device,
                 dtype: torch.dtype, batch_size: int = 8) -> None:
        entry: ZooEntry = model.zoo_entry
        if self.task_kinds and entry.task not in self.task_kinds:
            raise ValueError(f"{type(self).__name__} runs {'/'.join(self.task_kinds)} weights; {entry.name} is a "
                             f"{entry.task} checkpoint")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.transform, self.tokenizer = model, transform, tokenizer
        self.entry, self.device, self.dtype, self.batch_size = entry, device, dtype, batch_size

    # ------------------------------------------------------------------ inputs
    def load_image(self, image: ImageInput):
        """An RGB PIL image through the one decoder (``beit3_plugins.data.images.load_image``, policy "viewer":
        EXIF orientation applied, as a photo viewer shows the photo); a tensor is read as its numpy array
        (C x H x W is transposed), under the same array contract."""
        from beit3_plugins.data.images import load_image

        if isinstance(image, Tensor):
            image = image.detach().cpu().numpy()
            if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
                image = image.transpose(1, 2, 0)
        return load_image(image)

    def _is_model_input(self, image: Any) -> bool:
        size = self.entry.image_size
        return (isinstance(image, Tensor) and image.is_floating_point() and image.dim() == 3
                and tuple(image.shape) == (3, size, size))

    def _split_transform(self):
        """(PIL steps, Normalize) when the transform ends in ToTensor + Normalize, else None.

        The tensor steps then run once on the whole batch instead of per image: the same arithmetic
        (``/ 255``, ``- mean``, ``/ std`` in fp32, so identical values), but a handful of torch calls per batch
        instead of per image, which on a loaded CPU (thread-pool wake-ups per small op) was the pipeline's
        whole overhead; on CUDA the uint8 batch is moved before the conversion."""
        from torchvision import transforms as T

        steps = getattr(self.transform, "transforms", None)
        if (isinstance(self.transform, T.Compose) and steps and len(steps) >= 2
                and isinstance(steps[-2], T.ToTensor) and isinstance(steps[-1], T.Normalize)):
            return T.Compose(steps[:-2]), steps[-1]
        return None

    def images(self, images: Sequence[ImageInput]) -> Tensor:
        """(N, 3, S, S) model input on the pipeline's device."""
        if isinstance(images, Tensor) and images.dim() == 4 and self._is_model_input(images[0]):
            return images.to(self.device, non_blocking=True)
        split = self._split_transform()
        if split is None or any(self._is_model_input(image) for image in images):
            tensors = [image if self._is_model_input(image) else self.transform(self.load_image(image))
                       for image in images]
            return torch.stack(tensors).to(self.device, non_blocking=True)
        pil_steps, normalize = split
        pixels = np.stack([np.asarray(pil_steps(self.load_image(image)), dtype=np.uint8) for image in images])
        batch = torch.from_numpy(pixels).to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
        mean = torch.as_tensor(normalize.mean, dtype=batch.dtype, device=batch.device).view(1, -1, 1, 1)
        std = torch.as_tensor(normalize.std, dtype=batch.dtype, device=batch.device).view(1, -1, 1, 1)
        return batch.sub_(mean).div_(std).contiguous()

    def texts(self, texts: Sequence[str]) -> Tuple[Tensor, Tensor]:
        """(ids, padding_mask) padded to the longest text (over-long texts truncated as in training)."""
        from beit3_plugins.vl_tasks.base import encode_texts

        if isinstance(texts, str):
            texts = [texts]
        bad = [t for t in texts if not isinstance(t, str)]
        if bad:
            raise TypeError(f"texts must be strings, got {type(bad[0]).__name__}")
        ids, pad = encode_texts(self.tokenizer, list(texts), self.entry.tokenizer.max_length
                                if self.entry.tokenizer else 64)
        self.model.backbone.check_token_ids(ids)  # here, on the host: the forward does not read ids back
        return ids.to(self.device), pad.to(self.device)

    # ------------------------------------------------------------------ running
    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def inference(self):
        return torch.inference_mode()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.entry.name!r}, device={self.device}, dtype={self.dtype})"


# Pipeline name ("vqa", "image-embedding", ...) -> Pipeline class. The built-ins register in ``tasks``; a
# third-party task plugin registers its own (``@PIPELINES.register("shape-colors")``) in the module its
# ``beit3_plugins`` entry point names, found on the first lookup that misses.
PIPELINES = Registry("pipeline", base=Pipeline, locations=["beit3_plugins.pipelines.tasks"])
