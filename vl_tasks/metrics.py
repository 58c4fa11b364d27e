"""Metrics of the BEiT-3 vision-language benchmarks, registered in ``METRICS``.

* ``vqa_accuracy`` - the official VQA v2 accuracy: answers normalised as the official evaluation does
  (punctuation, number words, articles, contractions), then for each of the 10 leave-one-annotator-out
  subsets ``min(1, #matching / 3)``, averaged.
* ``recall_at_k`` - image->text and text->image R@1/5/10 from a similarity matrix with many captions per
  image (COCO / Flickr30k Karpathy protocol).
* ``bleu`` / ``cider`` - corpus BLEU-4 (closest reference length, as coco-caption) and CIDEr-D (sigma 6,
  document frequencies over the references, clipped tf-idf, bigram-count length penalty, x10).
* ``meteor`` / ``spice`` - delegated to the jars of ``pycocoevalcap`` when it and Java are present (SPICE also
  needs the Stanford CoreNLP jars, which pycocoevalcap downloads on first use).
* ``accuracy`` - top-1 accuracy.

Pure Python + numpy (torch only for tensors passed in); written from the metric definitions.
"""
from __future__ import annotations

import collections
import importlib
import math
import re
import shutil
from pathlib import Path
from typing import Dict, Hashable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from beit3_plugins.data.readers import normalize_answer
from beit3_plugins.vl_tasks.registry import METRICS

__all__ = ["vqa_accuracy", "vqa_question_accuracy", "recall_at_k", "caption_tokenize", "bleu", "cider",
           "meteor", "meteor_available", "spice", "spice_available", "caption_metrics", "accuracy"]


# ---------------------------------------------------------------------------------------------- VQA
def vqa_question_accuracy(prediction: str, annotator_answers: Sequence[str]) -> float:
    """Official per-question VQA accuracy: mean over the 10 leave-one-out sets of min(1, matches / 3)."""
    if not annotator_answers:
        raise ValueError("a VQA question needs its annotators' answers to be scored")
    pred = normalize_answer(prediction)
    gts = [normalize_answer(a) for a in annotator_answers]
    scores = []
    for i in range(len(gts)):
        others = gts[:i] + gts[i + 1:]
        scores.append(min(1.0, sum(1 for a in others if a == pred) / 3.0))
    return sum(scores) / len(scores)


@METRICS.register("vqa_accuracy")
def vqa_accuracy(predictions: Mapping[Hashable, str], annotations: Mapping[Hashable, Sequence[str]]
                 ) -> Dict[str, float]:
    """Mean official accuracy (in %) over ``predictions`` {question_id: answer}; every id needs annotations."""
    if not predictions:
        raise ValueError("no VQA predictions to score (empty split?)")
    missing = [q for q in predictions if q not in annotations]
    if missing:
        raise KeyError(f"{len(missing)} predicted question(s) have no annotations, e.g. {missing[:5]}")
    total = sum(vqa_question_accuracy(predictions[q], annotations[q]) for q in predictions)
    return {"vqa_accuracy": 100.0 * total / len(predictions)}


# ---------------------------------------------------------------------------------------------- retrieval
@METRICS.register("recall_at_k")
def recall_at_k(similarity, text_to_image: Sequence[int], ks: Sequence[int] = (1, 5, 10)) -> Dict[str, float]:
    """R@K (in %) of both directions.

    Args:
        similarity: (num_images, num_texts) scores (numpy or torch).
        text_to_image: for every text, the index of its (only) ground-truth image.
    Image->text counts a hit when any of the image's texts is in its top K; text->image when its image is.
    """
    sim = similarity.detach().cpu().numpy() if hasattr(similarity, "detach") else np.asarray(similarity)
    sim = sim.astype(np.float64)
    t2i = np.asarray(text_to_image, dtype=np.int64)
    n_img, n_txt = sim.shape
    if n_img == 0 or n_txt == 0:
        raise ValueError("recall@K of an empty set of images or texts")
    if t2i.shape != (n_txt,):
        raise ValueError(f"text_to_image must have one entry per text ({n_txt}), got {t2i.shape}")
    # rank of the best ground truth for each image (stable: ties count against us via >=)
    out: Dict[str, float] = {}
    i2t_rank = np.empty(n_img, dtype=np.int64)
    for i in range(n_img):
        order = np.argsort(-sim[i], kind="stable")
        positions = np.nonzero(t2i[order] == i)[0]
        i2t_rank[i] = positions.min() if positions.size else n_txt
    t2i_rank = np.empty(n_txt, dtype=np.int64)
    for j in range(n_txt):
        order = np.argsort(-sim[:, j], kind="stable")
        t2i_rank[j] = int(np.nonzero(order == t2i[j])[0][0])
    for k in ks:
        out[f"i2t_r{k}"] = 100.0 * float((i2t_rank < k).mean())
        out[f"t2i_r{k}"] = 100.0 * float((t2i_rank < k).mean())
    out["r_mean"] = float(np.mean([out[f"i2t_r{k}"] for k in ks] + [out[f"t2i_r{k}"] for k in ks]))
    return out


