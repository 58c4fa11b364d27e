"""Controls that show a vision-language model uses the image: blind baselines and image-swapped evaluations.

A score means learning only next to what a model that never looks at the image reaches on the same split:

* **blind baseline**, computed exactly, never assumed: VQA - the most frequent training answer of each question
  string (the overall most frequent answer for questions not seen in training); captioning - the training caption
  that scores the best CIDEr on the training images it was not written for, written for every image; retrieval - the best
  recall a text-only model can reach (its scores cannot depend on the image, so image->text ranks the same
  texts for every image: ``R@K <= min(K, images) / images``; text->image ranks the images in one fixed order:
  ``R@K <= captions of the K images with most captions / texts``); classification (linear head or
  image-to-class-name retrieval) - the most frequent training class; NLVR2 - the most frequent training label
  of each sentence.
* **shuffled images**: the same trained model evaluated with the images permuted across the split (each image
  replaced by another image's, a derangement over distinct images, so questions on one image all get the same
  other image); a model that ignores the image scores the same as with the real ones.
* **constant image**: every image replaced by the split's first image. It turns the trained model into a blind
  one; the tests use it as the negative control that must fail the assertion the real evaluation passes.

:func:`evaluate_controls` runs all of them for a trained task model (the trainer does with ``train.controls=true``
and stores them as ``controls`` in metrics.json); :func:`margin` is the distance "clearly ahead" means (3
standard errors of the headline metric, see its docstring) and :func:`clearly_ahead` the test the learning tests
and the demo apply.
"""
from __future__ import annotations

import collections
import math
from typing import Any, Dict, Hashable, List, Mapping, Optional, Sequence

import numpy as np
import torch

from .metrics import caption_metrics, tokenize_captions, vqa_accuracy

__all__ = ["ImageSwap", "vqa_blind", "caption_blind", "retrieval_blind", "majority_blind", "blind_baseline",
           "evaluate_controls", "margin", "clearly_ahead", "Z_SCORE"]

#: standard errors between the model and a control for "clearly ahead" (a two-sided z test at ~0.3 %)
Z_SCORE = 3.0
_IMAGE_FIELDS = ("image", "left_image", "right_image")


# ---------------------------------------------------------------------------------------------- image swaps
def _image_keys(dataset) -> List[Hashable]:
    """Which image each item shows: the record's ``image_id``, the image index of a per-image caption record
    ``(index, captions)``, else the item's position (one image per item)."""
    records = getattr(dataset, "records", None)
    if records is None:
        return list(range(len(dataset)))
    keys: List[Hashable] = []
    for position, record in enumerate(records):
        if hasattr(record, "image_id"):
            keys.append(record.image_id)
        elif isinstance(record, tuple) and record and isinstance(record[0], int):
            keys.append(record[0])
        else:
            keys.append(position)
    return keys


class ImageSwap(torch.utils.data.Dataset):
    """``dataset`` with each item's image(s) taken from another item: ``mode="shuffled"`` maps every distinct
    image to another one (a seeded single cycle over the distinct images, so none keeps its own);
    ``mode="constant"`` gives every item the first item's image. Everything else (texts, labels, ``records``
    the task's ``evaluate`` reads) is the wrapped dataset's."""

    def __init__(self, dataset, mode: str, seed: int = 0) -> None:
        if mode not in ("shuffled", "constant"):
            raise ValueError(f"ImageSwap mode must be 'shuffled' or 'constant', got {mode!r}")
        self.dataset, self.mode = dataset, mode
        keys = _image_keys(dataset)
        first: Dict[Hashable, int] = {}
        for position, key in enumerate(keys):
            first.setdefault(key, position)
        distinct = list(first)
        if mode == "constant" or len(distinct) < 2:
            if mode == "shuffled":
                raise ValueError("shuffling images needs at least two distinct images in the split")
            self.source = [0] * len(keys)
        else:
            order = np.random.default_rng(seed).permutation(len(distinct))
            cycle = {distinct[order[j]]: distinct[order[(j + 1) % len(order)]] for j in range(len(order))}
            self.source = [first[cycle[key]] for key in keys]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        item = dict(self.dataset[index])
        donor = self.dataset[self.source[index]]
        for field in _IMAGE_FIELDS:
            if field in item:
                item[field] = donor[field]
        return item

    def __getattr__(self, name: str) -> Any:  # records, skips, classes ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


