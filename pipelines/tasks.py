"""The task pipelines. Each runs the ``vl_tasks`` model's own methods (``VqaModel.logits``,
``CaptioningTask.caption``, ``RetrievalModel.embed_images`` / ``embed_texts``, ``Nlvr2Model.logits``,
``ImageClassifierModel.logits``) and only adds input handling, batching and the output format."""
from __future__ import annotations

import dataclasses
import os
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .base import PIPELINES, Pipeline, as_list, check_count, chunks

__all__ = ["VqaPipeline", "CaptioningPipeline", "ImageEmbeddingPipeline", "TextEmbeddingPipeline",
           "RetrievalPipeline", "ZeroShotClassificationPipeline", "Nlvr2Pipeline", "ImageClassificationPipeline",
           "DEFAULT_TEMPLATES"]

# a few of CLIP's ImageNet prompt templates ("a photo of a {}." ...); pass your own for other data
DEFAULT_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a photo of the {}.")


@PIPELINES.register("vqa")
class VqaPipeline(Pipeline):
    """(image, question) -> top-k answers with sigmoid scores (the heads are trained with soft-score BCE).

    The answer list comes from the ``answers`` argument (a list, or an ``answer2label.txt`` / JSON list
    file), else from the model's description (the answers a trainer checkpoint or a model folder stores,
    ``ZooEntry.labels``), else from the zoo entry's ``answer_vocab`` file.
    """

    task_kinds = ("vqa",)

    def __init__(self, *args, answers: Union[Sequence[str], str, os.PathLike, None] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        from beit3_plugins.data import AnswerVocab

        if answers is None and self.entry.labels:
            answers = list(self.entry.labels)
        if answers is None and self.entry.answer_vocab is not None:
            from .factory import _local_or_download

            answers = _local_or_download(self.entry.answer_vocab)
        if answers is None:
            raise ValueError(f"{self.entry.name}: VQA needs its answer list (answer2label.txt, label order); the "
                             "BEiT-3 release does not publish it. `beit3-plugins data prepare ROOT` rebuilds it as the "
                             "official code does (ROOT/coco/answer2label.txt); pass answers=<that file>")
        vocab = answers if isinstance(answers, AnswerVocab) else (
            AnswerVocab.load(answers) if isinstance(answers, (str, os.PathLike)) else AnswerVocab(list(answers)))
        classes = self.model.head[-1].out_features
        if len(vocab) != classes:
            raise ValueError(f"{self.entry.name}: the head has {classes} answers, the answer list {len(vocab)}")
        self.vocab = vocab

    def __call__(self, image, question, top_k: int = 5):
        images, single = as_list(image, "images")
        questions, _ = as_list(question, "questions")
        check_count("top_k", top_k)
        if len(questions) == 1 and len(images) > 1:
            questions = questions * len(images)
        if len(questions) != len(images):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        out: List[List[Dict[str, Any]]] = []
        k = min(top_k, len(self.vocab))
        with self.inference(), self.autocast():
            for batch in chunks(list(range(len(images))), self.batch_size):
                pixels = self.images([images[i] for i in batch])
                ids, pad = self.texts([questions[i] for i in batch])
                scores = torch.sigmoid(self.model.logits(pixels, ids, pad).float())
                top = scores.topk(k, dim=-1)
                for vals, idx in zip(top.values.tolist(), top.indices.tolist()):
                    out.append([{"answer": self.vocab.answers[i], "score": v} for v, i in zip(vals, idx)])
        return out[0] if single else out


@PIPELINES.register("captioning")
class CaptioningPipeline(Pipeline):
    """image -> caption by beam search with the key/value cache (``CaptioningTask.caption``).

    Defaults are the official fine-tuning script's (3 beams, length penalty 0.6); ``max_length`` counts
    generated tokens.
    """

    task_kinds = ("captioning",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        from beit3_plugins.vl_tasks.captioning import CaptioningTask, CaptioningTaskConfig

        self._task_config = CaptioningTaskConfig(image_size=self.entry.image_size, beam_size=3, length_penalty=0.6,
                                                 max_gen_len=30)
        self._task_class = CaptioningTask

    def __call__(self, image, beam_size: Optional[int] = None, length_penalty: Optional[float] = None,
                 max_length: Optional[int] = None):
        images, single = as_list(image, "images")
        check_count("beam_size", beam_size, "the default, 3")
        check_count("max_length", max_length, "the default, 30 tokens")
        changes = {k: v for k, v in (("beam_size", beam_size), ("length_penalty", length_penalty),
                                     ("max_gen_len", max_length)) if v is not None}
        task = self._task_class(dataclasses.replace(self._task_config, **changes))
        task.tokenizer = self.tokenizer
        out = []
        with self.inference(), self.autocast():
            for batch in chunks(images, self.batch_size):
                out += [{"caption": c} for c in task.caption(self.model, self.images(batch))]
        return out[0] if single else out


@PIPELINES.register("image-embedding")
class ImageEmbeddingPipeline(Pipeline):
    """images -> (N, D) L2-normalised embeddings of the dual encoder (vision CLS -> ``vision_head``)."""

    task_kinds = ("retrieval",)

    def embed_images(self, images: Sequence[Any]) -> Tensor:
        parts = []
        with self.inference(), self.autocast():
            for batch in chunks(images, self.batch_size):
                parts.append(self.model.embed_images(self.images(batch)).float())
        return torch.cat(parts)

    def embed_texts(self, texts: Sequence[str]) -> Tensor:
        parts = []
        with self.inference(), self.autocast():
            for batch in chunks(list(texts), self.batch_size):
                parts.append(self.model.embed_texts(*self.texts(batch)).float())
        return torch.cat(parts)

    def __call__(self, image) -> Tensor:
        images, single = as_list(image, "images")
        emb = self.embed_images(images)
        return emb[0] if single else emb


@PIPELINES.register("text-embedding")
class TextEmbeddingPipeline(ImageEmbeddingPipeline):
    """texts -> (N, D) L2-normalised embeddings (text CLS -> ``language_head``)."""

    def __call__(self, text) -> Tensor:
        texts, single = as_list(text, "texts")
        emb = self.embed_texts(texts)
        return emb[0] if single else emb


@PIPELINES.register("retrieval")
class RetrievalPipeline(ImageEmbeddingPipeline):
    """Rank texts for each image and images for each text by cosine similarity of the dual encoder."""

    def __call__(self, images, texts, top_k: Optional[int] = None) -> Dict[str, Any]:
        images, _ = as_list(images, "images")
        texts, _ = as_list(texts, "texts")
        check_count("top_k", top_k, "rank all")
        sim = self.embed_images(images) @ self.embed_texts(texts).t()
        k_t, k_i = min(top_k or len(texts), len(texts)), min(top_k or len(images), len(images))
        i2t = [[{"text": int(j), "score": float(s)} for s, j in zip(*row.topk(k_t))] for row in sim]
        t2i = [[{"image": int(i), "score": float(s)} for s, i in zip(*col.topk(k_i))] for col in sim.t()]
        return {"image_to_text": i2t, "text_to_image": t2i, "similarity": sim.tolist()}


@PIPELINES.register("zero-shot-classification")
class ZeroShotClassificationPipeline(ImageEmbeddingPipeline):
    """images + class names -> labels by image-text similarity, each class embedded as the renormalised mean
    over prompt templates (CLIP's prompt ensembling). Class embeddings are computed once per
    (classes, templates) and cached (the last ``cache_size`` sets)."""

    cache_size = 8

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._class_cache: "OrderedDict[Tuple[Tuple[str, ...], Tuple[str, ...]], Tensor]" = OrderedDict()

    def class_embeddings(self, classes: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES) -> Tensor:
        for name, value in (("classes", classes), ("templates", templates)):
            if isinstance(value, str):  # a string is a sequence of characters, never what was meant
                raise TypeError(f"{name} must be a list of strings, got the string {value!r}; pass [{value!r}, ...]"
                                + (" (one class always scores 1.0: give the alternatives too)" if name == "classes"
                                   else ""))
        key = (tuple(classes), tuple(templates))
        if key in self._class_cache:
            self._class_cache.move_to_end(key)
            return self._class_cache[key]
        from beit3_plugins.vl_tasks.classification import prompt_ensemble

        emb = prompt_ensemble(self.embed_texts, classes, templates)
        self._class_cache[key] = emb
        if len(self._class_cache) > self.cache_size:
            self._class_cache.popitem(last=False)
        return emb

    def __call__(self, image, classes: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES,
                 top_k: Optional[int] = None):
        images, single = as_list(image, "images")
        check_count("top_k", top_k, "all classes")
        text = self.class_embeddings(classes, templates)
        classes = list(classes)
        scale = self.model.contrastive.logit_scale.exp().clamp(max=100.0).float()
        probs = (scale * self.embed_images(images) @ text.t()).softmax(-1)
        k = min(top_k or len(classes), len(classes))
        out = [[{"label": classes[i], "score": float(s)} for s, i in zip(*row.topk(k))] for row in probs]
        return out[0] if single else out


@PIPELINES.register("nlvr2")
class Nlvr2Pipeline(Pipeline):
    """(left image, right image, sentence) -> {"label": bool, "score": P(true)}."""

    task_kinds = ("nlvr2",)

    def __call__(self, left, right, sentence):
        lefts, single = as_list(left, "left images")
        rights, _ = as_list(right, "right images")
        sentences, _ = as_list(sentence, "sentences")
        if not len(lefts) == len(rights) == len(sentences):
            raise ValueError(f"{len(lefts)} left images, {len(rights)} right images, {len(sentences)} sentences")
        out = []
        with self.inference(), self.autocast():
            for batch in chunks(list(range(len(lefts))), self.batch_size):
                ids, pad = self.texts([sentences[i] for i in batch])
                logits = self.model.logits(self.images([lefts[i] for i in batch]),
                                           self.images([rights[i] for i in batch]), ids, pad)
                for p in logits.float().softmax(-1)[:, 1].tolist():
                    out.append({"label": p > 0.5, "score": p})
        return out[0] if single else out


@PIPELINES.register("image-classification")
class ImageClassificationPipeline(Pipeline):
    """image -> top-k classes of the fine-tuned classifier (ImageNet-1k); ``class_names`` maps indices to names
    (default: the class names the model's description stores, else the indices)."""

    task_kinds = ("image_classification",)

    def __init__(self, *args, class_names: Optional[Sequence[str]] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        classes = self.model.classifier.head.out_features
        if isinstance(class_names, (str, os.PathLike)):
            from beit3_plugins.data.readers import read_text_lines

            class_names = [line.strip() for line in read_text_lines(class_names) if line.strip()]
        if class_names is None and self.entry.labels:
            class_names = list(self.entry.labels)
        if class_names is not None and len(class_names) != classes:
            raise ValueError(f"{self.entry.name}: the classifier has {classes} classes, class_names {len(class_names)}")
        self.class_names = list(class_names) if class_names is not None else None

    def __call__(self, image, top_k: int = 5):
        images, single = as_list(image, "images")
        check_count("top_k", top_k)
        out = []
        with self.inference(), self.autocast():
            for batch in chunks(images, self.batch_size):
                probs = self.model.logits(self.images(batch)).float().softmax(-1)
                top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
                for vals, idx in zip(top.values.tolist(), top.indices.tolist()):
                    out.append([{"label": self.class_names[i] if self.class_names else i, "score": v}
                                for v, i in zip(vals, idx)])
        return out[0] if single else out