# ---------------------------------------------------------------------------------------------- captions
_PTB_PUNCT = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
              "...", ";"}


def caption_tokenize(text: str) -> List[str]:
    """Lower-case words with punctuation removed (what coco-caption's PTB tokenisation leaves behind)."""
    text = text.lower().replace("\n", " ")
    tokens = re.findall(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]", text)
    return [t for t in tokens if t not in _PTB_PUNCT and re.search(r"[a-z0-9]", t)]


def _ngrams(words: Sequence[str], n: int) -> collections.Counter:
    return collections.Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def _check_caption_inputs(predictions: Mapping, references: Mapping) -> List[Hashable]:
    if not predictions:
        raise ValueError("no captions to score (empty split?)")
    missing = [k for k in predictions if not references.get(k)]
    if missing:
        raise KeyError(f"{len(missing)} caption(s) have no references, e.g. image ids {missing[:5]}")
    return list(predictions)


@METRICS.register("bleu")
def bleu(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]], max_n: int = 4
         ) -> Dict[str, float]:
    """Corpus BLEU-1..4 as coco-caption computes it (closest reference length, tiny smoothing)."""
    keys = _check_caption_inputs(predictions, references)
    tiny, small = 1e-15, 1e-9
    correct = [0] * max_n
    total = [0] * max_n
    hyp_len = ref_len = 0
    for key in keys:
        hyp = caption_tokenize(predictions[key])
        refs = [caption_tokenize(r) for r in references[key]]
        hyp_len += len(hyp)
        # closest reference length; ties go to the shorter reference
        ref_len += min((abs(len(r) - len(hyp)), len(r)) for r in refs)[1]
        for n in range(1, max_n + 1):
            counts = _ngrams(hyp, n)
            max_ref: Dict[Tuple[str, ...], int] = collections.Counter()
            for r in refs:
                for gram, c in _ngrams(r, n).items():
                    max_ref[gram] = max(max_ref[gram], c)
            correct[n - 1] += sum(min(c, max_ref[g]) for g, c in counts.items())
            total[n - 1] += max(len(hyp) - n + 1, 0)
    out = {}
    log_sum = 0.0
    brevity = 1.0 if hyp_len >= ref_len else math.exp(1.0 - ref_len / (hyp_len + tiny))
    for n in range(1, max_n + 1):
        log_sum += math.log((correct[n - 1] + tiny) / (total[n - 1] + small))
        out[f"bleu{n}"] = 100.0 * math.exp(log_sum / n) * brevity
    return out