# ---------------------------------------------------------------------------------------------- blind baselines
def vqa_blind(train_records: Sequence[Any], eval_records: Sequence[Any]) -> Dict[str, float]:
    """Official VQA accuracy of answering each eval question with the most frequent training answer (over all
    annotators) of the same question string; unseen questions get the most frequent training answer."""
    per_question: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    overall: collections.Counter = collections.Counter()
    for r in train_records:
        per_question[r.question].update(r.raw_answers)
        overall.update(r.raw_answers)
    if not overall:
        raise ValueError("the VQA training split has no annotated answers to build a blind baseline from")
    fallback = overall.most_common(1)[0][0]
    predictions = {r.question_id: (per_question[r.question].most_common(1)[0][0] if r.question in per_question
                                   else fallback) for r in eval_records if r.raw_answers}
    answers = {r.question_id: r.raw_answers for r in eval_records if r.raw_answers}
    types = {r.question_id: r.answer_type for r in eval_records if r.answer_type}
    return vqa_accuracy(predictions, answers, answer_types=types)


def _cider_scores(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]],
                  use_ptb: Optional[bool] = None) -> np.ndarray:
    """Per-image CIDEr-D (x100) by pycocoevalcap, in the order of ``predictions``."""
    from pycocoevalcap.cider.cider import Cider

    gts, res, _ = tokenize_captions(predictions, references, use_ptb)
    _, scores = Cider().compute_score(gts, res)
    return 100.0 * np.asarray(scores, dtype=np.float64)


def caption_blind(train_references: Mapping[Hashable, Sequence[str]],
                  eval_references: Mapping[Hashable, Sequence[str]], candidates: int = 20) -> Dict[str, float]:
    """Caption metrics of writing one caption for every eval image: the training caption with the best mean
    CIDEr-D on the training images it was not written for (on its own image an exact match scores ~10x any
    other, so without leaving it out the rarest caption would win), among the ``candidates`` captions written
    for the most training images (ties by text). Scored with the usual :func:`caption_metrics`;
    ``blind_caption`` in the result names it."""
    from .metrics import caption_tokenize

    def norm(caption: str) -> str:
        return " ".join(caption_tokenize(caption))

    written_for: Dict[str, set] = collections.defaultdict(set)
    for key, refs in train_references.items():
        for caption in refs:
            written_for[norm(caption)].add(key)
    if not written_for:
        raise ValueError("the captioning training split has no captions to build a blind baseline from")
    ranked = sorted(written_for, key=lambda c: (-len(written_for[c]), c))[:candidates]
    best, best_score = ranked[0], -1.0
    for caption in ranked:
        others = {k: v for k, v in train_references.items() if k not in written_for[caption]}
        if not others:
            continue
        score = float(_cider_scores({k: caption for k in others}, others, use_ptb=False).mean())
        if score > best_score:
            best, best_score = caption, score
    metrics: Dict[str, Any] = dict(caption_metrics({k: best for k in eval_references}, eval_references))
    metrics["blind_caption"] = best
    return metrics


def retrieval_blind(captions_per_image: Sequence[int], ks: Sequence[int] = (1, 5, 10)) -> Dict[str, float]:
    """The best R@K (in %) of a text-only model (see the module docstring), in ``recall_at_k``'s keys."""
    counts = sorted((int(c) for c in captions_per_image), reverse=True)
    n_img, n_txt = len(counts), sum(counts)
    if n_img == 0 or n_txt == 0:
        raise ValueError("retrieval blind baseline of an empty split")
    out = {}
    for k in ks:
        out[f"i2t_r{k}"] = 100.0 * min(k, sum(1 for c in counts if c)) / n_img
        out[f"t2i_r{k}"] = 100.0 * sum(counts[:k]) / n_txt
    out["r_mean"] = float(np.mean([out[f"i2t_r{k}"] for k in ks] + [out[f"t2i_r{k}"] for k in ks]))
    return out


def majority_blind(train_labels: Sequence[Hashable], eval_labels: Sequence[Hashable]) -> Dict[str, float]:
    """Accuracy (in %) of always predicting the most frequent training label."""
    if not train_labels or not eval_labels:
        raise ValueError("majority baseline of an empty split")
    top = collections.Counter(train_labels).most_common(1)[0][0]
    return {"accuracy": 100.0 * sum(1 for y in eval_labels if y == top) / len(eval_labels)}


def _sentence_blind(train_records: Sequence[Any], eval_records: Sequence[Any]) -> Dict[str, float]:
    """NLVR2: the most frequent training label of each sentence (overall majority for unseen sentences)."""
    per: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in train_records:
        per[r.sentence][r.label] += 1
    fallback = collections.Counter(r.label for r in train_records).most_common(1)[0][0]
    hits = [(per[r.sentence].most_common(1)[0][0] if r.sentence in per else fallback) == r.label
            for r in eval_records]
    return {"accuracy": 100.0 * sum(hits) / len(hits)}


