"""The benchmark splits, each with the official protocol as settings of the evaluation code below.

A benchmark names the trainer task config (``configs/vl_tasks/task/*.yaml``), the split the trainer
evaluates (``train.eval_split``), its metrics, and where it is scored: here, or (VQA v2 test-dev / test-std,
NoCaps test) only by an evaluation server, in which case the cell writes the submission file that server takes.
Files are read in the official download layout under ``--data-root`` (the task configs' default paths).
Detection and ADE20K run through their framework adapters (``kind`` ``detection`` / ``segmentation``).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

from beit3_plugins.registry import Registry

__all__ = ["Benchmark", "BENCHMARKS", "ENTRIES", "get_benchmark", "EVALAI_VQA", "EVALAI_NOCAPS"]

EVALAI_VQA = "https://eval.ai/web/challenges/challenge-page/830/overview"
EVALAI_NOCAPS = "https://eval.ai/web/challenges/challenge-page/355/overview"


@dataclasses.dataclass(frozen=True)
class Benchmark:
    name: str
    split: str                          # what the split is, in words (shown beside every number)
    task: str                           # trainer task config name, or detection / segmentation
    eval_split: str                     # train.eval_split of the trainer
    metrics: Tuple[str, ...]
    overrides: Tuple[str, ...] = ()     # task settings of the protocol (Hydra overrides)
    server: Optional[str] = None        # scored only there: the cell writes the submission file
    submission: str = ""                # the submission format, in words
    zoo_tasks: Tuple[str, ...] = ()     # the zoo entry kinds whose weights fit
    kind: str = "vl"                    # vl (the VL trainer) | detection | segmentation
    data: str = ""                      # the data layer's check selection ("name:split") of the files it reads

    @property
    def local(self) -> bool:
        return self.server is None


_VQA_SUBMISSION = 'JSON list [{"question_id": int, "answer": str}] over every question of the questions file'
_CAPTION_SUBMISSION = 'JSON list [{"image_id": int, "caption": str}] over every image of the split'

# The benchmarks as data (``ENTRIES``), registered on first lookup; an installed package adds its own under the
# ``beit3_plugins.benchmarks`` entry-point group (``my_benchmarks = "my_package.benchmarks:ENTRIES"``).
ENTRIES: Tuple[Benchmark, ...] = (
    Benchmark("imagenet1k_val", "ImageNet-1k val (50k images)", "image_classification", "val",
              ("accuracy", "accuracy_top5"), zoo_tasks=("image_classification",), data="imagenet:val"),
    Benchmark("imagenet1k_val_zeroshot", "ImageNet-1k val, zero-shot by class-name prompts",
              "image_text_classification", "val", ("accuracy", "accuracy_top5"), zoo_tasks=("itc", "retrieval"),
              data="imagenet:val"),
    Benchmark("vqav2_val", "VQA v2 val2014 (all of it; local official accuracy)", "vqa", "val", ("vqa_accuracy",),
              ("task.train_splits=[train]",), zoo_tasks=("vqa",), data="vqav2:val"),
    Benchmark("vqav2_test_dev", "VQA v2 test-dev (EvalAI server)", "vqa", "test", ("vqa_accuracy",),
              ("task.test_questions=coco/vqa/v2_OpenEnded_mscoco_test-dev2015_questions.json",),
              server=EVALAI_VQA, submission=_VQA_SUBMISSION, zoo_tasks=("vqa",), data="vqav2:test-dev"),
    Benchmark("vqav2_test_std", "VQA v2 test-std (EvalAI server)", "vqa", "test", ("vqa_accuracy",),
              ("task.test_questions=coco/vqa/v2_OpenEnded_mscoco_test2015_questions.json",),
              server=EVALAI_VQA, submission=_VQA_SUBMISSION, zoo_tasks=("vqa",), data="vqav2:test"),
    Benchmark("nlvr2_dev", "NLVR2 dev", "nlvr2", "val", ("accuracy",), zoo_tasks=("nlvr2",), data="nlvr2:dev"),
    Benchmark("nlvr2_test_p", "NLVR2 test-P (public test, test1.json)", "nlvr2", "test", ("accuracy",),
              zoo_tasks=("nlvr2",), data="nlvr2:test-P"),
    Benchmark("coco_captioning_test", "COCO captions, Karpathy test (5k images)", "captioning", "test",
              ("bleu4", "meteor", "cider", "spice"), zoo_tasks=("captioning",), data="coco_captioning:test"),
    Benchmark("nocaps_val", "NoCaps val (4500 images)", "captioning", "val", ("cider",),
              ("task.eval_dataset=nocaps",), zoo_tasks=("captioning",), data="nocaps:val"),
    Benchmark("nocaps_test", "NoCaps test (EvalAI server)", "captioning", "test", ("cider",),
              ("task.eval_dataset=nocaps",), server=EVALAI_NOCAPS, submission=_CAPTION_SUBMISSION,
              zoo_tasks=("captioning",), data="nocaps:test"),
    Benchmark("coco_retrieval_test", "COCO Karpathy test (5k images, 25k captions)", "retrieval", "test",
              ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"), ("task.rerank_k=0",),
              zoo_tasks=("retrieval", "itc"), data="coco_retrieval:test"),
    Benchmark("flickr30k_retrieval_test", "Flickr30k Karpathy test (1k images, 5k captions)", "retrieval_flickr30k",
              "test", ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"), ("task.rerank_k=0",),
              zoo_tasks=("retrieval", "itc"), data="flickr30k:test"),
    Benchmark("flickr30k_retrieval_test_zeroshot", "Flickr30k Karpathy test, zero-shot (no Flickr30k tuning)",
              "retrieval_flickr30k", "test", ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"),
              ("task.rerank_k=0",), zoo_tasks=("itc", "retrieval"), data="flickr30k:test"),
    Benchmark("coco_detection_val", "COCO val2017, multi-scale + flip test-time augmentation", "detection", "val",
              ("bbox_AP", "segm_AP"), kind="detection"),
    Benchmark("ade20k_val", "ADE20K val, single scale", "segmentation", "val", ("mIoU",), kind="segmentation"),
    Benchmark("ade20k_val_ms", "ADE20K val, multi-scale + flip", "segmentation", "val", ("mIoU",),
              kind="segmentation"),
)

BENCHMARKS = Registry("benchmark", entry_type=Benchmark, entry_point_group="beit3_plugins.benchmarks",
                      code_plugins=False, locations=["beit3_plugins.reproduction.benchmarks:ENTRIES"])


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called ``name``; an unknown name is an error listing the registered ones."""
    return BENCHMARKS[name]
