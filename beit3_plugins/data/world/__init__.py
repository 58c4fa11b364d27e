"""A deterministic synthetic "shape world" written in the on-disk formats of the real datasets.

No dataset can be downloaded here, yet every loader, tokenizer and training path must be exercised on
real files and must show that it learns. This module renders small scenes (1-3 coloured circles,
squares and triangles on a plain or lightly textured background) and writes, from the same scene
model, the files the real pipelines read: COCO captions + Karpathy splits, VQA v2, NLVR2, Flickr30k
(Karpathy), NoCaps, COCO instances, ADE20K and an ImageNet-style folder, plus a text corpus. Captions, answers,
labels and masks all follow from the scene, so a model can learn them.

Modules: ``scene`` (shapes, sampling, rendering), ``language`` (caption grammar), ``config`` (what to
write, the manifest, shared label sets), ``writer`` (seeded streams, file output), one module per format
family (``captions``, ``vqa``, ``nlvr2``, ``vision``), ``generate`` (the whole world) and ``cli``
(``beit3-plugins make-world``). It lives beside the real readers of ``beit3_plugins.data`` but is not
imported by them.

Only numpy and Pillow are used (pycocotools only for the optional RLE segmentations). The same
``WorldConfig`` gives byte-identical output; every format draws from its own seeded stream, so changing
the size of one format leaves the others unchanged.

Layout written under ``out_dir`` (keys of :attr:`WorldManifest.files` in brackets)::

    world.json                                           manifest
    text/corpus.txt                                      [text_corpus]
    coco/train2014/COCO_train2014_<id:012d>.jpg          [coco_images_train]   captions + VQA images
    coco/val2014/COCO_val2014_<id:012d>.jpg              [coco_images_val]
    coco/annotations/captions_{train,val}2014.json       [coco_captions_train / _val]
    coco/                                                [coco_root]  BEiT-3 data_path for COCO tasks
    coco/dataset_coco.json                               [karpathy_coco]  train2014 -> train,
                                                                           val2014 -> val / test
    coco/vqa/v2_OpenEnded_mscoco_{train,val}2014_questions.json   [vqa_questions_train / _val]
    coco/vqa/v2_mscoco_{train,val}2014_annotations.json           [vqa_annotations_train / _val]
    coco/test2015/COCO_test2015_<id:012d>.jpg            [coco_images_test]  VQA test images
    coco/vqa/v2_OpenEnded_mscoco_{test,test-dev}2015_questions.json   [vqa_questions_test / _test-dev]
    coco/{train,val}2017/<id:012d>.jpg                   [det_images_train / _val]  detection size
    coco/annotations/instances_{train,val}2017.json      [instances_train / _val]
    flickr30k/flickr30k-images/<id>.jpg                  [flickr_images]
    flickr30k/dataset_flickr30k.json                     [karpathy_flickr]  5 captions per image
    nlvr2/nlvr/nlvr2/data/{train,dev,test1}.json         [nlvr2_train / _dev / _test1]  jsonl (the repo clone)
    nlvr2/images/train/<directory>/<split>-<set>-<pair>-img{0,1}.png   [nlvr2_images_train]
    nlvr2/{dev,test1}/<split>-<set>-<pair>-img{0,1}.png                [nlvr2_images_dev / _test1]
    ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_<n:08d>.jpg   [ade_root]
    ADEChallengeData2016/annotations/{training,validation}/ADE_{train,val}_<n:08d>.png
    ADEChallengeData2016/classes.json                    [ade_classes]
    imagenet/{train,val}/<class>/<class>_<n:05d>.JPEG    [imagenet_train / _val]
    imagenet/classes.json                                [imagenet_classes]
    nocaps/{val,test}/<open images id>.jpg               [nocaps_images_val / _test]
    nocaps/nocaps_val_4500_captions.json                 [nocaps_val]  COCO-format captions
    nocaps/nocaps_test_image_info.json                   [nocaps_test]  images only

Every benchmark folder (``coco``, ``nlvr2``, ``flickr30k``, ``nocaps``, ``imagenet``) is in the official BEiT-3
download layout, so ``beit3-plugins data check`` / ``data prepare`` (``beit3_plugins.data.official``) run on it.

Segmentation labels (ADE20K convention): 0 = unlabeled (shape outlines), 1 = background, 2 = circle,
3 = square, 4 = triangle. With mmseg's ``reduce_zero_label=True`` they become 255 (ignored), 0..3 with
classes ``("background", "circle", "square", "triangle")``.
COCO instance categories: 1 = circle, 2 = square, 3 = triangle (supercategory "shape").
ImageNet classes: the shape kind (``circle``, ``square``, ``triangle``) by default, or
``<colour>_<kind>`` (12 classes) with ``imagenet_classes="kind_color"``; one shape per image.
Captions never mention left/right positions inside an image, so horizontal flips keep them true.
VQA questions are drawn per image by default; ``vqa_complementary=True`` asks them in VQA v2's complementary
pairs (the same question on two images with different answers) so that only a model that looks at the image
beats the question-only prior; ``WorldConfig.needs_the_image()`` is the COCO + VQA world the learning tests and
``make demo`` train VQA and retrieval on, ``needs_the_image(for_captioning=True)`` their captioning world
(``caption_grammar="visible"``: every caption names the colour and kind of each shape; one shape per image)
(``vl_tasks/controls.py`` computes their blind baselines).
"""
from .cli import cli_main
from .config import ADE_CLASSES, ADE_RAW_LABELS, COCO_CATEGORIES, FORMATS, WorldConfig, WorldManifest
from .generate import generate_world
from .language import scene_captions
from .scene import COLORS, KINDS, SIZES, Scene, Shape, render_scene, sample_scene

__all__ = [
    "KINDS", "COLORS", "SIZES", "COCO_CATEGORIES", "ADE_CLASSES", "ADE_RAW_LABELS", "Shape", "Scene",
    "WorldConfig", "WorldManifest", "generate_world", "sample_scene", "render_scene", "scene_captions",
    "FORMATS", "cli_main",
]