def _images(dataset) -> List[Any]:
    return list(getattr(dataset, "images"))


def blind_baseline(task, train_ds, eval_ds) -> Dict[str, Any]:
    """The blind baseline of ``task`` (one of the built-in image-text tasks) on ``eval_ds``; ``train_ds`` is
    the training split read for evaluation (one item per image where the task has that view)."""
    from .captioning import CaptioningTask
    from .classification import ImageClassificationTask, ImageTextClassificationTask
    from .nlvr2 import Nlvr2Task
    from .retrieval import RetrievalTask
    from .vqa import VqaTask

    if isinstance(task, VqaTask):
        return vqa_blind(train_ds.records, eval_ds.records)
    if isinstance(task, CaptioningTask):
        return caption_blind({r.image_id: r.captions for r in _images(train_ds)},
                             {r.image_id: r.captions for r in _images(eval_ds)})
    if isinstance(task, RetrievalTask):
        return retrieval_blind([len(r.captions) for r in _images(eval_ds)])
    if isinstance(task, (ImageClassificationTask, ImageTextClassificationTask)):
        return majority_blind([r.label for r in train_ds.records], [r.label for r in eval_ds.records])
    if isinstance(task, Nlvr2Task):
        return _sentence_blind(train_ds.records, eval_ds.records)
    raise TypeError(f"no blind baseline defined for {type(task).__name__}")


# ---------------------------------------------------------------------------------------------- margins
def margin(task, eval_ds, predictions: Any = None, z: float = Z_SCORE) -> float:
    """How far (in the headline metric's points) "clearly ahead" of a control is: ``z`` standard errors.

    Accuracies (VQA, classification, NLVR2) on ``n`` items: the binomial standard error at its largest
    (p = 0.5), ``50 / sqrt(n)`` points. Retrieval's ``r_mean`` averages three image->text recalls over ``n_img``
    queries and three text->image recalls over ``n_txt``; counting each half as one fully correlated proportion
    at p = 0.5 bounds its standard error by ``(50 / sqrt(n_img) + 50 / sqrt(n_txt)) / 2``. Captioning's CIDEr: the
    standard error of a difference of two means of per-image CIDEr with the model's per-image spread,
    ``sqrt(2) * std / sqrt(n_images)`` (needs the model's ``predictions``)."""
    from .captioning import CaptioningTask
    from .retrieval import RetrievalTask

    if isinstance(task, RetrievalTask):
        counts = [len(r.captions) for r in _images(eval_ds)]
        return z * (50.0 / math.sqrt(len(counts)) + 50.0 / math.sqrt(sum(counts))) / 2
    if isinstance(task, CaptioningTask):
        refs = {r.image_id: r.captions for r in _images(eval_ds)}
        scores = _cider_scores({p["image_id"]: p["caption"] for p in predictions if p["image_id"] in refs}, refs)
        return z * math.sqrt(2) * float(scores.std(ddof=1)) / math.sqrt(len(scores))
    return z * 50.0 / math.sqrt(len(eval_ds))


def clearly_ahead(controls: Mapping[str, Any], value: Optional[float] = None) -> bool:
    """Whether ``value`` (default: the model's own headline score) is at least ``margin`` above the blind
    baseline and above the shuffled-image control in ``controls`` (the output of :func:`evaluate_controls`)."""
    metric, gap = controls["metric"], controls["margin"]
    value = controls["model"][metric] if value is None else value
    return value >= controls["blind"][metric] + gap and value >= controls["shuffled"][metric] + gap


# ---------------------------------------------------------------------------------------------- all controls
@torch.no_grad()
def evaluate_controls(task, model, eval_split: str, device, seed: int = 0) -> Dict[str, Any]:
    """Headline metric of the trained ``model`` on ``eval_split`` with the real, shuffled and constant images,
    the blind baseline and the margin; the model is put in eval mode for the call."""
    eval_ds = task.build_dataset(eval_split, train=False)
    train_ds = task.build_dataset(task.train_split, train=False)
    was_training = model.training
    model.eval()
    try:
        real, predictions = task.evaluate(model, eval_ds, device)
        shuffled, _ = task.evaluate(model, ImageSwap(eval_ds, "shuffled", seed), device)
        constant, _ = task.evaluate(model, ImageSwap(eval_ds, "constant"), device)
    finally:
        model.train(was_training)
    return {"metric": task.primary_metric, "n": len(eval_ds), "margin": margin(task, eval_ds, predictions),
            "model": real, "blind": blind_baseline(task, train_ds, eval_ds), "shuffled": shuffled,
            "constant": constant}
