"""The one image decoder: a path, encoded bytes, a PIL image or a numpy array -> a decoded PIL image.

Every image the project reads goes through :func:`load_image`: the dataset readers, the pretraining shards
(``KEY.jpg`` bytes from a tar) and the inference pipelines, so one photo gives the same pixels in
pretraining, fine-tuning and inference. Two named policies:

``"viewer"`` (default, every path)
    The pixels as a photo viewer shows them: EXIF orientation applied (a phone photo stored sideways with an
    orientation tag is turned upright, as detectron2's ``read_image`` and Hugging Face's ``load_image`` do),
    the first frame of an animation, 16-bit grey scaled to 8 bits (``value // 257``; Pillow's own
    ``convert("RGB")`` clips it at 255, which turns almost every pixel white), a palette with transparency
    converted through RGBA (Pillow's advice), CMYK / greyscale / LA converted as Pillow converts them (alpha
    is dropped, never composited), floating-point images refused (they have no defined 8-bit range).
``"official"``
    Exactly what the reference code's loader does, for reproducing its protocol: microsoft/unilm
    ``beit3/datasets.py`` reads every image with torchvision's ``default_loader`` (PIL:
    ``Image.open(f).convert("RGB")``), i.e. no EXIF orientation and Pillow's plain conversions.

Failures: a missing file raises ``FileNotFoundError``, an undecodable one (truncated, not an image, more
pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` allows) :class:`CorruptImageError`; with a ``skips`` counter they
are counted instead (``missing_image`` / ``corrupt_image`` / ``decompression_bomb``) and ``None`` comes back,
so one bad file cannot end an epoch.

Arrays (the contract): H x W, H x W x 1, H x W x 3 or H x W x 4 (alpha dropped); ``uint8`` is 0..255,
``uint16`` is 0..65535 (scaled to 8 bits as a 16-bit PNG is), ``bool`` is black / white, and a float array
means intensities in [0, 1] (``x * 255``, rounded). A float array with values above 1 is the other
convention (0..255 floats); it is refused with an error saying so rather than guessed at, as are NaN,
infinities and negative values.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

__all__ = ["load_image", "CorruptImageError", "DECODE_POLICIES"]

DECODE_POLICIES = ("viewer", "official")
_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class CorruptImageError(ValueError):
    """An image exists but cannot be decoded (or would decode to more pixels than Pillow allows)."""


def _to_8_bit(image):
    """16-bit grey (PNG/TIFF) scaled to 8 bits: 0 -> 0, 65535 -> 255."""
    from PIL import Image

    values = np.asarray(image)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError(f"{image.mode} pixel values outside 0..65535")
    return Image.fromarray((values.astype(np.uint32) // 257).astype(np.uint8), mode="L")


def _convert(image, mode: str, policy: str):
    """A decoded PIL image in ``mode`` under ``policy`` (see the module docstring)."""
    from PIL import ImageOps

    if policy == "official":
        return image.convert(mode)
    image = ImageOps.exif_transpose(image)
    if image.mode in _HIGH_DEPTH_MODES and mode not in _HIGH_DEPTH_MODES:
        image = _to_8_bit(image)
    elif image.mode == "F" and mode != "F":
        raise ValueError("floating-point images have no defined 8-bit range")
    if image.mode == "P" and "transparency" in image.info and mode == "RGB":
        image = image.convert("RGBA")
    return image.convert(mode)


def _array_to_image(array: np.ndarray):
    """A PIL image from an array under the contract of the module docstring."""
    from PIL import Image

    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
        raise ValueError(f"an image array must be H x W, H x W x 1, H x W x 3 or H x W x 4; got shape {array.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype == np.uint16:
        array = (array.astype(np.uint32) // 257).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError("an image array holds NaN or infinite values")
        low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        if low < 0:
            raise ValueError(f"a float image array means intensities in [0, 1]; this one has values down to {low:g}")
        if high > 1:
            raise ValueError(f"a float image array means intensities in [0, 1]; this one reaches {high:g}, which looks "
                             "like 0..255 floats: pass array.astype(np.uint8) or array / 255")
        array = np.rint(array.astype(np.float64) * 255).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ValueError(f"image arrays are uint8 (0..255), uint16, bool or float in [0, 1]; got {array.dtype}")
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    return Image.fromarray(np.ascontiguousarray(array))


def _decode_file(fh, mode: str, policy: str):
    from PIL import Image

    with Image.open(fh) as image:
        if policy != "official":
            image.load()  # decode now (first frame of an animation): truncated files fail here, not in a transform
        return _convert(image, mode, policy)


def _decode(source: Any, mode: str, policy: str):
    from PIL import Image

    if isinstance(source, Image.Image):
        return _convert(source, mode, policy)
    if isinstance(source, np.ndarray):
        return _array_to_image(source).convert(mode)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode_file(io.BytesIO(bytes(source)), mode, policy)
    with open(source, "rb") as fh:
        return _decode_file(fh, mode, policy)


def load_image(source: Union[str, os.PathLike, bytes, Any], skips: Optional[Any] = None, mode: str = "RGB", *,
               policy: str = "viewer", where: Optional[str] = None):
    """Decode ``source`` (path, encoded bytes, PIL image or numpy array) into a PIL image in ``mode``.

    ``policy``: ``"viewer"`` or ``"official"`` (module docstring). ``skips``: a ``SkipCounter``; failures are
    counted under ``where`` (default: the path) and ``None`` returned instead of raising.
    """
    from PIL import Image

    if policy not in DECODE_POLICIES:
        raise ValueError(f"unknown image decode policy {policy!r}; one of {DECODE_POLICIES}")
    if not isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview, np.ndarray, Image.Image)):
        raise TypeError(f"cannot read an image from a {type(source).__name__}; give a path, encoded bytes, a PIL "
                        "image or a numpy array")
    is_file = isinstance(source, (str, os.PathLike))
    where = where if where is not None else (str(source) if is_file else f"<{type(source).__name__}>")
    reason = "corrupt_image"
    try:
        if is_file and not Path(source).is_file():
            raise FileNotFoundError(f"{source}: image file not found")
        try:
            return _decode(source, mode, policy)
        except Image.DecompressionBombError as exc:
            reason = "decompression_bomb"
            raise CorruptImageError(f"{where}: refused to decode image: {exc}") from exc
        except (MemoryError, RecursionError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - any decoder failure on bad input is this input's fault
            if isinstance(source, np.ndarray) and isinstance(exc, ValueError):
                raise  # the caller's array breaks the contract: not a per-sample accident to count
            raise CorruptImageError(f"{where}: cannot decode image ({type(exc).__name__}: {exc})") from exc
    except FileNotFoundError as exc:
        if skips is None:
            raise
        skips.add("missing_image", where, exc)
    except CorruptImageError as exc:
        if skips is None:
            raise
        skips.add(reason, where, exc.__cause__)
    return None