@METRICS.register("cider")
def cider(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]], n: int = 4,
          sigma: float = 6.0) -> Dict[str, float]:
    """CIDEr-D; coco-caption's value x 100, the scale papers report (BEiT-3 base COCO: 147.6)."""
    keys = _check_caption_inputs(predictions, references)

    def counts(words: Sequence[str]) -> collections.Counter:
        c: collections.Counter = collections.Counter()
        for k in range(1, n + 1):
            c.update(_ngrams(words, k))
        return c

    hyps = [counts(caption_tokenize(predictions[k])) for k in keys]
    refs = [[counts(caption_tokenize(r)) for r in references[k]] for k in keys]
    doc_freq: collections.Counter = collections.Counter()
    for ref_set in refs:
        doc_freq.update({g for r in ref_set for g in r})
    log_docs = math.log(float(len(refs)))

    def vec(cnts: collections.Counter):
        v = [dict() for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for gram, tf in cnts.items():
            idx = len(gram) - 1
            weight = float(tf) * (log_docs - math.log(max(1.0, doc_freq[gram])))
            v[idx][gram] = weight
            norm[idx] += weight * weight
            if idx == 1:
                length += tf
        return v, [math.sqrt(x) for x in norm], length

    scores = []
    for hyp, ref_set in zip(hyps, refs):
        vh, nh, lh = vec(hyp)
        total = np.zeros(n)
        for ref in ref_set:
            vr, nr, lr = vec(ref)
            penalty = math.exp(-((lh - lr) ** 2) / (2 * sigma ** 2))
            for i in range(n):
                val = sum(min(w, vr[i].get(g, 0.0)) * vr[i].get(g, 0.0) for g, w in vh[i].items())
                if nh[i] != 0 and nr[i] != 0:
                    val /= nh[i] * nr[i]
                total[i] += val * penalty
        scores.append(float(np.mean(total)) / len(ref_set) * 10.0)
    return {"cider": 100.0 * float(np.mean(scores))}


def _java_scorer_missing(module: str, needs_models: bool = False) -> Optional[str]:
    """Why a pycocoevalcap Java scorer cannot run here, or None when it can."""
    if shutil.which("java") is None:
        return "Java on PATH"
    try:
        mod = importlib.import_module(f"pycocoevalcap.{module}")
    except ImportError:
        return "`pip install pycocoevalcap` (it ships the scorer's jar)"
    if needs_models:  # SPICE parses with Stanford CoreNLP, which pycocoevalcap downloads on first use
        lib = Path(mod.__file__).parent / "lib"
        if not any(lib.glob("stanford-corenlp-*-models.jar")):
            return (f"the Stanford CoreNLP jars in {lib} (pycocoevalcap's get_stanford_models.py downloads "
                    "them; offline, copy them there)")
    return None


def meteor_available() -> bool:
    """METEOR needs Java and the jar shipped with ``pycocoevalcap``."""
    return _java_scorer_missing("meteor.meteor") is None


def spice_available() -> bool:
    """SPICE needs Java, ``pycocoevalcap`` and the Stanford CoreNLP jars (downloaded once)."""
    return _java_scorer_missing("spice.spice", needs_models=True) is None


def _coco_tokenized(predictions, references):
    keys = _check_caption_inputs(predictions, references)
    res = {k: [" ".join(caption_tokenize(predictions[k]))] for k in keys}
    gts = {k: [" ".join(caption_tokenize(r)) for r in references[k]] for k in keys}
    return gts, res


@METRICS.register("meteor")
def meteor(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]) -> Dict[str, float]:
    """METEOR 1.5 through pycocoevalcap's jar; raises ImportError naming the requirement otherwise."""
    missing = _java_scorer_missing("meteor.meteor")
    if missing:
        raise ImportError(f"METEOR needs {missing}")
    from pycocoevalcap.meteor.meteor import Meteor

    score, _ = Meteor().compute_score(*_coco_tokenized(predictions, references))
    return {"meteor": 100.0 * float(score)}


@METRICS.register("spice")
def spice(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]) -> Dict[str, float]:
    """SPICE through pycocoevalcap's jar; raises ImportError naming the requirement otherwise."""
    missing = _java_scorer_missing("spice.spice", needs_models=True)
    if missing:
        raise ImportError(f"SPICE needs {missing}")
    from pycocoevalcap.spice.spice import Spice

    score, _ = Spice().compute_score(*_coco_tokenized(predictions, references))
    return {"spice": 100.0 * float(score)}


def caption_metrics(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]
                    ) -> Dict[str, float]:
    """BLEU-1..4 and CIDEr, plus METEOR and SPICE when their requirements are installed."""
    out = bleu(predictions, references)
    out.update(cider(predictions, references))
    if meteor_available():
        out.update(meteor(predictions, references))
    if spice_available():
        out.update(spice(predictions, references))
    return out


# ---------------------------------------------------------------------------------------------- classification
@METRICS.register("accuracy")
def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> Dict[str, float]:
    """Top-1 accuracy in %."""
    pred = np.asarray(predictions)
    gold = np.asarray(labels)
    if pred.shape != gold.shape:
        raise ValueError(f"{pred.shape[0] if pred.ndim else 0} predictions vs {gold.shape[0] if gold.ndim else 0} labels")
    if pred.size == 0:
        raise ValueError("accuracy of an empty set (empty split?)")
    return {"accuracy": 100.0 * float((pred == gold).mean())}
