"""Every task's evaluation image transform equals the official one, tensor for tensor, on real-format inputs.

The official transforms are built here exactly as microsoft/unilm ``beit3/datasets.py`` calls torchvision and timm
(``build_transform(is_train=False)`` and ``build_imagenet_transform(is_train=False)`` with the defaults of
``run_beit3_finetuning.py``: ``--crop_pct`` unset means 1.0). The project's transforms are taken where the
trainer takes them (``ImageOptions``, the tasks' ``image_options``) and where the pipelines take them (the zoo
entries' ``image_transform`` / ``image_size`` through ``build_image_transform``).
"""
import io

import pytest
import torch
from PIL import Image

from beit3_plugins.data import ImageOptions, load_image
from beit3_plugins.transforms import build_image_transform


def official_eval_transform(task: str, input_size: int):
    from timm.data.constants import (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, IMAGENET_INCEPTION_MEAN,
                                     IMAGENET_INCEPTION_STD)
    from torchvision import transforms

    if task == "imagenet":
        crop_pct = 1.0  # args.crop_pct is None -> 1.0
        return transforms.Compose([transforms.Resize(int(input_size / crop_pct), interpolation=3),
                                   transforms.CenterCrop(input_size), transforms.ToTensor(),
                                   transforms.Normalize(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)])
    return transforms.Compose([transforms.Resize((input_size, input_size), interpolation=3), transforms.ToTensor(),
                               transforms.Normalize(mean=IMAGENET_INCEPTION_MEAN, std=IMAGENET_INCEPTION_STD)])


@pytest.fixture(scope="module")
def real_format_images(tmp_path_factory, data_world):
    """Files as the benchmarks ship them: COCO-like JPEGs (landscape, portrait, greyscale), an NLVR2-like PNG
    with alpha, an ImageNet-like .JPEG; decoded as the official loader does (PIL, ``convert("RGB")``)."""
    from torchvision.datasets.folder import default_loader

    _, manifest = data_world
    base = load_image(next(manifest.path("coco_images_train").glob("*.jpg")))
    root = tmp_path_factory.mktemp("real_format")
    files = {"coco_landscape.jpg": ((640, 427), "RGB", "JPEG"), "coco_portrait.jpg": ((375, 500), "RGB", "JPEG"),
             "coco_grey.jpg": ((500, 333), "L", "JPEG"), "nlvr2_pair-img0.png": ((523, 311), "RGBA", "PNG"),
             "imagenet_val.JPEG": ((500, 375), "RGB", "JPEG")}
    images = {}
    for name, (size, mode, fmt) in files.items():
        image = base.resize(size, Image.BICUBIC).convert(mode)
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        (root / name).write_bytes(buffer.getvalue())
        images[name] = default_loader(str(root / name))  # torchvision's PIL loader, as BaseDataset.loader
        assert images[name].mode == "RGB"
    return images


# (task, official --input_size) of the released fine-tuned files
CASES = [("vqav2", 480), ("vqav2", 768), ("nlvr2", 224), ("coco_retrieval", 384), ("imagenet", 224),
         ("imagenet", 384)]  # flickr30k = retrieval, captioning / NoCaps = VQA's transform at 480


@pytest.mark.parametrize("task,size", CASES)
def test_trainer_evaluation_transform_is_official(task, size, real_format_images):
    kind = "imagenet" if task == "imagenet" else "vl"
    ours = ImageOptions(transform=kind, image_size=size, train=False).build()
    official = official_eval_transform(task, size)
    for name, image in real_format_images.items():
        expected = official(image)
        assert expected.shape == (3, size, size)
        assert torch.equal(ours(image), expected), f"{task} {size}px differs from the official transform on {name}"


def test_task_evaluation_transforms_are_official(real_format_images):
    """The tasks' own ``image_options(train=False)`` (what ``build_dataset`` uses for evaluation splits)."""
    from beit3_plugins.vl_tasks.registry import TASKS

    image = real_format_images["coco_landscape.jpg"]
    for name, official_task in (("vqa", "vqav2"), ("nlvr2", "nlvr2"), ("retrieval", "coco_retrieval"),
                                ("captioning", "coco_captioning")):
        task = TASKS.build({"name": name, "image_size": 224})
        transform = task.image_options(False).build()
        assert torch.equal(transform(image), official_eval_transform(official_task, 224)(image)), name
    classification = TASKS.build({"name": "image_classification"})  # builds ImageOptions from these fields
    assert (classification.cfg.transform, classification.cfg.image_size) == ("imagenet", 224)


def test_pipeline_transforms_of_every_zoo_entry_are_official(real_format_images):
    from beit3_plugins.zoo import get_pretrained, list_pretrained

    image = real_format_images["imagenet_val.JPEG"]
    entries = [get_pretrained(name) for name in list_pretrained()]
    settings = {(e.image_transform, e.image_size) for e in entries}  # what create_model_and_transforms builds
    assert len(entries) >= 10 and {"vl", "imagenet"} <= {kind for kind, _ in settings}
    for kind, size in sorted(settings):
        ours = build_image_transform(kind, train=False, image_size=size)
        official = official_eval_transform("imagenet" if kind == "imagenet" else "vqav2", size)
        assert torch.equal(ours(image), official(image)), (kind, size)


def test_text_lengths_are_the_official_ones():
    """``--num_max_bpe_tokens``: 64 by default (VQA, NLVR2, retrieval), 32 in the captioning commands; the same
    in the task configs the trainer evaluates with and in the zoo entries the pipelines encode with. No task
    lower-cases: the official code tokenises the raw text, and so does ``Beit3Tokenizer`` (ids checked against
    ``XLMRobertaTokenizer`` in tests/core/test_official_data.py)."""
    from beit3_plugins.vl_tasks.registry import TASKS
    from beit3_plugins.zoo import get_pretrained, list_pretrained

    official = {"vqa": 64, "nlvr2": 64, "retrieval": 64, "captioning": 32}
    assert {name: TASKS.build({"name": name}).cfg.max_text_len for name in official} == official
    entries = [get_pretrained(n) for n in list_pretrained(family="beit3")]
    lengths = {(e.task, e.tokenizer.max_length) for e in entries if e.task in official}
    assert {task for task, _ in lengths} == set(official)
    assert {n for task, n in lengths if task == "captioning"} == {32}
    assert {n for task, n in lengths if task != "captioning"} == {64}
