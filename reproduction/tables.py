"""The published numbers, as plain data: every reported number with its source and the split it is on.

Sources, read at these revisions:

* ``UNILM_README``: microsoft/unilm ``beit3/README.md`` at commit 768a3c873f598bb9b4d4dfb9267b099e35f8fe56
  (the release tables of every published BEiT-3 file; ``line N`` points into that file).
* ``VLMO_README``: microsoft/unilm ``vlmo/README.md`` at the same commit.
* ``BEIT3_PAPER``: "Image as a Foreign Language: BEiT Pretraining for All Vision and Vision-Language Tasks"
  (arXiv 2208.10442, CVPR 2023). Its numbers are of BEiT-3 giant (1.9B), which is **not released**; the
  released files are base and large, so these rows take a user's own checkpoint (``--model FILE=beit3_giant``).
* ``VLMO_PAPER``: "VLMo: Unified Vision-Language Pre-Training with Mixture-of-Modality-Experts" (NeurIPS 2022).

Metric keys are those of the cell files (the task's ``evaluate``): ``accuracy`` / ``accuracy_top5``,
``vqa_accuracy``, ``i2t_r1`` (image->text = TR@1), ``t2i_r1`` (text->image = IR@1), ``bleu4``, ``meteor``,
``cider``, ``spice``, ``bbox_AP`` / ``segm_AP``, ``mIoU``.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

__all__ = ["Reported", "Table", "TABLES", "GIANT", "get_table", "UNILM_COMMIT"]

UNILM_COMMIT = "768a3c873f598bb9b4d4dfb9267b099e35f8fe56"
UNILM_README = f"microsoft/unilm@{UNILM_COMMIT[:7]} beit3/README.md"
VLMO_README = f"microsoft/unilm@{UNILM_COMMIT[:7]} vlmo/README.md"
BEIT3_PAPER = "BEiT-3 paper (arXiv 2208.10442)"
VLMO_PAPER = "VLMo paper (arXiv 2111.02358)"
#: the row name of the paper's model; no file is published for it
GIANT = "beit3_giant"
GIANT_NOTE = "the paper's BEiT-3 giant (1.9B) is not released: this row needs your own checkpoint"


@dataclasses.dataclass(frozen=True)
class Reported:
    """One published number: ``model`` (zoo name of the released file, or ``beit3_giant``) on ``benchmark``
    (a ``BENCHMARKS`` name), metric ``metric``; ``value`` None where nothing is published (the cell is still
    evaluated and shown)."""

    model: str
    benchmark: str
    metric: str
    value: Optional[float]
    source: str
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Table:
    name: str
    title: str
    rows: Tuple[Reported, ...]
    note: str = ""

    def models(self) -> Tuple[str, ...]:
        return tuple(dict.fromkeys(r.model for r in self.rows))


def _line(n: int, source: str = UNILM_README) -> str:
    return f"{source} line {n}"


def _release_rows() -> Tuple[Reported, ...]:
    rows = []
    for line, kind, top1, top5 in ((78, "base", 85.4, 97.6), (79, "base_indomain", 85.4, 97.6),
                                   (80, "large", 87.6, 98.3), (81, "large_indomain", 87.5, 98.3)):
        name = f"beit3_{kind}_patch16_224_in1k"
        rows += [Reported(name, "imagenet1k_val", "accuracy", top1, _line(line)),
                 Reported(name, "imagenet1k_val", "accuracy_top5", top5, _line(line))]
    for line, name, dev in ((90, "beit3_base_patch16_480_vqa", 77.65),
                            (91, "beit3_base_indomain_patch16_480_vqa", 78.46),
                            (92, "beit3_large_patch16_480_vqa", 81.85),
                            (93, "beit3_large_indomain_patch16_480_vqa", 82.53),
                            (94, "beit3_large_indomain_patch16_768_vgqaaug_vqa", 82.97)):
        rows.append(Reported(name, "vqav2_test_dev", "vqa_accuracy", dev, _line(line)))
    rows.append(Reported("beit3_large_indomain_patch16_768_vgqaaug_vqa", "vqav2_test_std", "vqa_accuracy", 83.03,
                         _line(94)))
    for line, kind, dev, test in ((103, "base", 83.6, 84.4), (104, "base_indomain", 84.6, 85.3),
                                  (105, "large", 88.5, 89.4), (106, "large_indomain", 89.2, 90.0)):
        name = f"beit3_{kind}_patch16_224_nlvr2"
        rows += [Reported(name, "nlvr2_dev", "accuracy", dev, _line(line)),
                 Reported(name, "nlvr2_test_p", "accuracy", test, _line(line))]
    for line, kind, cider in ((117, "base", 133.6), (118, "base_indomain", 135.0), (119, "large", 143.2)):
        rows.append(Reported(f"beit3_{kind}_patch16_480_coco_captioning", "coco_captioning_test", "cider", cider,
                             _line(line)))
    for line, kind, cider in ((125, "base", 104.4), (126, "base_indomain", 105.6), (127, "large", 120.2)):
        rows.append(Reported(f"beit3_{kind}_patch16_480_nocaps", "nocaps_val", "cider", cider, _line(line)))
    for line, size, data, ir1, tr1 in ((138, "base", "coco", 61.4, 79.1), (139, "large", "coco", 63.4, 82.1),
                                       (145, "base", "f30k", 86.2, 96.3), (146, "large", "f30k", 88.1, 97.2)):
        name = f"beit3_{size}_patch16_384_{data}_retrieval"
        bench = "coco_retrieval_test" if data == "coco" else "flickr30k_retrieval_test"
        rows += [Reported(name, bench, "t2i_r1", ir1, _line(line) + " (IR@1)"),
                 Reported(name, bench, "i2t_r1", tr1, _line(line) + " (TR@1)")]
    return tuple(rows)


_CONTAMINATED = ("contaminated: the released VQA files were trained on train2014 + val2014 minus 1000 images drawn "
                 "by an unseeded shuffle, so val is (almost all) training data; not comparable to test-dev")


def _vqa_val_rows() -> Tuple[Reported, ...]:
    names = ("beit3_base_patch16_480_vqa", "beit3_base_indomain_patch16_480_vqa", "beit3_large_patch16_480_vqa",
             "beit3_large_indomain_patch16_480_vqa", "beit3_large_indomain_patch16_768_vgqaaug_vqa")
    return tuple(Reported(n, "vqav2_val", "vqa_accuracy", None, "no published val score", _CONTAMINATED)
                 for n in names)


def _vlmo_rows() -> Tuple[Reported, ...]:
    rows = []
    for line, size, dev in ((87, "base", 76.6), (88, "base_plus", 78.5), (89, "large", 79.9)):
        rows.append(Reported(f"vlmo_{size}_patch16_480_vqa", "vqav2_test_dev", "vqa_accuracy", dev,
                             _line(line, VLMO_README)))
    for line, size, test in ((94, "base", 83.3), (95, "base_plus", 85.1), (96, "large", 86.9)):
        rows.append(Reported(f"vlmo_{size}_patch16_384_nlvr2", "nlvr2_test_p", "accuracy", test,
                             _line(line, VLMO_README)))
    for line, size, data, tr1, ir1 in ((101, "base", "coco", 74.8, 57.2), (102, "base_plus", "coco", 76.3, 58.6),
                                       (103, "large", "coco", 78.2, 60.6), (108, "base", "f30k", 92.3, 79.3),
                                       (109, "base_plus", "f30k", 93.2, 81.8), (110, "large", "f30k", 95.3, 84.5)):
        name = f"vlmo_{size}_patch16_384_{data}"
        bench = "coco_retrieval_test" if data == "coco" else "flickr30k_retrieval_test"
        rows += [Reported(name, bench, "i2t_r1", tr1, _line(line, VLMO_README) + " (TR@1)"),
                 Reported(name, bench, "t2i_r1", ir1, _line(line, VLMO_README) + " (IR@1)")]
    # the paper's Tables 1 and 2 (4M-image pretraining; base and large are the released sizes)
    for size, dev, std, nlvr_dev, nlvr_test in (("base", 76.64, 76.89, 82.77, 83.34),
                                                ("large", 79.94, 79.98, 85.64, 86.86)):
        src = f"{VLMO_PAPER}, Table 1"
        rows += [Reported(f"vlmo_{size}_patch16_480_vqa", "vqav2_test_dev", "vqa_accuracy", dev, src),
                 Reported(f"vlmo_{size}_patch16_480_vqa", "vqav2_test_std", "vqa_accuracy", std, src),
                 Reported(f"vlmo_{size}_patch16_384_nlvr2", "nlvr2_dev", "accuracy", nlvr_dev, src),
                 Reported(f"vlmo_{size}_patch16_384_nlvr2", "nlvr2_test_p", "accuracy", nlvr_test, src)]
    table2 = {"base": {"coco": (74.8, 93.1, 96.9, 57.2, 82.6, 89.8), "f30k": (92.3, 99.4, 99.9, 79.3, 95.7, 97.8)},
              "large": {"coco": (78.2, 94.4, 97.4, 60.6, 84.4, 91.0), "f30k": (95.3, 99.9, 100.0, 84.5, 97.3, 98.6)}}
    for size, per_data in table2.items():
        for data, values in per_data.items():
            bench = "coco_retrieval_test" if data == "coco" else "flickr30k_retrieval_test"
            keys = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")
            rows += [Reported(f"vlmo_{size}_patch16_384_{data}", bench, k, v, f"{VLMO_PAPER}, Table 2")
                     for k, v in zip(keys, values)]
    return tuple(rows)


def _paper(table: str, benchmark: str, values: Dict[str, float], note: str = GIANT_NOTE) -> Tuple[Reported, ...]:
    return tuple(Reported(GIANT, benchmark, k, v, f"{BEIT3_PAPER}, {table}", note) for k, v in values.items())


_R = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")

TABLES: Dict[str, Table] = {t.name: t for t in (
    Table("beit3_release", "BEiT-3 release (microsoft/unilm beit3/README.md): every published fine-tuned file",
          _release_rows(),
          "VQA test-dev / test-std are scored only by the EvalAI server: 'ours' is the submission file to upload."),
    Table("beit3_vqa_val", "BEiT-3 released VQA files on VQA v2 val (local score, contaminated)", _vqa_val_rows(),
          _CONTAMINATED),
    Table("vlmo_release", "VLMo release (microsoft/unilm vlmo/README.md) and the VLMo paper's Tables 1-2",
          _vlmo_rows(), "Retrieval is VLMo's dual encoder (dot product of the ITC embeddings)."),
    Table("beit3_paper_table2", "BEiT-3 paper Table 2: VQA v2 and NLVR2",
          _paper("Table 2", "vqav2_test_dev", {"vqa_accuracy": 84.19})
          + _paper("Table 2", "vqav2_test_std", {"vqa_accuracy": 84.03})
          + _paper("Table 2", "nlvr2_dev", {"accuracy": 91.51})
          + _paper("Table 2", "nlvr2_test_p", {"accuracy": 92.58}), GIANT_NOTE),
    Table("beit3_paper_table3", "BEiT-3 paper Table 3: fine-tuned (3a) and zero-shot (3b) retrieval, R@1/5/10",
          _paper("Table 3a", "coco_retrieval_test", dict(zip(_R, (84.8, 96.5, 98.3, 67.2, 87.7, 92.8))))
          + _paper("Table 3a", "flickr30k_retrieval_test", dict(zip(_R, (98.0, 100.0, 100.0, 90.3, 98.7, 99.5))))
          + _paper("Table 3b", "flickr30k_retrieval_test_zeroshot",
                   dict(zip(_R, (94.9, 99.9, 100.0, 81.5, 95.6, 97.8))),
                   GIANT_NOTE + " (zero-shot: its contrastive-tuned file, like the released _itc_ ones)"),
          GIANT_NOTE),
    Table("beit3_paper_table4", "BEiT-3 paper Table 4: COCO captioning, Karpathy test (no CIDEr optimisation)",
          _paper("Table 4", "coco_captioning_test", {"bleu4": 44.1, "meteor": 32.4, "cider": 147.6, "spice": 25.4}),
          GIANT_NOTE),
    Table("beit3_paper_table7", "BEiT-3 paper Table 7: ImageNet-1k top-1 (336 px, IN-21k intermediate tuning)",
          _paper("Table 7", "imagenet1k_val", {"accuracy": 89.6},
                 GIANT_NOTE + "; the paper classifies by image-to-text retrieval over class names at 336 px"),
          GIANT_NOTE),
    Table("zeroshot_imagenet", "Zero-shot ImageNet-1k from the released _itc_ files (class-name prompts)",
          tuple(Reported(n, "imagenet1k_val_zeroshot", m, None, "not published (this project's protocol)",
                         "OpenAI CLIP's 1000 class names and 80 templates as open_clip ships them")
                for n in ("beit3_base_itc_patch16_224", "beit3_large_itc_patch16_224")
                for m in ("accuracy", "accuracy_top5")),
          "No published number: ours only."),
    Table("detection_user", "COCO detection / instance segmentation of your own checkpoint (none released)",
          _paper("Table 5", "coco_detection_val", {"bbox_AP": 63.7, "segm_AP": 54.8},
                 GIANT_NOTE + "; reported on test-dev (server) with multi-scale testing and Objects365 "
                              "intermediate tuning: not comparable to a val2017 score"),
          "Cascade Mask R-CNN + soft-NMS with the paper's test-time augmentation; pass --model FILE=beit3_giant."),
    Table("ade20k_user", "ADE20K semantic segmentation of your own checkpoint (none released)",
          _paper("Table 6", "ade20k_val", {"mIoU": 62.0}) + _paper("Table 6", "ade20k_val_ms", {"mIoU": 62.8}),
          "ViT-Adapter + Mask2Former, 896 crop; single-scale and multi-scale+flip; pass --model FILE=beit3_giant."),
)}


def get_table(name: str) -> Table:
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"unknown table {name!r}; tables: {', '.join(TABLES)}") from None
