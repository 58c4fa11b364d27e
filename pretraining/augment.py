"""Pretraining colour augmentations driven by the caller's numpy Generator.

Settings as the papers and official code use them:

* colour jitter (BEiT-3 Sec. 2.3 and VL-BEiT Sec. 3.1: "the same image augmentation as in BEiT"): the
  BEiT / BEiT v2 pretraining pipeline applies ``torchvision.transforms.ColorJitter(0.4, 0.4, 0.4)``
  (brightness, contrast, saturation; no hue) to every image.
* RandAugment (VLMo Sec. 4.1): the official VLMo pretraining transform (``square_transform_randaug``, taken
  by VLMo from ALBEF) picks N=2 operations uniformly, with replacement, from Identity, AutoContrast,
  Equalize, Brightness, Sharpness, ShearX, ShearY, TranslateX, TranslateY, Rotate, applies each with
  probability 0.5 at magnitude M=7 of 10 (enhance factor M/10*1.8+0.1; shear M/10*0.3; translate M/10*10
  pixels; rotate M/10*30 degrees; geometric ones with a random sign, bilinear, grey (128) fill).

The operations themselves are the library's: torchvision's ``adjust_*`` functionals for jitter, timm's
PIL RandAugment ops (``timm.data.auto_augment``) for RandAugment. Only the random draws are ours, because
torchvision's and timm's transform classes draw from the process-global torch / python RNGs, which
fairseq's prefetch thread would share with the trainer (resumed runs would then see other crops).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Dict, Tuple

import numpy as np

__all__ = ["ColorJitter", "RandAugment", "RAND_AUGMENT_OPS"]

_FILL = (128, 128, 128)
_MAX_LEVEL = 10.0
_TRANSLATE_PIXELS = 10.0


@functools.lru_cache(maxsize=1)
def _ops() -> Dict[str, Callable]:
    from PIL import Image
    from timm.data import auto_augment as aa

    # bilinear as the official cv2.warpAffine calls (timm's default would be bicubic)
    geometric = {"fillcolor": _FILL, "resample": Image.BILINEAR}
    return {
        "Identity": lambda img, level, sign: img,
        "AutoContrast": lambda img, level, sign: aa.auto_contrast(img),
        "Equalize": lambda img, level, sign: aa.equalize(img),
        "Brightness": lambda img, level, sign: aa.brightness(img, level / _MAX_LEVEL * 1.8 + 0.1),
        "Sharpness": lambda img, level, sign: aa.sharpness(img, level / _MAX_LEVEL * 1.8 + 0.1),
        "ShearX": lambda img, level, sign: aa.shear_x(img, sign * level / _MAX_LEVEL * 0.3, **geometric),
        "ShearY": lambda img, level, sign: aa.shear_y(img, sign * level / _MAX_LEVEL * 0.3, **geometric),
        "TranslateX": lambda img, level, sign: aa.translate_x_abs(
            img, sign * level / _MAX_LEVEL * _TRANSLATE_PIXELS, **geometric),
        "TranslateY": lambda img, level, sign: aa.translate_y_abs(
            img, sign * level / _MAX_LEVEL * _TRANSLATE_PIXELS, **geometric),
        "Rotate": lambda img, level, sign: aa.rotate(img, sign * level / _MAX_LEVEL * 30.0, **geometric),
    }


RAND_AUGMENT_OPS: Tuple[str, ...] = ("Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness",
                                     "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


@dataclasses.dataclass(frozen=True)
class ColorJitter:
    """``torchvision.transforms.ColorJitter(b, c, s)`` on a PIL image: factors uniform in [1-x, 1+x],
    the three adjustments in a random order (as torchvision's own transform)."""

    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4

    def __call__(self, image, rng: np.random.Generator):
        from torchvision.transforms import functional as TF

        adjust = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
        strength = (self.brightness, self.contrast, self.saturation)
        for k in rng.permutation(3):
            if strength[k] > 0:
                image = adjust[k](image, float(rng.uniform(max(0.0, 1 - strength[k]), 1 + strength[k])))
        return image


@dataclasses.dataclass(frozen=True)
class RandAugment:
    """VLMo's RandAugment(N, M) on a PIL image (see the module docstring)."""

    num_ops: int = 2
    magnitude: int = 7
    prob: float = 0.5
    ops: Tuple[str, ...] = RAND_AUGMENT_OPS

    def __post_init__(self) -> None:
        unknown = set(self.ops) - set(RAND_AUGMENT_OPS)
        if unknown:
            raise ValueError(f"unknown RandAugment ops {sorted(unknown)}; known: {list(RAND_AUGMENT_OPS)}")
        if not 0 <= self.magnitude <= _MAX_LEVEL:
            raise ValueError(f"RandAugment magnitude {self.magnitude} outside [0, {_MAX_LEVEL:g}]")

    def draw(self, rng: np.random.Generator) -> Tuple[Tuple[str, float], ...]:
        """The (op, sign) pairs applied to one image (ops skipped with probability 1 - prob left out)."""
        chosen = []
        for index in rng.integers(0, len(self.ops), self.num_ops):
            apply, sign = rng.random() <= self.prob, (-1.0 if rng.random() > 0.5 else 1.0)
            if apply:
                chosen.append((self.ops[int(index)], sign))
        return tuple(chosen)

    def __call__(self, image, rng: np.random.Generator):
        ops = _ops()
        image = image.convert("RGB")
        for name, sign in self.draw(rng):
            image = ops[name](image, float(self.magnitude), sign)
        return image
