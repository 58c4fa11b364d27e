"""Image transforms of the BEiT-3 recipes, built from timm's pieces.

Vision-language tasks (VQA, NLVR2, retrieval, captioning) normalise with mean = std = 0.5 (timm's
"inception" constants). Training crops with ``RandomResizedCropAndInterpolation`` (scale 0.5-1,
bicubic), flips, and optionally applies RandAugment over the reference's op list (2 ops, magnitude 7,
no Color/Invert/Solarize/Posterize, which would falsify colour words); evaluation resizes straight to a
square. The reference list still holds the per-channel AutoContrast and Equalize, which can change a
hue on low-contrast images (a red square on light grey turns black); :data:`COLOR_SAFE_RANDAUG_OPS`
drops them for colour-sensitive data such as the shape world.

ImageNet fine-tuning uses timm's ``create_transform`` with the standard ImageNet mean/std (RandAugment
``rand-m9-mstd0.5-inc1``, colour jitter 0.4, random erasing 0.25 when training). Its evaluation is the official
``build_imagenet_transform``: ``run_beit3_finetuning.py`` leaves ``--crop_pct`` unset, which means 1.0, so the
shorter side is resized to the input size (bicubic) and the centre square kept, at every resolution (timm's
usual 0.875 below 384 px is *not* what the released ImageNet numbers were measured with).
tests/core/test_official_transforms.py compares both evaluation transforms with the official calls, tensor for
tensor.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

__all__ = ["build_image_transform", "VL_MEAN", "VL_STD", "IMAGENET_MEAN", "IMAGENET_STD", "VL_RANDAUG_OPS",
           "COLOR_SAFE_RANDAUG_OPS"]

VL_MEAN: Tuple[float, float, float] = (0.5, 0.5, 0.5)
VL_STD: Tuple[float, float, float] = (0.5, 0.5, 0.5)
IMAGENET_MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)
# the reference's RandomAugment op list (Identity is implicit: each op fires with probability 0.5)
VL_RANDAUG_OPS: Tuple[str, ...] = ("AutoContrast", "Equalize", "Brightness", "Sharpness", "ShearX", "ShearY",
                                   "TranslateXRel", "TranslateYRel", "Rotate")
COLOR_SAFE_RANDAUG_OPS: Tuple[str, ...] = tuple(op for op in VL_RANDAUG_OPS
                                                if op not in ("AutoContrast", "Equalize"))


def build_image_transform(kind: str, train: bool, image_size: int, *, interpolation: str = "bicubic",
                          scale: Optional[Tuple[float, float]] = None, hflip: float = 0.5,
                          randaug: bool = False, randaug_ops: Sequence[str] = VL_RANDAUG_OPS,
                          crop_pct: Optional[float] = None, re_prob: float = 0.25,
                          auto_augment: Optional[str] = "rand-m9-mstd0.5-inc1",
                          color_jitter: float = 0.4) -> Callable:
    """PIL image -> normalised float tensor (3, image_size, image_size).

    Args:
        kind: "vl" (mean = std = 0.5) or "imagenet" (ImageNet mean/std, timm's ``create_transform``).
        train: random augmentation (True) or the deterministic evaluation transform (False).
        image_size: output side in pixels.
        scale: RandomResizedCrop area range; VL default (0.5, 1.0), ImageNet default (0.08, 1.0).
        hflip: horizontal flip probability when training (0 for tasks whose text says left/right
            about positions inside one image).
        randaug: VL only - add RandAugment over ``randaug_ops`` (2 ops, magnitude 7) as the reference;
            pass ``randaug_ops=COLOR_SAFE_RANDAUG_OPS`` when colours must survive.
        crop_pct: ImageNet evaluation centre-crop fraction; default 1.0 (the official fine-tuning default).
        re_prob, auto_augment, color_jitter: ImageNet training options passed to timm.
    """
    if kind not in ("vl", "imagenet"):
        raise ValueError(f"unknown image transform kind {kind!r}; expected 'vl' or 'imagenet'")
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an int >= 8 pixels, got {image_size!r}")
    from timm.data import create_transform
    from timm.data.transforms import RandomResizedCropAndInterpolation, str_to_interp_mode
    from torchvision import transforms as T

    if kind == "imagenet":
        if train:
            return create_transform(image_size, is_training=True, scale=scale or (0.08, 1.0), hflip=hflip,
                                    color_jitter=color_jitter, auto_augment=auto_augment,
                                    interpolation=interpolation, re_prob=re_prob, re_mode="pixel", re_count=1,
                                    mean=IMAGENET_MEAN, std=IMAGENET_STD)
        if crop_pct is None:
            crop_pct = 1.0  # run_beit3_finetuning.py: --crop_pct None -> 1.0
        return create_transform(image_size, is_training=False, crop_pct=crop_pct, interpolation=interpolation,
                                mean=IMAGENET_MEAN, std=IMAGENET_STD)

    normalize = [T.ToTensor(), T.Normalize(VL_MEAN, VL_STD)]
    if not train:
        return T.Compose([T.Resize((image_size, image_size), interpolation=str_to_interp_mode(interpolation))]
                         + normalize)
    steps = [RandomResizedCropAndInterpolation(image_size, scale=scale or (0.5, 1.0), interpolation=interpolation)]
    if hflip > 0:
        steps.append(T.RandomHorizontalFlip(hflip))
    if randaug:
        from timm.data.auto_augment import RandAugment, rand_augment_ops

        unknown = [op for op in randaug_ops if op not in _timm_op_names()]
        if unknown:
            raise ValueError(f"unknown RandAugment op(s) {unknown}; timm knows {sorted(_timm_op_names())}")
        # the reference shifts by at most ~2% of the image (7 px at 384); timm's default is 45%
        hparams = {"translate_pct": 0.025, "img_mean": (124, 116, 104)}
        ops = rand_augment_ops(magnitude=7, prob=0.5, hparams=hparams, transforms=list(randaug_ops))
        steps.append(RandAugment(ops, num_layers=2))
    return T.Compose(steps + normalize)


def _timm_op_names() -> Sequence[str]:
    from timm.data.auto_augment import NAME_TO_OP

    return list(NAME_TO_OP)
