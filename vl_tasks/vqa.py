"""VQA v2 as the BEiT-3 recipe: fused encoder, pooled vision [CLS], 3129-way soft-score classifier.

Training drops questions none of whose answers is in the vocabulary (counted as
``vqa_answers_out_of_vocab``); evaluation keeps them (they score 0, as on the official server) and scores with
the official evaluation's rules on the raw annotator answers (``metrics.vqa_accuracy``, per answer type too).
Predictions are the official submission format ``[{"question_id": int, "answer": str}, ...]``.

Training data is a list of splits (``train_splits``), as the released recipe trains on more than train2014:
``train`` (train2014), ``val`` (all of val2014), ``trainable_val`` (val2014 without ``holdout_images`` images,
1000 in the recipe, following ViLT) and ``vg`` (Visual Genome QA, ``question_answers.json``, used for the
768 px large model). When ``trainable_val`` is trained on, the evaluation split ``val`` is the held-out images
only. The held-out images are a seeded draw (``holdout_seed``) over the sorted val image ids.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from beit3_plugins.data import AnswerVocab, VqaV2Dataset
from beit3_plugins.data.official.answers import vqa_holdout_images
from beit3_plugins.data.readers import read_vg_qa
from beit3_plugins.data.datasets import RecordDataset
from beit3_plugins.backbones import is_vlmo
from beit3_plugins.vl_tasks.registry import TASKS

from .base import ImageTextMixin, TaskConfigBase, TaskModel, VlTask, encode_texts, stack_images
from .heads import Pooler, VqaClassifier
from .losses import soft_bce
from .metrics import vqa_accuracy

__all__ = ["VqaTaskConfig", "VqaModel", "VlmoVqaModel", "VqaTask"]


@dataclasses.dataclass
class VqaTaskConfig(TaskConfigBase):
    image_size: int = 480
    max_text_len: int = 64
    train_questions: str = "coco/vqa/v2_OpenEnded_mscoco_train2014_questions.json"
    train_annotations: str = "coco/vqa/v2_mscoco_train2014_annotations.json"
    train_images: str = "coco/train2014"
    val_questions: str = "coco/vqa/v2_OpenEnded_mscoco_val2014_questions.json"
    val_annotations: Optional[str] = "coco/vqa/v2_mscoco_val2014_annotations.json"
    val_images: str = "coco/val2014"
    answer_vocab: Optional[str] = None   # answer2label.txt (3129 answers for the released heads)
    min_answer_count: int = 9            # building the official list from train + val (lower for tiny data)
    train_splits: Tuple[str, ...] = ("train",)   # of train | val | trainable_val | vg
    holdout_images: int = 1000           # val2014 images kept out of trainable_val (the evaluation split)
    holdout_seed: int = 0
    vg_questions: str = "visual_genome/question_answers.json"
    vg_images: str = "visual_genome/images"
    # split "test": questions only, scored by the EvalAI server (test-dev; test2015 for test-std)
    test_questions: str = "coco/vqa/v2_OpenEnded_mscoco_test-dev2015_questions.json"
    test_annotations: Optional[str] = None
    test_images: str = "coco/test2015"


class VqaModel(TaskModel):
    def __init__(self, backbone: nn.Module, num_answers: int) -> None:
        super().__init__(backbone)
        self.pooler = Pooler(self.dim)
        self.head = VqaClassifier(self.dim, num_answers)

    def logits(self, image, ids, padding_mask):
        out = self.backbone.forward_fused(image, ids, padding_mask)
        return self.head(self.pooler(out.hidden))  # pooled vision [CLS] (token 0)

    def forward(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        logits = self.logits(batch["image"], batch["ids"], batch["padding_mask"])
        return {"loss": soft_bce(logits.float(), batch["targets"])}


class VlmoVqaModel(VqaModel):
    """VLMo's VQA: its LayerNorm-free ``pooler`` on the fused encoder's text [CLS] (VLMo puts text first and
    pools token 0), then ``vqa_classifier`` (same layers as BEiT-3's)."""

    released_head_map = {"vqa_classifier.": "head.", "pooler.": "pooler."}

    def __init__(self, backbone: nn.Module, num_answers: int) -> None:
        super().__init__(backbone, num_answers)
        self.pooler = Pooler(self.dim, norm=False)

    def logits(self, image, ids, padding_mask):
        return self.head(self.pooler(self.backbone.forward_fused(image, ids, padding_mask).text_tokens))


class _VqaItems(VqaV2Dataset):
    """The library's VQA v2 items over records read with the task's answer vocabulary."""

    def __init__(self, records, transform) -> None:  # noqa: D107 - records come from read_vqa
        RecordDataset.__init__(self, records, transform)


@TASKS.register("vqa", config=VqaTaskConfig)
class VqaTask(ImageTextMixin, VlTask):
    primary_metric = "vqa_accuracy"
    normalize_output = False

    def __init__(self, cfg: VqaTaskConfig) -> None:
        super().__init__(cfg)
        self.vocab: Optional[AnswerVocab] = None

    def setup(self, root, tokenizer) -> None:
        super().setup(root, tokenizer)
        if self.vocab is not None:
            return
        if self.cfg.answer_vocab:
            self.vocab = AnswerVocab.load(self.path(self.cfg.answer_vocab))
        else:  # the official list: majority answers of train2014 then val2014
            sources = [self.path(p) for p in (self.cfg.train_annotations, self.cfg.val_annotations) if p]
            sources = [p for p in sources if p is not None and p.is_file()]
            if sources:
                self.vocab = AnswerVocab.from_annotations(sources, min_count=self.cfg.min_answer_count)
        if self.vocab is not None and len(self.vocab) == 0:
            raise ValueError("the VQA answer vocabulary is empty; check answer_vocab / train_annotations")

    def state_dict(self) -> Dict[str, Any]:
        return {"answers": list(self.vocab.answers)} if self.vocab is not None else {}

    def describe(self, model) -> Dict[str, Any]:
        vocab = self._require_vocab()
        return {"head": {"num_answers": len(vocab)}, "labels": list(vocab.answers), "transform": "vl"}

    def load_state_dict(self, state) -> None:
        if state.get("answers"):
            self.vocab = AnswerVocab(state["answers"])

    def _require_vocab(self) -> AnswerVocab:
        if self.vocab is None:
            raise ValueError("VQA needs an answer vocabulary: set task.answer_vocab (answer2label.txt, written by "
                             "`beit3-plugins data prepare`), task.train_annotations, or load a checkpoint that "
                             "stores it")
        return self.vocab

    SPLITS = ("train", "val", "trainable_val", "vg")

    def _read(self, prefix: str, train: bool, skips):
        from beit3_plugins.data import read_vqa

        questions = self.path(getattr(self.cfg, f"{prefix}_questions"))
        annotations = self.path(getattr(self.cfg, f"{prefix}_annotations"))
        return read_vqa(questions, annotations, self.path(getattr(self.cfg, f"{prefix}_images")),
                        self._require_vocab() if annotations else None, drop_out_of_vocab=train, skips=skips)

    def _holdout(self, records) -> set:
        return vqa_holdout_images((r.image_id for r in records), self.cfg.holdout_images, self.cfg.holdout_seed)

    def _split_records(self, name: str, train: bool, skips):
        if name not in self.SPLITS:
            raise ValueError(f"unknown VQA split {name!r}; known: {list(self.SPLITS)}")
        if name == "vg":
            return read_vg_qa(self.path(self.cfg.vg_questions), self.path(self.cfg.vg_images),
                              self._require_vocab(), skips)
        records = self._read("train" if name == "train" else "val", train, skips)
        if name == "trainable_val":
            held = self._holdout(records)
            records = [r for r in records if r.image_id not in held]
        return records

    def build_dataset(self, split: str, train: Optional[bool] = None):
        train = split == "train" if train is None else train
        from beit3_plugins.data.readers import SkipCounter

        skips = SkipCounter()
        if split == "train":
            names = tuple(self.cfg.train_splits)
            records = [r for name in names for r in self._split_records(name, train, skips)]
            source = f"splits {list(names)}"
        elif split == "test":
            records = self._read("test", False, skips)
            source = self.path(self.cfg.test_questions)
        else:
            records = self._split_records("val", train, skips)
            if "trainable_val" in self.cfg.train_splits:   # evaluate on the held-out val images only
                held = self._holdout(records)
                records = [r for r in records if r.image_id in held]
            source = self.path(self.cfg.val_questions)
        ds = _VqaItems(records, self.image_options(train).build())
        ds.skips.merge(skips)
        self.check_nonempty(ds, split, source)
        return ds

    def collate(self, items: List[Dict[str, Any]], train: bool) -> Dict[str, Any]:
        ids, pad = encode_texts(self.tokenizer, [it["question"] for it in items], self.cfg.max_text_len, self.skips)
        targets = torch.zeros(len(items), len(self._require_vocab()))
        for row, it in enumerate(items):
            if it["labels"]:
                targets[row, it["labels"]] = torch.tensor(it["scores"], dtype=torch.float32)
        return {"image": stack_images([it["image"] for it in items]), "ids": ids, "padding_mask": pad,
                "targets": targets, "question_id": [it["question_id"] for it in items]}

    def head_spec(self) -> Dict[str, Any]:
        return {"num_answers": len(self._require_vocab())}

    def model_for(self, backbone: nn.Module, head: Mapping[str, Any]) -> VqaModel:
        model_type = VlmoVqaModel if is_vlmo(backbone.cfg) else VqaModel
        return model_type(backbone, int(head.get("num_answers", 3129)))

    @torch.no_grad()
    def predict(self, model: VqaModel, dataset, device) -> List[Dict[str, Any]]:
        from .batches import iterate_eval

        vocab = self._require_vocab()
        predictions: List[Dict[str, Any]] = []
        for batch in iterate_eval(self, dataset, device):
            logits = model.logits(batch["image"], batch["ids"], batch["padding_mask"])
            for qid, label in zip(batch["question_id"], logits.argmax(-1).tolist()):
                predictions.append({"question_id": int(qid), "answer": vocab.answers[label]})
        return predictions

    def score(self, predictions: List[Dict[str, Any]], dataset) -> Tuple[Dict[str, float], Any]:
        """The official accuracy where annotations exist (val); none on test-dev / test-std (server only)."""
        metrics: Dict[str, float] = {}
        answers = {r.question_id: r.raw_answers for r in dataset.records if r.raw_answers}
        if answers:
            scored = {p["question_id"]: p["answer"] for p in predictions if p["question_id"] in answers}
            types = {r.question_id: r.answer_type for r in dataset.records if r.answer_type}
            metrics.update(vqa_accuracy(scored, answers, answer_types=types))
        return metrics, predictions

    def write_predictions(self, predictions, path: Path) -> Path:
        return super().write_predictions(predictions, Path(path).with_suffix(".json"))
